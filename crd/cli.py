"""The ``crd`` command line: one sub-command per stage, each a thin wrapper over a function.

    crd generate synth DATA/synth [--seed 0 ...]
    crd train    --data DATA/synth --method-file baselines/hr.py --out MODEL.pt [...]
    crd evaluate --data DATA/synth --method-file baselines/hr.py --checkpoint MODEL.pt --out EVAL.csv
    crd report   --tables EVAL.csv ... --out report.html
    crd import-official SRC.pth DST.pt --kind {lr,fst}
    crd register --checkpoint MODEL.pt --fixed F.nii.gz --moving M.nii.gz --out-warped W.nii.gz [...]
    crd metrics  --fixed-labels F.nii.gz --warped-labels W.nii.gz [--flow U.nii.gz] [--json]
    crd methods  [--folder baselines]

Errors in the inputs (a bad file, a bad setting) are printed as one line naming what is wrong,
with exit status 2; ``CRD_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]


def _load_settings(text: str | None) -> dict[str, Any]:
    """``--settings``: a JSON object, or the path of a JSON/YAML file holding one."""
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--settings is not a valid JSON object: {exc}") from None
    else:
        import yaml

        path = Path(text)
        if not path.is_file():
            raise ValueError(f"--settings: {path} is neither a JSON object nor an existing file")
        try:
            value = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--settings/--options must hold a mapping (JSON object), got {type(value).__name__}")
    return value


def _model_from_args(args: argparse.Namespace) -> tuple[dict[str, Any] | None, Any]:
    """(model config, method spec or None) from ``--model`` / ``--method-file``."""
    from crd.methods import load_method

    spec = load_method(Path(args.method_file)) if args.method_file else None
    if spec is not None:
        _use_method_models(spec)
    if args.model:
        try:
            model = json.loads(args.model)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--model is not a JSON object: {exc}") from None
    else:
        model = spec.model if spec else None
    return model, spec


def _use_method_models(spec: Any) -> None:
    """Make buildable the networks that ``spec``'s file and the methods it needs (init, teacher;
    from the same folder) bring with their own ``build_model``."""
    from crd.methods import load_methods
    from crd.models.registration import use_method_models

    use_method_models([spec, *load_methods(spec.path.parent, spec.needs).values()] if spec.needs else [spec])


def _method_name(args: argparse.Namespace, spec: Any) -> str:
    """``--method``, else the method file's name; an error when neither is given."""
    method = args.method or (spec.name if spec else None)
    if not method:
        raise ValueError("name the method with --method (or give --method-file)")
    return method


def _cmd_generate(args: argparse.Namespace) -> None:
    from crd.data.synth import generate_synth

    if args.dataset != "synth":
        raise ValueError(f"crd generate knows the embedded dataset 'synth' only, got {args.dataset!r}")
    from crd.data.synth import GENERATE_OPTIONS

    options = {kwarg: getattr(args, flag) for flag, kwarg in GENERATE_OPTIONS.items()}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if v is not None}
    print(generate_synth(args.out, overwrite=args.overwrite, progress=not args.no_progress, **kwargs))


def _pairs_arg(items: list[str] | None, flag: str) -> dict[str, str]:
    """``FILE=VALUE`` arguments as a dict."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} expects FILE=VALUE, got {item!r}")
        out[key] = value
    return out


def _cmd_datasets(args: argparse.Namespace) -> None:
    from crd.data.specs import SPECS

    for name, spec in SPECS.items():
        how = "bring your own: " + ", ".join(spec.own_files) if spec.bring_your_own else (
            "download " + ", ".join(s.filename for s in spec.sources))
        terms = " (accept_terms required)" if spec.requires_terms else ""
        print(f"{name}: {spec.title}\n  {how}; {spec.disk}{terms}\n  licence: {spec.license}")
        protocols = spec.protocols or {"crd-bench": spec.protocol_of({})}
        for proto in protocols.values():
            print(f"  protocol {proto.name}: {proto.summary}\n    from: {proto.source}")
            for deviation in proto.deviations:
                print(f"    deviation: {deviation}")
        for key, default in spec.options.items():
            print(f"  option {key} (default {default}): {spec.option_help.get(key, '')}")


def _cmd_download(args: argparse.Namespace) -> None:
    from crd.data.prepare import download_dataset

    paths = download_dataset(
        args.dataset, args.folder, accept_terms=args.accept_terms,
        urls=_pairs_arg(args.url, "--url"), checksums=_pairs_arg(args.checksum, "--checksum"),
        progress=not args.no_progress, retries=args.retries,
    )
    for path in paths:
        print(path)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from crd.data.prepare import prepare_dataset

    options = _load_settings(args.options) if args.options else {}
    print(prepare_dataset(args.dataset, args.sources, args.out, options=options,
                          threads=args.threads, progress=not args.no_progress,
                          overwrite=args.overwrite))


def _cmd_check_data(args: argparse.Namespace) -> None:
    from crd.atomic import write_text_atomic
    from crd.data.check import check_dataset, expected_record

    expected = expected_record(args.source, generate=_load_settings(args.generate) if args.generate else None,
                               preprocess=_load_settings(args.preprocess) if args.preprocess else None)  # fmt: skip
    check_dataset(args.folder, expected, what=args.asker, remedy=args.remedy)
    line = f"{args.folder}: the {args.source} dataset {args.asker} asks for"
    if args.out:
        write_text_atomic(Path(args.out), json.dumps({"folder": str(args.folder), "generator": expected},
                                                     sort_keys=True, default=list) + "\n")  # fmt: skip
    print(line)


def _cmd_train(args: argparse.Namespace) -> None:
    from crd.train import TrainSettings, train

    model, spec = _model_from_args(args)
    if model is None:
        raise ValueError("give the model with --method-file (a baselines/ file) or --model (JSON)")
    objective = args.objective or (spec.training if spec else None) or "unsupervised"
    values = {**(spec.train if spec else {}), **_load_settings(args.settings)}
    for key in ("iterations", "seed", "lr"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    method = _method_name(args, spec)
    train(
        Path(args.data),
        Path(args.out),
        method=method,
        model_config=model,
        objective=objective,
        settings=TrainSettings.from_dict(values),
        init=args.init,
        teacher=args.teacher,
        device=args.device,
        threads=args.threads,
        log_file=args.log,
        progress=not args.no_progress,
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from crd.evaluate import evaluate

    model, spec = _model_from_args(args)
    method = _method_name(args, spec)
    register_pair = spec.register_pair if spec is not None and model is None else None
    if args.checkpoint is None and model is None and register_pair is None:
        raise ValueError("give --checkpoint, or --method-file/--model for a method without weights")
    evaluate(
        Path(args.data),
        Path(args.out),
        method=method,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        model_config=model,
        seed=args.seed,
        split=args.split,
        device=args.device,
        threads=args.threads,
        log_file=args.log,
        progress=not args.no_progress,
        register_pair=register_pair,
        method_file=spec.path if spec is not None else None,
        oracle_of=spec.oracle_of if spec is not None else None,
        seed_independent=spec is not None and spec.evaluated_once and args.checkpoint is None,
    )


def _cmd_report(args: argparse.Namespace) -> None:
    from crd.report.build import build_report

    print(
        build_report(
            [Path(t) for t in args.tables],
            Path(args.out),
            histories=[Path(h) for h in args.histories or []],
            title=args.title,
            baseline=args.baseline,
            bench=Path(args.bench) if args.bench else None,
        )
    )


def _cmd_methods(args: argparse.Namespace) -> None:
    from crd.methods import load_methods

    specs = load_methods(Path(args.folder))
    width = max((len(name) for name in specs), default=0)
    for name, spec in specs.items():
        needs = f" (needs {', '.join(spec.needs)})" if spec.needs else ""
        first = spec.description.splitlines()[0] if spec.description else ""
        print(f"{name:{width}s} {spec.training or 'no training':12s} {_route(spec):36s} {first}{needs}")


def _route(spec: Any) -> str:
    """How a method plugs in: a crd-bench network, its own network (build_model), or its own rules."""
    if spec.rule_file is not None:
        return "own rule file"
    if spec.is_oracle:
        return "oracle"
    if spec.scheme is not None:
        return f"CRD scheme over {spec.backbone.name}"
    return "own network" if spec.builder is not None else "crd-bench model"


def _cmd_import_official(args: argparse.Namespace) -> None:
    from crd.models.official import import_official

    print(import_official(Path(args.src), Path(args.dst), args.kind))


def _cmd_register(args: argparse.Namespace) -> None:
    from crd.methods import load_method
    from crd.register import register

    spec = load_method(Path(args.method_file)) if args.method_file else None
    if spec is not None:
        _use_method_models(spec)
    external = spec if (spec is not None and spec.register_pair is not None and not args.checkpoint) else None
    if not args.checkpoint and external is None:
        raise ValueError("give --checkpoint, or --method-file of a method without a network (register_pair, e.g. "
                         "baselines/ants-syn.py)")  # fmt: skip
    result = register(
        Path(args.checkpoint) if args.checkpoint else None,
        Path(args.fixed),
        Path(args.moving),
        Path(args.out_warped),
        out_flow=Path(args.out_flow) if args.out_flow else None,
        moving_labels=Path(args.moving_labels) if args.moving_labels else None,
        out_warped_labels=Path(args.out_warped_labels) if args.out_warped_labels else None,
        device=args.device,
        threads=args.threads,
        normalisation=args.normalisation,
        array_order=args.array_order,
        method=external,
    )
    print(result.summary())


def _cmd_metrics(args: argparse.Namespace) -> None:
    from crd.metrics_files import format_scores, score_files

    labels = None
    if args.labels is not None:
        try:
            labels = [int(v) for v in args.labels.replace(" ", "").split(",") if v]
        except ValueError:
            raise ValueError(f"--labels: expected comma-separated integers (1,2,3), got {args.labels!r}") from None
        if not labels:
            raise ValueError("--labels: no label given")
    result = score_files(
        Path(args.fixed_labels),
        Path(args.warped_labels),
        Path(args.flow) if args.flow else None,
        labels=labels,
        spacing=tuple(args.spacing) if args.spacing else None,
    )
    print(json.dumps(result, indent=2) if args.json else format_scores(result))


def _cmd_bench(args: argparse.Namespace) -> None:
    from crd.bench import parse_size, run_bench, summary
    from crd.errors import CrdError

    options = [
        flag
        for flag, on in (
            ("bf16", args.bf16),
            ("channels-last", args.channels_last),
            ("compile", args.compile),
            ("cuda-graphs", args.cuda_graphs),
            ("tf32", args.tf32),
        )
        if on
    ]
    out = run_bench(
        Path(args.methods_dir),
        args.methods,
        [parse_size(s) for s in args.sizes],
        Path(args.out),
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        options=options,
        checkpoints_dir=Path(args.checkpoints_dir) if args.checkpoints_dir else None,
        train_step=args.train_step,
        threads=args.threads,
        isolate=args.isolate,
        keep_going=args.keep_going,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(summary(out))
    failed = json.loads(out.with_suffix(".json").read_text())["cases_not_ok"]
    if any(status.startswith("failed") for status in failed.values()):
        raise CrdError(f"{out}: some cases failed (their rows say failed = 1): " + "; ".join(failed))


def _add_common(p: argparse.ArgumentParser, *, threads: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    if threads:
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log", type=Path, default=None, help="also append log lines to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method-file", help="a method plugin, e.g. baselines/crd.py (model, objective, needs)")
    p.add_argument(
        "--model", help='model config as JSON, e.g. \'{"kind": "lowres", "width": 1}\' (overrides the method file)'
    )
    p.add_argument("--method", help="method name stored in outputs (default: the method file's name)")


def _synth_defaults() -> dict[str, Any]:
    """The defaults of :func:`crd.data.synth.generate_synth` (the CLI shows, never restates them)."""
    import inspect

    from crd.data.synth import generate_synth

    return {
        k: p.default
        for k, p in inspect.signature(generate_synth).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _add_generate_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate the embedded offline dataset")
    g.add_argument("dataset", help="dataset to generate (only 'synth')")
    g.add_argument("out", type=Path, help="output folder (canonical layout)")
    defaults = _synth_defaults()
    g.add_argument("--seed", type=int, help=f"random seed (default {defaults['seed']})")
    g.add_argument(
        "--template",
        choices=["anatomy", "blobs"],
        help=f"template anatomy: anatomy (folded thin ribbon, tubes, small nuclei; 24 labels) or blobs "
        f"(large blobs, a control where resolution matters little) (default {defaults['template']})",
    )
    g.add_argument("--subjects", type=int, help=f"number of subjects (default {defaults['n_subjects']})")
    g.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help=f"volume size in voxels; for the anatomy template a non-cubic size is the central crop (slab) of "
        f"the anatomy on a cube of the longest side, e.g. 32 64 64 (default {defaults['shape']})",
    )
    g.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("SD", "SH", "SW"),
        help=f"voxel size in mm (default {defaults['spacing']})",
    )
    g.add_argument("--labels", type=int, help="number of blobs structures (template blobs only; default 10)")
    g.add_argument("--val", type=int, help=f"validation subjects (default {defaults['n_val']})")
    g.add_argument("--test", type=int, help=f"test subjects (default {defaults['n_test']})")
    g.add_argument(
        "--deformation",
        type=float,
        help=f"largest control-point displacement of the large smooth part of each subject's deformation, "
        f"voxels (default {defaults['deformation_voxels']})",
    )
    g.add_argument(
        "--control", type=int, help=f"control points per axis of the large part (default {defaults['n_control']})"
    )
    g.add_argument(
        "--fine-deformation",
        type=float,
        help=f"largest control-point displacement of the fine part, voxels; 0 = none "
        f"(default {defaults['fine_deformation_voxels']})",
    )
    g.add_argument(
        "--fine-control",
        type=int,
        help=f"control points per axis of the fine part (default {defaults['fine_control']})",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)


def _add_datasets_parser(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("datasets", help="list the public datasets (sources, licences, pairs)")
    ds.set_defaults(func=_cmd_datasets)


def _add_download_parser(sub: argparse._SubParsersAction) -> None:
    dl = sub.add_parser("download", help="download a public dataset's files (checksum-verified, resumable)")
    dl.add_argument("dataset", help="dataset name (see `crd datasets`)")
    dl.add_argument("folder", type=Path, help="folder for the downloaded files")
    dl.add_argument("--accept-terms", action="store_true", help="accept the dataset's terms (oasis, lpba40)")
    dl.add_argument("--url", action="append", metavar="FILE=URL", help="download FILE from a mirror")
    dl.add_argument("--checksum", action="append", metavar="FILE=HASH", help="pin FILE's checksum (sha256:/md5:...)")
    dl.add_argument("--retries", type=int, default=5, help="retries after a dropped connection (default 5)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    dl.set_defaults(func=_cmd_download)


def _add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    ck = sub.add_parser("check-data", help="check that a dataset folder holds what the configuration asks for")
    ck.add_argument("folder", type=Path, help="the dataset folder (canonical layout, with dataset.json)")
    ck.add_argument("--source", required=True, help="synth, or a public dataset's name (see `crd datasets`)")
    ck.add_argument("--generate", help="synth: the config's generate options (JSON, or a YAML/JSON file)")
    ck.add_argument("--preprocess", help="a public dataset: the config's preprocess options (JSON or a file)")
    ck.add_argument("--asker", default="the configuration", help="who asks, for the message (default: %(default)s)")
    ck.add_argument("--remedy", default="", help="what to do on a mismatch, for the message")
    ck.add_argument("--out", type=Path, help="write what was checked here (JSON) when it matches")
    ck.set_defaults(func=_cmd_check_data)

    pr = sub.add_parser("prepare", help="preprocess downloaded files into the canonical layout")
    pr.add_argument("dataset", help="dataset name (see `crd datasets`)")
    pr.add_argument("sources", type=Path, help="folder holding the downloaded (or placed) files")
    pr.add_argument("out", type=Path, help="dataset folder to write (canonical layout)")
    pr.add_argument("--options", help="preprocess options (`crd datasets` lists them): JSON object or YAML/JSON file")
    pr.add_argument("--threads", type=int, default=1, help="subjects processed at once (default 1)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_prepare)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a method's model")
    t.add_argument("--data", required=True, help="dataset folder (canonical layout)")
    t.add_argument("--out", required=True, help="checkpoint to write")
    _add_model(t)
    t.add_argument("--objective", choices=["unsupervised", "distill"], help="default: the method file's TRAINING")
    t.add_argument("--settings", help="train settings: JSON object or a YAML/JSON file (see TrainSettings)")
    t.add_argument("--iterations", type=int, help="override the number of iterations")
    t.add_argument("--lr", type=float, help="override the learning rate")
    t.add_argument("--seed", type=int, help="override the seed")
    t.add_argument("--init", help="checkpoint that initialises the model")
    t.add_argument("--teacher", help="frozen teacher checkpoint (objective distill)")
    _add_common(t)
    t.set_defaults(func=_cmd_train)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="score a method on a dataset's test pairs")
    e.add_argument("--data", required=True, help="dataset folder (canonical layout)")
    e.add_argument("--out", required=True, help="tidy CSV to write (+ .json sidecar, .example.nii.gz)")
    _add_model(e)
    e.add_argument("--checkpoint", help="trained checkpoint (omit for methods without weights)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="pairs to score (default test)")
    e.add_argument(
        "--seed",
        type=int,
        help="training seed recorded in the table (default: the checkpoint's; 0 for methods without weights)",
    )
    _add_common(e)
    e.set_defaults(func=_cmd_evaluate)


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="build results/report.html from evaluation tables")
    r.add_argument("--tables", nargs="+", required=True, help="evaluation CSVs (with .json sidecars), any seeds")
    r.add_argument("--histories", nargs="*", help="training histories (crd train's <model>.history.csv)")
    r.add_argument("--out", required=True, help="HTML file to write")
    r.add_argument("--baseline", default="hr", help="method the ratios are relative to (default hr)")
    r.add_argument("--title", default="crd-bench report", help="report title")
    r.add_argument("--bench", help="crd bench table (CSV) for the efficiency section")
    r.set_defaults(func=_cmd_report)


def _add_import_official_parser(sub: argparse._SubParsersAction) -> None:
    o = sub.add_parser("import-official", help="convert the CRD authors' released weights into a checkpoint")
    o.add_argument("src", help="the authors' state dict (.pth from BlaiseBrain/CRD_registration ckpt/)")
    o.add_argument("dst", help="crd-bench checkpoint to write")
    o.add_argument(
        "--kind", required=True, choices=["lr", "fst"], help="lr: naive low-resolution model; fst: the teacher"
    )
    o.set_defaults(func=_cmd_import_official)


def _add_register_parser(sub: argparse._SubParsersAction) -> None:
    rg = sub.add_parser("register", help="register a moving image to a fixed image with a checkpoint")
    rg.add_argument(
        "--checkpoint",
        help="crd-bench checkpoint (crd train or crd import-official); omit it for a method without a network "
        "given by --method-file (its register_pair, e.g. baselines/ants-syn.py)",
    )
    rg.add_argument("--fixed", required=True, help="fixed image (NIfTI or any format nibabel reads)")
    rg.add_argument("--moving", required=True, help="moving image, on the fixed image's grid")
    rg.add_argument("--out-warped", required=True, help="warped moving image to write (.nii or .nii.gz)")
    rg.add_argument("--out-flow", help="displacement field to write: (D, H, W, 3) voxels, channels D,H,W")
    rg.add_argument("--moving-labels", help="label map of the moving image (warped with nearest neighbour)")
    rg.add_argument("--out-warped-labels", help="warped label map to write (with --moving-labels)")
    rg.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    rg.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    rg.add_argument(
        "--method-file",
        help="the method file (baselines/<name>.py) of a checkpoint whose network that file brings (build_model), "
        "or of a method without a network (register_pair, then no --checkpoint)",
    )
    rg.add_argument(
        "--normalisation",
        choices=["minmax", "none"],
        help="intensity scaling before the network (default: what the checkpoint records; none: images already "
        "prepared as the weights expect)",
    )
    rg.add_argument(
        "--array-order",
        choices=["stored", "reversed"],
        help="the axis order the network is fed in (default: what the checkpoint records; stored: the file's "
        "array as nibabel reads it, reversed: its axes reversed, as SimpleITK reads it and the CRD authors' "
        "weights expect); the outputs are on the files' grid either way",
    )
    rg.set_defaults(func=_cmd_register)


def _add_metrics_parser(sub: argparse._SubParsersAction) -> None:
    mt = sub.add_parser("metrics", help="score a registration result from files (Dice, HD95, ASSD, Jacobian)")
    mt.add_argument("--fixed-labels", required=True, help="label map of the fixed image (NIfTI)")
    mt.add_argument("--warped-labels", required=True, help="moving label map warped onto the fixed grid (NIfTI)")
    mt.add_argument("--flow", help="displacement field (D, H, W, 3), voxels, channels D,H,W (as crd register writes)")
    mt.add_argument("--labels", help="comma-separated labels to score (default: every nonzero label of either map)")
    spacing = mt.add_mutually_exclusive_group()
    spacing.add_argument(
        "--spacing-from-header",
        action="store_true",
        help="voxel size (mm) for HD95/ASSD from the fixed label map's header (the default)",
    )
    spacing.add_argument(
        "--spacing", type=float, nargs=3, metavar=("SD", "SH", "SW"), help="voxel size in mm instead of the header's"
    )
    mt.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    mt.set_defaults(func=_cmd_metrics)


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="latency and memory of every method's inference (and a training step)")
    b.add_argument("--methods-dir", default="baselines", help="plugin folder (default baselines)")
    b.add_argument("--methods", nargs="+", default=["hr", "lr", "hr-half", "fst", "crd", "identity"])
    b.add_argument("--sizes", nargs="+", default=["160x192x224"], help="volume sizes DxHxW (batch 1)")
    b.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--repeats", type=int, default=5, help="timed calls after warm-up (default 5)")
    b.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    b.add_argument("--checkpoints-dir", help="folder of <method>.pt weights (default: random init)")
    b.add_argument("--bf16", action="store_true", help="also measure bf16 autocast (a separate case)")
    b.add_argument("--channels-last", action="store_true", help="also measure channels-last 3D (a separate case)")
    b.add_argument("--compile", action="store_true", help="also measure torch.compile (a separate case)")
    b.add_argument("--cuda-graphs", action="store_true", help="also measure CUDA-graph replay (CUDA only)")
    b.add_argument(
        "--tf32",
        action="store_true",
        help="also measure with TF32 convolutions and matrix products, PyTorch's default for cuDNN "
        "(CUDA only; the fp32 case is true float32)",
    )
    b.add_argument("--train-step", action="store_true", help="also time one training step per method (fp32)")
    b.add_argument(
        "--isolate",
        choices=["auto", "process", "none"],
        default="auto",
        help="one subprocess per case (auto: on the CPU only)",
    )
    b.add_argument(
        "--keep-going",
        action="store_true",
        help="record a failing case (metric failed = 1, the error in the sidecar) and go on; exit 2 at the end"
        " (a case out of memory is always recorded as out_of_memory = 1 and the bench goes on)",
    )
    b.add_argument("--out", required=True, help="tidy CSV to write (+ .json sidecar)")
    b.set_defaults(func=_cmd_bench)


def _add_methods_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("methods", help="list the method plugins")
    m.add_argument("--folder", default="baselines", help="plugin folder (default baselines)")
    m.set_defaults(func=_cmd_methods)


def build_parser() -> argparse.ArgumentParser:
    from crd import __version__

    parser = argparse.ArgumentParser(prog="crd", description="crd-bench: cross-resolution distillation benchmark")
    parser.add_argument("--version", action="version", version=f"crd-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate_parser(sub)
    _add_datasets_parser(sub)
    _add_download_parser(sub)
    _add_prepare_parser(sub)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_report_parser(sub)
    _add_import_official_parser(sub)
    _add_register_parser(sub)
    _add_metrics_parser(sub)
    _add_bench_parser(sub)
    _add_methods_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """An error as one line; an operating-system error as ``<file>: <reason>``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crd`` console script; returns the exit status."""
    from crd.errors import CrdError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CrdError, ValueError, OSError) as exc:  # OSError: permission denied, disk full, ...
        if os.environ.get("CRD_DEBUG"):
            raise
        print(f"crd {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
