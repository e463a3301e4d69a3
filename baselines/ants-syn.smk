# ants-syn's own rule (the rule route, README "Adding a method": a method file with MODEL = None and this
# file beside it). The Snakefile includes it when ants-syn is among the configured methods; the
# names of workflow/rules/common.smk (eval_path, log_path, ...) are in scope.
#
# What a method's rule must produce, per dataset and seed: eval_path(dataset, <method>, seed) with
# its .json sidecar and .example.nii.gz, as `crd evaluate` writes them; the report finds them there.
# Here `crd evaluate` itself does it, calling ants-syn.py's register_pair for each test pair, so the
# warping, the metrics and the time/memory measurement are those of every other method. What the
# rule adds is its own software environment (antspyx pins numpy < 2.4, so --use-conda gives it
# workflow/envs/ants.yaml) and ANTs' ITK thread count (threads.evaluate, like torch's for a network).


rule ants_syn_evaluate:
    input:
        data=lambda wc: dataset_dir(wc.dataset),
        checked=lambda wc: data_check_path(wc.dataset),
        method_file=method_file("ants-syn"),
    output:
        table=eval_path("{dataset}", "ants-syn", "{seed}", "csv"),
        sidecar=eval_path("{dataset}", "ants-syn", "{seed}", "json"),
        example=eval_path("{dataset}", "ants-syn", "{seed}", "example.nii.gz"),
    log:
        log_path("{dataset}", "{seed}", "evaluate_ants-syn"),
    wildcard_constraints:
        dataset=_alternatives(DATASETS),
        seed=r"\d+",
    params:
        threads=config["threads"]["evaluate"],
    threads: workflow.cores  # like every evaluation: nothing else runs while it is timed
    resources:
        mem_mb=mem_mb("evaluate"),
    conda:
        "../workflow/envs/ants.yaml"
    shell:
        show_log_on_error(
            "python -m crd evaluate --data {input.data:q} --method-file {input.method_file:q}"
            " --seed {wildcards.seed:q} --out {output.table:q} --device cpu"
            " --threads {params.threads:q} --no-progress"
        )
