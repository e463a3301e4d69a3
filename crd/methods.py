"""Method plugins: one file per method in ``baselines/`` says what the method is and needs.

A method file ``baselines/<name>.py`` is plain Python holding a module docstring (the method's
description) and these names (only ``MODEL`` is required)::

    MODEL = {"kind": "lowres", "width": 1.0}   # crd.models.build_model config; None if the
                                               # method brings its own rule file
    TRAINING = "unsupervised"                  # "unsupervised", "distill" or None (no training)
    INIT = None                                # method whose trained weights initialise it
    TEACHER = None                             # frozen teacher method ("distill" only)
    TRAIN = {}                                 # overrides of config.yaml's train settings
    ORACLE_OF = None                           # an oracle (MODEL kind "x2-oracle"): the trained
                                               # method whose field it restricts, same seed
    SEED_DEPENDENT = False                     # no training, yet its result depends on the seed

A method without training (``TRAINING = None``, not an oracle: ``identity``, a classical tool)
gives the same result under every training seed, so the workflow evaluates it once per dataset,
with the first configured seed, and the report sets that one evaluation beside every seed of the
others (``MethodSpec.evaluated_once``; ``crd evaluate`` records ``seed_independent`` in its
sidecar). A method without training whose result does depend on the seed it is given (random
sampling, a rule that trains something itself) sets ``SEED_DEPENDENT = True`` and is evaluated
once per seed like a trained method.

An oracle is no method: it has no training and uses another method's trained network at test time
(``crd.models.oracle``: the x2 ceiling, e.g. ``baselines/x2-oracle@fst.py``). It is evaluated with
that method's checkpoint, reported as a ceiling and never benched.

A method can bring its own network: a ``MODEL`` whose ``kind`` is not one of crd-bench's and a
function ``build_model(config) -> torch.nn.Module`` in the same file (import torch inside it, so
that the workflow can read the file without torch). The network follows the contract of
``crd.models.contract`` (``model(fixed, moving)`` -> field, ``size_multiple``, ``config``); its
checkpoints rebuild wherever the method file is given (``--method-file``, or the workflow), never
from code named in a checkpoint.

The CRD scheme applies to any network whose file brings it in this way and whose class names its
decoder features (``feature_modules``, ``crd.models.scheme.HookedFeatures``): a file of two
names derives each of the three constructions from that file, with no copy of the network::

    SCHEME = "lr"                 # "lr": the naive x2 low-resolution model over the network
                                  # "fst": the feature-shifted teacher (initialised from the trained network)
                                  # "crd": lr distilled from fst with crd.recipes.DISTILLATION
    BACKBONE = "monai-voxelmorph" # the method file of the network (same folder)

named ``<SCHEME>@<BACKBONE>.py`` (e.g. ``baselines/crd@monai-voxelmorph.py``), as crd-bench's own
``lr``, ``fst`` and ``crd`` are over ``hr``'s backbone.

A method may also bring ``baselines/<name>.smk``: a Snakemake rule file that produces
``results/{dataset}/seed{seed}/eval/<name>.csv`` (+ ``.json``, ``.example.nii.gz``) itself; the
generic train/evaluate rules then leave that method alone. A method without a network
(``MODEL = None``, e.g. a classical tool) brings such a rule file and, so that its rule can score it
with ``crd evaluate --method-file`` like every other method, a function::

    def register_pair(fixed, moving, *, spacing, seed, threads):  # (D, H, W) float32 arrays
        return field  # (3, D, H, W) displacement in voxels of the fixed grid: moving(p + u(p))

(import the tool inside it). The file name is the method name everywhere (config, wildcards, tables).

This module imports nothing but the standard library, so the Snakefile can read the plugins
without torch.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MethodSpec", "MethodError", "load_method", "load_methods", "training_order"]

TRAININGS = ("unsupervised", "distill", None)


class MethodError(ValueError):
    """A method file is malformed, or the methods' dependencies are inconsistent."""


@dataclass(frozen=True)
class MethodSpec:
    """What one method is: its model, how it is trained, and which methods it needs."""

    name: str
    path: Path
    description: str
    model: dict[str, Any] | None
    training: str | None = None
    init: str | None = None
    teacher: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    rule_file: Path | None = None
    builder: Callable[[dict[str, Any]], Any] | None = None
    register_pair: Callable[..., Any] | None = None
    oracle_of: str | None = None
    scheme: str | None = None
    backbone: MethodSpec | None = None
    seed_dependent: bool = False

    @property
    def needs(self) -> list[str]:
        """Methods whose trained checkpoints this one needs (init first, then teacher, then the
        method an oracle restricts)."""
        return [m for m in (self.init, self.teacher, self.oracle_of) if m]

    @property
    def is_oracle(self) -> bool:
        """True for an oracle (``ORACLE_OF``): a ceiling evaluated with another method's network."""
        return self.oracle_of is not None

    @property
    def evaluated_with(self) -> str | None:
        """The method whose trained checkpoint ``crd evaluate`` is given: its own, an oracle's
        ``ORACLE_OF``, or ``None`` (no checkpoint)."""
        return self.name if self.has_checkpoint else self.oracle_of

    @property
    def evaluated_once(self) -> bool:
        """True for a method whose result no training seed changes (no training, not an oracle, not
        ``SEED_DEPENDENT``): evaluated once per dataset, that evaluation standing for every seed."""
        return self.training is None and not self.is_oracle and not self.seed_dependent

    @property
    def has_checkpoint(self) -> bool:
        """True if the generic ``train`` rule produces ``models/<name>.pt`` for it."""
        return self.rule_file is None and self.training is not None


#: the CRD scheme's constructions a ``SCHEME`` method file can name
SCHEMES = ("lr", "fst", "crd")


def load_method(path: Path) -> MethodSpec:
    """Read one method file; errors name the file and the bad entry."""
    path = Path(path)
    try:
        ns = runpy.run_path(str(path))
    except Exception as exc:
        raise MethodError(f"{path}: cannot be read as a method file: {exc}") from exc
    if "SCHEME" in ns:
        return _scheme_method(path, ns)
    name = path.stem
    rule_file = path.with_suffix(".smk")
    rule_file = rule_file if rule_file.is_file() else None
    if "MODEL" not in ns:
        raise MethodError(f"{path}: a method file must define MODEL (a model config dict or None)")
    model = ns["MODEL"]
    if model is not None and (not isinstance(model, dict) or "kind" not in model):
        raise MethodError(f"{path}: MODEL must be a dict with a 'kind' key or None, got {model!r}")
    if model is None and rule_file is None:
        raise MethodError(
            f"{path}: MODEL is None, so the method must bring its rule file {path.with_suffix('.smk').name}"
        )
    training = ns.get("TRAINING")
    if training not in TRAININGS:
        raise MethodError(f"{path}: TRAINING must be one of {TRAININGS}, got {training!r}")
    teacher, init = ns.get("TEACHER"), ns.get("INIT")
    if training == "distill" and not teacher:
        raise MethodError(f"{path}: TRAINING = 'distill' needs a TEACHER method")
    if teacher and training != "distill":
        raise MethodError(f"{path}: TEACHER is only used with TRAINING = 'distill'")
    train = ns.get("TRAIN", {}) or {}
    if not isinstance(train, dict):
        raise MethodError(f"{path}: TRAIN must be a dict of train-setting overrides, got {train!r}")
    builder = ns.get("build_model")
    if builder is not None and not callable(builder):
        raise MethodError(f"{path}: build_model must be a function build_model(config) -> model")
    if builder is not None and model is None:
        raise MethodError(f"{path}: build_model needs a MODEL dict (its config, with a 'kind')")
    register_pair = _register_pair(path, ns, model, training)
    oracle_of = _oracle_of(path, ns, model, training, rule_file)
    seed_dependent = ns.get("SEED_DEPENDENT", False)
    if not isinstance(seed_dependent, bool):
        raise MethodError(f"{path}: SEED_DEPENDENT must be True or False, got {seed_dependent!r}")
    if seed_dependent and (training is not None or oracle_of is not None):
        raise MethodError(f"{path}: SEED_DEPENDENT is for methods without training (a trained method or an oracle "
                          "is evaluated once per seed anyway); remove it")  # fmt: skip
    description = (ns.get("__doc__") or "").strip()
    return MethodSpec(
        name, path, description, model, training, init, teacher, dict(train), rule_file, builder, register_pair,
        oracle_of, seed_dependent=seed_dependent,
    )


def _scheme_method(path: Path, ns: dict[str, Any]) -> MethodSpec:
    """A ``SCHEME`` file: one of the CRD scheme's constructions over the network of ``BACKBONE``'s
    method file, derived as crd-bench's ``lr`` / ``fst`` / ``crd`` are over ``hr``'s backbone."""
    from crd.recipes import DISTILLATION  # standard library only

    scheme, backbone_name = ns.get("SCHEME"), ns.get("BACKBONE")
    if scheme not in SCHEMES:
        raise MethodError(f"{path}: SCHEME must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if not isinstance(backbone_name, str) or not backbone_name:
        raise MethodError(f"{path}: a SCHEME file needs BACKBONE, the name of the network's method file")
    if path.stem != f"{scheme}@{backbone_name}":
        raise MethodError(f"{path}: a SCHEME file is named <SCHEME>@<BACKBONE>.py: {scheme}@{backbone_name}.py")
    extra = sorted(set(ns) & {"MODEL", "TRAINING", "INIT", "TEACHER", "ORACLE_OF", "SEED_DEPENDENT", "build_model",
                              "register_pair"})
    if extra:
        raise MethodError(f"{path}: a SCHEME file derives everything from its BACKBONE; remove {', '.join(extra)}")
    backbone_path = path.parent / f"{backbone_name}.py"
    if not backbone_path.is_file():
        raise MethodError(f"{path}: BACKBONE {backbone_name!r} has no method file {backbone_path}")
    backbone = load_method(backbone_path)
    if backbone.model is None or backbone.builder is None or backbone.training != "unsupervised":
        raise MethodError(f"{path}: BACKBONE {backbone_name!r} must bring its own trained network (MODEL, "
                          "build_model, TRAINING = 'unsupervised'); crd-bench's own backbone has lr, fst, "
                          "crd")  # fmt: skip
    train = {**backbone.train, **(ns.get("TRAIN") or {})}
    lowres = {"kind": "scheme-lr", "backbone": dict(backbone.model), "factor": 2}
    if scheme == "lr":
        model, training, init, teacher = lowres, "unsupervised", None, None
    elif scheme == "fst":
        model, training, init, teacher = {"kind": "scheme-fst", "backbone": dict(backbone.model)}, "unsupervised", \
            backbone_name, None  # fmt: skip
    else:
        model, training, init, teacher = lowres, "distill", f"lr@{backbone_name}", f"fst@{backbone_name}"
        train = {**dict(DISTILLATION), **(ns.get("TRAIN") or {})}
    description = (ns.get("__doc__") or "").strip()
    return MethodSpec(path.stem, path, description, model, training, init, teacher, train, None, None, None, None,
                      scheme, backbone)  # fmt: skip


#: the model kind of an oracle (crd.models.oracle.GridOracle.kind)
ORACLE_KIND = "x2-oracle"


def _oracle_of(path: Path, ns: dict[str, Any], model: dict[str, Any] | None, training: str | None,
               rule_file: Path | None) -> str | None:  # fmt: skip
    """The file's ``ORACLE_OF`` (None without one), checked against its other entries."""
    oracle_of = ns.get("ORACLE_OF")
    kind = (model or {}).get("kind")
    if oracle_of is None:
        if kind == ORACLE_KIND:
            raise MethodError(f"{path}: MODEL kind {ORACLE_KIND!r} needs ORACLE_OF, the trained method it restricts")
        return None
    if not isinstance(oracle_of, str) or not oracle_of:
        raise MethodError(f"{path}: ORACLE_OF must be a method name, got {oracle_of!r}")
    if kind != ORACLE_KIND or training is not None or rule_file is not None:
        raise MethodError(f"{path}: ORACLE_OF is for an oracle: MODEL = {{'kind': {ORACLE_KIND!r}, ...}}, "
                          "TRAINING = None, no rule file")  # fmt: skip
    return oracle_of


def _register_pair(path: Path, ns: dict[str, Any], model: dict[str, Any] | None, training: str | None):
    """The file's ``register_pair`` (None without one): only for a method without a network."""
    register_pair = ns.get("register_pair")
    if register_pair is None:
        return None
    if not callable(register_pair):
        raise MethodError(f"{path}: register_pair must be a function register_pair(fixed, moving, *, spacing, seed, "
                          "threads) -> field")  # fmt: skip
    if model is not None or training is not None:
        raise MethodError(
            f"{path}: register_pair is for methods without a network (MODEL = None, TRAINING = None); "
            "a network goes in MODEL (and build_model)"
        )
    return register_pair


def load_methods(folder: Path, names: list[str] | None = None) -> dict[str, MethodSpec]:
    """Load the method files of ``folder`` (all, or ``names`` and what they need), checked for
    unknown dependencies and cycles. Keeps the order of ``names`` (dependencies are added)."""
    folder = Path(folder)
    available = {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}
    wanted = list(names) if names is not None else list(available)
    specs: dict[str, MethodSpec] = {}
    queue = list(wanted)
    while queue:
        name = queue.pop(0)
        if name in specs:
            continue
        if name not in available:
            raise MethodError(
                f"unknown method {name!r}: no file {folder / (name + '.py')}; "
                f"available: {', '.join(available) or 'none'}"
            )
        spec = load_method(available[name])
        specs[name] = spec
        queue.extend(spec.needs)
    for spec in specs.values():
        for dep in spec.needs:
            if not specs[dep].has_checkpoint:
                raise MethodError(f"{spec.path}: needs {dep!r}, which produces no checkpoint to use")
    training_order(specs)  # raises on cycles
    return specs


def training_order(specs: dict[str, MethodSpec]) -> list[str]:
    """Method names ordered so that every method comes after the methods it needs."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise MethodError(f"methods depend on each other in a cycle: {' -> '.join(trail + (name,))}")
        state[name] = 1
        for dep in specs[name].needs:
            visit(dep, trail + (name,))
        state[name] = 2
        order.append(name)

    for name in specs:
        visit(name, ())
    return order
