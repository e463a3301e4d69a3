"""Read single members of the downloaded archives without unpacking them to disk.

The public archives are large (neurite-oasis is a 6.6 GB tar), so preprocessing reads the few
members it needs straight from the archive: ``.tar`` (and ``.tar.gz``), ``.zip``, a zip inside a
zip (LPBA40), or a plain folder (files placed by hand). macOS junk (``__MACOSX/``, ``._*``
AppleDouble files, which some Decathlon tars carry) is never listed.

Images are decoded from bytes with nibabel: NIfTI (``.nii``, ``.nii.gz``) and Analyze /
NIfTI-pair (``.hdr`` + ``.img`` or ``.img.gz``).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np

from crd.errors import CrdError

__all__ = ["ArchiveError", "Archive", "open_archive", "decode_nifti", "decode_analyze"]


class ArchiveError(CrdError):
    """An archive is unreadable or lacks a member; the message names the archive and member."""


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p == "__MACOSX" or p.startswith("._") or p == ".DS_Store" for p in parts)


class Archive:
    """Members of one archive by name (``/``-separated, without a leading ``./``).

    Thread-safe: reads are serialised by a lock (decoding, the expensive part, is not).
    """

    def __init__(self, path: str | os.PathLike[str], *, label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(self.path)
        self._lock = threading.Lock()
        self._tar: tarfile.TarFile | None = None
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, object] = {}
        if not self.path.exists():
            raise ArchiveError(f"{self.label}: file not found")
        try:
            if self.path.is_dir():
                for p in sorted(self.path.rglob("*")):
                    rel = p.relative_to(self.path).as_posix()
                    if p.is_file() and not _is_junk(rel):
                        self._members[rel] = p
            elif zipfile.is_zipfile(self.path):
                self._zip = zipfile.ZipFile(self.path)
                self._members = _zip_members(self._zip)
            elif tarfile.is_tarfile(self.path):
                self._tar = tarfile.open(self.path)
                for info in self._tar:  # one pass over the headers (seeks past the data)
                    if info.isfile() and not _is_junk(info.name):
                        self._members[_clean(info.name)] = info
            else:
                raise ArchiveError(f"{self.label}: not a tar or zip archive")
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ArchiveError(f"{self.label}: cannot read the archive ({exc})") from None

    @classmethod
    def from_bytes(cls, data: bytes, label: str) -> Archive:
        """An archive held in memory (e.g. a zip inside a zip)."""
        self = cls.__new__(cls)
        self.path, self.label, self._lock, self._tar = Path(label), label, threading.Lock(), None
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise ArchiveError(f"{label}: not a zip archive ({exc})") from None
        self._members = _zip_members(self._zip)
        return self

    def names(self) -> list[str]:
        """Every file member, sorted."""
        return sorted(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``."""
        member = self._members.get(name)
        if member is None:
            raise ArchiveError(f"{self.label}: no member {name!r}")
        try:
            with self._lock:
                if isinstance(member, Path):
                    return member.read_bytes()
                if self._zip is not None:
                    return self._zip.read(member)  # type: ignore[arg-type]
                assert self._tar is not None
                fh = self._tar.extractfile(member)  # type: ignore[arg-type]
                assert fh is not None
                return fh.read()
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ArchiveError(f"{self.label}: cannot read member {name!r} ({exc})") from None

    def nested(self, name: str) -> Archive:
        """Member ``name``, itself a zip archive, opened in memory."""
        return Archive.from_bytes(self.read(name), f"{self.label}!{name}")

    def load_nifti(self, name: str) -> nib.Nifti1Image:
        """Member ``name`` (``.nii`` or ``.nii.gz``) as a nibabel image (data in memory)."""
        return decode_nifti(self.read(name), f"{self.label}!{name}")

    def load_analyze(self, header: str, image: str) -> nib.spatialimages.SpatialImage:
        """An Analyze 7.5 / NIfTI-pair image from its ``.hdr`` and ``.img[.gz]`` members."""
        return decode_analyze(self.read(header), self.read(image), f"{self.label}!{image}")

    def close(self) -> None:
        for handle in (self._tar, self._zip):
            if handle is not None:
                handle.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _zip_members(zf: zipfile.ZipFile) -> dict[str, object]:
    """File members of a zip by cleaned name, junk left out."""
    return {_clean(i.filename): i for i in zf.infolist() if not i.is_dir() and not _is_junk(i.filename)}


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _gunzip(data: bytes, label: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise ArchiveError(f"{label}: corrupt gzip data ({exc})") from None


def decode_nifti(data: bytes, label: str) -> nib.Nifti1Image:
    """A NIfTI-1 (or NIfTI-2) image from its file bytes, gzipped or not."""
    raw = _gunzip(data, label)
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return klass.from_bytes(raw)
        except Exception:  # nibabel raises several types for a header of the other kind
            continue
    raise ArchiveError(f"{label}: not a NIfTI image")


def decode_analyze(header: bytes, image: bytes, label: str) -> nib.spatialimages.SpatialImage:
    """An Analyze 7.5 or NIfTI-pair image from header and image bytes (either may be gzipped)."""
    hdr, img = _gunzip(header, label), _gunzip(image, label)
    klass = nib.Nifti1Pair if hdr[344:348] in (b"ni1\x00", b"n+1\x00") else nib.AnalyzeImage
    try:
        file_map = klass.make_file_map()
        file_map["header"].fileobj = io.BytesIO(hdr)
        file_map["image"].fileobj = io.BytesIO(img)
        loaded = klass.from_file_map(file_map)
        # read the data now, while the in-memory files exist
        return klass(np.asanyarray(loaded.dataobj), loaded.affine, loaded.header)
    except Exception as exc:  # nibabel raises several types for corrupt headers
        raise ArchiveError(f"{label}: cannot read as Analyze/NIfTI-pair ({exc})") from None


def open_archive(path: str | os.PathLike[str]) -> Archive:
    """Open a ``.tar``/``.tar.gz``/``.zip`` archive or a folder."""
    return Archive(path)
