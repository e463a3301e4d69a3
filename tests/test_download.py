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


def test_file_checksum(tmp_path):
    (tmp_path / "x").write_bytes(PAYLOAD)
    assert file_checksum(tmp_path / "x") == SHA
    assert file_checksum(tmp_path / "x", "md5") == MD5
