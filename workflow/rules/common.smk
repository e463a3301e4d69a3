# Shared helpers of the rules: config validation, method plugins, paths. Imports no torch.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))
# Jobs run `python -m crd` from this checkout (also inside --use-conda environments).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from crd.methods import MethodError, load_methods  # noqa: E402  (stdlib-only module)
from crd.workflow_config import ConfigError, validate_config  # noqa: E402

try:
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    METHODS = load_methods(REPO / config["baselines"], config["methods"])
except (ConfigError, MethodError) as _exc:
    raise WorkflowError(f"invalid configuration: {_exc}") from None

CRD = "python -m crd"
DATA = config["data_root"]
DOWNLOADS = config["downloads"]
RESULTS = config["results"]
DATASETS = list(config["datasets"])
ENV = "../envs/crd.yaml"
REPORTED = list(config["methods"])
GENERIC = [m for m, s in METHODS.items() if s.rule_file is None]
TRAINED = [m for m in GENERIC if METHODS[m].has_checkpoint]
PLUGIN_RULE_FILES = [str(s.rule_file) for s in METHODS.values() if s.rule_file is not None]


def _alternatives(names):
    """A wildcard regex matching exactly these names (never empty)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!)"


def dataset_dir(dataset):
    return f"{DATA}/{dataset}"


SEEDS = [int(s) for s in config["seeds"]]


def seed_dir(dataset, seed):
    """Everything one training seed produces for one dataset: models/, eval/."""
    return f"{RESULTS}/{dataset}/seed{seed}"


def model_path(dataset, method, seed):
    return f"{seed_dir(dataset, seed)}/models/{method}.pt"


def history_path(dataset, method, seed):
    """The training history `crd train` writes beside the checkpoint (crd.train.history_path)."""
    return f"{seed_dir(dataset, seed)}/models/{method}.history.csv"


def log_path(dataset, seed, name):
    """One log per job: {results}/logs/<dataset>/seed<seed>/<name>.log."""
    return f"{RESULTS}/logs/{dataset}/seed{seed}/{name}.log"


def trained_on(dataset):
    """The dataset whose models evaluate `dataset` (itself, or its `train_on`)."""
    return config["datasets"][dataset].get("train_on") or dataset


def _check_datasets():
    for name, spec in config["datasets"].items():
        other = spec.get("train_on")
        if other is not None and other not in config["datasets"]:
            raise WorkflowError(
                f"invalid configuration: datasets.{name}.train_on: {other!r} is not a dataset of "
                f"this config ({', '.join(config['datasets'])})"
            )
        if other is not None and config["datasets"][other].get("train_on"):
            raise WorkflowError(f"invalid configuration: datasets.{name}.train_on: {other!r} itself has train_on")
        if spec["source"] in ("sliver", "lspig") and other is None:
            raise WorkflowError(
                f"invalid configuration: datasets.{name}: {spec['source']} is a test-only set; "
                f"set train_on to the dataset whose models it evaluates (e.g. lits)"
            )
        if spec["source"] != "synth" and "generate" in spec:
            raise WorkflowError(f"invalid configuration: datasets.{name}.generate applies to source synth only")


_check_datasets()


def eval_path(dataset, method, seed, ext="csv"):
    return f"{seed_dir(dataset, seed)}/eval/{method}.{ext}"


def report_path():
    return f"{RESULTS}/report.html"


def train_settings(method, seed):
    """config train block < the method file's TRAIN < config method_train[method]; the seed from
    the DAG's seed wildcard."""
    settings = dict(config["train"])
    settings.update(METHODS[method].train)
    settings.update(config.get("method_train", {}).get(method, {}))
    settings["seed"] = int(seed)
    return settings


def show_log_on_error(cmd):
    """Run `cmd` with its output appended to {log}; on failure, print the log's end on stderr too,
    so the job's message (e.g. what to download or accept) shows in Snakemake's output."""
    return f"( {cmd} ) >> {{log:q}} 2>&1 || {{{{ tail -n 5 {{log:q}} >&2; exit 1; }}}}"


def mem_mb(stage):
    return config["resources"]["mem_mb"][stage]


GPU = config["resources"]["gpu"]
