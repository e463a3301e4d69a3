# crd-bench: cross-resolution distillation benchmark.
#   snakemake --cores 2                  # the embedded default (config.yaml), packages installed
#   snakemake --cores 8 --use-conda      # same, each rule in the pinned env workflow/envs/crd.yaml
# The DAG: dataset -> train hr, lr, hr-half, ... -> fst(hr) -> crd(fst, lr) -> evaluate -> report.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default; a --configfile (e.g. config/paper.yaml) replaces it as a whole, so
# its datasets are not merged with the default's synth (use --config for single overrides).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"


# Methods that bring their own rule file (baselines/<name>.smk) are included here.
for _plugin_rules in PLUGIN_RULE_FILES:

    include: _plugin_rules


rule all:
    input:
        report_path(),
    default_target: True
