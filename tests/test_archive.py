"""crd.data.archive: members by name from tar, zip, zip-in-zip and folders; junk skipped; clear errors."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import nibabel as nib
import numpy as np
import pytest

from crd.data.archive import Archive, ArchiveError, decode_nifti


def _nifti(array):
    return gzip.compress(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4)).to_bytes())


def test_tar_members_junk_and_prefix(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in {"./T/imagesTr/x.nii.gz": _nifti(np.ones((2, 3, 4))),
                           "./T/imagesTr/._x.nii.gz": b"junk", "__MACOSX/T/y": b"junk"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with Archive(path) as arc:
        assert arc.names() == ["T/imagesTr/x.nii.gz"]
        assert arc.load_nifti("T/imagesTr/x.nii.gz").shape == (2, 3, 4)
        with pytest.raises(ArchiveError, match="no member 'T/missing'"):
            arc.read("T/missing")


def test_nested_zip_and_folder(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("L/S01/a.txt", b"hello")
    outer = tmp_path / "o.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("inner.zip", inner.getvalue())
    nested = Archive(outer).nested("inner.zip")
    assert nested.read("L/S01/a.txt") == b"hello" and "o.zip!inner.zip" in nested.label
    (tmp_path / "f" / "sub").mkdir(parents=True)
    (tmp_path / "f" / "sub" / "b.bin").write_bytes(b"x")
    (tmp_path / "f" / ".DS_Store").write_bytes(b"junk")
    assert Archive(tmp_path / "f").names() == ["sub/b.bin"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ArchiveError, match="not found"):
        Archive(tmp_path / "nope.tar")
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(ArchiveError, match="plain.txt: not a tar or zip archive"):
        Archive(tmp_path / "plain.txt")
    with pytest.raises(ArchiveError, match="corrupt gzip"):
        decode_nifti(b"\x1f\x8b" + b"\x00" * 20, "bad.nii.gz")
    with pytest.raises(ArchiveError, match="not a NIfTI image"):
        decode_nifti(b"x" * 400, "bad.nii")
