"""Has a trained network reached its plateau? One figure per training run, from its history.

A training history (:data:`crd.tidy.HISTORY_COLUMNS`) holds the validation Dice at iteration 0
(before any step) and at every checkpoint. From it:

- ``start``: the validation Dice at iteration 0;
- ``T``: the last iteration recorded (the run's length: its maximum, or where the stopping rule
  ended it);
- ``late``: the mean validation Dice over the checkpoints of the last quarter of the run,
  ``(3T/4, T]``; ``before``: the mean over the quarter before it, ``(T/2, 3T/4]``. Means over
  a quarter, not single checkpoints: one checkpoint can sit several hundredths above or below
  its neighbours;
- ``gain = late - start``: what the run learned; ``late_gain = late - before``: what its last
  quarter added;
- ``late_fraction = late_gain / gain``: the share of the whole gain made in the last quarter.
  A run climbing at a constant rate has about 0.29 (its last two quarters' means differ by a
  quarter of the climb, the gain to the last quarter's mean is 7/8 of it); a run that levelled
  off has about 0 (negative when it drifted down).

Status: ``"plateau"`` when ``late_fraction <= PLATEAU_FRACTION`` (0.10); ``"still improving"``
above it; ``"no gain"`` when the whole gain is at most ``NO_GAIN`` (0.005 Dice: the run ended
where it started, e.g. a fine-tuned student that its teacher did not move, or a network that
learned nothing), where a fraction of it means nothing. A run with fewer than two checkpoints
after iteration 0, or none in either quarter, is ``"too short"`` to tell.

The training's own stopping rule (:class:`crd.train.TrainSettings` ``patience``) is recorded
beside it: ``stopped_early`` when the run ended before its maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Convergence", "convergence", "convergence_table", "PLATEAU_FRACTION", "NO_GAIN", "STATUSES"]

#: the largest share of the whole gain that the last quarter may add for a run to be at its plateau
PLATEAU_FRACTION = 0.10
#: a whole gain (Dice) at most this is "no gain"
NO_GAIN = 0.005
STATUSES = ("plateau", "still improving", "no gain", "too short")


@dataclass(frozen=True)
class Convergence:
    """The convergence figures of one training run (see the module docstring)."""

    method: str
    seed: int
    iterations: int  # T: the last iteration recorded
    max_iterations: int | None  # the budget (None: not recorded, an older history)
    selected_iteration: int | None  # the iteration whose weights the checkpoint holds
    start: float
    before: float
    late: float
    best: float
    best_iteration: int

    @property
    def gain(self) -> float:
        return self.late - self.start

    @property
    def late_gain(self) -> float:
        return self.late - self.before

    @property
    def late_fraction(self) -> float:
        """``late_gain / gain``; NaN when the gain is at most :data:`NO_GAIN`."""
        return self.late_gain / self.gain if self.gain > NO_GAIN else math.nan

    @property
    def status(self) -> str:
        if not (math.isfinite(self.late) and math.isfinite(self.before)):
            return "too short"
        if self.gain <= NO_GAIN:
            return "no gain"
        return "plateau" if self.late_fraction <= PLATEAU_FRACTION else "still improving"

    @property
    def improving(self) -> bool:
        """Whether the run was still improving when it ended (the report's warning)."""
        return self.status == "still improving"

    @property
    def stopped_early(self) -> bool:
        """Whether the stopping rule ended the run before its maximum."""
        return self.max_iterations is not None and self.iterations < self.max_iterations


def convergence(history: pd.DataFrame) -> Convergence:
    """The convergence of one run from its history (one method and seed; tidy, with at least the
    ``val_dice`` metric at iteration 0). Raises ``ValueError`` for several runs or no val_dice."""
    runs = history[["method", "seed"]].drop_duplicates()
    if len(runs) != 1:
        raise ValueError(f"convergence: expected one run's history, got {len(runs)} (method, seed) runs")
    method, seed = runs.iloc[0]
    dice = history[history["metric"] == "val_dice"].groupby("iteration")["value"].last().sort_index()
    dice = dice[np.isfinite(dice.to_numpy(dtype=float))]
    if dice.empty or dice.index[0] != 0:
        raise ValueError(f"convergence of {method} seed {seed}: no validation Dice at iteration 0 in its history")
    last = int(history["iteration"].max())

    def recorded(name: str) -> int | None:
        rows = history[(history["metric"] == name) & (history["iteration"] == last)]["value"]
        return int(rows.iloc[-1]) if len(rows) else None

    iterations = np.asarray(dice.index, dtype=float)
    values = dice.to_numpy(dtype=float)

    def quarter_mean(lo: float, hi: float) -> float:
        inside = (iterations > lo) & (iterations <= hi)
        return float(values[inside].mean()) if inside.any() else math.nan

    after_start = iterations > 0
    enough = after_start.sum() >= 2
    return Convergence(
        method=str(method),
        seed=int(seed),
        iterations=last,
        max_iterations=recorded("max_iterations"),
        selected_iteration=recorded("selected_iteration"),
        start=float(values[0]),
        before=quarter_mean(last / 2, 3 * last / 4) if enough else math.nan,
        late=quarter_mean(3 * last / 4, last) if enough else math.nan,
        best=float(values.max()),
        best_iteration=int(iterations[int(values.argmax())]),
    )


def convergence_table(history: pd.DataFrame) -> list[Convergence]:
    """:func:`convergence` of every (method, seed) run in ``history`` that has a validation Dice,
    in order of first appearance."""
    out = []
    for _, run in history.groupby(["method", "seed"], sort=False):
        if (run["metric"] == "val_dice").any():
            out.append(convergence(run))
    return out
