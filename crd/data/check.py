"""Is the dataset in a folder the one the configuration asks for?

``dataset.json`` records how the data were made: ``generator`` holds every option of
``crd generate synth`` for the embedded dataset, and for a prepared public dataset its source and
the resolved preprocessing options. :func:`check_dataset` compares that record with what the
configuration asks for, so that the workflow never trains on data made with other options (by
hand, or by another configuration sharing ``data_root``). A mismatch is one line naming the
folder, the key, both values and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crd.data.catalog import GENERATED
from crd.data.layout import DatasetError, open_dataset

__all__ = ["DatasetMismatch", "expected_record", "check_dataset"]


class DatasetMismatch(ValueError):
    """The dataset in a folder is not the one the configuration asks for."""


def expected_record(source: str, *, generate: Mapping[str, Any] | None = None,
                    preprocess: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What ``dataset.json``'s ``generator`` must hold for a dataset of ``source`` made with the
    configuration's ``generate`` (synth) or ``preprocess`` (public datasets) options."""
    if source in GENERATED:
        from crd.data.synth import expected_generator

        return expected_generator(dict(generate or {}))
    from crd.data.specs import get_spec

    return {"source": source, "options": get_spec(source).resolve_options(dict(preprocess or {}))}


def _normal(value: Any) -> Any:
    """JSON-like values compared as JSON would store them (tuples as lists, ints as floats where a float is)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def check_dataset(folder: Path, expected: Mapping[str, Any], *, what: str = "the configuration",
                  remedy: str = "") -> None:  # fmt: skip
    """``DatasetMismatch`` (one line) unless ``folder`` holds a crd-bench dataset whose
    ``dataset.json`` ``generator`` equals ``expected`` key by key (the first differing key is
    named with both values). ``what`` names the asker (e.g. ``config datasets.synth.generate``),
    ``remedy`` says what to do."""
    folder = Path(folder)
    try:
        info = open_dataset(folder).info
    except DatasetError as exc:
        raise DatasetMismatch(f"{exc}: not a crd-bench dataset; {remedy}".rstrip("; ")) from None
    recorded = info.get("generator")
    if not isinstance(recorded, Mapping):
        raise DatasetMismatch(f"{folder / 'dataset.json'}: records no 'generator' (how it was made), so it cannot "
                              f"be checked against {what}; {remedy}".rstrip("; "))  # fmt: skip
    for key in sorted(set(expected) | set(recorded)):
        if key == "protocol":  # free text describing the splits, not an option
            continue
        want, have = expected.get(key), recorded.get(key)
        if _normal(want) != _normal(have):
            if isinstance(want, Mapping) and isinstance(have, Mapping):
                sub = next(k for k in sorted(set(want) | set(have)) if _normal(want.get(k)) != _normal(have.get(k)))
                key, want, have = f"{key}.{sub}", want.get(sub), have.get(sub)
            want = list(want) if isinstance(want, tuple) else want
            raise DatasetMismatch(f"{folder / 'dataset.json'}: {key} is {have!r}, but {what} asks for {want!r}; "
                                  f"{remedy}".rstrip("; "))  # fmt: skip
