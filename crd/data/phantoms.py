"""Template anatomies of the embedded ``synth`` dataset: what every subject is a deformed copy of.

Two families, both drawn from a seed alone (numpy generators seeded per part):

``anatomy`` (the default) has what a x2 coarser grid loses in real scans, at 64^3 and 1.5 mm:

======================  ==================================  ====================================
structure (labels)      what it is here                     what it stands for
======================  ==================================  ====================================
``cortex_1..6``         a ribbon 2 voxels thick lining the  the cerebral cortex: a thin folded
                        brain surface and every sulcus,      sheet, 2-3 voxels at 1 mm, whose
                        cut into 6 lobes                     Dice collapses under a 1-voxel error
``white_1..4``          the brain's interior, 4 lobes        white matter: large, low contrast
                                                             borders between parcels
``ventricle_1..2``      elongated CSF-dark ellipsoids        the lateral ventricles
``nucleus_1..8``        ellipsoids, radii 1.6-5 voxels       deep nuclei (thalamus, caudate,
                        (log-uniform): 15 to 500 voxels      pallidum ...): small, high contrast
``vessel_1..4``         smooth random tubes, radius          vessels or thin tracts: 2-3 voxels
                        1-1.4 voxels                         across, as in liver CT or brain MRA
sulci (unlabelled)      narrow CSF sheets: the zero set of   the folding that makes the cortex
                        smooth noise, 2 voxels wide,         thin and convoluted
                        down to 7 voxels deep
======================  ==================================  ====================================

so structures span three orders of magnitude in volume (tens of voxels to 10^4), and about a
third of the labels are thinner than 3 voxels somewhere. Every length scales with
``min(shape) / 64``, so a larger ``shape`` is the same anatomy sampled more finely. Intensities
follow tissue classes like a T1 image (CSF dark, cortex grey, white matter bright, nuclei between,
vessels brightest) with a distinct level per label inside its class, so borders between classes
are visible and borders between parcels of one class are faint, as in real scans.

``blobs`` (the original synth, kept as a control where resolution matters little): ``n_labels``
large blob-like structures (a centroidal Voronoi partition with roughened borders) inside an
ellipsoid with a thin unlabelled shell, evenly spaced shuffled intensities.

Both return a :class:`Template`; :mod:`crd.data.synth` deforms and images it per subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "Template",
    "TEMPLATES",
    "ANATOMY_LABELS",
    "MIN_LABEL_FRACTION",
    "anatomy_template",
    "blob_template",
    "make_template",
    "seed_sequence",
    "smooth_noise",
]

MIN_LABEL_FRACTION = 0.5
"""Each ``blobs`` structure keeps at least this fraction of the mean structure volume."""

TEMPLATES = ("anatomy", "blobs")

# (tissue class, count) of the anatomy template, in label order; intensity range of each class
_ANATOMY_PARTS = (("cortex", 6), ("white", 4), ("ventricle", 2), ("nucleus", 8), ("vessel", 4))
_CLASS_LEVELS = {
    "cortex": (0.40, 0.52),
    "white": (0.74, 0.84),
    "ventricle": (0.06, 0.10),
    "nucleus": (0.56, 0.68),
    "vessel": (0.92, 0.97),
}
_CSF_LEVEL = 0.16  # unlabelled head voxels of the anatomy template (sulci, the CSF gap, the skull)
ANATOMY_LABELS: dict[int, str] = {}
for _cls, _n in _ANATOMY_PARTS:
    for _i in range(_n):
        ANATOMY_LABELS[len(ANATOMY_LABELS) + 1] = f"{_cls}_{_i + 1}"

_HEAD_RADIUS = 0.42  # head ellipsoid semi-axes, as a fraction of each image side
_SHELL = 0.05  # shell ("skull") thickness, as a fraction of the smallest side
_BORDER_NOISE = 0.2  # roughness of the borders between blob structures
_LOW, _HIGH = 0.2, 0.9  # range of the blob mean intensities (shell and labels, evenly spaced)


@dataclass(frozen=True)
class Template:
    """One template anatomy and its look.

    Attributes:
        labels: ``(D, H, W)`` int16 label map, 0 = no label.
        head: ``(D, H, W)`` bool mask of the head (labelled and unlabelled tissue).
        names: label value -> structure name.
        levels: ``(n_labels,)`` mean intensity of labels ``1..n_labels`` (in [0, 1]).
        unlabelled_level: mean intensity of head voxels without a label.
        texture: ``(D, H, W)`` float32 zero-mean texture (unit std inside the head, 0 outside).
    """

    labels: np.ndarray
    head: np.ndarray
    names: dict[int, str]
    levels: np.ndarray
    unlabelled_level: float
    texture: np.ndarray


def seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    """The numpy seed sequence of one part of the dataset (``key`` names the part)."""
    return np.random.SeedSequence(seed, spawn_key=key)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _ellipsoid(shape: tuple[int, int, int], radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    centre = (np.asarray(shape) - 1) / 2.0
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return r2 <= 1.0


# ------------------------------------------------------------------------------------- blobs


def make_template(
    shape: tuple[int, int, int], n_labels: int, rng: np.random.Generator, max_tries: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """The ``blobs`` anatomy: ``n_labels`` blob structures inside an ellipsoid with a shell.

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
        raise ValueError(f"shape {shape} leaves {len(points)} interior voxels, too few for {n_labels} labels")
    spacing = (len(points) / n_labels) ** (1.0 / 3.0)  # typical structure diameter, voxels
    sigma = max(1.0, min(shape) / 10.0)
    for _ in range(max_tries):
        # centroidal Voronoi cells (a few Lloyd steps on a sample of interior voxels)
        sample = points[rng.choice(len(points), size=min(len(points), 4000), replace=False)]
        centres = sample[rng.choice(len(sample), size=n_labels, replace=False)]
        for _ in range(15):
            nearest = ((sample[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            centres = np.stack(
                [sample[nearest == k].mean(0) if np.any(nearest == k) else centres[k] for k in range(n_labels)]
            )
        score = np.empty((n_labels, len(points)), dtype=np.float32)
        for k in range(n_labels):
            noise = smooth_noise(rng, shape, sigma)[interior]
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


def blob_template(shape: tuple[int, int, int], n_labels: int, seed: int) -> Template:
    """The ``blobs`` template: :func:`make_template`, evenly spaced shuffled intensities (the
    shell's among them, so neighbouring structures usually contrast) and a smooth texture."""
    labels, head = make_template(shape, n_labels, np.random.default_rng(seed_sequence(seed, 0)))
    rng = np.random.default_rng(seed_sequence(seed, 1))
    levels = rng.permutation(np.linspace(_LOW, _HIGH, n_labels + 1))
    texture = smooth_noise(rng, shape, 1.5) * head
    return Template(
        labels=labels,
        head=head,
        names={k: f"structure_{k:02d}" for k in range(1, n_labels + 1)},
        levels=levels[1:],
        unlabelled_level=float(levels[0]),
        texture=texture,
    )


# ----------------------------------------------------------------------------------- anatomy


def _unit_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    d = rng.standard_normal((n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _sectors(offsets: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Index of the direction closest in angle to each voxel's offset from the centre."""
    return (offsets @ directions.T).argmax(-1)


def _ellipsoid_at(grids, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def _tube(shape, rng, centre, extent, radius, steps: int, step: float) -> np.ndarray:
    """A smooth random curve (a persistent random walk that turns back at the ellipsoid
    ``extent`` around ``centre``), thickened to ``radius`` voxels."""
    p = centre + rng.uniform(-0.5, 0.5, 3) * extent
    v = _unit_directions(rng, 1)[0]
    line = np.zeros(shape, dtype=bool)
    for _ in range(steps):
        v = v + 0.3 * rng.standard_normal(3)
        outside = (p + step * v - centre) / extent
        if (outside**2).sum() > 0.8:  # steer back inwards
            v = v - 1.5 * outside / np.linalg.norm(outside)
        v /= np.linalg.norm(v)
        p = p + step * v
        idx = np.clip(np.round(p).astype(int), 0, np.asarray(shape) - 1)
        line[tuple(idx)] = True
    return ndimage.distance_transform_edt(~line) <= radius


def anatomy_template(shape: tuple[int, int, int], seed: int) -> Template:
    """The ``anatomy`` template (see the module docstring); 24 labels, :data:`ANATOMY_LABELS`."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed_sequence(seed, 0))
    size = np.asarray(shape, dtype=np.float64)
    scale = min(shape) / 64.0
    centre = (size - 1) / 2.0
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    offsets = np.stack([g - c for g, c in zip(grids, centre, strict=True)], axis=-1)

    head_radii = _HEAD_RADIUS * size
    head = _ellipsoid(shape, head_radii)
    brain_radii = head_radii - max(1.0, round(_SHELL * min(shape))) - scale
    rho = np.sqrt(((offsets / brain_radii) ** 2).sum(-1))
    depth = (1.0 - rho) * brain_radii.mean()  # about the distance inside the brain ellipsoid, voxels
    # sulci: thin sheets where smooth noise crosses zero, cut into the outer 7 voxels
    fold = smooth_noise(rng, shape, 3.0 * scale)
    sulci = (np.abs(fold) < 0.12) & (depth < 7.0 * scale)
    brain = (depth > 0) & ~sulci
    components, n = ndimage.label(brain)
    if n > 1:  # keep the brain in one piece
        brain = components == 1 + int(np.argmax(ndimage.sum(brain, components, range(1, n + 1))))
    cortex = brain & (ndimage.distance_transform_edt(brain) <= 2.0 * scale)
    white = brain & ~cortex

    labels = np.zeros(shape, dtype=np.int16)
    names = dict(ANATOMY_LABELS)
    first = {cls: min(k for k, v in names.items() if v.startswith(cls + "_")) for cls, _ in _ANATOMY_PARTS}
    counts = dict(_ANATOMY_PARTS)
    for cls, mask in (("cortex", cortex), ("white", white)):
        sector = _sectors(offsets, _unit_directions(rng, counts[cls]))
        for i in range(counts[cls]):
            labels[mask & (sector == i)] = first[cls] + i
    white_labels = list(range(first["white"], first["white"] + counts["white"]))
    for i in range(counts["ventricle"]):  # a mirrored pair beside the centre, long along D
        side = 1.0 if i % 2 == 0 else -1.0
        at = centre + scale * np.array([rng.uniform(-2, 2), rng.uniform(-3, 3), side * rng.uniform(3.5, 5.0)])
        radii = scale * np.array([rng.uniform(7, 10), rng.uniform(2.5, 3.5), rng.uniform(1.8, 2.6)])
        labels[_ellipsoid_at(grids, at, radii) & white] = first["ventricle"] + i
    for i in range(counts["nucleus"]):  # radii log-uniform over 1.6-5 voxels, inside white matter
        radius = scale * float(np.exp(rng.uniform(np.log(1.6), np.log(5.0))))
        for _ in range(200):
            at = centre + rng.uniform(-0.55, 0.55, 3) * brain_radii
            mask = _ellipsoid_at(grids, at, radius * rng.uniform(0.75, 1.3, 3))
            if mask.sum() >= 7 and np.isin(labels[mask], white_labels).all():
                break
        labels[mask] = first["nucleus"] + i
    for i in range(counts["vessel"]):  # drawn last: vessels cross every other tissue
        tube = _tube(shape, rng, centre, 0.8 * brain_radii, scale * rng.uniform(1.0, 1.4), 140, 0.5 * scale)
        labels[tube & brain] = first["vessel"] + i

    look = np.random.default_rng(seed_sequence(seed, 1))
    levels = np.array([look.uniform(*_CLASS_LEVELS[names[k].rsplit("_", 1)[0]]) for k in sorted(names)])
    # fine texture (sigma 0.7 voxel) over a coarser one (1.5): detail only a full-resolution grid sees
    texture = 0.6 * smooth_noise(look, shape, 1.5 * scale) + 0.8 * smooth_noise(look, shape, 0.7 * scale)
    texture = (texture / texture[head].std()) * head
    return Template(
        labels=labels,
        head=head,
        names=names,
        levels=levels,
        unlabelled_level=_CSF_LEVEL,
        texture=texture.astype(np.float32),
    )
