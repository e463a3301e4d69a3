"""The public datasets crd-bench can download (or read, bring-your-own) and prepare.

One module per dataset, each exposing ``SPEC`` (a :class:`~crd.data.specs.base.DatasetSpec`).
"""

from __future__ import annotations

from crd.data.specs import abdomenctct, lits, liver_h5, lpba40, lpba40_rcn, oasis
from crd.data.specs.base import DatasetSpec, SpecError

__all__ = ["SPECS", "get_spec", "DatasetSpec", "SpecError"]

SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (oasis.SPEC, lpba40.SPEC, lpba40_rcn.SPEC, lits.SPEC, abdomenctct.SPEC, liver_h5.SLIVER,
                 liver_h5.LSPIG)
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; a :class:`SpecError` listing the known ones otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise SpecError(f"unknown dataset {name!r}; known: {', '.join(SPECS)}") from None
