"""What the report says about one dataset: each method's results over seeds, and paired comparisons.

Reads only :class:`crd.tidy.Table` objects (the tidy evaluation tables); the statistics are
:mod:`crd.stats`. Conventions:

- A method's value on a test pair is the mean over its training seeds of that pair's value; means,
  standard deviations and paired tests are over test pairs of these seed-averaged values.
- The spread across seeds is the standard deviation of the per-seed means over pairs.
- DSC30 is computed per seed (Learn2Reg's 30th percentile of the per-pair Dice) and averaged over
  seeds.
- Comparisons: Dice and HD95, paired over the common test pairs, each twice: as trained models
  (seed-averaged values; only the test subjects vary) and, with 2 or more seeds, as training methods
  (seeds and subjects redrawn together: the headline claim). Holm's correction runs over every
  (comparison, metric) of the dataset, per level. See :mod:`crd.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crd import stats
from crd.tidy import Table, sidecar_path

__all__ = [
    "CeilingRow",
    "ceilings",
    "Stat",
    "MethodResult",
    "ComparisonRow",
    "summarise",
    "comparison_plan",
    "compare",
    "COMPARED_METRICS",
    "NAMED_COMPARISONS",
]

PAIR_METRICS = (
    "dice",
    "hd95_mm",
    "fold_pct",
    "fold_count",
    "sdlogj",
    "logj_excluded_pct",
    "time_s",
    "peak_rss_mb",
    "cuda_alloc_peak_mb",
    "nvml_peak_mb",
)
#: (metric, display name, higher is better, decimals) of the paired comparisons
COMPARED_METRICS = (("dice", "Dice", True, 3), ("hd95_mm", "HD95", False, 2))
#: the comparisons CRD is about (shown when both methods are present), before each-vs-baseline
NAMED_COMPARISONS = (("crd", "lr"), ("crd", "hr"), ("crd", "kd-hr"), ("fst", "lr"))


def scheme_comparisons(backbone: str) -> tuple[tuple[str, str], ...]:
    """The named comparisons of the CRD scheme over a network ``backbone`` (methods
    ``lr@<backbone>``, ``fst@<backbone>``, ``crd@<backbone>``; crd.methods), as crd's over hr."""
    return ((f"crd@{backbone}", f"lr@{backbone}"), (f"crd@{backbone}", backbone), (f"fst@{backbone}", f"lr@{backbone}"))


def is_named(a: str, b: str) -> bool:
    """True for a comparison the report names first: :data:`NAMED_COMPARISONS`, or one of
    :func:`scheme_comparisons` for the backbone ``a`` is built over."""
    if (a, b) in NAMED_COMPARISONS:
        return True
    scheme, at, backbone = a.partition("@")
    return bool(at) and scheme in ("crd", "fst") and (a, b) in scheme_comparisons(backbone)
#: methods that are a reference, not a method under comparison
REFERENCES = ("identity",)


@dataclass(frozen=True)
class Stat:
    """Mean ± standard deviation (ddof 1) over pairs of the finite values, and how many there were."""

    mean: float
    sd: float
    n: int
    total: int

    @classmethod
    def of(cls, values: pd.Series) -> Stat | None:
        if values.empty:
            return None
        arr = values.to_numpy(dtype=float)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return cls(float("nan"), float("nan"), 0, arr.size)
        sd = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
        return cls(float(np.mean(finite)), sd, int(finite.size), int(arr.size))


@dataclass
class MethodResult:
    """One method on one dataset, over its seeds."""

    dataset: str
    method: str
    tables: list[Table]
    device: str
    pair: pd.DataFrame  # index (fixed, moving); one column per metric: the seed-averaged value
    per_seed_dice: pd.Series  # seed -> mean Dice over pairs
    dsc30: float
    label_dice: pd.Series  # label -> mean Dice over pairs and seeds
    params: float | None
    missing_total: float | None
    vanished_total: float | None
    notes: list[str] = field(default_factory=list)
    oracle_of: str | None = None  # an oracle (a ceiling, not a method): the method whose network it uses
    model: dict | None = None  # the model config its sidecar records
    memory_note: str | None = None  # why its CPU memory figure is not shown (None: shown, or CUDA)
    label_names: dict[int, str] = field(default_factory=dict)  # label value -> structure name (sidecar)

    @property
    def is_x2_student(self) -> bool:
        """A network that predicts its field on the x2 coarser grid (kind lowres, factor 2)."""
        return bool(self.model) and self.model.get("kind") == "lowres" and self.model.get("factor") == 2

    @property
    def seeds(self) -> list[int]:
        return sorted(t.seed for t in self.tables)

    @property
    def stands_for_every_seed(self) -> bool:
        """One evaluation that no training seed changes: a method without training whose sidecar
        says ``seed_independent`` (identity, ants-syn; evaluated once by the workflow), or the
        reference ``identity`` given once. It stands beside every seed of the method it is compared
        with."""
        if len(self.tables) != 1:
            return False
        return bool(self.tables[0].sidecar.get("seed_independent")) or self.method in REFERENCES

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def mem_metric(self) -> str | None:
        """The memory metric shown and compared: the CUDA allocator peak (else NVML) on CUDA, else
        the CPU RSS above baseline."""
        order = ("cuda_alloc_peak_mb", "nvml_peak_mb") if self.is_cuda else ("peak_rss_mb",)
        return next((m for m in order if self.stat(m) is not None and self.stat(m).n), None)

    def values(self, metric: str) -> pd.Series:
        """Seed-averaged values of ``metric`` per test pair (empty if the tables hold none)."""
        return self.pair[metric] if metric in self.pair else pd.Series(dtype=float)

    def stat(self, metric: str) -> Stat | None:
        return Stat.of(self.values(metric).dropna()) if metric in self.pair else None

    def seed_spread(self) -> tuple[float, float, int]:
        """Mean and standard deviation over seeds of the mean Dice, and the number of seeds."""
        return stats.seed_spread(self.per_seed_dice.to_numpy())


def summarise(tables: list[Table]) -> MethodResult:
    """Combine one (dataset, method)'s tables, one per seed, into a :class:`MethodResult`."""
    if not tables:
        raise ValueError("summarise: no tables")
    first = tables[0]
    seeds = [t.seed for t in tables]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{first.dataset}/{first.method}: seed given twice in {[str(t.path) for t in tables]}")
    frame = pd.concat([t.frame for t in tables], ignore_index=True)
    top = frame[frame["label"].isna() & frame["fixed"].notna() & frame["moving"].notna()]
    per_seed = top.groupby(["metric", "seed", "fixed", "moving"])["value"].mean()
    pair = per_seed.groupby(["metric", "fixed", "moving"]).mean().unstack("metric")
    dice = top[top["metric"] == "dice"]
    per_seed_dice = dice.groupby("seed")["value"].mean()
    dsc30 = (
        float(np.nanmean([stats.dsc30(g["value"].to_numpy()) for _, g in dice.groupby("seed")]))
        if len(dice)
        else (float("nan"))
    )
    labelled = frame[(frame["metric"] == "dice") & frame["label"].notna()].copy()
    labelled["label_num"] = pd.to_numeric(labelled["label"], errors="coerce")
    label_dice = labelled.dropna(subset=["label_num"]).groupby("label_num")["value"].mean()
    label_dice.index = label_dice.index.astype(int)

    def per_seed_total(metric: str) -> float | None:
        rows = frame[frame["metric"] == metric]
        return None if rows.empty else float(rows.groupby("seed")["value"].sum().mean())

    params = frame.loc[frame["metric"] == "params", "value"]
    notes = []
    pair_sets = {t.seed: frozenset(zip(*_pairs_of(t.frame), strict=True)) for t in tables}
    if len(set(pair_sets.values())) > 1:
        notes.append(
            "seeds were evaluated on different pairs: " + ", ".join(f"seed {s}: {len(p)}" for s, p in pair_sets.items())
        )
    for t in tables:
        n_side = t.sidecar.get("n_pairs")
        if isinstance(n_side, int) and n_side != len(pair_sets[t.seed]):
            notes.append(f"seed {t.seed}: sidecar says n_pairs = {n_side} but the table holds {len(pair_sets[t.seed])}")
        if not t.sidecar:
            notes.append(f"seed {t.seed}: no sidecar {sidecar_path(t.path)}")
    device = str(first.sidecar.get("device") or "")
    if not device:
        device = "cuda" if "cuda_alloc_peak_mb" in set(frame["metric"]) else "cpu"
    is_oracle = bool(first.sidecar.get("oracle_of"))  # no memory of its own, by design
    memory_note = _untrusted_cpu_memory(tables) if not device.startswith("cuda") and not is_oracle else None
    if memory_note and "peak_rss_mb" in pair:
        pair = pair.drop(columns="peak_rss_mb")
    return MethodResult(
        dataset=first.dataset,
        method=first.method,
        tables=sorted(tables, key=lambda t: t.seed),
        device=device,
        pair=pair,
        per_seed_dice=per_seed_dice,
        dsc30=dsc30,
        label_dice=label_dice,
        params=float(params.iloc[0]) if len(params) else None,
        missing_total=per_seed_total("labels_missing"),
        vanished_total=per_seed_total("labels_vanished"),
        notes=notes,
        oracle_of=first.sidecar.get("oracle_of") or None,
        memory_note=memory_note,
        label_names=_label_names(first.sidecar),
        model=first.sidecar.get("model") if isinstance(first.sidecar.get("model"), dict) else None,
    )


def _label_names(sidecar: dict) -> dict[int, str]:
    """The sidecar's ``label_names`` (value -> name), ``{}`` when absent or malformed."""
    raw = sidecar.get("label_names")
    if not isinstance(raw, dict):
        return {}
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return {}


def _untrusted_cpu_memory(tables: list[Table]) -> str | None:
    """Why the CPU ``peak_rss_mb`` of these tables is not shown, or ``None``: a sidecar without
    ``cpu_memory`` comes from an evaluation that recorded the RSS rise of the timed call, which
    depends on what ran before it in the process; ``exact: false`` says why the working set could
    not be measured here."""
    for t in tables:
        if "cpu_memory" not in t.sidecar:
            return (f"CPU memory not shown (seed {t.seed}): its table records the RSS rise of the timed call, which "
                    "depends on what ran before in the process; evaluate again to measure the working set")  # fmt: skip
        note = t.sidecar["cpu_memory"] or {}
        if not note.get("exact", False):
            return f"no CPU memory figure (seed {t.seed}): {note.get('why') or 'not measurable here'}"
    return None


def _pairs_of(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    has = frame["fixed"].notna() & frame["moving"].notna()
    unique = frame.loc[has, ["fixed", "moving"]].drop_duplicates()
    return unique["fixed"], unique["moving"]


@dataclass(frozen=True)
class ComparisonRow:
    """``a`` against ``b`` on one metric, twice: as trained models and as training methods.

    ``result``: the trained models (seed-averaged values per pair; the bootstrap redraws test
    subjects only), ``p_holm`` its Holm-adjusted p over every model-level row of the dataset.
    ``method_result``: the training methods (seeds and subjects redrawn together; ``None`` with
    fewer than 2 seeds both have), ``method_p_holm`` its Holm-adjusted p over every method-level
    row. ``per_seed``: the mean difference per seed both have (seed, difference).
    """

    a: str
    b: str
    metric: str
    name: str
    higher_is_better: bool
    places: int
    result: stats.PairedComparison
    p_holm: float
    method_result: stats.PairedComparison | None
    method_p_holm: float
    per_seed: tuple[tuple[int, float], ...]

    @property
    def named(self) -> bool:
        return is_named(self.a, self.b)

    @property
    def verdict(self) -> str:
        """About these trained models: 'significantly higher / lower (better / worse)' or 'no
        significant difference' (Holm-adjusted p against alpha 0.05, direction from the interval)."""
        return stats.describe_difference(self.result, self.p_holm, metric_higher_is_better=self.higher_is_better)

    @property
    def method_verdict(self) -> str | None:
        """About the training methods (seeds and subjects); ``None`` below 2 seeds."""
        if self.method_result is None:
            return None
        return stats.describe_difference(self.method_result, self.method_p_holm,
                                         metric_higher_is_better=self.higher_is_better)  # fmt: skip

    @property
    def headline(self) -> tuple[stats.PairedComparison, float, str]:
        """The claim the report leads with: about the method when seeds allow, else about these models."""
        if self.method_result is not None:
            return self.method_result, self.method_p_holm, str(self.method_verdict)
        return self.result, self.p_holm, self.verdict

    @property
    def better(self) -> bool | None:
        """Whether ``a`` is significantly better than ``b`` in the headline claim (None: no
        significant difference)."""
        result, p_holm, _ = self.headline
        if not bool(stats.significant(p_holm)) or result.direction == 0:
            return None
        return (result.direction > 0) == self.higher_is_better


def comparison_plan(methods: list[str], baseline: str, oracles: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The (a, b) pairs compared for a dataset: the named ones present (crd-bench's, then the CRD
    scheme's per backbone: ``crd@X`` vs ``lr@X`` and vs ``X``, ``fst@X`` vs ``lr@X``), then every other method
    (references such as identity and ``oracles`` excepted: neither is a method) against
    ``baseline``; no pair twice."""
    present = set(methods) - set(oracles)
    backbones = [m.partition("@")[2] for m in methods if m.startswith("crd@") or m.startswith("fst@")]
    named = [*NAMED_COMPARISONS, *(c for b in dict.fromkeys(backbones) for c in scheme_comparisons(b))]
    plan = [(a, b) for a, b in named if a in present and b in present]
    if baseline in present:
        plan += [(m, baseline) for m in methods
                 if m in present and m != baseline and m not in REFERENCES and (m, baseline) not in plan]  # fmt: skip
    return plan


#: the x2 students' floor: the naive low-resolution model
FLOOR = "lr"


@dataclass(frozen=True)
class CeilingRow:
    """What an x2 student recovers of the gap from ``lr`` to an oracle's ceiling, on Dice.

    ``models``: on seed-averaged values (these trained models); ``methods``: seeds and subjects
    redrawn together (``None`` below 2 common seeds). Both :class:`crd.stats.GapFraction`.
    """

    student: str
    oracle: str
    teacher: str
    student_dice: float
    floor_dice: float
    ceiling_dice: float
    models: stats.GapFraction | None
    methods: stats.GapFraction | None

    @property
    def headline(self) -> stats.GapFraction | None:
        return self.methods if self.methods is not None else self.models


def ceilings(results: dict[str, MethodResult], *, seed: int = 0) -> list[CeilingRow]:
    """For each x2 student other than ``lr`` and each oracle present: the share of the ``lr`` ->
    oracle gap in Dice that the student recovers (empty without ``lr`` or an oracle)."""
    floor = results.get(FLOOR)
    if floor is None:
        return []
    oracles = [r for r in results.values() if r.oracle_of]
    students = [r for r in results.values() if r.is_x2_student and r.method != FLOOR and not r.oracle_of]
    rows = []
    for oracle in oracles:
        for student in students:
            dice = [r.stat("dice") for r in (student, floor, oracle)]
            if any(d is None or not d.n for d in dice):
                continue
            averaged = {0: student.values("dice")}, {0: floor.values("dice")}, {0: oracle.values("dice")}
            models = stats.gap_fraction(*averaged, resample_seeds=False, seed=seed)
            per_seed = [_per_seed(r, "dice") for r in (student, floor, oracle)]
            methods = stats.gap_fraction(*per_seed, resample_seeds=True, seed=seed)
            rows.append(CeilingRow(student.method, oracle.method, str(oracle.oracle_of), *(d.mean for d in dice),
                                   models, methods))  # fmt: skip
    return rows


def _per_seed(result: MethodResult, metric: str) -> dict[int, pd.Series]:
    """Seed -> that seed's value of ``metric`` per test pair (index ``(fixed, moving)``)."""
    return {t.seed: _pair_metric(t.frame, metric) for t in result.tables}


def _matched_seeds(a: MethodResult, b: MethodResult, metric: str) -> tuple[dict[int, pd.Series], dict[int, pd.Series]]:
    """Per-seed values of both methods on the seeds both have; a method evaluated once for every
    seed (:attr:`MethodResult.stands_for_every_seed`) stands beside every seed of the other."""
    va, vb = _per_seed(a, metric), _per_seed(b, metric)
    if b.stands_for_every_seed:
        vb = dict.fromkeys(va, next(iter(vb.values())))
    if a.stands_for_every_seed:
        va = dict.fromkeys(vb, next(iter(va.values())))
    common = sorted(set(va) & set(vb))
    return {s: va[s] for s in common}, {s: vb[s] for s in common}


def _pair_metric(frame: pd.DataFrame, metric: str) -> pd.Series:
    rows = frame[(frame["metric"] == metric) & frame["label"].isna() & frame["fixed"].notna()]
    return rows.groupby(["fixed", "moving"])["value"].mean()


def compare(results: dict[str, MethodResult], plan: list[tuple[str, str]], *, seed: int = 0) -> list[ComparisonRow]:
    """Paired comparisons of ``plan`` on :data:`COMPARED_METRICS`, as models and as methods; Holm's
    correction runs over the model-level rows and, separately, over the method-level rows."""
    raw = []
    for a, b in plan:
        for metric, name, higher, places in COMPARED_METRICS:
            va, vb = results[a].values(metric), results[b].values(metric)
            if va.empty or vb.empty:
                continue
            models = stats.paired_comparison(va, vb, seed=seed)
            sa, sb = _matched_seeds(results[a], results[b], metric)
            method = stats.seed_comparison(sa, sb, seed=seed)
            per_seed = tuple((s, _mean_difference(sa[s], sb[s])) for s in sa)
            raw.append((a, b, metric, name, higher, places, models, method, per_seed))
    p_models = stats.holm(np.array([r[6].p_value for r in raw], dtype=float)) if raw else []
    method_p = np.array([r[7].p_value if r[7] is not None else np.nan for r in raw], dtype=float)
    p_methods = stats.holm(method_p) if raw else []
    return [
        ComparisonRow(a, b, metric, name, higher, places, models, float(p), method, float(pm), per_seed)
        for (a, b, metric, name, higher, places, models, method, per_seed), p, pm in zip(
            raw, p_models, p_methods, strict=True)
    ]  # fmt: skip


def _mean_difference(a: pd.Series, b: pd.Series) -> float:
    """Mean over the pairs both have (neither NaN) of ``a - b``, tied values differing by 0."""
    x, y, _, _ = stats.align_pairs(a, b)
    return float(stats.paired_differences(x, y).mean()) if x.size else float("nan")
