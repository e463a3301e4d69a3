"""Import the CRD authors' released weights as crd-bench checkpoints.

The authors of "Cross-Resolution Distillation for Efficient 3D Medical Image Registration" released
two state dicts in BlaiseBrain/CRD_registration (folder ``ckpt/``), both trained on OASIS brain MRI
(docs/architecture.md restates their network):

- ``lr``: the naive low-resolution model (the CRD student's initialisation), 320,419 parameters,
  rebuilt here as ``LowResolutionNet(width=1, factor=2)``;
- ``fst``: the feature-shifted teacher, 605,254 parameters, rebuilt as ``FeatureShiftedTeacher()``.

:func:`import_official` translates their conventions into crd-bench's once, at import time, so the
imported model needs no special case when it runs:

- keys: the ``module.defnet_0.`` prefix (DistributedDataParallel) is removed; backbone layers
  (``conv1`` ... ``decode1``, ``flow``) go under ``backbone.``; ``fuse*`` and ``flow_f`` keep
  their names;
- flow channels: their flow heads output (x, y, z) = (W, H, D) displacements; the output channels
  (weight rows and bias entries) of every flow head (``flow``, and ``flow_f`` of the teacher) are
  reversed so that the model outputs (D, H, W), in voxels, as every crd-bench model does. Their
  warping convention (``moving(p + u(p))``, ``align_corners=True``) and call order
  ``(fixed, moving)`` already equal ours;
- array order: the authors' loaders read every NIfTI with SimpleITK (``sitk.GetArrayFromImage``),
  whose axes are the reverse of nibabel's, so their OASIS networks saw ``aligned_norm`` as
  224x192x160. The checkpoint's ``input`` entry records ``"array_order": "reversed"``, and
  ``crd register`` / ``crd evaluate`` / ``crd bench`` transpose the images into that order around
  the network and the field back (:mod:`crd.models.array_order`), so that the default path equals
  the authors' pipeline on the same files;
- input intensities: recorded in the checkpoint's ``input`` entry (:data:`INPUT_SPEC`), which
  ``crd register`` follows by default. The images are fed as stored, with no rescaling: the
  authors' data loaders ``OasisTrain`` and ``OasisTest`` (``core/datasets.py`` of their
  repository) read each ``aligned_norm.nii.gz`` with SimpleITK (``load_nii``:
  ``sitk.GetArrayFromImage(sitk.ReadImage(path))``) and convert it with ``.float()``, nothing else
  (their liver loaders, by contrast, divide by 255). OASIS ``aligned_norm`` is FreeSurfer's
  ``norm.mgz`` scaled into [0, 1], white matter near 110/255 = 0.43. crd-bench recorded min-max per
  image until this was checked; on a brain whose white matter is near its maximum that makes it about
  twice as bright as in training, and the networks register worse (``benchmarks/official_register.py``).

Nothing is written unless the file is exactly one of the two released layouts (keys and shapes);
errors say what was expected and what was found. The weights are not redistributed by crd-bench.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from crd.atomic import check_outputs
from crd.errors import CheckpointError
from crd.models.checkpoint import save_checkpoint
from crd.models.registration import build_model

__all__ = [
    "OFFICIAL_PREFIX",
    "FLOW_HEADS",
    "OfficialRelease",
    "RELEASES",
    "INPUT_SPEC",
    "official_key",
    "expected_shapes",
    "read_official",
    "convert_official",
    "import_official",
]

#: prefix of every key in the released files (saved from DistributedDataParallel)
OFFICIAL_PREFIX = "module.defnet_0."

#: layers whose 3 output channels are flow components (their order is reversed on import)
FLOW_HEADS = ("flow", "flow_f")

#: modules that are not part of the backbone (kept at the top level of our models)
_TOP_LEVEL = ("fuse", "flow_f")

_UPSTREAM_REPO = "BlaiseBrain/CRD_registration"


@dataclass(frozen=True)
class OfficialRelease:
    """One released checkpoint: what it is, which crd-bench model it becomes, how to recognise it."""

    kind: str
    method: str
    model: dict[str, Any]
    upstream_file: str
    sha256: str
    parameters: int
    step: int
    description: str


RELEASES: dict[str, OfficialRelease] = {
    "lr": OfficialRelease(
        kind="lr",
        method="lr-official",
        model={"kind": "lowres", "width": 1.0, "factor": 2},
        upstream_file="ckpt/student/VMdalca1_Hinput_OASIS_R1_D_24500.pth",
        sha256="8223024cb70f89532376bac0d29d35dd80cde814b9472147c03fc86a0aaf68e6",
        parameters=320_419,
        step=24_500,
        description="naive low-resolution model (the CRD student's initialisation)",
    ),
    "fst": OfficialRelease(
        kind="fst",
        method="fst-official",
        model={"kind": "fst", "width": 1.0},
        upstream_file="ckpt/teacher/VMdalca1_Hinput_Together_OASIS_R1_D_AlignShift_20750.pth",
        sha256="5300a44e52569a5266b9b146be873b3658777de41c3b2c14e2d97e16ecb9b93d",
        parameters=605_254,
        step=20_750,
        description="feature-shifted teacher (FST)",
    ),
}

#: how the released weights expect their input (recorded as the checkpoint's ``input`` entry and
#: applied by ``crd register``): OASIS neurite-oasis ``aligned_norm`` images fed as stored, as the
#: authors' ``OasisTrain`` / ``OasisTest`` do (they read the NIfTI and convert it to float, no
#: rescaling), with the array axes reversed as SimpleITK reads them (see the module docstring).
INPUT_SPEC: dict[str, Any] = {
    "intensity": (
        "fed as stored: OASIS aligned_norm (FreeSurfer norm.mgz scaled into [0, 1], white matter near "
        "110/255 = 0.43); no per-image rescaling, as the authors' OasisTrain/OasisTest"
    ),
    "normalisation": "none",
    "flow_channels": "D,H,W",
    "array_order": "reversed",
    "trained_on": "OASIS (neurite-oasis aligned_norm), 160x192x224 voxels of 1 mm, affinely aligned brains",
}


def official_key(our_key: str) -> str:
    """The released file's key (without ``module.defnet_0.``) for one of our state-dict keys."""
    return our_key.removeprefix("backbone.")


def _our_key(official: str) -> str:
    return official if official.startswith(_TOP_LEVEL) else f"backbone.{official}"


def _release(kind: str) -> OfficialRelease:
    if kind not in RELEASES:
        raise CheckpointError(f"unknown official checkpoint kind {kind!r}: expected one of {', '.join(RELEASES)}")
    return RELEASES[kind]


def expected_shapes(kind: Literal["lr", "fst"]) -> dict[str, tuple[int, ...]]:
    """Key (without the prefix) -> tensor shape of the released ``kind`` state dict, in file order."""
    model = build_model(_release(kind).model)
    return {official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


def _describe_keys(keys: list[str]) -> str:
    """``conv1, conv2, ... (each .weight and .bias)`` for a list of parameter keys."""
    modules = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))
    return f"{', '.join(modules)} (each .weight and .bias)"


def _short(keys: list[str] | set[str], limit: int = 6) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _released_names() -> str:
    return ", ".join(Path(r.upstream_file).name for r in RELEASES.values())


def _load(src: Path) -> Any:
    """``torch.load`` with the weights-only unpickler (the released files are plain state dicts,
    so no code from the file ever runs); every failure becomes a :class:`CheckpointError`."""
    if not src.is_file():
        raise CheckpointError(f"{src}: file not found")
    with open(src, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{src}: not a PyTorch file (it starts with {head!r}, neither a torch zip archive nor a pickle); "
            f"expected one of the CRD authors' released state dicts ({_released_names()})"
        )
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated archive or pickle, pickle holding other objects, ...
        text = str(exc)
        reason = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), None)
        if reason is not None:
            raise CheckpointError(
                f"{src}: holds Python objects other than tensors ({reason.split('. ')[0]}); expected a plain "
                f"state dict (parameter name -> tensor) as the CRD authors released ({_released_names()})"
            ) from None
        detail = text.splitlines()[0].split(". ")[0] if text else "unexpected end of file"
        raise CheckpointError(
            f"{src}: cannot be read as a PyTorch file, truncated or damaged ({exc.__class__.__name__}: {detail}); "
            f"expected one of the CRD authors' released state dicts ({_released_names()})"
        ) from None


def read_official(src: Path, kind: Literal["lr", "fst"]) -> dict[str, torch.Tensor]:
    """Load and validate a released state dict; returns it with the prefix removed (float32, CPU).

    Accepts keys with or without ``module.defnet_0.``. Raises :class:`~crd.errors.CheckpointError`
    naming the file and what was expected if it is not a mapping of tensors, if keys are missing or
    unexpected, if a shape differs, or if a value is not finite.
    """
    src = Path(src)
    release = _release(kind)
    state = _load(src)
    expected = expected_shapes(kind)
    what = f"the authors' {kind} state dict ({release.description})"
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{src}: expected {what}, a mapping of parameter name -> tensor; found a {type(state).__name__}"
        )
    not_tensors = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{src}: expected {what}, a mapping of parameter name -> tensor; these entries are not "
            f"tensors: {_short(not_tensors)}"
        )
    stripped = {k.removeprefix(OFFICIAL_PREFIX): v for k, v in state.items()}
    if len(stripped) != len(state):
        raise CheckpointError(f"{src}: keys clash once the prefix {OFFICIAL_PREFIX!r} is removed")
    missing = set(expected) - set(stripped)
    unexpected = set(stripped) - set(expected)
    if missing or unexpected:
        found = []
        if missing:
            found.append(f"missing {_short(missing)}")
        if unexpected:
            found.append(f"unexpected {_short(unexpected)}")
        hint = ""
        for other, release_other in RELEASES.items():
            if other != kind and set(stripped) == set(expected_shapes(other)):
                hint = f"; this looks like the {release_other.description}: use kind {other!r}"
        raise CheckpointError(
            f"{src}: not {what}: {'; '.join(found)}. Expected exactly the {len(expected)} keys "
            f"{OFFICIAL_PREFIX}<name> for {_describe_keys(list(expected))}{hint}"
        )
    bad_shapes = [
        f"{k} has shape {tuple(stripped[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if tuple(stripped[k].shape) != shape
    ]
    if bad_shapes:
        raise CheckpointError(f"{src}: not {what}: {'; '.join(bad_shapes)}")
    not_float = [k for k in expected if not stripped[k].is_floating_point()]
    if not_float:
        raise CheckpointError(f"{src}: expected floating-point weights; {_short(not_float)} are not")
    not_finite = [k for k in expected if not torch.isfinite(stripped[k]).all()]
    if not_finite:
        raise CheckpointError(f"{src}: {_short(not_finite)} hold NaN or infinite values")
    return {k: stripped[k].detach().to(torch.float32) for k in expected}


def convert_official(state: dict[str, torch.Tensor], kind: Literal["lr", "fst"]) -> nn.Module:
    """Our model holding the released weights of ``state`` (as :func:`read_official` returns it).

    Backbone keys go under ``backbone.``; each flow head's output channels are reversed from
    (W, H, D) to (D, H, W) (weight ``[out, in, k, k, k]`` along ``out``, and the bias).
    """
    model = build_model(_release(kind).model)
    ours = {}
    for key, value in state.items():
        module = key.rsplit(".", 1)[0]
        ours[_our_key(key)] = value.flip(0) if module in FLOW_HEADS else value
    model.load_state_dict(ours, strict=True)
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_official(src: Path, dst: Path, kind: Literal["lr", "fst"]) -> Path:
    """Convert the authors' released ``kind`` checkpoint ``src`` into a crd-bench checkpoint ``dst``.

    Args:
        src: ``oasis_lr_student_init.pth`` / ``VMdalca1_Hinput_OASIS_R1_D_24500.pth`` (``lr``) or
            ``oasis_fst_teacher.pth`` / ``VMdalca1_Hinput_Together_OASIS_R1_D_AlignShift_20750.pth``
            (``fst``).
        dst: checkpoint to write (atomically); it loads with :func:`crd.models.checkpoint.load_model`.
        kind: ``"lr"`` or ``"fst"``.

    The checkpoint's ``method`` is ``lr-official`` or ``fst-official``; ``input`` is
    :data:`INPUT_SPEC`; ``training`` records the provenance (upstream file, sha256 of ``src`` and
    whether it is the released file, conversions applied). Raises
    :class:`~crd.errors.CheckpointError` (and writes nothing) if ``src`` is not that checkpoint.
    """
    src, dst = Path(src), Path(dst)
    check_outputs({"authors' checkpoint": src}, {"the imported checkpoint": dst})
    release = _release(kind)
    model = convert_official(read_official(src, kind), kind)
    sha = _sha256(src)
    training = {
        "source": _UPSTREAM_REPO,
        "upstream_file": release.upstream_file,
        "source_file": src.name,
        "source_sha256": sha,
        "matches_release": sha == release.sha256,
        "step": release.step,
        "dataset": "OASIS",
        "description": release.description,
        "license": f"weights from {_UPSTREAM_REPO}, not redistributed by crd-bench (no license file accompanies them)",
        "conversion": (
            f"prefix {OFFICIAL_PREFIX!r} removed; output channels of {', '.join(FLOW_HEADS)} reversed "
            "from (W, H, D) to (D, H, W) of the network's arrays, which are in the reversed order (SimpleITK's, "
            "as the authors' loaders read NIfTI): input array_order 'reversed'"
        ),
    }
    return save_checkpoint(dst, model, method=release.method, training=training, input_spec=INPUT_SPEC)
