"""crd.convergence: the plateau measure on constructed training histories, checked against figures
worked out by hand from the definition (quarter means, gain, last-quarter share)."""

import math

import numpy as np
import pandas as pd
import pytest

from crd.convergence import NO_GAIN, PLATEAU_FRACTION, convergence, convergence_table


def _history(values: dict[int, float], *, method="hr", seed=0, extra: dict[str, float] | None = None) -> pd.DataFrame:
    """A tidy history with ``val_dice`` at the given iterations (plus ``extra`` metrics at the last)."""
    rows = [{"dataset": "ds", "method": method, "seed": seed, "iteration": i, "metric": "val_dice", "value": v}
            for i, v in values.items()]  # fmt: skip
    last = max(values)
    rows += [{"dataset": "ds", "method": method, "seed": seed, "iteration": last, "metric": k, "value": v}
             for k, v in (extra or {}).items()]  # fmt: skip
    rows += [{"dataset": "ds", "method": method, "seed": seed, "iteration": i, "metric": "loss", "value": -v}
             for i, v in values.items() if i]  # fmt: skip
    return pd.DataFrame(rows)


def test_a_steady_climb_is_still_improving_with_the_share_worked_out_by_hand():
    # val Dice 0.40 + 0.001 * iteration, checkpoints every 10 to 400
    values = {i: 0.40 + 0.001 * i for i in range(0, 401, 10)}
    c = convergence(_history(values))
    # last quarter (300, 400]: iterations 310..400, mean 355 -> 0.755; quarter before (200, 300]:
    # 210..300, mean 255 -> 0.655
    assert c.late == pytest.approx(0.755) and c.before == pytest.approx(0.655)
    assert c.gain == pytest.approx(0.355) and c.late_gain == pytest.approx(0.100)
    assert c.late_fraction == pytest.approx(0.100 / 0.355)
    assert c.status == "still improving" and c.improving
    assert c.iterations == 400 and c.best == pytest.approx(0.8) and c.best_iteration == 400


def test_a_saturating_curve_is_at_its_plateau():
    values = {i: 0.40 + 0.2 * (1 - math.exp(-i / 40)) for i in range(0, 401, 10)}
    c = convergence(_history(values))
    assert 0 < c.late_fraction < 0.01 and c.status == "plateau" and not c.improving


def test_noise_around_a_plateau_is_averaged_not_mistaken_for_progress():
    """Checkpoints alternating +-0.03 around a level (as two validation pairs jump) are a plateau;
    the single best checkpoint being the last one does not make the run 'improving'."""
    values = {0: 0.40, **{i: 0.55 + (0.03 if (i // 20) % 2 else -0.03) for i in range(20, 401, 20)}}
    values[400] = 0.60
    c = convergence(_history(values))
    assert c.best_iteration == 400
    assert c.status == "plateau", (c.late, c.before, c.late_fraction)


def test_the_threshold_sits_between_the_two_sides():
    """Shares just below and just above PLATEAU_FRACTION."""
    def run(late_gain: float) -> str:
        # start 0.40; quarter before at 0.50; last quarter at 0.50 + late_gain
        late = 0.50 + late_gain
        values = {0: 0.40, 50: 0.45, 60: 0.50, 70: 0.50, 80: late, 90: late, 100: late}
        c = convergence(_history(values))
        assert c.late_fraction == pytest.approx(late_gain / (0.10 + late_gain))
        return c.status

    below = 0.99 * PLATEAU_FRACTION / (1 - 0.99 * PLATEAU_FRACTION) * 0.10
    above = 1.01 * PLATEAU_FRACTION / (1 - 1.01 * PLATEAU_FRACTION) * 0.10
    assert run(below) == "plateau" and run(above) == "still improving"


def test_a_run_that_ends_where_it_started_has_no_gain_and_a_decline_is_no_progress():
    flat = convergence(_history({i: 0.41 + (0.002 if i % 20 else 0.0) for i in range(0, 201, 10)}))
    assert flat.gain <= NO_GAIN and flat.status == "no gain" and math.isnan(flat.late_fraction)
    declining = convergence(_history({0: 0.40, 25: 0.50, 50: 0.52, 75: 0.50, 100: 0.46}))
    assert declining.late_gain < 0 and declining.status == "plateau"


def test_too_short_a_run_cannot_tell():
    assert convergence(_history({0: 0.4, 10: 0.5})).status == "too short"


def test_budget_and_selection_are_read_from_the_history():
    stopped = convergence(_history({0: 0.4, 100: 0.5, 200: 0.55, 300: 0.55},
                                   extra={"max_iterations": 1000, "selected_iteration": 200}))  # fmt: skip
    assert stopped.stopped_early and stopped.max_iterations == 1000 and stopped.selected_iteration == 200
    full = convergence(_history({0: 0.4, 100: 0.5}, extra={"max_iterations": 100, "selected_iteration": 100}))
    assert not full.stopped_early
    old = convergence(_history({0: 0.4, 100: 0.5}))
    assert old.max_iterations is None and not old.stopped_early


def test_table_covers_every_run_and_refuses_mixed_or_missing_input():
    h = pd.concat([_history({0: 0.4, 10: 0.5, 20: 0.5}, method=m, seed=s) for m in ("hr", "lr") for s in (0, 1)])
    h = pd.concat([h, _history({0: 0.0}, method="identity").query("metric != 'val_dice'")])
    runs = convergence_table(h)
    assert [(r.method, r.seed) for r in runs] == [("hr", 0), ("hr", 1), ("lr", 0), ("lr", 1)]
    with pytest.raises(ValueError, match="one run"):
        convergence(h)
    with pytest.raises(ValueError, match="iteration 0"):
        convergence(_history({10: 0.5, 20: 0.5}))


def test_nan_checkpoints_are_left_out():
    values = {0: 0.4, 10: 0.5, 20: np.nan, 30: 0.5, 40: 0.5}
    c = convergence(_history(values))
    assert c.late == pytest.approx(0.5) and c.before == pytest.approx(0.5)
