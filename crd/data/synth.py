"""``synth``: the embedded, offline registration dataset (generated in seconds, no download).

A template "head" is built once per seed: an ellipsoid with a thin unlabelled shell (a "skull")
around an interior cut into ``n_labels`` blob-like structures (a centroidal Voronoi partition
whose borders are roughened by smooth noise, so each structure has a reasonable volume). Every
subject is that template deformed by its own large, smooth, one-to-one random cubic B-spline
field (:mod:`crd.deform`; labels warped nearest, an internal texture warped trilinearly), then
imaged: per-label mean intensities (distinct from each other, fixed per dataset by the seed) with
a small per-subject jitter, the warped texture, partial-volume blur, a smooth multiplicative bias
field and Gaussian noise, clipped to [0, 1] float32 (the means lie in [0.2, 0.9], so clipping
only trims noise tails; no per-image rescaling). So registering two subjects is a real task: the
true correspondence is a composition of two smooth deformations, and image structure (edges
between labels) is what drives it.

Everything derives from ``seed`` (numpy and torch generators seeded per part and per subject), so
the same arguments give the same bytes on every run, and a subject does not change when
``n_subjects`` grows. The result is written in the canonical layout (:mod:`crd.data.layout`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from crd.data.layout import (
    dataset_info,
    default_mode,
    write_dataset_json,
    write_nifti,
    write_pairs,
)
from crd.deform import bspline_displacement, random_bspline_displacement
from crd.models.functional import warp

__all__ = ["generate_synth", "make_template", "synth_pairs", "MIN_LABEL_FRACTION"]

MIN_LABEL_FRACTION = 0.5
"""Each template structure keeps at least this fraction of the mean structure volume."""

_HEAD_RADIUS = 0.42  # head ellipsoid semi-axes, as a fraction of each image side
_SHELL = 0.05  # shell ("skull") thickness, as a fraction of the smallest side
_BORDER_NOISE = 0.2  # roughness of the borders between structures
_LOW, _HIGH = 0.2, 0.9  # range of the mean intensities (shell and labels, evenly spaced)
_TEXTURE = 0.04  # amplitude of the internal texture (intensity units)
_JITTER = 0.01  # per-subject standard deviation of each label's mean intensity
_BLUR_VOXELS = 0.6  # partial-volume blur (Gaussian sigma, voxels)
_BIAS = 0.05  # standard deviation of the log bias field's control values
_NOISE = 0.02  # standard deviation of the Gaussian noise (intensity units)


def _seed(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


def _torch_generator(ss: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint32)[0]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float):
    """Gaussian-smoothed white noise with zero mean and unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _ellipsoid(shape: tuple[int, int, int], radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    centre = (np.asarray(shape) - 1) / 2.0
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return r2 <= 1.0


def make_template(
    shape: tuple[int, int, int], n_labels: int, rng: np.random.Generator, max_tries: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Build the template anatomy.

    Args:
        shape: ``(D, H, W)`` in voxels.
        n_labels: number of structures (labels ``1..n_labels``; 0 = background and shell).
        rng: numpy generator (the only source of randomness).
        max_tries: redraws allowed until every structure has at least
            :data:`MIN_LABEL_FRACTION` of the mean structure volume.

    Returns:
        ``(labels, head)``: an int16 ``(D, H, W)`` label map and a bool ``(D, H, W)`` head mask
        (the interior plus the unlabelled shell).

    Raises:
        ValueError: if the grid is too small for ``n_labels`` structures.
    """
    shape = tuple(int(s) for s in shape)
    radii = _HEAD_RADIUS * np.asarray(shape, dtype=np.float64)
    shell = max(1.0, round(_SHELL * min(shape)))
    head = _ellipsoid(shape, radii)
    interior = _ellipsoid(shape, radii - shell)
    points = np.argwhere(interior).astype(np.float64)
    if len(points) < 20 * n_labels:
        raise ValueError(
            f"shape {shape} leaves {len(points)} interior voxels, too few for {n_labels} labels"
        )
    spacing = (len(points) / n_labels) ** (1.0 / 3.0)  # typical structure diameter, voxels
    sigma = max(1.0, min(shape) / 10.0)
    for _ in range(max_tries):
        # centroidal Voronoi cells (a few Lloyd steps on a sample of interior voxels)
        sample = points[rng.choice(len(points), size=min(len(points), 4000), replace=False)]
        centres = sample[rng.choice(len(sample), size=n_labels, replace=False)]
        for _ in range(15):
            nearest = ((sample[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            centres = np.stack(
                [
                    sample[nearest == k].mean(0) if np.any(nearest == k) else centres[k]
                    for k in range(n_labels)
                ]
            )
        score = np.empty((n_labels, len(points)), dtype=np.float32)
        for k in range(n_labels):
            noise = _smooth_noise(rng, shape, sigma)[interior]
            dist = np.sqrt(((points - centres[k]) ** 2).sum(-1)) / spacing
            score[k] = -dist + _BORDER_NOISE * noise
        labels = np.zeros(shape, dtype=np.int16)
        labels[interior] = score.argmax(0) + 1
        volumes = np.bincount(labels[interior], minlength=n_labels + 1)[1:]
        if volumes.min() >= MIN_LABEL_FRACTION * volumes.mean():
            return labels, head
    raise RuntimeError(
        f"could not draw {n_labels} structures of at least {MIN_LABEL_FRACTION:.0%} of the mean "
        f"volume in {max_tries} tries (shape {shape})"
    )


def synth_pairs(subjects: Sequence[str], n_val: int, n_test: int) -> list[tuple[str, str, str]]:
    """The ``(split, fixed, moving)`` rows for subjects split train / val / test in order.

    Train and test: every ordered pair of distinct subjects of the split (4 test subjects give
    12 test pairs: more pairs, steadier means). Val: consecutive pairs ``(s[i], s[i+1])``,
    wrapping around (2 subjects give one pair), to keep validation during training cheap.
    """
    n_train = len(subjects) - n_val - n_test
    train = list(subjects[:n_train])
    val = list(subjects[n_train : n_train + n_val])
    test = list(subjects[n_train + n_val :])
    rows = [("train", f, m) for f in train for m in train if f != m]
    if len(val) == 2:
        rows.append(("val", val[0], val[1]))
    elif len(val) > 2:
        rows.extend(("val", val[i], val[(i + 1) % len(val)]) for i in range(len(val)))
    rows.extend(("test", f, m) for f in test for m in test if f != m)
    return rows


def _check_args(n_subjects, shape, spacing, n_labels, n_val, n_test, deformation_voxels, n_control):
    if len(shape) != 3 or not all(int(s) >= 8 for s in shape):
        raise ValueError(f"shape: expected 3 sides of at least 8 voxels (D, H, W), got {shape}")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing: expected 3 positive voxel sizes in mm, got {spacing}")
    if not 1 <= n_labels <= 255:
        raise ValueError(f"n_labels: expected 1 to 255, got {n_labels}")
    if n_test < 2:
        raise ValueError(f"n_test: expected at least 2 test subjects (one pair), got {n_test}")
    if n_val == 1 or n_val < 0:
        raise ValueError(f"n_val: expected 0 or at least 2 validation subjects, got {n_val}")
    if n_subjects - n_val - n_test < 2:
        raise ValueError(
            f"n_subjects={n_subjects} leaves {n_subjects - n_val - n_test} training subjects "
            f"after n_val={n_val} and n_test={n_test}; need at least 2"
        )
    if deformation_voxels < 0:
        raise ValueError(f"deformation_voxels: expected >= 0, got {deformation_voxels}")
    if n_control < 4:
        raise ValueError(f"n_control: expected at least 4 control points per axis, got {n_control}")


def jacobian_determinant(flow: torch.Tensor) -> np.ndarray:
    """``det(I + grad u)`` by central differences (one-sided at the border) of a
    ``(1, 3, D, H, W)`` displacement in voxels; returns a float64 ``(D, H, W)`` array."""
    u = flow[0].double().cpu().numpy()
    (a, b, c), (d, e, f), (g, h, i) = (np.gradient(u[k]) for k in range(3))
    a, e, i = a + 1.0, e + 1.0, i + 1.0
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _check_one_to_one(flow: torch.Tensor, subject: str) -> None:
    low = float(jacobian_determinant(flow).min())
    if low <= 0:
        raise ValueError(
            f"{subject}: the random deformation folds (min det J = {low:.3f}); lower "
            "deformation_voxels or n_control"
        )


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{out_dir}: folder exists and is not empty; pass overwrite=True to replace it"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


@dataclass(frozen=True)
class _Anatomy:
    """The per-dataset part: template anatomy, texture and intensity levels."""

    labels: torch.Tensor  # (1, 1, D, H, W) int64 template label map
    soft: torch.Tensor  # (1, 2, D, H, W) float32: texture, shell mask
    label_levels: np.ndarray  # (n_labels,) mean intensity of labels 1..n_labels
    shell_level: float

    @classmethod
    def draw(cls, shape: tuple[int, int, int], n_labels: int, seed: int) -> _Anatomy:
        template, head = make_template(shape, n_labels, np.random.default_rng(_seed(seed, 0)))
        rng = np.random.default_rng(_seed(seed, 1))
        # evenly spaced, shuffled: neighbouring structures usually contrast
        levels = rng.permutation(np.linspace(_LOW, _HIGH, n_labels + 1))
        texture = _smooth_noise(rng, shape, 1.5) * head
        shell = head & (template == 0)
        return cls(
            labels=torch.from_numpy(template.astype(np.int64))[None, None],
            soft=torch.from_numpy(np.stack([texture, shell]).astype(np.float32))[None],
            label_levels=levels[1:],
            shell_level=float(levels[0]),
        )

    def subject(
        self, ss: np.random.SeedSequence, name: str, deformation_voxels: float, n_control: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Deform the template and image it: ``(image float32, labels uint8)``, both (D, H, W)."""
        shape = tuple(self.labels.shape[2:])
        rng = np.random.default_rng(ss)
        flow = random_bspline_displacement(
            shape,
            n_control=n_control,
            max_displacement=deformation_voxels,
            generator=_torch_generator(ss),
            power=1.0,
            dtype=torch.float32,
        )
        _check_one_to_one(flow, name)
        labels = warp(self.labels, flow, mode="nearest")[0, 0].numpy().astype(np.uint8)
        # texture and shell warped trilinearly together (the shell keeps its partial volume)
        texture, shell = warp(self.soft, flow)[0].numpy().astype(np.float64)

        n_labels = len(self.label_levels)
        lut = np.concatenate([[0.0], self.label_levels + rng.normal(0.0, _JITTER, n_labels)])
        shell_level = self.shell_level + rng.normal(0.0, _JITTER)
        image = lut[labels] + shell_level * shell * (labels == 0)
        image = image + _TEXTURE * texture * (image > 0)
        image = ndimage.gaussian_filter(image, _BLUR_VOXELS)
        log_bias = torch.from_numpy(rng.normal(0.0, _BIAS, (1, 1, 4, 4, 4)))
        bias = np.exp(bspline_displacement(log_bias, shape)[0, 0].numpy())
        image = image * bias + rng.normal(0.0, _NOISE, shape)
        # levels are in [_LOW, _HIGH] with headroom, so clipping only trims noise tails
        image = np.clip(image, 0.0, 1.0)
        return image.astype(np.float32), labels


def generate_synth(
    out_dir: str | os.PathLike[str],
    *,
    n_subjects: int = 24,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    n_labels: int = 10,
    n_val: int = 4,
    n_test: int = 4,
    deformation_voxels: float = 9.0,
    n_control: int = 6,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate the ``synth`` dataset into ``out_dir`` in the canonical layout.

    Args:
        out_dir: dataset folder to create (e.g. ``data/synth``). Must not exist or be empty,
            unless ``overwrite``. Written into a temporary sibling folder that is moved into place
            at the end, so a crash never leaves a half-written dataset.
        n_subjects: number of subjects (ids ``synth_000``, ``synth_001``, ...).
        shape: image size ``(D, H, W)`` in voxels.
        spacing: voxel size ``(D, H, W)`` in millimetres (recorded in headers and dataset.json;
            the anatomy is defined in voxels).
        n_labels: number of labelled structures (labels ``1..n_labels``), at most 255.
        n_val: validation subjects (0 or >= 2), taken after the training subjects.
        n_test: test subjects (>= 2), the last ones. Training = the first
            ``n_subjects - n_val - n_test`` (>= 2).
        deformation_voxels: largest control-point displacement (voxels, per axis) of each
            subject's deformation of the template; control values are uniform in
            ``[-deformation_voxels, deformation_voxels]``. The default 9 gives a mean Dice of
            about 0.69 between unregistered test pairs at 64^3 (scale it with the image side).
            Every field is checked to be one-to-one (finite-difference Jacobian determinant > 0
            everywhere, else ``ValueError``); uniform controls stay so well beyond the
            sufficient bound ``0.4 * (side - 1) / (n_control - 3)`` (8.4 voxels at 64^3).
        n_control: B-spline control points per axis of the subject deformations.
        seed: the only source of randomness; same arguments, same bytes.
        overwrite: replace an existing non-empty ``out_dir``.
        progress: show a tqdm progress bar over subjects.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Pairs (``pairs.csv``): train = every ordered pair of distinct training subjects; test = every
    ordered pair of distinct test subjects; val = consecutive pairs of the validation subjects;
    no test or validation subject is in a train pair.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    _check_args(n_subjects, shape, spacing, n_labels, n_val, n_test, deformation_voxels, n_control)
    _prepare_target(out_dir, overwrite)
    params = {
        "function": "crd.data.synth.generate_synth",
        "n_subjects": n_subjects,
        "shape": list(shape),
        "spacing": list(spacing),
        "n_labels": n_labels,
        "n_val": n_val,
        "n_test": n_test,
        "deformation_voxels": float(deformation_voxels),
        "n_control": n_control,
        "seed": seed,
    }

    subjects = [f"synth_{i:03d}" for i in range(n_subjects)]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    threads = torch.get_num_threads()
    try:
        # 64^3 volumes are too small to gain from intra-op threads, and under a busy scheduler
        # (parallel Snakemake jobs) OpenMP threads only spin: one thread, restored afterwards.
        torch.set_num_threads(1)
        os.chmod(tmp, default_mode(directory=True))
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        anatomy = _Anatomy.draw(shape, n_labels, seed)
        for i, subject in enumerate(tqdm(subjects, desc="synth", disable=not progress)):
            image, labels = anatomy.subject(
                _seed(seed, 2, i), subject, deformation_voxels, n_control
            )
            write_nifti(tmp / "images" / f"{subject}.nii.gz", image, spacing)
            write_nifti(tmp / "labels" / f"{subject}.nii.gz", labels, spacing)

        write_pairs(tmp, synth_pairs(subjects, n_val, n_test))
        info = dataset_info(
            name=out_dir.name,  # the folder (= config key) names the dataset everywhere
            description=(
                "Synthetic head-like volumes: a random template of blob-like structures inside "
                "an ellipsoid with an unlabelled shell, deformed per subject by a smooth random "
                "cubic B-spline field, imaged with per-label intensities, texture, blur, bias "
                "field and noise. Embedded and offline; for CPU-sized runs and tests."
            ),
            labels={k: f"structure_{k:02d}" for k in range(1, n_labels + 1)},
            spacing=spacing,
            shape=shape,
            source="generated by crd.data.synth.generate_synth",
            license="MIT (generated by crd-bench)",
            citation="",
            checksums={},
            generator=params,
            intensity="images scaled to [0, 1]",
        )
        write_dataset_json(tmp, info)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return out_dir
