"""Speed of crd.metrics.score_pair against DeepMind's surface-distance package, and their agreement.

    python benchmarks/metrics_speed.py [--shape 160 192 224] [--labels 45] [--repeats 5] [--kind compact]

Builds one synthetic registered pair on a ``shape`` grid with ``labels`` foreground labels:

- ``compact`` (default, anatomy-like): a brain-shaped ellipsoid with a folded two-hemisphere
  "cortex" ribbon (labels 1, 2) around an interior split into ``labels - 2`` curved Voronoi
  regions (each label one compact piece, the cortex with a large, folded surface).
- ``noise`` (a hard case): the argmax of ``labels + 1`` smoothed noise fields (each label is dozens
  of scattered pieces whose bounding box is the whole image).

``moving`` is ``fixed`` warped (nearest neighbour) by a smooth random field, ``flow`` is a second
smooth random field, and ``warped = moving(p + flow(p))``, as a registration would return it.

It prints the load average, the time of ``score_pair`` (all metrics: Dice, HD95, ASSD, Jacobian
statistics; min and median of ``repeats`` runs), the time of DeepMind's
``compute_surface_distances`` + ``compute_robust_hausdorff`` + ``compute_average_surface_distance``
over the labels (if the package is installed; one run), and the largest absolute and relative
disagreement of HD95 and ASSD over the labels.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from crd import metrics as M


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float, grid: int = 6) -> np.ndarray:
    """A smooth random displacement field ``(3, D, H, W)`` in voxels: random weights on a
    ``grid^3`` lattice of Gaussian bumps (separable, so cheap to evaluate), scaled so that its
    largest magnitude is ``amplitude``."""
    bases = []
    for n in shape:
        x = np.arange(n, dtype=np.float64)[:, None]
        centres = np.linspace(0, n - 1, grid)[None, :]
        width = (n - 1) / (grid - 1)
        bases.append(np.exp(-(((x - centres) / width) ** 2)))
    coarse = rng.standard_normal((3, grid, grid, grid))
    field = np.einsum("cijk,di,hj,wk->cdhw", coarse, *bases, optimize=True)
    return (amplitude / np.abs(field).max() * field).astype(np.float32)


def warp_nearest(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``labels(p + flow(p))`` with nearest-neighbour sampling; outside the grid is background."""
    coords = np.indices(labels.shape, dtype=np.float32) + flow
    return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0).astype(labels.dtype)


def compact_labels(rng: np.random.Generator, shape: tuple[int, int, int], n_labels: int) -> np.ndarray:
    """A brain-like label map, background 0: inside an ellipsoid (semi-axes 42 % of each size) a
    folded surface (its radius modulated by about +-10 voxels at a wavelength of about 25 voxels,
    like gyri and sulci) carries a ribbon about 6 voxels thick (a cortex, split into two
    hemispheres: labels 1 and 2); the interior under it is cut into ``n_labels - 2`` curved
    Voronoi regions (the seeds are compared with coordinates moved by a smooth random field, so
    the boundaries bend). Every label is one compact piece; the cortex has a large folded
    surface."""
    centre = (np.asarray(shape) - 1) / 2.0
    radii = 0.42 * np.asarray(shape)
    grid = np.indices(shape, dtype=np.float32)
    r = np.sqrt(sum(((grid[k] - centre[k]) / radii[k]) ** 2 for k in range(3)))
    scale = float(radii.mean())  # voxels per unit of r
    folds = smooth_field(rng, shape, amplitude=1.0, grid=max(4, min(shape) // 6))[0]
    folds /= folds.std()  # about N(0, 1) at every voxel, changing sign every ~12 voxels
    depth = (r - 0.82) * scale - 5.0 * folds  # voxels; > 0 outside the folded surface
    out = np.zeros(shape, np.int16)
    ribbon = (np.abs(depth) <= 3.0) & (r <= 1.0)
    out[ribbon] = np.where(grid[2][ribbon] < centre[2], 1, 2)
    inner = depth < -3.0
    seeds = []
    while len(seeds) < n_labels - 2:
        p = rng.uniform(-1, 1, 3)
        if p @ p <= 0.5:
            seeds.append(centre + p * radii)
    distortion = smooth_field(rng, shape, amplitude=0.05 * min(shape), grid=10)
    points = np.stack([(grid[k] + distortion[k])[inner] for k in range(3)], axis=1)
    _, nearest = cKDTree(np.asarray(seeds)).query(points)
    out[inner] = nearest + 3
    return out


def noise_labels(rng: np.random.Generator, shape: tuple[int, int, int], n_labels: int) -> np.ndarray:
    """Argmax of ``n_labels + 1`` smoothed noise fields (0 is one of the labels: background)."""
    best = np.full(shape, -np.inf, np.float32)
    out = np.zeros(shape, np.int16)
    for lab in range(n_labels + 1):
        field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 4.0)
        better = field > best
        out[better], best[better] = lab, field[better]
    return out


def make_pair(shape: tuple[int, int, int], n_labels: int, kind: str = "compact", seed: int = 0):
    """``(fixed, moving, warped, flow)`` of one synthetic registered pair (see the module doc)."""
    rng = np.random.default_rng(seed)
    fixed = (compact_labels if kind == "compact" else noise_labels)(rng, shape, n_labels)
    moving = warp_nearest(fixed, smooth_field(rng, shape, amplitude=4.0))
    flow = smooth_field(rng, shape, amplitude=3.0)
    warped = warp_nearest(moving, flow)
    return fixed, moving, warped, flow


def _reference(fixed: np.ndarray, warped: np.ndarray, labels: list[int], spacing) -> tuple[dict, dict]:
    import surface_distance as sd

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="surface_distance")
    hd, assd = {}, {}
    for lab in labels:
        a, b = fixed == lab, warped == lab
        if not (a.any() and b.any()):
            continue
        dists = sd.compute_surface_distances(a, b, spacing)
        hd[lab] = float(sd.compute_robust_hausdorff(dists, 95))
        assd[lab] = float(np.mean(sd.compute_average_surface_distance(dists)))
    return hd, assd


def _disagreement(ours: dict, ref: dict) -> tuple[float, float]:
    abs_err = [abs(ours[k] - ref[k]) for k in ref]
    rel_err = [abs(ours[k] - ref[k]) / abs(ref[k]) if ref[k] else abs(ours[k] - ref[k]) for k in ref]
    return max(abs_err, default=0.0), max(rel_err, default=0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 192, 224), metavar=("D", "H", "W"))
    parser.add_argument("--labels", type=int, default=45, help="foreground labels (default 45)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SD", "SH", "SW"))
    parser.add_argument("--kind", choices=["compact", "noise"], default="compact")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of score_pair (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip DeepMind's package")
    args = parser.parse_args(argv)

    shape, spacing, labels = tuple(args.shape), tuple(args.spacing), list(range(1, args.labels + 1))
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()}")
    fixed, moving, warped, flow = make_pair(shape, args.labels, args.kind, args.seed)
    flow_c = np.ascontiguousarray(flow)
    dice = M.dice_per_label(fixed, warped, labels)
    print(
        f"pair: {args.kind}, shape {shape}, spacing {spacing} mm, {args.labels} labels, "
        f"mean Dice {np.nanmean(list(dice.values())):.3f}"
    )

    M.score_pair(fixed, moving, warped, labels, spacing, flow=flow_c)  # warm-up (lookup tables)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rows = M.score_pair(fixed, moving, warped, labels, spacing, flow=flow_c)
        times.append(time.perf_counter() - start)
    print(
        f"score_pair (all metrics): min {min(times):.3f} s, median {statistics.median(times):.3f} s "
        f"over {args.repeats} runs; load average {os.getloadavg()}"
    )
    ours_hd = {r["label"]: r["value"] for r in rows if r["metric"] == "hd95_mm" and r["label"] is not None}
    ours_assd = {r["label"]: r["value"] for r in rows if r["metric"] == "assd_mm" and r["label"] is not None}

    if args.no_reference:
        return 0
    try:
        import surface_distance  # noqa: F401
    except ImportError:
        print("DeepMind surface-distance: not installed (pip install surface-distance); no comparison")
        return 0
    start = time.perf_counter()
    ref_hd, ref_assd = _reference(fixed, warped, labels, spacing)
    ref_time = time.perf_counter() - start
    print(
        f"DeepMind surface-distance HD95 + ASSD, {len(ref_hd)} labels: {ref_time:.3f} s (one run); "
        f"load average {os.getloadavg()}"
    )
    for name, ours, ref in (("HD95", ours_hd, ref_hd), ("ASSD", ours_assd, ref_assd)):
        if not ours:
            print(f"{name}: not computed by score_pair")
            continue
        abs_err, rel_err = _disagreement(ours, ref)
        print(f"{name} disagreement over {len(ref)} labels: max abs {abs_err:.3g} mm, max rel {rel_err:.3g}")
    worst = max((abs(ours_hd[k] - ref_hd[k]) for k in ref_hd), default=0.0)
    return 0 if math.isfinite(worst) else 1


if __name__ == "__main__":
    sys.exit(main())
