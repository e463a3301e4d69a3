"""Training: unsupervised (similarity + smoothness) or distillation from a frozen teacher.

``train()`` is the whole stage: it reads a dataset in the canonical layout, builds the model from
its config, optionally initialises it from another checkpoint, trains with Adam on random
training pairs (the moving image augmented by a random B-spline deformation), validates and
saves a resumable state every ``checkpoint_every`` iterations, and writes a self-describing
checkpoint at the end, plus its training history as a tidy table
(:data:`crd.tidy.HISTORY_COLUMNS`): validation loss and Dice at iteration 0 (before any step)
and at every checkpoint, the loss terms, each term's gradient norm and the learning rate. An
interrupted run started again with the same arguments resumes from the last saved state.

The stopping rule (``patience``, ``min_delta``) ends a run once its validation Dice has stopped
rising, with ``iterations`` as the maximum, and ``keep_best`` keeps the best validated weights;
the rule's state is part of the resume state, so a resumed run stops where an uninterrupted one
does. :mod:`crd.convergence` then says from the history whether the run was at its plateau.
``crop`` trains on random crops of the volumes (the similarity still sees the whole moving image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm import tqdm

from crd import distributed
from crd.atomic import check_outputs, check_writable_folder, write_text_atomic
from crd.data.layout import Dataset, open_dataset
from crd.deform import RandomFFD
from crd.errors import CrdError
from crd.losses import DistillationLoss, LossTerms, UnsupervisedLoss
from crd.models.array_order import ORDER_DESCRIPTIONS, STORED, checkpoint_array_order
from crd.models.checkpoint import atomic_torch_save, load_model, read_checkpoint, save_checkpoint
from crd.models.contract import DistillableModel
from crd.models.functional import warp
from crd.models.registration import build_model
from crd.runtime import configure_threads, math_settings, seed_everything, select_device, setup_logging
from crd.tidy import HISTORY_COLUMNS

__all__ = ["TrainSettings", "train", "initialise_from", "history_path", "Crop", "OBJECTIVES"]

log = logging.getLogger("crd.train")

OBJECTIVES = ("unsupervised", "distill")


@dataclass
class TrainSettings:
    """Every training knob (config.yaml's ``train`` block; a method's ``TRAIN`` overrides it).

    Attributes:
        iterations: optimisation steps.
        batch_size: pairs per step.
        lr: Adam's learning rate.
        lr_decay_at: fractions of ``iterations`` (in (0, 1]) after which the learning rate is
            multiplied by ``lr_decay``; e.g. ``[0.6, 0.8, 1.0]`` = the authors' halvings at 15k,
            20k and 25k of 25k steps (one at 1.0 has no effect on the steps taken).
        lr_decay: multiplicative decay at each of ``lr_decay_at``.
        grad_clip: max gradient norm (0 = off; the CRD authors use 1.0).
        ncc_weight: weight of the local NCC similarity (unsupervised objective).
        ncc_window: side of the NCC window, voxels.
        smooth_weight: weight of the smoothness term (unsupervised objective).
        flow_weight: weight of the flow MSE (distill objective).
        attention_weight: weight of the summed attention-map MSEs (distill objective).
        augment_probability: chance that a moving image is deformed by a random B-spline field.
        augment_max_displacement: largest control displacement in voxels; null = the authors'
            rule ``0.4 * (min side // 4)``.
        checkpoint_every: iterations between validation + resumable state.
        val_pairs: validation pairs scored at each checkpoint (0 = none).
        patience: the stopping rule: stop once this many checkpoints in a row have not raised
            the best validation Dice by more than ``min_delta`` (0 = off: every iteration is
            taken); ``iterations`` is then the maximum. Needs ``val_pairs`` > 0.
        min_delta: the smallest rise of the validation Dice that counts as an improvement.
        min_iterations: a warm-up: the stopping rule and the model selection (``keep_best``)
            start at this iteration; earlier checkpoints are recorded but neither stop the run nor
            are kept (as Keras' ``start_from_epoch``). A fine-tuned student first drops below its
            initialisation while it adapts to a new loss; without a warm-up the rule would stop
            it there and keep its initialisation's weights.
        keep_best: the checkpoint holds the weights of the best validation Dice seen (model
            selection on the validation pairs); otherwise the last step's.
        crop: train on random crops of this size (D, H, W voxels; each side a multiple of the
            model's size multiple and at most the image's): the network sees the fixed and the
            (augmented) moving crop at one random position, and the similarity loss compares the
            fixed crop with the whole moving image warped onto it
            (:func:`crd.models.functional.warp` with ``offset``). ``None``: whole images.
            Validation always uses whole images.
        seed: seeds pair sampling, augmentation and initialisation.
    """

    iterations: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    lr_decay_at: list[float] = field(default_factory=list)
    lr_decay: float = 0.5
    grad_clip: float = 1.0
    ncc_weight: float = 1.0
    ncc_window: int = 9
    smooth_weight: float = 1.0
    flow_weight: float = 1.0
    attention_weight: float = 1.0
    augment_probability: float = 0.5
    augment_max_displacement: float | None = None
    checkpoint_every: int = 100
    val_pairs: int = 4
    patience: int = 0
    min_delta: float = 0.0
    min_iterations: int = 0
    keep_best: bool = False
    crop: list[int] | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        """Build from a mapping; unknown keys or bad values are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train settings {unknown}; known: {sorted(known)}")
        for f in dataclasses.fields(cls):
            if f.name in values and not _fits(values[f.name], str(f.type)):
                raise ValueError(f"train setting {f.name}: expected {f.type}, got {values[f.name]!r}")
        settings = cls(**values)
        if settings.iterations < 1 or settings.batch_size < 1 or settings.checkpoint_every < 1:
            raise ValueError("iterations, batch_size and checkpoint_every must be >= 1")
        if settings.lr <= 0:
            raise ValueError(f"lr must be > 0, got {settings.lr}")
        bad = [f for f in settings.lr_decay_at if not 0 < float(f) <= 1]
        if bad:
            raise ValueError(f"lr_decay_at: fractions of the iterations in (0, 1] expected, got {bad}")
        if settings.patience < 0 or settings.min_delta < 0 or settings.min_iterations < 0:
            raise ValueError("patience, min_delta and min_iterations must be >= 0")
        if (settings.patience or settings.keep_best) and settings.val_pairs < 1:
            raise ValueError("patience and keep_best need validation: val_pairs must be >= 1")
        if settings.crop is not None and (len(settings.crop) != 3 or min(settings.crop) < 1):
            raise ValueError(f"crop: three positive sides (D, H, W) expected, got {settings.crop}")
        return settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def milestones(self) -> list[int]:
        """``lr_decay_at`` as iteration counts (rounded), as :class:`torch.optim.lr_scheduler.MultiStepLR`
        takes them."""
        return sorted(max(1, round(f * self.iterations)) for f in self.lr_decay_at)


def _fits(value: Any, annotation: str) -> bool:
    """Whether ``value`` (from JSON/YAML) fits a :class:`TrainSettings` field annotation
    (``int``, ``float``, ``bool``, ``float | None``, ``list[float]``, ``list[int] | None``); bools
    are not numbers here."""
    if value is None:
        return "None" in annotation
    annotation = annotation.removesuffix(" | None")
    if annotation == "bool" or isinstance(value, bool):
        return annotation == "bool" and isinstance(value, bool)
    if annotation.startswith("list["):
        return isinstance(value, list) and all(_fits(v, annotation[5:-1]) for v in value)
    if annotation.startswith("int"):
        return isinstance(value, int)
    return isinstance(value, int | float)


def history_path(checkpoint: Path) -> Path:
    """Where the training history of ``checkpoint`` goes: ``<name>.history.csv`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".history.csv")


def initialise_from(model: nn.Module, checkpoint: Path) -> str:
    """Copy weights from ``checkpoint`` into ``model``; returns what was copied.

    Same architecture: every weight. A CRD-scheme model over the checkpoint's network (e.g.
    ``fst@monai-voxelmorph`` from ``monai-voxelmorph``): that network's weights. Otherwise, when
    both models hold a backbone of the same width (e.g. ``fst`` from ``hr``): the backbone's
    weights; the rest keeps its initialisation.
    """
    payload = read_checkpoint(checkpoint)
    order = checkpoint_array_order(payload, checkpoint)
    if order != STORED:
        log.warning("%s: its network was trained in the %s array order; crd train continues it on the dataset's "
                    "arrays as stored", checkpoint, order)
    source = build_model(payload["model"])
    source.load_state_dict(payload["state_dict"])
    if payload["model"] == model.config:
        model.load_state_dict(source.state_dict())
        return f"all weights from {checkpoint}"
    if model.config.get("backbone") == payload["model"]:  # the CRD scheme over the checkpoint's network
        network = getattr(model.backbone, "net", model.backbone)  # HookedFeatures holds it as .net
        network.load_state_dict(source.state_dict())
        return f"backbone weights from {checkpoint} (the network the scheme wraps)"
    if hasattr(model, "backbone") and hasattr(source, "backbone"):
        try:
            model.backbone.load_state_dict(source.backbone.state_dict())
        except RuntimeError as exc:
            raise CrdError(f"{checkpoint}: backbone does not fit {model.config}: {exc}") from None
        return f"backbone weights from {checkpoint}"
    raise CrdError(f"{checkpoint}: model {payload['model']} cannot initialise {model.config}")


class _PairSampler:
    """Random training pairs; the images are read once and held in memory as ``(1, 1, D, H, W)``
    tensors: on the training device when they take at most ``DEVICE_CACHE_BYTES`` (small
    datasets), else in (pinned) host memory, copied to the device per batch (e.g. OASIS: ~390
    subjects x 27.5 MB)."""

    DEVICE_CACHE_BYTES = 4 << 30

    def __init__(self, dataset: Dataset, split: str, device: torch.device) -> None:
        self.pairs = dataset.pairs_for(split)
        if not self.pairs:
            raise CrdError(f"{dataset.root / 'pairs.csv'}: no {split} pairs")
        subjects = sorted({s for p in self.pairs for s in p})
        total = len(subjects) * 4 * int(np.prod(dataset.shape))
        self.device = device
        store = device if device.type == "cpu" or total <= self.DEVICE_CACHE_BYTES else None
        self.images = {}
        for s in subjects:
            image = torch.from_numpy(dataset.load_image(s))[None, None]
            self.images[s] = image.to(store) if store is not None else image.pin_memory()

    def batch(
        self, size: int, generator: torch.Generator, share: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of ``size`` pairs drawn from ``generator``, of which the elements ``share``
        (all by default; a process's share of the global batch, :mod:`crd.distributed`) are
        returned as ``(fixed, moving)``, each ``(len(share), 1, D, H, W)`` on the device."""
        idx = torch.randint(len(self.pairs), (size,), generator=generator).tolist()[share]
        # copy each (pinned) image to the device first: a cat of host tensors is not pinned; one
        # pair needs no cat (a copy of two whole volumes per step; the images are never modified)
        fixed = [self._on_device(self.pairs[i][0]) for i in idx]
        moving = [self._on_device(self.pairs[i][1]) for i in idx]
        return (fixed[0], moving[0]) if len(idx) == 1 else (torch.cat(fixed), torch.cat(moving))

    def _on_device(self, subject: str) -> torch.Tensor:
        return self.images[subject].to(self.device, non_blocking=True)


@dataclass(frozen=True)
class Crop:
    """A box of a ``(B, C, D, H, W)`` volume: its first voxel ``offset`` and its ``size`` (voxels)."""

    offset: tuple[int, int, int]
    size: tuple[int, int, int]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (d, h, w), (a, b, c) = self.offset, self.size
        return x[:, :, d : d + a, h : h + b, w : w + c]

    @classmethod
    def random(cls, shape: tuple[int, ...], size: list[int] | tuple[int, ...], generator: torch.Generator) -> Crop:
        """A crop of ``size`` at a uniformly random position inside ``shape`` ``(D, H, W)``, drawn
        from ``generator`` (three draws)."""
        sides = zip(shape, size, strict=True)
        offset = tuple(int(torch.randint(n - c + 1, (1,), generator=generator)) for n, c in sides)
        return cls(offset, tuple(int(c) for c in size))  # type: ignore[arg-type]


def check_crop(crop: list[int] | None, shape: tuple[int, ...], multiple: int) -> None:
    """Raise :class:`CrdError` unless every side of ``crop`` is at most the image's (``shape``)
    and a multiple of the model's ``multiple``."""
    if crop is None:
        return
    if any(c > n for c, n in zip(crop, shape, strict=True)) or any(c % multiple for c in crop):
        raise CrdError(
            f"train setting crop {list(crop)}: each side must be at most the image's {list(shape)} and a "
            f"multiple of {multiple} (the model's size multiple)"
        )


class TrainingObjective:
    """What one training step minimises, for a ``(fixed, moving)`` batch."""

    def __init__(self, settings: TrainSettings, teacher: nn.Module | None) -> None:
        self.unsupervised = UnsupervisedLoss(settings.ncc_weight, settings.ncc_window, settings.smooth_weight)
        self.distillation = DistillationLoss(settings.flow_weight, settings.attention_weight)
        self.teacher = teacher

    def __call__(
        self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, crop: Crop | None = None
    ) -> LossTerms:
        """The loss terms of ``model`` on ``(fixed, moving)`` ``(B, 1, D, H, W)``; with ``crop``,
        the model sees that crop of both and the similarity is taken against the whole
        ``moving`` warped onto the crop (the distillation compares the two models on the crop)."""
        full_moving = moving
        if crop is not None:
            fixed, moving = crop(fixed), crop(moving)
        if self.teacher is None:
            flow = model(fixed, moving)
            offset = crop.offset if crop is not None else None
            return self.unsupervised(fixed, warp(full_moving, flow, offset=offset), flow)
        with torch.no_grad():
            t_flow, t_maps = self.teacher.forward_with_maps(fixed, moving)
        s_flow, s_maps = model.forward_with_maps(fixed, moving)
        return self.distillation(s_flow, t_flow, s_maps, t_maps)


def optimiser_step(
    objective: TrainingObjective,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grad_clip: float,
    *,
    gradient_norms: bool = False,
    crop: Crop | None = None,
) -> tuple[LossTerms, dict[str, float]]:
    """One training step, as ``crd train`` takes it and ``crd bench`` times it: the loss of
    ``objective`` on a ``(B, 1, D, H, W)`` batch (on its ``crop`` when given), backward, gradient
    clipping to ``grad_clip`` (0 = off), an optimiser step. With ``gradient_norms``, also each
    weighted term's gradient norm before clipping (:func:`_gradient_norms`). Returns
    ``(terms, norms)``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    terms = objective(model, fixed, moving, crop)
    norms = _gradient_norms(terms, params) if gradient_norms else {}
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return terms, norms


def _gradient_norms(terms: LossTerms, params: list[nn.Parameter]) -> dict[str, float]:
    """The L2 norm of each weighted term's gradient (before clipping), e.g. ``grad_norm_flow``."""
    norms = {}
    for name, term in terms.terms.items():
        if not term.requires_grad:
            norms[f"grad_norm_{name}"] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().pow(2).sum() for g in grads if g is not None]
        norms[f"grad_norm_{name}"] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def _run_hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class _Resumable:
    """The resumable state file ``.<checkpoint>.resume`` of one run (identified by ``run_id``)."""

    path: Path
    run_id: str

    def load(self) -> dict[str, Any] | None:
        """The saved state if it belongs to this run; ``None`` (with a warning) if it is absent,
        unreadable (truncated, not a PyTorch file) or from another run. Read with
        ``weights_only=True`` onto the CPU: the file is data, never code, and RNG states must be
        CPU byte tensors whatever the training device."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt, or not ours: start afresh, never block reruns
            log.warning("ignoring %s: cannot be read as a resume state (%s)", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("run_id") != self.run_id:
            log.warning("ignoring %s: it belongs to a run with other settings", self.path)
            return None
        return state

    def save(self, **state: Any) -> None:
        atomic_torch_save({"run_id": self.run_id, **state}, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _write_history(path: Path, records: list[dict[str, float]], *, dataset: str, method: str, seed: int) -> None:
    """The records as a tidy table (``HISTORY_COLUMNS``), written atomically."""
    rows = [
        {"dataset": dataset, "method": method, "seed": seed, "iteration": r["iteration"], "metric": k, "value": v}
        for r in records
        for k, v in r.items()
        if k != "iteration"
    ]
    write_text_atomic(path, pd.DataFrame(rows, columns=HISTORY_COLUMNS).to_csv(index=False))


@dataclass
class BestSoFar:
    """The stopping rule's and the model selection's state (:class:`TrainSettings` ``patience``,
    ``min_delta``, ``min_iterations``, ``keep_best``): the best validation Dice so far (from
    ``min_iterations`` on), the iteration it was reached at, how many checkpoints in a row have not
    raised it by more than ``min_delta`` (``stale``), and, when the best weights are kept, a copy
    of them (on the CPU)."""

    score: float = -math.inf
    iteration: int = 0
    stale: int = 0
    weights: dict[str, torch.Tensor] | None = None

    def update(self, score: float | None, iteration: int, model: nn.Module, settings: TrainSettings) -> None:
        """Account for the validation Dice ``score`` of ``model`` after ``iteration`` steps
        (``None``: no validation, nothing changes; before ``min_iterations``: not monitored)."""
        if score is None or not math.isfinite(score) or iteration < settings.min_iterations:
            return
        if score > self.score + settings.min_delta or self.score == -math.inf:
            self.score, self.iteration, self.stale = float(score), iteration, 0
            if settings.keep_best:
                self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.stale += 1

    def should_stop(self, settings: TrainSettings) -> bool:
        """The stopping rule: ``patience`` monitored checkpoints in a row without an improvement."""
        return settings.patience > 0 and self.stale >= settings.patience

    def state(self) -> dict[str, Any]:
        return {"score": self.score, "iteration": self.iteration, "stale": self.stale, "weights": self.weights}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> BestSoFar:
        return cls(**state) if state else cls()


@dataclass
class _Run:
    """The parts of one training run, built by :func:`_build_run`: where it writes, what it trains
    and with what, and where it stands (``start``: the iteration it began at, 0 unless resumed;
    ``history``: one record per checkpoint, iteration 0 first)."""

    out: Path
    method: str
    objective: str
    settings: TrainSettings
    init: Path | None
    teacher: Path | None
    dataset: Dataset
    device: torch.device
    threads: int
    generator: torch.Generator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    step_loss: TrainingObjective
    augment: RandomFFD
    train_pairs: _PairSampler
    valset: _ValidationSet
    resume: _Resumable
    process: distributed.Process = field(default_factory=distributed.Process)
    student: Any = None  # what the objective calls: the model, or its DataParallelStudent
    start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: BestSoFar = field(default_factory=BestSoFar)
    stopped_at: int | None = None  # the iteration the stopping rule ended the run at, if it did
    elapsed_before: float = 0.0  # seconds in the step loop before this process's start (resumed runs)
    clock: float = 0.0  # perf_counter() when this process's step loop began

    def elapsed(self) -> float:
        """Seconds spent in the step loop (steps and validation) so far, over every resumption."""
        return self.elapsed_before + time.perf_counter() - self.clock


def train(
    data: Path,
    out: Path,
    *,
    method: str,
    model_config: dict[str, Any],
    objective: str = "unsupervised",
    settings: TrainSettings | None = None,
    init: Path | None = None,
    teacher: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    log_file: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train ``method`` on the dataset at ``data``; write its checkpoint to ``out`` and its
    history to :func:`history_path` (``out``).

    Args:
        data: dataset folder in the canonical layout.
        out: final checkpoint path (written atomically at the end).
        method: method name, stored in the checkpoint.
        model_config: e.g. ``{"kind": "lowres", "width": 1.0, "factor": 2}``.
        objective: ``"unsupervised"`` (NCC + smoothness) or ``"distill"`` (needs ``teacher``).
        settings: training settings (defaults: :class:`TrainSettings`).
        init: checkpoint whose weights initialise the model (see :func:`initialise_from`).
        teacher: frozen teacher checkpoint for ``objective="distill"``; teacher and student must
            both have ``forward_with_maps`` (maps on the same four grids).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        threads: torch intra-op threads.
        log_file: also log there (appending).
        progress: show a progress bar on stderr.
    """
    settings = settings or TrainSettings()
    out = Path(out)
    process = distributed.current()
    _check_arguments(data, out, objective=objective, init=init, teacher=teacher, log_file=log_file)
    try:
        run = _build_run(data, out, method=method, model_config=model_config, objective=objective, settings=settings,
                         init=init, teacher=teacher, device=device, threads=threads, log_file=log_file,
                         process=process)  # fmt: skip
        _resume_or_start(run)
        t0 = time.perf_counter()
        _take_steps(run, progress and process.is_main)
        seconds = time.perf_counter() - t0
        if process.is_main:
            _write_final(run, seconds)
    except BaseException:
        distributed.abandon(process)  # torchrun stops the other processes
        raise
    distributed.stop(process)
    return out


def _check_arguments(
    data: Path, out: Path, *, objective: str, init: Path | None, teacher: Path | None, log_file: Path | None
) -> None:
    """Refuse, before anything is read or written, an unknown ``objective``, a distillation without
    a teacher, and outputs (``out`` and its history) that clash with an input or cannot be written."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "distill" and teacher is None:
        raise ValueError("objective 'distill' needs a teacher checkpoint")
    check_outputs(
        {"--init checkpoint": init, "--teacher checkpoint": teacher, "log": log_file},
        {"--out": out, "its history": history_path(out)},
        {"dataset folder": data},
    )
    check_writable_folder(out.parent, "--out")


def _build_run(
    data: Path,
    out: Path,
    *,
    method: str,
    model_config: dict[str, Any],
    objective: str,
    settings: TrainSettings,
    init: Path | None,
    teacher: Path | None,
    device: str,
    threads: int | None,
    log_file: Path | None,
    process: distributed.Process,
) -> _Run:
    """Set up logging, device, threads and seeds, open the dataset, and build the run's parts: the
    model (initialised from ``init``), the frozen teacher, Adam with its step schedule, the
    objective, the augmentation, the training pairs, the validation set and the resume file.

    Keep the order: it is the random stream's. Seeding comes first, then everything that draws
    from torch's global generator (the model's initialisation, the models built to read ``init``
    and ``teacher``); the pair sampler and the augmentation draw later from the run's generator.
    With several processes (``process``), each joins the group here; only rank 0 logs below warnings."""
    setup_logging(log_file) if process.is_main else setup_logging(None, logging.WARNING)
    dev = distributed.training_device(process, select_device(device))
    distributed.start(process, dev, settings.batch_size)
    n_threads = configure_threads(threads)
    generator = seed_everything(settings.seed)
    dataset = open_dataset(data)
    log.info("training %s (%s, %s) on %s, device %s, %d threads%s", method, model_config, objective, dataset.root,
             dev, n_threads, f", {process.world_size} processes" if process.distributed else "")  # fmt: skip
    log.info("settings %s", json.dumps(settings.to_dict()))

    model = _build_student(model_config, init, dev)
    teacher_model = _load_teacher(teacher, model, method, dev) if objective == "distill" else None
    multiple = max(int(m.size_multiple) for m in (model, teacher_model) if m is not None)
    check_crop(settings.crop, tuple(dataset.shape), multiple)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.milestones, settings.lr_decay)
    step_loss = TrainingObjective(settings, teacher_model)
    augment = RandomFFD(max_displacement=settings.augment_max_displacement, probability=settings.augment_probability)
    train_pairs = _PairSampler(dataset, "train", dev)
    valset = _ValidationSet(dataset, dataset.pairs_for("val")[: settings.val_pairs], dev)
    run_id = _run_hash({"method": method, "model": model_config, "objective": objective, "settings": settings.to_dict(),
                        "data": str(dataset.root), "init": str(init), "teacher": str(teacher)})  # fmt: skip
    resume = _Resumable(out.parent / f".{out.name}.resume", run_id)
    return _Run(out=out, method=method, objective=objective, settings=settings, init=init, teacher=teacher,
                dataset=dataset, device=dev, threads=n_threads, generator=generator, model=model, optimizer=optimizer,
                scheduler=scheduler, step_loss=step_loss, augment=augment, train_pairs=train_pairs, valset=valset,
                resume=resume, process=process)  # fmt: skip


def _build_student(model_config: dict[str, Any], init: Path | None, device: torch.device) -> nn.Module:
    """The model of ``model_config`` on ``device``, its weights from ``init`` when given
    (:func:`initialise_from`, logged)."""
    model = build_model(model_config).to(device)
    if init is not None:
        log.info("initialised with %s", initialise_from(model, Path(init)))
        model.to(device)
    return model


def _load_teacher(teacher: Path, student: nn.Module, method: str, device: torch.device) -> nn.Module:
    """The frozen teacher of a distillation, from the checkpoint ``teacher``, on ``device``;
    teacher and student must both give attention maps (:class:`DistillableModel`)."""
    teacher_model, payload = load_model(Path(teacher), device)
    order = checkpoint_array_order(payload, teacher)
    if order != STORED:
        raise CrdError(
            f"{teacher}: its network expects arrays in the {order} order ({ORDER_DESCRIPTIONS[order]}), but crd train "
            f"feeds the dataset's arrays as stored: distil from a teacher trained in the stored order"
        )
    if not isinstance(teacher_model, DistillableModel) or not isinstance(student, DistillableModel):
        raise CrdError(f"distillation needs attention maps from both {teacher} and {method}")
    teacher_model.requires_grad_(False)
    return teacher_model


def _resume_or_start(run: _Run) -> None:
    """Restore the run's last saved state (model, optimiser, schedule, both RNG states, iteration,
    history) when its resume file belongs to this run; otherwise record iteration 0: the model's
    validation score before any step (for a fine-tuned model: its init's)."""
    state = run.resume.load()
    if state is not None:  # every process loads it: they all continue the same random stream
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        run.start, run.history = state["iteration"], list(state.get("history", []))
        run.best = BestSoFar.from_state(state.get("best"))
        run.elapsed_before = float(state.get("elapsed_s", 0.0))
        log.info("resumed from %s at iteration %d", run.resume.path, run.start)
    elif run.process.is_main:
        record = {"iteration": 0, **_validate(run.model, run.valset, run.step_loss.unsupervised)}
        run.history.append(record)
        run.best.update(record.get("val_dice"), 0, run.model, run.settings)
    run.student = (
        distributed.DataParallelStudent(run.model, run.device, maps=run.objective == "distill")
        if run.process.distributed
        else run.model
    )


def _take_steps(run: _Run, progress: bool) -> None:
    """The step loop, from ``run.start`` to ``settings.iterations``, with a progress bar (on stderr
    when ``progress``); a non-finite loss is an error; every ``checkpoint_every`` iterations and at
    the last, a record (:func:`_record_checkpoint`) and the stopping rule (:class:`BestSoFar`),
    which may end the loop early (``run.stopped_at``)."""
    settings = run.settings
    run.clock = time.perf_counter()
    run.model.train()
    bar = tqdm(range(run.start, settings.iterations), initial=run.start, total=settings.iterations,
               desc=f"train {run.method}", disable=not progress, mininterval=2.0, dynamic_ncols=True)  # fmt: skip
    for it in bar:
        done = it + 1
        record_now = done % settings.checkpoint_every == 0 or done == settings.iterations
        terms, grad_norms, lr_used = _take_step(run, gradient_norms=record_now)
        loss = terms.total.item()
        if not np.isfinite(loss):
            raise CrdError(f"training {run.method} diverged at iteration {done} (loss {loss})")
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if record_now and run.process.is_main:
            _record_checkpoint(run, done, loss, terms, {**grad_norms, "learning_rate": lr_used})
        if record_now and distributed.decide(run.process, run.best.should_stop(settings)):
            run.stopped_at = done
            if run.process.is_main:
                log.info("stopping rule: no rise of the validation Dice above %.4f (+%g) in %d checkpoints; "
                         "stopped at iteration %d of at most %d", run.best.score, settings.min_delta,
                         settings.patience, done, settings.iterations)  # fmt: skip
            break
    bar.close()


def draw_batch(
    pairs: _PairSampler, augment: RandomFFD, size: int, generator: torch.Generator, share: slice = slice(None)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training data path of one step: ``size`` random pairs, then the augmentation of their
    moving images, both drawn from ``generator`` for the whole batch; returns the elements
    ``share`` (all by default; a process's share, :mod:`crd.distributed`) as ``(fixed, moving)``,
    each ``(len(share), 1, D, H, W)`` on the training device."""
    fixed, moving = pairs.batch(size, generator, share)
    apply, flow = augment.sample(moving.shape[2:], size, generator, device=moving.device, dtype=moving.dtype,
                                 share=share)  # fmt: skip
    return fixed, augment.apply(moving, apply, flow)


def _take_step(run: _Run, *, gradient_norms: bool) -> tuple[LossTerms, dict[str, float], float]:
    """One step on a random batch (``(batch_size, 1, D, H, W)`` pairs, the moving images augmented),
    then the schedule's step. Returns ``(terms, grad_norms, lr)``: the loss terms, each term's
    gradient norm when ``gradient_norms`` (else ``{}``), and the learning rate the step used.

    Every process draws the whole batch's randomness (pairs, then augmentation) and trains on its
    share (:meth:`crd.distributed.Process.share`); one process trains on all of it. The terms and
    gradient norms are those of this process's share (the gradients the step uses are averaged)."""
    size = run.settings.batch_size
    fixed, moving = draw_batch(run.train_pairs, run.augment, size, run.generator, run.process.share(size))
    crop = Crop.random(tuple(fixed.shape[2:]), run.settings.crop, run.generator) if run.settings.crop else None
    lr_used = run.optimizer.param_groups[0]["lr"]
    terms, grad_norms = optimiser_step(run.step_loss, run.student, run.optimizer, fixed, moving,
                                       run.settings.grad_clip, gradient_norms=gradient_norms, crop=crop)  # fmt: skip
    run.scheduler.step()
    return terms, grad_norms, lr_used


def _record_checkpoint(run: _Run, done: int, loss: float, terms: LossTerms, step_values: dict[str, float]) -> None:
    """After iteration ``done``: append its history record (loss, its terms, ``step_values``: the
    gradient norms and learning rate, then the validation scores), log it, and, unless it is the
    last iteration, save the resumable state."""
    record = {"iteration": done, "loss": loss, **terms.parts, **step_values,
              **_validate(run.model, run.valset, run.step_loss.unsupervised)}  # fmt: skip
    record["elapsed_s"] = round(run.elapsed(), 3)
    run.history.append(record)
    run.best.update(record.get("val_dice"), done, run.model, run.settings)
    log.info("iter %d/%d %s", done, run.settings.iterations,
             " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "iteration"))  # fmt: skip
    run.model.train()
    if done < run.settings.iterations and not run.best.should_stop(run.settings):
        run.resume.save(iteration=done, history=run.history, model=run.model.state_dict(),
                        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                        generator=run.generator.get_state(), torch_rng=torch.get_rng_state(),
                        best=run.best.state(), elapsed_s=record["elapsed_s"])  # fmt: skip


def _write_final(run: _Run, seconds: float) -> None:
    """Write the history table and the self-describing checkpoint (``seconds``: this run's time in
    the step loop, s), then remove the resume file. With ``keep_best`` the checkpoint holds the
    best validated weights. The history's last record also gets ``selected_iteration`` (the
    iteration whose weights the checkpoint holds), ``max_iterations`` (the budget) and
    ``patience`` (0: no stopping rule), which :mod:`crd.convergence` reads."""
    run.model.eval()
    settings, dataset = run.settings, run.dataset
    selected = run.history[-1]["iteration"] if run.history else 0
    if settings.keep_best and run.best.weights is not None:
        run.model.load_state_dict(run.best.weights)
        selected = run.best.iteration
    if run.history:
        run.history[-1].update(selected_iteration=selected, max_iterations=settings.iterations,
                               patience=settings.patience)  # fmt: skip
    _write_history(history_path(run.out), run.history, dataset=dataset.name, method=run.method, seed=settings.seed)
    save_checkpoint(
        run.out,
        run.model,
        method=run.method,
        training={
            "objective": run.objective,
            "settings": settings.to_dict(),
            "data": str(dataset.root),
            "dataset": dataset.name,
            "init": str(run.init) if run.init else None,
            "teacher": str(run.teacher) if run.teacher else None,
            "device": str(run.device),
            "threads": run.threads,
            "processes": run.process.world_size,
            "math": math_settings(),
            "seconds_this_run": round(seconds, 2),
            "resumed_at": run.start,
            "iterations_taken": int(run.history[-1]["iteration"]) if run.history else settings.iterations,
            "stopped_early": run.stopped_at is not None and run.stopped_at < settings.iterations,
            "selected_iteration": int(selected),
            "history": run.history,
        },
    )
    run.resume.remove()
    log.info("wrote %s after %d iterations (%.1f s this run), weights of iteration %d", run.out,
             run.history[-1]["iteration"] if run.history else settings.iterations, seconds, selected)  # fmt: skip


class _ValidationSet:
    """Validation pairs held in memory (read once): images as ``(1, 1, D, H, W)`` tensors on the
    device, the moving label map as an int32 tensor, the fixed label map as a numpy array."""

    def __init__(self, dataset: Dataset, pairs: list[tuple[str, str]], device: torch.device) -> None:
        def image(s: str) -> torch.Tensor:
            return torch.from_numpy(dataset.load_image(s))[None, None].to(device)

        self.labels = sorted(dataset.labels)
        self.items = [
            (
                image(f),
                image(m),
                torch.from_numpy(dataset.load_labels(m).astype(np.int32))[None, None].to(device),
                dataset.load_labels(f),
            )
            for f, m in pairs
        ]


@torch.no_grad()
def _validate(model: nn.Module, valset: _ValidationSet, loss: UnsupervisedLoss) -> dict[str, float]:
    """Mean unsupervised loss and mean Dice (labels warped nearest) over the validation pairs."""
    if not valset.items:
        return {}
    from crd.metrics import dice_per_label

    model.eval()
    losses, dices = [], []
    for fixed, moving, moving_lab, fixed_lab in valset.items:
        flow = model(fixed, moving)
        losses.append(float(loss(fixed, warp(moving, flow), flow).total))
        warped_lab = warp(moving_lab, flow, mode="nearest")[0, 0].cpu().numpy()
        per_label = dice_per_label(fixed_lab, warped_lab, valset.labels)
        dices.append(float(np.nanmean(list(per_label.values()))))
    return {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(dices))}
