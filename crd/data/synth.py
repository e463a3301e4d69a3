"""``synth``: the embedded, offline registration dataset (generated in seconds, no download).

A template anatomy is built once per seed (:mod:`crd.data.phantoms`: by default ``anatomy``, with
a folded cortex-like ribbon, tubes, small nuclei and fine texture; ``blobs``, the original large
blob-like structures, as a control where resolution matters little). Every subject is that
template deformed by its own random one-to-one field, the sum of

- a large smooth cubic B-spline field (``n_control`` control points per axis, displacements up to
  ``deformation_voxels``): the gross shape differences between subjects, and
- a fine one (``fine_control`` points, up to ``fine_deformation_voxels``; 0 turns it off): local
  shape differences at the scale of a few voxels, which a x2 coarser grid cannot resolve,

(labels warped nearest, the texture trilinearly), then imaged: per-label mean intensities (fixed per
dataset by the seed) with a small per-subject jitter, the warped texture, partial-volume blur, a
smooth multiplicative bias field and Gaussian noise, clipped to [0, 1] float32 (no per-image
rescaling). So registering two subjects is a real task: the true correspondence is a composition
of two such deformations, and image structure (edges between labels) is what drives it.

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
from crd.data.phantoms import (
    ANATOMY_LABELS,
    TEMPLATES,
    Template,
    anatomy_template,
    blob_template,
    seed_sequence,
)
from crd.deform import bspline_displacement, random_bspline_displacement
from crd.models.functional import warp

__all__ = ["generate_synth", "synth_pairs", "jacobian_determinant", "TEMPLATES"]

_TEXTURE = 0.04  # amplitude of the internal texture (intensity units)
_JITTER = 0.01  # per-subject standard deviation of each label's mean intensity
_BLUR_VOXELS = 0.6  # partial-volume blur (Gaussian sigma, voxels)
_BIAS = 0.05  # standard deviation of the log bias field's control values
_NOISE = 0.02  # standard deviation of the Gaussian noise (intensity units)
_FIELD_TRIES = 10  # draws of a subject's deformation until one is one-to-one


def _torch_generator(ss: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint32)[0]))


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


def jacobian_determinant(flow: torch.Tensor) -> np.ndarray:
    """``det(I + grad u)`` by central differences (one-sided at the border) of a
    ``(1, 3, D, H, W)`` displacement in voxels; returns a float64 ``(D, H, W)`` array."""
    u = flow[0].double().cpu().numpy()
    (a, b, c), (d, e, f), (g, h, i) = (np.gradient(u[k]) for k in range(3))
    a, e, i = a + 1.0, e + 1.0, i + 1.0
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(f"{out_dir}: folder exists and is not empty; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _canvas(template: str, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The grid a subject is made on: for the anatomy template a cube of side ``max(shape)`` (a
    non-cubic ``shape`` is its central crop, a slab, so structures keep their size in voxels); for
    blobs ``shape`` itself, as the original synth."""
    return (max(shape),) * 3 if template == "anatomy" else shape


@dataclass(frozen=True)
class _Deformation:
    """The per-subject random field: a large smooth B-spline plus an optional fine one."""

    voxels: float
    n_control: int
    fine_voxels: float
    fine_control: int

    def draw(
        self, shape: tuple[int, int, int], seed: int, index: int, name: str
    ) -> tuple[torch.Tensor, np.random.Generator]:
        """A one-to-one ``(1, 3, D, H, W)`` field in voxels, and the numpy generator of the
        subject's imaging. A field that folds (some det J <= 0) is redrawn from the next seed
        (deterministically), at most ``_FIELD_TRIES`` times."""
        low = float("nan")
        for attempt in range(_FIELD_TRIES):
            # attempt 0 keeps the keys of the original generator (same bytes for blobs, no fine field)
            ss = seed_sequence(seed, 2, index) if attempt == 0 else seed_sequence(seed, 2, index, attempt)
            flow = random_bspline_displacement(
                shape,
                n_control=self.n_control,
                max_displacement=self.voxels,
                generator=_torch_generator(ss),
                power=1.0,
                dtype=torch.float32,
            )
            if self.fine_voxels > 0:
                flow = flow + random_bspline_displacement(
                    shape,
                    n_control=self.fine_control,
                    max_displacement=self.fine_voxels,
                    generator=_torch_generator(seed_sequence(seed, 3, index, attempt)),
                    power=1.0,
                    dtype=torch.float32,
                )
            low = float(jacobian_determinant(flow).min())
            if low > 0:
                return flow, np.random.default_rng(ss)
        raise ValueError(
            f"{name}: {_FIELD_TRIES} random deformations in a row fold (last min det J = {low:.3f}); "
            "lower deformation_voxels / fine_deformation_voxels or their numbers of control points"
        )


@dataclass(frozen=True)
class _Imaging:
    """The template as tensors, and how a deformed copy of it is imaged."""

    labels: torch.Tensor  # (1, 1, D, H, W) int64 template label map
    soft: torch.Tensor  # (1, 2, D, H, W) float32: texture, unlabelled head mask
    levels: np.ndarray  # (n_labels,) mean intensity of labels 1..n_labels
    unlabelled_level: float

    @classmethod
    def of(cls, template: Template) -> _Imaging:
        unlabelled = template.head & (template.labels == 0)
        return cls(
            labels=torch.from_numpy(template.labels.astype(np.int64))[None, None],
            soft=torch.from_numpy(np.stack([template.texture, unlabelled]).astype(np.float32))[None],
            levels=template.levels,
            unlabelled_level=template.unlabelled_level,
        )

    def subject(self, flow: torch.Tensor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Deform the template by ``flow`` and image it: ``(image float32, labels uint8)``, (D, H, W)."""
        shape = tuple(self.labels.shape[2:])
        labels = warp(self.labels, flow, mode="nearest")[0, 0].numpy().astype(np.uint8)
        # texture and unlabelled tissue warped trilinearly together (partial volume kept)
        texture, unlabelled = warp(self.soft, flow)[0].numpy().astype(np.float64)
        n_labels = len(self.levels)
        lut = np.concatenate([[0.0], self.levels + rng.normal(0.0, _JITTER, n_labels)])
        unlabelled_level = self.unlabelled_level + rng.normal(0.0, _JITTER)
        image = lut[labels] + unlabelled_level * unlabelled * (labels == 0)
        image = image + _TEXTURE * texture * (image > 0)
        image = ndimage.gaussian_filter(image, _BLUR_VOXELS)
        log_bias = torch.from_numpy(rng.normal(0.0, _BIAS, (1, 1, 4, 4, 4)))
        bias = np.exp(bspline_displacement(log_bias, shape)[0, 0].numpy())
        image = image * bias + rng.normal(0.0, _NOISE, shape)
        # levels are in [0.06, 0.97] with headroom, so clipping only trims noise tails
        image = np.clip(image, 0.0, 1.0)
        return image.astype(np.float32), labels


_DESCRIPTIONS = {
    "anatomy": (
        "Synthetic brain-like volumes: a template with a folded cortex-like ribbon 2 voxels thick "
        "(6 lobes), white matter (4 lobes), ventricles, 8 small nuclei and 4 thin vessel-like "
        "tubes, deformed per subject by a large smooth plus a fine random B-spline field, imaged "
        "with T1-like tissue intensities, fine texture, blur, bias field and noise. Embedded and "
        "offline; built so that a x2 coarser grid loses detail."
    ),
    "blobs": (
        "Synthetic head-like volumes: a random template of blob-like structures inside an "
        "ellipsoid with an unlabelled shell, deformed per subject by a smooth random cubic "
        "B-spline field, imaged with per-label intensities, texture, blur, bias field and noise. "
        "Embedded and offline; a control where resolution matters little."
    ),
}


@dataclass(frozen=True)
class _Settings:
    """The arguments of :func:`generate_synth` that shape the data (shape in voxels ``(D, H, W)``,
    spacing in mm), as given; :meth:`check` validates them."""

    template: str
    n_subjects: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    n_labels: int | None
    n_val: int
    n_test: int
    deformation_voxels: float
    n_control: int
    fine_deformation_voxels: float
    fine_control: int
    seed: int

    def check(self) -> None:
        """``ValueError`` naming the first argument out of range."""
        template, shape, spacing, n_labels = self.template, self.shape, self.spacing, self.n_labels
        n_subjects, n_val, n_test = self.n_subjects, self.n_val, self.n_test
        if template not in TEMPLATES:
            raise ValueError(f"template: expected one of {', '.join(TEMPLATES)}, got {template!r}")
        if len(shape) != 3 or not all(int(s) >= 8 for s in shape):
            raise ValueError(f"shape: expected 3 sides of at least 8 voxels (D, H, W), got {shape}")
        if template == "anatomy" and max(shape) < 32:
            raise ValueError(f"shape: the anatomy template needs a longest side of at least 32 voxels, got {shape}")
        if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
            raise ValueError(f"spacing: expected 3 positive voxel sizes in mm, got {spacing}")
        if template == "anatomy" and n_labels is not None and n_labels != len(ANATOMY_LABELS):
            raise ValueError(
                f"n_labels: the anatomy template has {len(ANATOMY_LABELS)} structures; n_labels applies to "
                f"template 'blobs' (got {n_labels})"
            )
        if n_labels is not None and not 1 <= n_labels <= 255:
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
        for name, value in (
            ("deformation_voxels", self.deformation_voxels),
            ("fine_deformation_voxels", self.fine_deformation_voxels),
        ):
            if value < 0:
                raise ValueError(f"{name}: expected >= 0, got {value}")
        for name, value in (("n_control", self.n_control), ("fine_control", self.fine_control)):
            if value < 4:
                raise ValueError(f"{name}: expected at least 4 control points per axis, got {value}")

    @property
    def subjects(self) -> list[str]:
        """The subject ids ``synth_000``, ``synth_001``, ... in split order."""
        return [f"synth_{i:03d}" for i in range(self.n_subjects)]

    def deformation(self) -> _Deformation:
        """The per-subject random field these settings ask for."""
        return _Deformation(
            float(self.deformation_voxels), self.n_control, float(self.fine_deformation_voxels), self.fine_control
        )

    def generator_params(self) -> dict[str, object]:
        """The ``generator`` entry of dataset.json: every argument that shapes the bytes, in a fixed order."""
        return {
            "function": "crd.data.synth.generate_synth",
            "template": self.template,
            "n_subjects": self.n_subjects,
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "n_labels": self.n_labels,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "deformation_voxels": float(self.deformation_voxels),
            "n_control": self.n_control,
            "fine_deformation_voxels": float(self.fine_deformation_voxels),
            "fine_control": self.fine_control,
            "seed": self.seed,
        }


def _make_template(settings: _Settings, canvas: tuple[int, ...]) -> Template:
    """The dataset's template anatomy on the ``canvas`` grid (voxels), from ``settings.seed``."""
    if settings.template == "anatomy":
        return anatomy_template(canvas, settings.seed)
    return blob_template(canvas, 10 if settings.n_labels is None else settings.n_labels, settings.seed)


def _central_crop(canvas: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The slices that cut the central ``shape`` out of a ``canvas`` array (both in voxels)."""
    return tuple(slice((c - s) // 2, (c - s) // 2 + s) for c, s in zip(canvas, shape, strict=True))


def _write_subjects(
    folder: Path, settings: _Settings, template: Template, canvas: tuple[int, ...], progress: bool
) -> None:
    """Deform, image and crop every subject, and write ``images/<id>.nii.gz`` (float32) and
    ``labels/<id>.nii.gz`` (uint8), ``settings.shape`` voxels of ``settings.spacing`` mm, into ``folder``."""
    from tqdm.auto import tqdm

    crop = _central_crop(canvas, settings.shape)
    imaging = _Imaging.of(template)
    deformation = settings.deformation()
    for i, subject in enumerate(tqdm(settings.subjects, desc="synth", disable=not progress)):
        flow, rng = deformation.draw(canvas, settings.seed, i, subject)
        image, labels = (a[crop] for a in imaging.subject(flow, rng))
        write_nifti(folder / "images" / f"{subject}.nii.gz", image, settings.spacing)
        write_nifti(folder / "labels" / f"{subject}.nii.gz", labels, settings.spacing)


def _write_dataset(folder: Path, name: str, settings: _Settings, progress: bool) -> None:
    """The whole dataset ``name`` into the empty staging ``folder``: the images and labels folders,
    every subject, ``pairs.csv`` and ``dataset.json``."""
    os.chmod(folder, default_mode(directory=True))
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    canvas = _canvas(settings.template, settings.shape)
    template = _make_template(settings, canvas)
    _write_subjects(folder, settings, template, canvas, progress)
    write_pairs(folder, synth_pairs(settings.subjects, settings.n_val, settings.n_test))
    info = dataset_info(
        name=name,  # the folder (= config key) names the dataset everywhere
        description=_DESCRIPTIONS[settings.template],
        labels=template.names,
        spacing=settings.spacing,
        shape=settings.shape,
        source="generated by crd.data.synth.generate_synth",
        license="MIT (generated by crd-bench)",
        citation="",
        checksums={},
        generator=settings.generator_params(),
        intensity="images scaled to [0, 1]",
    )
    write_dataset_json(folder, info)


#: ``crd generate synth`` option (and config ``generate:`` key) -> :func:`generate_synth` argument
GENERATE_OPTIONS = {
    "template": "template", "subjects": "n_subjects", "shape": "shape", "spacing": "spacing", "labels": "n_labels",
    "val": "n_val", "test": "n_test", "deformation": "deformation_voxels", "control": "n_control",
    "fine_deformation": "fine_deformation_voxels", "fine_control": "fine_control", "seed": "seed",
}  # fmt: skip


def expected_generator(options: dict) -> dict[str, object]:
    """The ``generator`` entry that ``dataset.json`` records when ``crd generate synth`` runs with
    ``options`` (config ``generate:`` keys, e.g. ``{"shape": [32, 64, 64]}``; the rest default).
    ``ValueError`` for an unknown key."""
    import inspect

    unknown = sorted(set(options) - set(GENERATE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown generate option(s) {', '.join(unknown)}; valid: {', '.join(GENERATE_OPTIONS)}")
    kwargs = {p.name: p.default for p in inspect.signature(generate_synth).parameters.values()
              if p.name not in ("out_dir", "overwrite", "progress")}  # fmt: skip
    kwargs.update({GENERATE_OPTIONS[k]: v for k, v in options.items()})
    kwargs["shape"] = tuple(int(v) for v in kwargs["shape"])
    kwargs["spacing"] = tuple(float(v) for v in kwargs["spacing"])
    return _Settings(**kwargs).generator_params()


def generate_synth(
    out_dir: str | os.PathLike[str],
    *,
    template: str = "anatomy",
    n_subjects: int = 26,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    n_labels: int | None = None,
    n_val: int = 4,
    n_test: int = 6,
    deformation_voxels: float = 6.0,
    n_control: int = 6,
    fine_deformation_voxels: float = 1.5,
    fine_control: int = 14,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate the ``synth`` dataset into ``out_dir`` in the canonical layout.

    Args:
        out_dir: dataset folder to create (e.g. ``data/synth``). Must not exist or be empty,
            unless ``overwrite``. Written into a temporary sibling folder that is moved into place
            at the end, so a crash never leaves a half-written dataset.
        template: ``"anatomy"`` (folded thin ribbon, tubes, small nuclei; 24 labels) or
            ``"blobs"`` (``n_labels`` large blobs; the original synth) - see
            :mod:`crd.data.phantoms`.
        n_subjects: number of subjects (ids ``synth_000``, ``synth_001``, ...).
        shape: image size ``(D, H, W)`` in voxels. The anatomy template is built, deformed and
            imaged on a cube of side ``max(shape)`` (at least 32) and a non-cubic ``shape`` is its
            central crop: ``(32, 64, 64)`` is the central 32-slice slab of the 64^3 anatomy, whose
            structures keep their thickness in voxels (labels wholly outside the slab in a subject
            are reported as missing for that pair).
        spacing: voxel size ``(D, H, W)`` in millimetres (recorded in headers and dataset.json;
            the anatomy is defined in voxels).
        n_labels: number of ``blobs`` structures (default 10, at most 255); the anatomy template
            has its own 24.
        n_val: validation subjects (0 or >= 2), taken after the training subjects.
        n_test: test subjects (>= 2), the last ones; ``n_test * (n_test - 1)`` test pairs (30 by
            default, enough for paired tests). Training = the first ``n_subjects - n_val - n_test``
            (>= 2).
        deformation_voxels: largest control displacement (voxels, per axis) of the large smooth
            part of each subject's deformation; control values are uniform in
            ``[-deformation_voxels, deformation_voxels]``. The default 6 suits 64^3 (scale it
            with the image side): mean Dice before registration about 0.37 on the anatomy test
            pairs (the thin structures make it low).
        n_control: B-spline control points per axis of the large part.
        fine_deformation_voxels: largest control displacement of the fine part (0 = none, as the
            original synth). At 64^3 the default 1.5 voxels on 14 control points (a spacing of
            5.7 voxels) moves thin structures by about their own thickness between subjects.
        fine_control: B-spline control points per axis of the fine part.
        seed: the only source of randomness; same arguments, same bytes.
        overwrite: replace an existing non-empty ``out_dir``.
        progress: show a tqdm progress bar over subjects.

    Every field is checked to be one-to-one (finite-difference Jacobian determinant > 0
    everywhere); one that folds is redrawn deterministically, and after 10 folding draws in a row
    ``ValueError`` says which settings to lower.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Pairs (``pairs.csv``): train = every ordered pair of distinct training subjects; test = every
    ordered pair of distinct test subjects; val = consecutive pairs of the validation subjects;
    no test or validation subject is in a train pair.
    """
    out_dir = Path(out_dir)
    settings = _Settings(
        template=template,
        n_subjects=n_subjects,
        shape=tuple(int(s) for s in shape),
        spacing=tuple(float(s) for s in spacing),
        n_labels=n_labels,
        n_val=n_val,
        n_test=n_test,
        deformation_voxels=deformation_voxels,
        n_control=n_control,
        fine_deformation_voxels=fine_deformation_voxels,
        fine_control=fine_control,
        seed=seed,
    )
    settings.check()
    _prepare_target(out_dir, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    threads = torch.get_num_threads()
    try:
        # 64^3 volumes are too small to gain from intra-op threads, and under a busy scheduler
        # (parallel Snakemake jobs) OpenMP threads only spin: one thread, restored afterwards.
        torch.set_num_threads(1)
        _write_dataset(tmp, out_dir.name, settings, progress)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return out_dir
