# Shared helpers of the rules: config validation, method plugins, paths, and every function the
# rule files use (the rule files hold rules only). Imports no torch.
import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))
# Jobs run `python -m crd` from this checkout, also inside --use-conda environments (where crd is
# not installed): every job's shell puts the checkout first on PYTHONPATH, after Snakemake's
# default bash strict mode (which a shell prefix replaces).
shell.prefix("set -euo pipefail; export PYTHONPATH={REPO:q}${{PYTHONPATH:+:$PYTHONPATH}}; ")

from crd.data import catalog  # noqa: E402  (stdlib-only module)
from crd.methods import MethodError, load_methods  # noqa: E402  (stdlib-only module)
from crd.workflow_config import ConfigError, generate_arguments, train_block, validate_config  # noqa: E402

try:
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    METHODS = load_methods(REPO / config["baselines"], config["methods"])
except (ConfigError, MethodError) as _exc:
    raise WorkflowError(f"invalid configuration: {_exc}") from None

DATA = config["data_root"]
DOWNLOADS = config["downloads"]
RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"  # every job's log is under it (stdout and stderr)
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
    return f"{LOGS}/{dataset}/seed{seed}/{name}.log"


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
        protocol = (spec.get("preprocess") or {}).get("protocol")
        trains = protocol in catalog.TRAINS_UNDER.get(spec["source"], ())
        if spec["source"] in catalog.TEST_ONLY and other is None and not trains:
            under = "".join(f" (or preprocess: {{protocol: {p}}}, which trains on it)"
                            for p in catalog.TRAINS_UNDER.get(spec["source"], ()))
            raise WorkflowError(
                f"invalid configuration: datasets.{name}: {spec['source']} is a test-only set; "
                f"set train_on to the dataset whose models it evaluates (e.g. lits){under}"
            )
        if spec["source"] not in catalog.GENERATED and "generate" in spec:
            raise WorkflowError(f"invalid configuration: datasets.{name}.generate applies to source synth only")


_check_datasets()


def method_file(method):
    """The method's file, relative to the working directory when it lies below it (running in the
    checkout), so that a moved or copied checkout keeps its jobs' inputs and params and Snakemake
    reruns nothing; absolute otherwise (a working directory elsewhere)."""
    path = Path(METHODS[method].path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def data_check_path(dataset):
    """What `crd check-data` confirmed about the dataset folder (the rule check_data); every job that
    reads the dataset needs it, so none trains on or scores data made with other options."""
    return f"{RESULTS}/{dataset}/data_check.json"


def data_check_args(dataset):
    """`crd check-data` options: the source, the config's generate/preprocess options, who asks, what to do."""
    spec = config["datasets"][dataset]
    source = spec["source"]
    if source in catalog.GENERATED:
        options = ["--generate", json.dumps(spec.get("generate", {}), sort_keys=True)]
        asker = f"config datasets.{dataset}.generate"
        remedy = (f"delete {dataset_dir(dataset)} and run again (the workflow generates it from the configuration; "
                  "deterministic), or set data_root to another folder")  # fmt: skip
    else:
        options = ["--preprocess", json.dumps(spec.get("preprocess", {}), sort_keys=True)]
        asker = f"config datasets.{dataset} (source {source}, preprocess)"
        remedy = (f"delete {dataset_dir(dataset)} and run again (the workflow prepares it from "
                  f"{source_dir(dataset)}), or set data_root to another folder")  # fmt: skip
    return shlex.join(["--source", source, *options, "--asker", asker, "--remedy", remedy])


def eval_path(dataset, method, seed, ext="csv"):
    return f"{seed_dir(dataset, seed)}/eval/{method}.{ext}"


def eval_seeds(method):
    """The seeds a method is evaluated under: every configured seed, or only the first for a method
    that no seed changes (no training: identity, ants-syn; crd.methods.MethodSpec.evaluated_once),
    whose one evaluation the report sets beside every seed of the others."""
    return SEEDS[:1] if METHODS[method].evaluated_once else SEEDS


def reported_evals(ext="csv"):
    """Every evaluation output the report reads, per dataset, reported method and its seeds."""
    return [eval_path(d, m, s, ext) for d in DATASETS for m in REPORTED for s in eval_seeds(m)]


def report_path():
    return f"{RESULTS}/report.html"


def _train_block(method):
    """config train block < the method file's TRAIN < config method_train[method]."""
    return train_block(config, method, METHODS[method].train)


#: keys of a train block that are the workflow's own (how the job runs), not crd train settings
WORKFLOW_TRAIN_KEYS = ("processes", "threads")


def train_settings(method, seed):
    """The merged train block (crd train's settings) with the seed from the DAG's seed wildcard,
    without the workflow's own keys (`processes`: train_processes, `threads`: train_threads)."""
    settings = _train_block(method)
    settings["seed"] = int(seed)
    for key in WORKFLOW_TRAIN_KEYS:
        settings.pop(key, None)
    return settings


def train_threads(method):
    """Torch threads of each training process of `method`: its merged train block's `threads`, else
    threads.train."""
    return int(_train_block(method).get("threads", config["threads"]["train"]))


def train_processes(method):
    """How many data-parallel processes train `method` (its merged train block's `processes`)."""
    return int(_train_block(method).get("processes", 1))


def train_launcher(method):
    """`python -m` for one process, torchrun's module launcher for several (one node)."""
    n = train_processes(method)
    if n == 1:
        return "python -m"
    return f"python -m torch.distributed.run --standalone --nproc-per-node {n} -m"


def train_priority(method):
    """1 + the longest chain of trained methods that wait for `method`'s checkpoint (hr -> fst ->
    crd: hr 3, fst 2, crd 1): Snakemake starts the longest chain first, so the 2-core default does
    not train the side methods while the chain waits (measured: a run that started hr last took
    13 min instead of about 9)."""
    dependants = [m for m in TRAINED if method in METHODS[m].needs]
    return 1 + max((train_priority(m) for m in dependants), default=0)


def show_log_on_error(cmd):
    """Run `cmd` with its output appended to {log}; on failure, print the log's end on stderr too,
    so the job's message (e.g. what to download or accept) shows in Snakemake's output."""
    return f"( {cmd} ) >> {{log:q}} 2>&1 || {{{{ tail -n 5 {{log:q}} >&2; exit 1; }}}}"


def mem_mb(stage):
    return config["resources"]["mem_mb"][stage]


GPU = config["resources"]["gpu"]


# Used by train.smk and evaluate.smk.


def _option(flag, path):
    """`flag path`, the path shell-quoted, or nothing when there is no path."""
    return f"{flag} {shlex.quote(str(path))}" if path else ""


# Used by data.smk.


def generate_args(dataset):
    """`crd generate` options from the dataset's `generate:` block, each value shell-quoted."""
    return shlex.join(generate_arguments(config["datasets"][dataset].get("generate", {})))


def source_dir(dataset):
    """Where a dataset's downloads (or bring-your-own files) are."""
    return config["datasets"][dataset].get("path") or f"{DOWNLOADS}/{dataset}"


def _file_args(dataset, key, flag):
    items = config["datasets"][dataset].get(key, {})
    return " ".join(f"{flag} {shlex.quote(f'{k}={v}')}" for k, v in sorted(items.items()))


def download_args(dataset):
    """`crd download` options from the dataset's `urls:` and `checksums:`, shell-quoted."""
    return " ".join([_file_args(dataset, "urls", "--url"), _file_args(dataset, "checksums", "--checksum")])


# Used by train.smk.


def _needed(wc, what):
    """The checkpoint of the method's `init` or `teacher` (same dataset and seed), or none."""
    name = getattr(METHODS[wc.method], what)
    return model_path(wc.dataset, name, wc.seed) if name else []


# Used by bench.smk (and report.smk).


def bench_path(ext="csv"):
    return f"{RESULTS}/bench/bench.{ext}"


def bench_flags():
    """`crd bench` switches from the config's `bench:` block."""
    switches = ["train-step"] if config["bench"]["train_step"] else []
    return " ".join(f"--{s}" for s in [*switches, *config["bench"]["options"]])


# Used by report.smk.


def _histories():
    """Training histories of the reported methods and what they need, per dataset that trains."""
    trained = [m for m in TRAINED if m in REPORTED or any(m in METHODS[r].needs for r in REPORTED)]
    sources = sorted({trained_on(d) for d in DATASETS})
    return [history_path(d, m, s) for d in sources for m in trained for s in SEEDS]
