"""The tidy tables every stage writes and the report reads: their columns, and validating readers.

- Evaluation table (``crd evaluate``, or a method's own rule): one CSV per (dataset, method, seed),
  :data:`TABLE_COLUMNS` = ``dataset, method, seed, fixed, moving, metric, label, value``; one row
  per pair, metric and label (``label`` empty for pair-level values; ``fixed``/``moving`` empty for
  method-level values such as ``params``), with a JSON sidecar ``<same name>.json``.
- Training history (``crd train``): one CSV per trained checkpoint, :data:`HISTORY_COLUMNS` =
  ``dataset, method, seed, iteration, metric, value``; iteration 0 is the model before any step.

docs/conventions.md describes both. The readers raise ``ValueError`` naming the file and what is
wrong; they never guess.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "TABLE_COLUMNS",
    "HISTORY_COLUMNS",
    "Table",
    "load_table",
    "load_history",
    "sidecar_path",
]

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("dataset", "method", "seed", "fixed", "moving", "metric", "label", "value")
HISTORY_COLUMNS = ("dataset", "method", "seed", "iteration", "metric", "value")
_NAN_SPELLINGS = frozenset({"nan", "-nan", "na", "n/a", "null", "none", "<na>"})


@dataclass
class Table:
    """One evaluation table and its sidecar."""

    path: Path
    frame: pd.DataFrame
    sidecar: dict[str, Any]
    dataset: str
    method: str
    seed: int


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of an evaluation table: same name, ``.json``."""
    return Path(path).with_suffix(".json")


def _read_csv(path: Path, columns: tuple[str, ...], text_columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"{path}: table not found")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read as CSV ({err})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected columns {list(columns)}, got {list(frame.columns)}"
        )
    if frame.empty:
        raise ValueError(f"{path}: table has no rows")
    for col in ("dataset", "method", "metric"):
        if frame[col].isna().any():
            bad = int(frame[col].isna().idxmax()) + 2  # header is line 1
            raise ValueError(f"{path}: empty '{col}' on line {bad}")
    frame["value"] = _numeric(frame["value"], path, "value", allow_nan=True)
    return frame


def _numeric(column: pd.Series, path: Path, name: str, *, allow_nan: bool) -> pd.Series:
    value = pd.to_numeric(column, errors="coerce")
    bad = value.isna()
    if allow_nan:  # an empty cell or a spelled-out NaN is a missing value, not an error
        bad &= column.notna() & ~column.astype(str).str.strip().str.lower().isin(_NAN_SPELLINGS)
    if bad.any():
        i = int(bad.idxmax())
        raise ValueError(f"{path}: non-numeric {name} {column.iloc[i]!r} on line {i + 2}")
    return value.astype(float)


def _one_key(frame: pd.DataFrame, path: Path) -> tuple[str, str, int]:
    keys = frame[["dataset", "method", "seed"]].drop_duplicates()
    if len(keys) != 1:
        raise ValueError(
            f"{path}: expected one (dataset, method, seed) per table, got "
            f"{[tuple(r) for r in keys.itertuples(index=False)]}"
        )
    dataset, method, seed = keys.iloc[0]
    return str(dataset), str(method), int(seed)


def _seed_column(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    seed = _numeric(frame["seed"], path, "seed", allow_nan=False)
    if (seed != seed.round()).any() or (seed < 0).any():
        raise ValueError(f"{path}: seed must be a non-negative integer")
    return frame.assign(seed=seed.astype(int))


def load_table(path: str | os.PathLike) -> Table:
    """Read and validate one evaluation table ``X.csv`` (:data:`TABLE_COLUMNS`) and its sidecar.

    Raises ``ValueError`` naming the file when the table is missing, unreadable, lacks a column,
    has no rows, holds a non-numeric value or seed, or mixes several (dataset, method, seed); and
    when the sidecar exists but is not a JSON object or names another dataset/method/seed. A
    missing sidecar is tolerated (the report says so).
    """
    path = Path(path)
    text = tuple(c for c in TABLE_COLUMNS if c not in ("value", "seed"))
    frame = _seed_column(_read_csv(path, TABLE_COLUMNS, text), path)
    dataset, method, seed = _one_key(frame, path)

    sidecar: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.is_file():
        try:
            sidecar = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{side}: sidecar is not valid JSON ({err})") from err
        if not isinstance(sidecar, dict):
            raise ValueError(f"{side}: sidecar must be a JSON object, got {type(sidecar).__name__}")
        for key, want in (("dataset", dataset), ("method", method), ("seed", seed)):
            if sidecar.get(key) not in (None, want):
                raise ValueError(f"{side}: sidecar {key} {sidecar[key]!r} does not match table {path} ({want!r})")
    else:
        log.warning("%s: no sidecar %s", path, side)
    return Table(path=path, frame=frame, sidecar=sidecar, dataset=dataset, method=method, seed=seed)


def load_history(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate one training history (:data:`HISTORY_COLUMNS`); ``ValueError`` names the
    file and the problem."""
    path = Path(path)
    frame = _seed_column(_read_csv(path, HISTORY_COLUMNS, ("dataset", "method", "metric")), path)
    frame["iteration"] = _numeric(frame["iteration"], path, "iteration", allow_nan=False).astype(int)
    _one_key(frame, path)
    return frame
