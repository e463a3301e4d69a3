"""crd.data.download against a loopback HTTP server: verify, resume, retry, refuse, offline."""

from __future__ import annotations

import hashlib
import socket

import pytest

from crd.data.download import DownloadError, Source, fetch, file_checksum
from http_server import serve

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()


def _no_sleep(_):
    pass


def test_fetch_verifies_and_reuses(tmp_path):
    with serve({"/d/a.tar": PAYLOAD}) as srv:
        src = Source(f"{srv.url}/d/a.tar", "a.tar", SHA)
        path = fetch(src, tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD
        assert not (tmp_path / "a.tar.part").exists()
        n = len(srv.log)
        assert fetch(src, tmp_path, progress=False) == path  # cached: no new request
        assert len(srv.log) == n
        # md5 checksums (as MONAI records the Decathlon's) work too
        assert fetch(Source(f"{srv.url}/d/a.tar", "b.tar", MD5), tmp_path, progress=False)


def test_own_user_agent_is_sent(tmp_path):
    # the server refuses python-requests' default agent, as some dataset hosts do
    with serve({"/a": PAYLOAD}) as srv:
        fetch(Source(f"{srv.url}/a", "a.bin", SHA), tmp_path, progress=False)
        assert srv.log[-1][2] == 200


def test_checksum_mismatch_deletes_everything(tmp_path):
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    with serve({"/a.tar": bytes(corrupted)}) as srv:
        with pytest.raises(DownloadError, match="checksum mismatch"):
            fetch(Source(f"{srv.url}/a.tar", "a.tar", SHA), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_range(tmp_path):
    with serve({"/big.tar": PAYLOAD}) as srv:
        srv.cut_after, srv.cuts = 300_000, 2  # two dropped connections
        path = fetch(Source(f"{srv.url}/big.tar", "big.tar", SHA), tmp_path, progress=False,
                     sleep=_no_sleep)
        assert path.read_bytes() == PAYLOAD
        # each new request starts where the bytes received so far end (whole chunks kept)
        starts = [0 if r[1] is None else int(r[1][6:-1]) for r in srv.log]
        assert len(starts) == 3 and 0 == starts[0] < starts[1] < starts[2] <= 600_000
        assert [r[2] for r in srv.log] == [200, 206, 206]


def test_partial_file_from_an_earlier_run_resumes(tmp_path):
    (tmp_path / "big.tar.part").write_bytes(PAYLOAD[:12345])
    with serve({"/big.tar": PAYLOAD}) as srv:
        path = fetch(Source(f"{srv.url}/big.tar", "big.tar", SHA), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD
        assert srv.log == [("/big.tar", "bytes=12345-", 206)]


def test_partial_file_is_never_taken_for_complete(tmp_path):
    # no published checksum: completeness is still checked against Content-Length
    with serve({"/a.zip": PAYLOAD}) as srv:
        srv.cut_after, srv.cuts = 200_000, 10
        with pytest.raises(DownloadError, match="bytes received so far are kept"):
            fetch(Source(f"{srv.url}/a.zip", "a.zip", None), tmp_path, progress=False,
                  retries=2, sleep=_no_sleep)
        assert not (tmp_path / "a.zip").exists()
        assert 0 < (tmp_path / "a.zip.part").stat().st_size < len(PAYLOAD)
        srv.cuts = 0
        path = fetch(Source(f"{srv.url}/a.zip", "a.zip", None), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts(tmp_path):
    (tmp_path / "a.bin.part").write_bytes(b"garbage")
    with serve({"/a": PAYLOAD}) as srv:
        srv.ranges = False
        path = fetch(Source(f"{srv.url}/a", "a.bin", SHA), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD


# Without a published checksum nothing but the sizes and offsets the server states can catch a
# corrupt file; a reply that does not fit the .part discards it and starts once more from byte 0.
HAVE = 12345
LAST = len(PAYLOAD) - 1


def _starts_again(log, path):
    """The log of a resume refused once and a plain download from byte 0."""
    return [r[:2] for r in log] == [(path, f"bytes={HAVE}-"), (path, None)] and log[-1][2] == 200


def test_complete_partial_file_is_accepted_on_416(tmp_path):
    # the .part from an earlier run is whole: the server's 416 says the file has exactly its size
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD)
    with serve({"/a.zip": PAYLOAD}) as srv:
        path = fetch(Source(f"{srv.url}/a.zip", "a.zip", None), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD
        assert srv.log == [("/a.zip", f"bytes={len(PAYLOAD)}-", 416)]


@pytest.mark.parametrize("part, always_416, total_on_416", [
    (PAYLOAD + b"stale tail", False, True),  # .part larger than the file: 416 says another size
    (PAYLOAD + b"stale tail", False, False),  # ... or no size at all
    (PAYLOAD[:HAVE], True, True),  # a short .part answered 416 regardless
    (PAYLOAD, False, False),  # the right size, but the 416 does not say so
], ids=["larger", "larger-no-total", "416-regardless", "no-total"])
def test_416_that_does_not_confirm_the_part_restarts(tmp_path, part, always_416, total_on_416):
    (tmp_path / "a.zip.part").write_bytes(part)
    with serve({"/a.zip": PAYLOAD}) as srv:
        srv.always_416, srv.total_on_416 = always_416, total_on_416
        path = fetch(Source(f"{srv.url}/a.zip", "a.zip", None), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD
        assert [r[:2] for r in srv.log] == [("/a.zip", f"bytes={len(part)}-"), ("/a.zip", None)]
        assert [r[2] for r in srv.log] == [416, 200]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def _resume_is_refused_and_restarted(tmp_path, knobs):
    """A .part of HAVE bytes; the server's 206 reply, bent by ``knobs``, does not continue it: the
    part is discarded, the download starts again from byte 0 and ends with the served bytes."""
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:HAVE])
    with serve({"/a.zip": PAYLOAD}) as srv:
        for key, value in knobs.items():
            setattr(srv, key, value)
        path = fetch(Source(f"{srv.url}/a.zip", "a.zip", None), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD
        assert _starts_again(srv.log, "/a.zip") and srv.log[0][2] == 206


@pytest.mark.parametrize("knobs", [
    {"range_start": 0},  # 206 with the whole file
    {"range_start": 5000},  # 206 from another offset
    {"content_range": ""},  # no Content-Range
    {"content_range": f"bytes={HAVE}-{LAST}"},  # unparseable
    {"content_range": f"bytes 0-{LAST}/{len(PAYLOAD)}"},  # says another start than it sends
], ids=["from-0", "from-5000", "missing", "unparseable", "wrong-header"])
def test_206_that_does_not_continue_the_part_restarts(tmp_path, knobs):
    _resume_is_refused_and_restarted(tmp_path, knobs)


@pytest.mark.parametrize("knobs", [
    {"oversend": 1000},  # no Content-Length, 1000 bytes past the announced total
    {"content_range": f"bytes {HAVE}-{LAST}/{len(PAYLOAD) - 100}"},  # total below the range's end
    {"content_range": f"bytes {HAVE}-{LAST - 100}/{len(PAYLOAD)}"},  # Content-Length says more
], ids=["oversend", "total-too-small", "length-disagrees"])
def test_more_bytes_than_announced_restarts(tmp_path, knobs):
    _resume_is_refused_and_restarted(tmp_path, knobs)


@pytest.mark.parametrize("knobs", [
    {"always_416": True}, {"range_start": 0}, {"oversend": 10},
], ids=["416", "wrong-start", "oversend"])
def test_inconsistent_resume_after_the_restart_is_one_error(tmp_path, knobs):
    # every resume is answered wrongly; the one restart from byte 0 is cut, so it must resume too
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:HAVE])
    with serve({"/a.zip": PAYLOAD}) as srv:
        for key, value in knobs.items():
            setattr(srv, key, value)
        srv.cut_after, srv.cuts, srv.cut_status = 200_000, 1, 200
        with pytest.raises(DownloadError) as info:
            fetch(Source(f"{srv.url}/a.zip", "a.zip", None), tmp_path, progress=False,
                  sleep=_no_sleep)
        log = list(srv.log)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert "cannot download a.zip" in msg and "starting again from byte 0" in msg
    assert str(tmp_path / "a.zip") in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no final file, no .part
    assert len(log) == 3 and log[0][1] == f"bytes={HAVE}-" and log[1][1:] == (None, 200)
    assert log[2][1] is not None and log[2][1] != log[0][1]  # the resume after the cut


def test_http_error_is_one_message(tmp_path):
    with serve({}) as srv:
        with pytest.raises(DownloadError, match="answered 404"):
            fetch(Source(f"{srv.url}/missing.tar", "m.tar", SHA), tmp_path, progress=False)


def test_offline_gives_instructions(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/neurite-oasis.v1.0.tar"
    with pytest.raises(DownloadError) as info:
        fetch(Source(url, "neurite-oasis.v1.0.tar", SHA), tmp_path, progress=False, retries=1,
              sleep=_no_sleep)
    msg = str(info.value)
    assert "Connection refused" in msg and "fetch " + url in msg
    assert str(tmp_path / "neurite-oasis.v1.0.tar") in msg
    assert "Traceback" not in msg
    # with the default retries, an unreachable host is tried twice (not six times with back-off), and the
    # message claims no partial file
    waits = []
    with pytest.raises(DownloadError) as info:
        fetch(Source(url, "neurite-oasis.v1.0.tar", SHA), tmp_path, progress=False, sleep=waits.append)
    assert len(waits) == 1 and "after 2 attempt(s)" in str(info.value)
    assert "nothing was received" in str(info.value) and ".part" not in str(info.value)


def test_file_checksum(tmp_path):
    (tmp_path / "x").write_bytes(PAYLOAD)
    assert file_checksum(tmp_path / "x") == SHA
    assert file_checksum(tmp_path / "x", "md5") == MD5
