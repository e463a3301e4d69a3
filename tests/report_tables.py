"""Fake evaluation tables for the report and bench tests: tidy CSVs, sidecars and example NIfTIs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

METHODS = ("identity", "hr", "lr", "crd")
# Per-method (mean Dice, time s, CPU peak RSS MB, params): crd beats lr here.
PROFILE = {
    "identity": (0.55, 0.002, 4.0, 0),
    "hr": (0.82, 2.10, 3400.0, 1_200_000),
    "lr": (0.79, 0.40, 820.0, 1_200_000),
    "crd": (0.81, 0.42, 850.0, 1_200_000),
}
SHIFT = {"identity": 3, "hr": 0, "lr": 1, "crd": 1}  # residual misalignment in the example (voxels)


def _volume(shape, shift: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth blobby image (D, H, W) shifted along W, and its label map."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij"))
    img = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.int16)
    centres = rng.uniform(0.25, 0.75, size=(4, 3)) * np.array(shape)
    for k, c in enumerate(centres, start=1):
        c = c + np.array([0, 0, shift])
        r2 = sum((grid[i] - c[i]) ** 2 for i in range(3))
        img += np.exp(-r2 / (2 * (min(shape) / 6) ** 2)) * (0.5 + 0.5 * k / 4)
        lab[(r2 < (min(shape) / 5) ** 2) & (lab == 0)] = k
    return img * 100, lab


def _save(arr: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.2, 1.5, 1.0])), path)
    return str(path)


def make_tables(
    root: Path,
    datasets: dict[str, dict[str, tuple]] | None = None,
    *,
    n_pairs: int = 4,
    n_labels: int = 3,
    device: str = "cpu",
    shape: tuple[int, int, int] = (12, 14, 16),
    seed: int = 0,
    seeds: tuple[int, ...] = (0,),
    noise: float = 0.03,
    pairs: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Write fake evaluation tables, sidecars and example NIfTIs under ``root``; return the CSVs.

    ``datasets`` maps dataset name -> {method: (mean Dice, time, memory, params)}; one table per
    training seed in ``seeds`` (each seed shifts a method's Dice by a small seeded amount).
    ``pairs``: the test pairs ``(fixed, moving)`` (default ``n_pairs`` pairs sharing no image).
    """
    datasets = datasets or {"ds_a": PROFILE, "ds_b": PROFILE}
    rng = np.random.default_rng(seed)
    paths = []
    for d_i, (ds, profile) in enumerate(datasets.items()):
        img_dir = root / ds / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        fixed_img, fixed_lab = _volume(shape, 0, seed=d_i)
        moving_img, _ = _volume(shape, SHIFT["identity"], seed=d_i)
        fixed_path = _save(fixed_img, img_dir / "f0.nii.gz")
        moving_path = _save(moving_img, img_dir / "m0.nii.gz")
        labels_path = _save(fixed_lab, img_dir / "f0_labels.nii.gz")
        ds_pairs = pairs or [(f"f{i}", f"m{i}") for i in range(n_pairs)]
        for method, (dice, t, mem, params), train_seed in (
            (m, v, ts) for m, v in profile.items() for ts in seeds
        ):
            rows = []
            dice = dice + (0.0 if method == "identity" else 0.01 * (train_seed - np.mean(seeds)))
            for fx, mv in ds_pairs:
                per_label = np.clip(dice + rng.normal(0, noise, n_labels), 0, 1)
                for lab, v in enumerate(per_label, start=1):
                    rows.append((fx, mv, "dice", lab, float(v)))
                    rows.append((fx, mv, "hd95_mm", lab, float(5 * (1 - v) + rng.uniform())))
                rows.append((fx, mv, "dice", "", float(per_label.mean())))
                rows.append((fx, mv, "hd95_mm", "", float(5 * (1 - per_label.mean()))))
                fold = 0.0 if method == "identity" else float(rng.uniform(0.01, 0.2))
                rows += [
                    (fx, mv, "fold_pct", "", fold),
                    (fx, mv, "fold_count", "", round(fold * np.prod(shape) / 100)),
                    (fx, mv, "sdlogj", "", 0.0 if method == "identity" else 0.05 + fold / 10),
                    (fx, mv, "logj_excluded_pct", "", fold),
                    (fx, mv, "labels_missing", "", 0),
                    (fx, mv, "labels_vanished", "", 1 if method == "lr" and fx == "f0" else 0),
                    (fx, mv, "time_s", "", t * float(rng.uniform(0.9, 1.1))),
                ]
                if device == "cuda":
                    rows.append((fx, mv, "cuda_alloc_peak_mb", "", mem * rng.uniform(0.99, 1.01)))
                    rows.append((fx, mv, "nvml_peak_mb", "", mem + 500))
                else:
                    rows.append((fx, mv, "peak_rss_mb", "", mem * float(rng.uniform(0.95, 1.05))))
            rows.append(("", "", "params", "", params))
            frame = pd.DataFrame(rows, columns=["fixed", "moving", "metric", "label", "value"])
            frame.insert(0, "seed", train_seed)
            frame.insert(0, "method", method)
            frame.insert(0, "dataset", ds)
            csv = root / "tables" / f"{ds}__{method}__s{train_seed}.csv"
            csv.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(csv, index=False)
            warped_img, _ = _volume(shape, SHIFT.get(method, 0), seed=d_i)
            sidecar = {
                "dataset": ds,
                "method": method,
                "seed": train_seed,
                "device": device,
                "device_name": "Fake CPU" if device == "cpu" else "Fake GPU",
                "torch": "2.5.0",
                "threads": 2,
                "n_pairs": len(ds_pairs),
                "cpu_memory": {"measured": "working set", "exact": True, "why": None} if device == "cpu" else None,
                "checkpoint": None,
                "example": {
                    "fixed": "f0",
                    "moving": "m0",
                    "fixed_image": fixed_path,
                    "moving_image": moving_path,
                    "fixed_labels": labels_path,
                    "warped_image": _save(warped_img, img_dir / f"warped_{method}.nii.gz"),
                },
            }
            csv.with_suffix(".json").write_text(json.dumps(sidecar))
            paths.append(csv)
    return paths


def make_history(root: Path, dataset: str, method: str, seed: int = 0, *, start: float = 0.5, end: float = 0.8,
                 distilled: bool = False, curve: list[float] | None = None) -> Path:  # fmt: skip
    """A fake training history (crd.tidy.HISTORY_COLUMNS): validation Dice from ``start`` to ``end``
    at iterations 0, 50, 100, or ``curve``'s values at iterations 0, 10, 20, ..."""
    rows = []
    if curve is not None:
        for i, v in enumerate(curve):
            rows.append((dataset, method, seed, 10 * i, "val_dice", v))
        rows.append((dataset, method, seed, 10 * (len(curve) - 1), "max_iterations", 10 * (len(curve) - 1)))
    for i, it in enumerate((0, 50, 100) if curve is None else ()):
        rows.append((dataset, method, seed, it, "val_dice", start + (end - start) * i / 2))
        rows.append((dataset, method, seed, it, "val_loss", -0.2 - 0.1 * i))
        if it and distilled:
            rows.append((dataset, method, seed, it, "flow_mse", 0.5 / i))
            rows.append((dataset, method, seed, it, "attention_mse", 2.0 / i))
    path = root / f"{dataset}__{method}__s{seed}.history.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["dataset", "method", "seed", "iteration", "metric", "value"]).to_csv(path, index=False)
    return path


def set_pair_values(csv: Path, metric: str, values: dict[tuple[str, str], float]) -> None:
    """Overwrite the pair-level (no label) ``metric`` of a fake table with ``values[(fixed, moving)]``."""
    frame = pd.read_csv(csv)
    top = (frame["metric"] == metric) & frame["label"].isna() & frame["fixed"].notna()
    frame.loc[top, "value"] = [values[(f, m)] for f, m in zip(frame.loc[top, "fixed"], frame.loc[top, "moving"],
                                                                strict=True)]  # fmt: skip
    frame.to_csv(csv, index=False)


#: six subjects, every ordered pair: 30 test pairs, each subject in 10 (an inter-subject design)
SUBJECTS = tuple(f"s{i}" for i in range(6))
ALL_ORDERED = [(f, m) for f in SUBJECTS for m in SUBJECTS if f != m]
#: per method: (Dice shift, HD95 shift, sd of a seed's shift). With generator seed 21 and three
#: seeds these give the report rows of every strength: a clear one, a null one (crd vs lr Dice), one
#: significant under Holm but not under Bonferroni and significant as models but not as methods
#: (crd vs hr HD95), one significant before Holm's correction only (crd vs hr HD95 as methods).
DESIGNED_SHIFTS = {"hr": (0.05, -0.4, 0.003), "lr": (0.0, 0.0, 0.003), "crd": (0.003, -0.37, 0.006)}


def make_designed_tables(root: Path, *, seeds: tuple[int, ...] = (0, 1, 2), generator_seed: int = 21) -> list[Path]:
    """Tables of hr, lr and crd on :data:`ALL_ORDERED` whose pair-level Dice and HD95 follow a
    subject effect (each subject shifts every pair it is in), a seed effect and pair noise."""
    profile = {"hr": (0.65, 2.1, 3400.0, 1), "lr": (0.6, 0.4, 820.0, 1), "crd": (0.6, 0.42, 850.0, 1)}
    tables = make_tables(root, {"ds": profile}, pairs=ALL_ORDERED, seeds=seeds)
    rng = np.random.default_rng(generator_seed)
    effect = dict(zip(SUBJECTS, rng.normal(0, 0.02, len(SUBJECTS)), strict=True))
    dice = {p: 0.6 + effect[p[0]] + effect[p[1]] for p in ALL_ORDERED}
    hd95 = {p: 3.0 - 5 * (effect[p[0]] + effect[p[1]]) for p in ALL_ORDERED}
    for csv in tables:
        method = csv.stem.split("__")[1]
        dice_shift, hd95_shift, seed_sd = DESIGNED_SHIFTS[method]
        seed_effect = rng.normal(0, seed_sd)
        set_pair_values(csv, "dice", {p: dice[p] + dice_shift + seed_effect + rng.normal(0, 0.01) for p in ALL_ORDERED})
        set_pair_values(csv, "hd95_mm", {p: hd95[p] + hd95_shift - 3 * seed_effect + rng.normal(0, 0.08)
                                         for p in ALL_ORDERED})  # fmt: skip
    return tables


def add_oracle(tables: list[Path], *, name: str = "x2-oracle@hr", of: str = "hr", shift: float = -0.01) -> list[Path]:
    """Mark lr and crd as x2 students (their sidecars' model) and add an oracle of ``of``: its tables
    are ``of``'s with pair-level Dice shifted by ``shift``, no time or memory, sidecar ``oracle_of``.
    Returns ``tables`` plus the oracle's."""
    out = list(tables)
    for csv in tables:
        method = csv.stem.split("__")[1]
        side = json.loads(csv.with_suffix(".json").read_text())
        if method in ("lr", "crd"):
            side["model"] = {"kind": "lowres", "width": 1.0, "factor": 2}
            csv.with_suffix(".json").write_text(json.dumps(side))
        if method != of:
            continue
        frame = pd.read_csv(csv)
        frame = frame[~frame["metric"].isin(["time_s", "peak_rss_mb", "params"])].copy()
        frame["method"] = name
        top = (frame["metric"] == "dice") & frame["label"].isna()
        frame.loc[top, "value"] += shift
        target = csv.with_name(csv.name.replace(f"__{of}__", f"__{name}__"))
        frame.to_csv(target, index=False)
        side.update(method=name, oracle_of=of, params=None,
                    model={"kind": "x2-oracle", "factor": 2, "restriction": "lsq", "teacher": {"kind": "fullres"}})
        target.with_suffix(".json").write_text(json.dumps(side))
        out.append(target)
    return out
