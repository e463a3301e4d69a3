"""What every public dataset spec declares, and the pair protocols they share.

A spec (one module per dataset in this package) is declarative where it can be (sources,
checksums, licence, citation, labels, option defaults, pair protocol) and code where it must be
(reading the archive's layout, the preprocessing recipe). :mod:`crd.data.prepare` drives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.download import Source
from crd.errors import CrdError

__all__ = [
    "DatasetSpec",
    "Protocol",
    "CRD_BENCH",
    "PAPER",
    "Subject",
    "SpecError",
    "inter_subject_pairs",
    "atlas_pairs",
    "split_subjects",
]


class SpecError(CrdError):
    """Bad preprocessing options or a source that does not look like the dataset."""


CRD_BENCH = "crd-bench"
PAPER = "paper"


@dataclass(frozen=True)
class Protocol:
    """One way of forming a dataset's splits and pairs (a dataset's ``protocol`` option).

    Attributes:
        name: ``"paper"`` (the CRD authors' protocol, from their code) or ``"crd-bench"`` (ours).
        summary: how the train/val/test pairs are formed, one line.
        source: where it comes from: the file and function of the authors' (or another) code, or
            "crd-bench" for our own.
        deviations: where crd-bench does not follow ``source`` and why, one line each (README
            protocol table, ``dataset.json``, the report's dataset header).
    """

    name: str
    summary: str
    source: str
    deviations: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """The protocol as ``dataset.json`` and the metrics sidecars record it."""
        return {"name": self.name, "summary": self.summary, "source": self.source,
                "deviations": list(self.deviations)}  # fmt: skip


@dataclass
class Subject:
    """One preprocessed subject: ``image`` float32 ``(D, H, W)`` in [0, 1], ``labels`` integer
    ``(D, H, W)`` on the same grid (0 = background), ``affine`` ``(4, 4)`` voxel-to-world (mm);
    ``warnings``: what the preprocessing had to compromise on (recorded in ``dataset.json``)."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetSpec:
    """A public dataset: where it comes from, its terms, and how it becomes the canonical layout.

    Attributes:
        name: config key and folder name.
        title: one line.
        homepage: the maintainers' page.
        license: the terms in one line (README and dataset.json).
        citation: what to cite.
        sources: the files to download (empty for bring-your-own datasets).
        requires_terms: the config must say ``accept_terms: true`` before downloading.
        own_files: bring-your-own: file names the user places in the dataset's ``path``.
        instructions: bring-your-own: where to get those files.
        labels: label value -> structure name, in the preprocessed label maps.
        options: preprocessing options and their defaults (``preprocess:`` in the config).
        option_help: one line per option.
        protocol: how train/val/test pairs are formed, one line (crd-bench's protocol).
        disk: disk space needed (download + prepared), for the README.
        time: rough preparation time, for the README.
        notes: what is confirmed and what is not about the sources (provenance).
        intensity: how intensities are scaled, one line.
        extra: further keys recorded verbatim in ``dataset.json``.
        protocols: the protocols the ``protocol`` option chooses from (empty: crd-bench's only,
            described by ``protocol``).
        fixed_options: protocol name -> the options it fixes (e.g. the paper's split sizes).
    """

    name: str
    title: str
    homepage: str
    license: str
    citation: str
    labels: Mapping[int, str]
    options: Mapping[str, Any]
    option_help: Mapping[str, str]
    protocol: str
    sources: tuple[Source, ...] = ()
    requires_terms: bool = False
    own_files: tuple[str, ...] = ()
    instructions: str = ""
    disk: str = ""
    time: str = ""
    notes: str = ""
    intensity: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    protocols: Mapping[str, Protocol] = field(default_factory=dict)
    fixed_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def bring_your_own(self) -> bool:
        return not self.sources

    def protocol_of(self, opts: Mapping[str, Any]) -> Protocol:
        """The :class:`Protocol` that resolved options ``opts`` select (``opts["protocol"]``; a
        spec without that option has one protocol, crd-bench's, described by ``protocol``)."""
        if not self.protocols:
            return Protocol(CRD_BENCH, self.protocol, "crd-bench")
        return self.protocols[opts["protocol"]]

    def resolve_options(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The defaults updated with ``given``; an unknown key is a :class:`SpecError`."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise SpecError(
                f"{self.name}: unknown preprocess option(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(self.options))}"
            )
        resolved = {**self.options, **given}
        if self.protocols and resolved.get("protocol") not in self.protocols:
            raise SpecError(
                f"{self.name}: unknown protocol {resolved.get('protocol')!r}; valid: {', '.join(self.protocols)}"
            )
        return self.fix_protocol_options(given, resolved)

    def fix_protocol_options(self, given: Mapping[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
        """Options a protocol fixes (e.g. the paper's split sizes), from ``fixed_options``
        (protocol name -> {option: value}): set in ``resolved``; a ``given`` value that contradicts
        them is a :class:`SpecError` naming both."""
        fixed = dict(self.fixed_options.get(resolved.get("protocol"), {}))
        for key, value in fixed.items():
            if key in given and given[key] != value:
                raise SpecError(
                    f"{self.name}: protocol {resolved['protocol']} fixes {key} = {value!r} (as the authors' code), "
                    f"but {key} = {given[key]!r} was given; drop {key}, or use protocol {CRD_BENCH}"
                )
            resolved[key] = value
        return resolved

    def own_sources(self, folder: Path) -> dict[str, Path] | None:
        """Bring-your-own: the files to read in ``folder`` (``file name -> path``), or ``None``
        when they are not all there. Default: every name in ``own_files``."""
        paths = {n: Path(folder) / n for n in self.own_files}
        return paths if all(p.is_file() for p in paths.values()) else None

    # -- what each dataset module implements ------------------------------------------------
    def open(self, files: Mapping[str, Path]) -> Any:  # pragma: no cover - abstract
        """The opened sources (archives, HDF5 files) from ``filename -> local path``."""
        raise NotImplementedError

    def subject_ids(self, src: Any, opts: Mapping[str, Any]) -> list[str]:  # pragma: no cover
        """Every subject id found in the sources, sorted."""
        raise NotImplementedError

    def context(self, src: Any, ids: Sequence[str], opts: Mapping[str, Any]) -> dict[str, Any]:
        """Dataset-wide quantities computed before the subjects (e.g. a common crop box)."""
        return {}

    def pairs(
        self, src: Any, ids: Sequence[str], opts: Mapping[str, Any]
    ) -> list[tuple[str, str, str]]:  # pragma: no cover - abstract
        """``(split, fixed, moving)`` rows."""
        raise NotImplementedError

    def load(
        self, src: Any, subject: str, opts: Mapping[str, Any], ctx: Mapping[str, Any]
    ) -> Subject:  # pragma: no cover - abstract
        """One subject, preprocessed."""
        raise NotImplementedError


def split_subjects(
    ids: Sequence[str], n_val: int, n_test: int, *, seed: int | None = None, name: str = ""
) -> tuple[list[str], list[str], list[str]]:
    """``(train, val, test)`` subject lists: the ids sorted, shuffled by ``seed`` when given
    (``numpy.random.default_rng(seed).permutation``, the same on every machine), then the last
    ``n_test`` are test, the ``n_val`` before them validation, the rest training; each list sorted.
    No subject is in two splits."""
    ordered = sorted(ids)
    if seed is not None:
        ordered = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    if n_val < 0 or n_test < 2 or len(ordered) - n_val - n_test < 0:
        raise SpecError(
            f"{name}: cannot split {len(ordered)} subjects into val={n_val} and test={n_test} "
            f"(test needs at least 2)"
        )
    n_train = len(ordered) - n_val - n_test
    return (
        sorted(ordered[:n_train]),
        sorted(ordered[n_train : n_train + n_val]),
        sorted(ordered[n_train + n_val :]),
    )


def _consecutive(split: str, ids: Sequence[str]) -> list[tuple[str, str, str]]:
    return [(split, ids[i], ids[i + 1]) for i in range(len(ids) - 1)]


def inter_subject_pairs(
    train: Sequence[str], val: Sequence[str], test: Sequence[str]
) -> list[tuple[str, str, str]]:
    """Training: every ordered pair of training subjects. Validation and test: consecutive pairs
    ``(s[i], s[i+1])`` of the sorted subjects (as Learn2Reg's OASIS pairs).

    Raises:
        SpecError: fewer than 2 training subjects (no pair), or exactly 1 validation or test
            subject (no pair: give 0 or at least 2 validation subjects).
    """
    for split, ids, minimum in (("train", train, 2), ("val", val, 0), ("test", test, 0)):
        if len(ids) < minimum or len(ids) == 1:
            raise SpecError(
                f"{len(ids)} {split} subject(s) give no pair; inter-subject pairs need at least 2 "
                f"(validation: 0 or at least 2)"
            )
    rows = [("train", f, m) for f in train for m in train if f != m]
    return rows + _consecutive("val", val) + _consecutive("test", test)


def atlas_pairs(
    atlas: str, train: Sequence[str], val: Sequence[str], test: Sequence[str]
) -> list[tuple[str, str, str]]:
    """Atlas-based: the atlas is always fixed; every other subject of a split is moving once."""
    rows: list[tuple[str, str, str]] = []
    for split, ids in (("train", train), ("val", val), ("test", test)):
        rows.extend((split, atlas, s) for s in ids if s != atlas)
    return rows
