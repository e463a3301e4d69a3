"""Evaluation: register every test pair with one method, score it, time it, write a tidy table.

Output (one per dataset, method and training seed):
- ``<out>.csv``: tidy long table, columns :data:`crd.tidy.TABLE_COLUMNS` (``dataset, method, seed,
  fixed, moving, metric, label, value``; one row per pair, metric and label; ``label`` empty for
  pair-level values; ``fixed``/``moving`` empty for method-level values such as ``params``).
  Metrics: see :func:`crd.metrics.score_pair`
  plus ``time_s`` (predict the field + warp the moving image, seconds), ``peak_rss_mb`` (on the
  CPU the working set of that call, MB, measured in a fresh process: :mod:`crd.working_set`; absent
  where it cannot be measured exactly; on CUDA the RSS rise of the call), ``cuda_alloc_peak_mb``
  and ``nvml_peak_mb`` (CUDA only) and ``params`` (networks only).
- ``<out>.json``: the sidecar: device, versions, threads, checkpoint, the example pair, and
  ``seed_independent`` (a method without training, evaluated once for every seed).
- ``<out stem>.example.nii.gz``: the warped moving image of the first pair (qualitative figure).

The first pair is registered once untimed as a warm-up, so no timing includes one-off start-up
costs (allocations, lazy initialisation). Each pair is then registered once, timed.

A method is a network (a checkpoint, or a model config for methods without weights) or, for a
method without one (a classical tool, ``MODEL = None``), its method file's ``register_pair``
function (:mod:`crd.methods`): both are timed, warped and scored by the same code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm import tqdm

from crd.atomic import atomic_targets, check_outputs
from crd.data.layout import Dataset, open_dataset, write_nifti
from crd.errors import CheckpointError
from crd.external import ExternalRegistration
from crd.metrics import score_pair
from crd.models.checkpoint import load_for_inference
from crd.models.functional import warp
from crd.models.inference import infer
from crd.models.oracle import GridOracle
from crd.models.registration import build_model
from crd.profiling import count_parameters, device_description, measure
from crd.runtime import configure_threads, select_device, setup_logging
from crd.tidy import TABLE_COLUMNS

__all__ = ["evaluate"]

log = logging.getLogger("crd.evaluate")

Register = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(fixed, moving) -> (flow, warped)``: images ``(1, 1, D, H, W)``; the field ``(1, 3, D, H, W)``
(voxels of the fixed grid) and the warped moving image ``(1, 1, D, H, W)``."""


@dataclass(frozen=True)
class ScoredMethod:
    """What is scored: how it registers a pair, its parameter count (``None``: no network) and what
    the sidecar records as its ``model`` (the network's config, or the method file)."""

    register: Register
    params: int | None
    config: dict[str, Any]
    oracle_of: str | None = None  # an oracle: the method whose network it uses at test time


def evaluate(
    data: Path,
    out: Path,
    *,
    method: str,
    checkpoint: Path | None = None,
    model_config: dict[str, Any] | None = None,
    seed: int | None = None,
    split: str = "test",
    device: str = "auto",
    threads: int | None = None,
    log_file: Path | None = None,
    progress: bool = True,
    register_pair: Callable[..., Any] | None = None,
    method_file: Path | None = None,
    oracle_of: str | None = None,
    seed_independent: bool = False,
) -> Path:
    """Evaluate ``method`` on the ``split`` pairs of the dataset at ``data``; write ``out`` (CSV).

    The model comes from ``checkpoint`` or, for methods without weights (``identity``), from
    ``model_config``; given both, the checkpoint's model must be ``model_config`` (a checkpoint of
    another architecture is refused, not scored under ``method``'s name). A method without a
    network gives instead its ``register_pair(fixed, moving, *, spacing, seed, threads)`` (from its
    ``method_file``, :mod:`crd.methods`), called on the CPU with ``(D, H, W)`` float32 arrays and
    returning the field ``(3, D, H, W)`` in voxels; ``seed`` is passed on. Nothing is written
    until every pair is scored; then the table, its sidecar and the example image are renamed into
    place together. No output may be the checkpoint, the log or lie inside the dataset folder.
    Images are fed as stored (scaled to [0, 1] by preprocessing). ``seed``: the
    training seed recorded in the table; by default the checkpoint's (0 without one); a given seed
    that contradicts the checkpoint's is an error.

    An oracle (``model_config`` of kind ``"x2-oracle"``, :mod:`crd.models.oracle`) takes the
    ``checkpoint`` of the trained method it restricts (``oracle_of``, checked against the
    checkpoint when given); its fields are scored like any other, but no time or memory is recorded:
    it is a ceiling, not a method, and costs what its teacher costs. The sidecar names it
    (``oracle_of``).

    ``seed_independent``: the method has no training and no seed changes its result
    (:attr:`crd.methods.MethodSpec.evaluated_once`); recorded in the sidecar, so that the report
    sets this one evaluation beside every training seed of the others. Refused with a checkpoint.
    """
    out = Path(out)
    if seed_independent and (checkpoint is not None or oracle_of is not None):
        raise ValueError(f"{checkpoint or oracle_of}: a trained network's result depends on its training seed; "
                         "seed_independent is for methods without training")  # fmt: skip
    example_path = _check_outputs(data, out, checkpoint, log_file)
    setup_logging(log_file)
    dev = select_device(device)
    n_threads = configure_threads(threads)
    dataset = open_dataset(data)
    if register_pair is not None:
        if checkpoint is not None or model_config is not None:
            raise ValueError(f"{method_file}: a method with register_pair has no network: give no checkpoint or model")
        seed = 0 if seed is None else int(seed)
        scored, trained_on = _external_method(register_pair, dataset, seed, n_threads, method_file), None
    else:
        model, seed, trained_on, payload = _load_scored_model(checkpoint, model_config, method, seed, dev)
        scored = _network_method(model)
        if getattr(model, "kind", None) == GridOracle.kind:
            scored = _as_oracle(scored, checkpoint, payload, oracle_of)
    pairs = _pairs_to_score(dataset, split)
    log.info(
        "evaluating %s on %d %s pairs of %s (device %s, %d threads)",
        method,
        len(pairs),
        split,
        dataset.name,
        dev,
        n_threads,
    )

    rows: list[dict[str, Any]] = []
    if scored.params is not None:
        rows.append({"fixed": None, "moving": None, "metric": "params", "label": None, "value": scored.params})
    pair_rows, example_image = _score_pairs(
        scored.register, dataset, pairs, dev, desc=f"evaluate {method}", progress=progress,
        timed=scored.oracle_of is None,
    )  # fmt: skip
    memory_note = None
    if dev.type == "cpu" and scored.oracle_of is None:
        # the timed call's RSS rise depends on what earlier calls left in the allocator: the CPU
        # memory figure is the working set, measured in a fresh process (crd.working_set)
        pair_rows = [r for r in pair_rows if r["metric"] != "peak_rss_mb"]
        memory_rows, memory_note = _working_set_rows(data, pairs, n_threads, seed, checkpoint, model_config,
                                                     method_file if register_pair is not None else None)  # fmt: skip
        pair_rows += memory_rows  # a long table: the order of rows carries nothing
    rows.extend(pair_rows)

    seed = 0 if seed is None else int(seed)
    table = _table(rows, dataset=dataset.name, method=method, seed=seed)
    sidecar = _sidecar(dataset, method=method, seed=seed, split=split, n_pairs=len(pairs), checkpoint=checkpoint,
                       trained_on=trained_on, scored=scored, device=dev,
                       example=_example(dataset, *pairs[0], example_path))  # fmt: skip
    sidecar["cpu_memory"] = memory_note
    sidecar["seed_independent"] = bool(seed_independent)
    _write_together(out, example_path, table, sidecar, example_image, dataset=dataset, fixed_id=pairs[0][0])
    _log_summary(method, table, out)
    return out


def _working_set_rows(
    data: Path, pairs: list[tuple[str, str]], threads: int, seed: int | None, checkpoint: Path | None,
    model_config: dict[str, Any] | None, method_file: Path | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``peak_rss_mb`` rows, one per pair: the CPU working set of the registration call, from a
    fresh process (:mod:`crd.working_set`); none where it cannot be measured exactly. Also the
    sidecar's note of what was measured (``{"measured", "exact", "why"}``)."""
    from crd.models.registration import PLUGIN_KINDS
    from crd.working_set import measure_working_sets

    spec = {
        "threads": threads, "seed": seed, "model": model_config,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "method_file": str(method_file) if method_file else None,
        "method_files": sorted({str(path) for _, path in PLUGIN_KINDS.values()}),
        "data": str(data), "pairs": [list(p) for p in pairs],
    }  # fmt: skip
    note = {"measured": "working set of one call, in a fresh process (crd.working_set)", "exact": False, "why": None}
    if method_file is not None and not Path(method_file).is_file():
        note["why"] = f"register_pair comes from no method file a fresh process can load ({method_file})"
        log.warning("no CPU memory figures: %s", note["why"])
        return [], note
    try:
        result = measure_working_sets(spec)
    except RuntimeError as exc:
        note["why"] = str(exc)
        log.warning("no CPU memory figures: %s", exc)
        return [], note
    note.update(exact=result["exact"], why=result["why"])
    if not result["exact"]:
        log.warning("no CPU memory figures: %s", result["why"])
        return [], note
    rows = [{"fixed": f, "moving": m, "metric": "peak_rss_mb", "label": None, "value": float(v)}
            for (f, m), v in zip(pairs, result["mb"], strict=True)]  # fmt: skip
    return rows, note


#: what :func:`_score_pair` measures of the registration call itself (not recorded for an oracle)
COST_METRICS = ("time_s", "peak_rss_mb", "cuda_alloc_peak_mb", "nvml_peak_mb")


def _as_oracle(scored: ScoredMethod, checkpoint: Path | None, payload: dict[str, Any],
               oracle_of: str | None) -> ScoredMethod:  # fmt: skip
    """``scored`` marked as the oracle of the checkpoint's method; ``CheckpointError`` when the
    checkpoint was trained for another method than ``oracle_of``."""
    trained_for = payload.get("method")
    if oracle_of is not None and trained_for is not None and trained_for != oracle_of:
        raise CheckpointError(f"{checkpoint}: holds method {trained_for!r}, but this oracle restricts {oracle_of!r}: "
                              f"give the checkpoint of {oracle_of!r}")  # fmt: skip
    return ScoredMethod(scored.register, None, scored.config, oracle_of or trained_for or "?")


def _check_outputs(data: Path, out: Path, checkpoint: Path | None, log_file: Path | None) -> Path:
    """Refuse, before anything is read, outputs (``out``, its sidecar and example image) that clash
    with an input (:func:`crd.atomic.check_outputs`); returns the example image's path,
    ``<out stem>.example.nii.gz`` beside ``out``."""
    example_path = out.parent / f"{out.stem}.example.nii.gz"
    check_outputs(
        {"checkpoint": checkpoint, "log": log_file},
        {"--out": out, "its sidecar": out.with_suffix(".json"), "its example image": example_path},
        {"dataset folder": data},
    )
    return example_path


def _load_scored_model(
    checkpoint: Path | None,
    model_config: dict[str, Any] | None,
    method: str,
    seed: int | None,
    device: torch.device,
) -> tuple[nn.Module, int | None, str | None, dict[str, Any]]:
    """The model to score, on ``device``: from ``checkpoint`` (its architecture checked against
    ``model_config`` when given, :func:`_check_architecture`), else built from ``model_config``.

    Returns ``(model, seed, trained_on, payload)``: the training seed to record (the given ``seed``,
    else the checkpoint's; ``None`` when neither is known; a given seed that contradicts the
    checkpoint's is an error), the name of the dataset the checkpoint was trained on (``None``
    without one) and the checkpoint's payload (``{}`` without one). For an oracle's config (kind
    ``"x2-oracle"``) the checkpoint's network is wrapped in :class:`crd.models.oracle.GridOracle`."""
    is_oracle = model_config is not None and model_config.get("kind") == GridOracle.kind
    if is_oracle and checkpoint is None:
        raise ValueError(f"method {method!r} is an oracle: give the checkpoint of the trained method it restricts")
    if checkpoint is not None:
        model, payload = load_for_inference(Path(checkpoint), device)
        if is_oracle:
            options = {k: v for k, v in model_config.items() if k != "kind"}
            try:
                model = GridOracle(model, **options).to(device).eval()
            except TypeError as exc:
                raise ValueError(f"bad arguments for an oracle {options} ({exc})") from None
        else:
            _check_architecture(Path(checkpoint), model, payload, method, model_config)
        training = payload.get("training") or {}
        trained_on = training.get("dataset")
        trained_seed = (training.get("settings") or {}).get("seed")
        if seed is not None and trained_seed is not None and int(trained_seed) != seed:
            raise ValueError(f"{checkpoint}: trained with seed {trained_seed}, but seed {seed} was given")
        return model, seed if seed is not None else trained_seed, trained_on, payload
    if model_config is not None:
        return build_model(model_config).to(device).eval(), seed, None, {}
    raise ValueError("evaluate needs a checkpoint or a model config")


def _protocol_record(info: dict[str, Any]) -> dict[str, Any] | None:
    """The pair protocol ``dataset.json`` records (name, summary, source, deviations), if any."""
    generator = info.get("generator")
    protocol = generator.get("protocol") if isinstance(generator, dict) else None
    return protocol if isinstance(protocol, dict) else None


def _network_method(model: nn.Module) -> ScoredMethod:
    """A network scored by inference as timed (:func:`crd.models.inference.infer`)."""

    @torch.inference_mode()
    def register(fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = infer(model, fixed, moving)
        return result.flow, result.warped

    return ScoredMethod(register, count_parameters(model), model.config)


def _external_method(
    register_pair: Callable[..., Any], dataset: Dataset, seed: int, threads: int, method_file: Path | None
) -> ScoredMethod:
    """A method without a network: its ``register_pair`` gives the field
    (:class:`crd.external.ExternalRegistration`: on the CPU, as numpy, checked), which then warps
    the moving image as for a network."""
    model = ExternalRegistration(register_pair, tuple(float(s) for s in dataset.spacing), threads,
                                 str(method_file or "register_pair"), seed=seed)  # fmt: skip

    def register(fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flow = model(fixed, moving)
        with torch.inference_mode():
            return flow, warp(moving, flow)

    return ScoredMethod(register, None, model.config)


def _pairs_to_score(dataset: Dataset, split: str) -> list[tuple[str, str]]:
    """The ``(fixed, moving)`` pairs of ``split``; none is an error."""
    pairs = dataset.pairs_for(split)
    if not pairs:
        raise ValueError(f"{dataset.root / 'pairs.csv'}: no {split!r} pairs to evaluate")
    return pairs


def _score_pairs(
    register: Register,
    dataset: Dataset,
    pairs: list[tuple[str, str]],
    device: torch.device,
    *,
    desc: str,
    progress: bool,
    timed: bool = True,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Register and score every ``(fixed, moving)`` pair, after one untimed warm-up on the first
    (``timed=False``: no time or memory rows, for an oracle).

    Returns ``(rows, example_image)``: the rows of every pair (:func:`_score_pair`), in order, and
    the first pair's warped moving image, a ``(D, H, W)`` float32 array."""
    rows: list[dict[str, Any]] = []
    example_image: np.ndarray | None = None
    labels = sorted(dataset.labels)
    register(*_load_pair(dataset, *pairs[0], device))  # warm-up, untimed
    for i, (fixed_id, moving_id) in enumerate(tqdm(pairs, desc=desc, disable=not progress, mininterval=2.0)):
        pair_rows, registered = _score_pair(register, dataset, fixed_id, moving_id, labels, device)
        if not timed:
            pair_rows = [r for r in pair_rows if r["metric"] not in COST_METRICS]
        rows.extend(pair_rows)
        if i == 0:
            example_image = registered[1][0, 0].float().cpu().numpy().copy()
        # release this pair's field and warped images before the next pair is measured: the CUDA
        # peak (max_memory_allocated since the reset) would otherwise count them in every later pair
        del registered
    return rows, example_image


def _score_pair(
    register: Register, dataset: Dataset, fixed_id: str, moving_id: str, labels: list[int], device: torch.device
) -> tuple[list[dict[str, Any]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Register one pair, timed (:func:`crd.profiling.measure`), warp the moving labels (nearest)
    and score it on ``labels`` (:func:`crd.metrics.score_pair`).

    Returns ``(rows, (flow, warped, warped_lab))``: the pair's rows (``fixed, moving, metric,
    label, value``): the timing and memory values measured (``time_s`` in s, ``peak_rss_mb``,
    ``cuda_alloc_peak_mb``, ``nvml_peak_mb`` in MB; those not measured are left out), then the
    metrics; and what registration gave: the field ``(1, 3, D, H, W)`` (voxels), the warped moving
    image ``(1, 1, D, H, W)`` and the warped moving labels ``(1, 1, D, H, W)`` (int32)."""
    fixed, moving = _load_pair(dataset, fixed_id, moving_id, device)
    moving_labels = dataset.load_labels(moving_id)
    moving_lab = torch.from_numpy(moving_labels.astype(np.int32))[None, None].to(device)
    with measure(device) as m:
        flow, warped = register(fixed, moving)
    with torch.inference_mode():
        warped_lab = warp(moving_lab, flow, mode="nearest")
    pair = {"fixed": fixed_id, "moving": moving_id}
    rows = [
        {**pair, "metric": metric, "label": None, "value": value}
        for metric, value in (
            ("time_s", m.seconds),
            ("peak_rss_mb", m.peak_rss_mb),
            ("cuda_alloc_peak_mb", m.cuda_alloc_peak_mb),
            ("nvml_peak_mb", m.nvml_peak_mb),
        )
        if value is not None
    ]
    scored = score_pair(
        dataset.load_labels(fixed_id),
        moving_labels,
        warped_lab[0, 0].cpu().numpy(),
        labels,
        dataset.spacing,
        flow=flow[0].float().cpu().numpy(),
    )
    rows.extend({**pair, **r} for r in scored)
    return rows, (flow, warped, warped_lab)


def _example(dataset: Dataset, fixed_id: str, moving_id: str, example_path: Path) -> dict[str, str]:
    """The sidecar's ``example``: the example pair's ids, its input files and the warped image's path."""
    return {
        "fixed": fixed_id,
        "moving": moving_id,
        "fixed_image": str(dataset.image_path(fixed_id)),
        "moving_image": str(dataset.image_path(moving_id)),
        "fixed_labels": str(dataset.label_path(fixed_id)),
        "warped_image": str(example_path),
    }


def _sidecar(
    dataset: Dataset,
    *,
    method: str,
    seed: int,
    split: str,
    n_pairs: int,
    checkpoint: Path | None,
    trained_on: str | None,
    scored: ScoredMethod,
    device: torch.device,
    example: dict[str, str],
) -> dict[str, Any]:
    """The sidecar ``<out>.json``: what was scored (dataset, method, seed, split, pair count,
    checkpoint, the dataset it was trained on, the distance unit, the model (or method file) and
    its parameter count, ``None`` without a network), where
    (:func:`crd.profiling.device_description`) and the example pair."""
    return {
        "dataset": dataset.name,
        "method": method,
        "seed": seed,
        "split": split,
        "n_pairs": n_pairs,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "trained_on": trained_on,
        "distance_unit": "voxel" if dataset.info.get("spacing_unit") == "voxel" else "mm",
        "protocol": _protocol_record(dataset.info),
        "label_names": {str(k): v for k, v in dataset.labels.items()},
        "model": scored.config,
        "params": scored.params,
        "oracle_of": scored.oracle_of,
        **device_description(device),
        "example": example,
    }


def _table(rows: list[dict[str, Any]], *, dataset: str, method: str, seed: int) -> pd.DataFrame:
    """The rows as the tidy table: columns :data:`crd.tidy.TABLE_COLUMNS`, ``label`` a nullable int."""
    table = pd.DataFrame(rows).assign(dataset=dataset, method=method, seed=seed)
    table["label"] = table["label"].astype("Int64")
    return table[list(TABLE_COLUMNS)]


def _write_together(
    out: Path,
    example_path: Path,
    table: pd.DataFrame,
    sidecar: dict[str, Any],
    example_image: np.ndarray,
    *,
    dataset: Dataset,
    fixed_id: str,
) -> None:
    """Write the example image (``(D, H, W)``, on the grid (affine) of ``dataset``'s image
    ``fixed_id``, the example's fixed image), the sidecar (``out`` with ``.json``) and the table
    (``out``), renamed into place together: all of them, or none."""
    with atomic_targets([example_path, out.with_suffix(".json"), out], [".nii.gz", ".json", ".csv"]) as tmps:
        write_nifti(tmps[0], example_image, affine=dataset.load_affine(fixed_id))
        tmps[1].write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        tmps[2].write_text(table.to_csv(index=False), encoding="utf-8")


def _log_summary(method: str, table: pd.DataFrame, out: Path) -> None:
    """Log the mean pair-level Dice and the median time (s) of ``table`` (an oracle has none)."""
    dice = table[(table.metric == "dice") & table.label.isna()]["value"]
    times = table[table.metric == "time_s"]["value"]
    timing = f"median time {times.median():.3f} s" if len(times) else "no time of its own (an oracle)"
    log.info("%s: mean Dice %.4f over %d pairs, %s; wrote %s", method, dice.mean(), len(dice), timing, out)


def _check_architecture(
    checkpoint: Path, model: nn.Module, payload: dict[str, Any], method: str, expected: dict[str, Any] | None
) -> None:
    """Refuse scoring a checkpoint under a method whose model it does not hold (e.g. hr weights
    evaluated as ``crd``): the method file's model config must equal the checkpoint's."""
    if expected is None:
        return
    if build_model(expected).config != model.config:
        raise CheckpointError(
            f"{checkpoint}: holds model {model.config} (method {payload.get('method')!r}), but method {method!r} "
            f"is model {dict(expected)}: give the checkpoint trained for {method!r}"
        )


def _load_pair(
    dataset: Dataset, fixed_id: str, moving_id: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed and moving images as ``(1, 1, D, H, W)`` float tensors on ``device``."""
    fixed = torch.from_numpy(dataset.load_image(fixed_id))[None, None].to(device)
    moving = torch.from_numpy(dataset.load_image(moving_id))[None, None].to(device)
    return fixed, moving
