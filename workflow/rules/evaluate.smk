# Score every method on the test pairs, once per seed: tidy table + sidecar + example warped image.
# An evaluation job reserves every local core, so no other job disturbs its timings; torch
# itself uses `threads.evaluate` threads (recorded in the sidecar).


rule evaluate:
    input:
        data=lambda wc: dataset_dir(wc.dataset),
        # its own trained checkpoint; an oracle's, that of the method it restricts (same seed)
        checkpoint=lambda wc: (
            model_path(trained_on(wc.dataset), METHODS[wc.method].evaluated_with, wc.seed)
            if METHODS[wc.method].evaluated_with
            else []
        ),
    output:
        table=eval_path("{dataset}", "{method}", "{seed}", "csv"),
        sidecar=eval_path("{dataset}", "{method}", "{seed}", "json"),
        example=eval_path("{dataset}", "{method}", "{seed}", "example.nii.gz"),
    log:
        log_path("{dataset}", "{seed}", "evaluate_{method}"),
    wildcard_constraints:
        method=_alternatives(GENERIC),
        dataset=_alternatives(DATASETS),
        seed=r"\d+",
    params:
        method_file=lambda wc: method_file(wc.method),
        checkpoint=lambda wc, input: _option("--checkpoint", input.checkpoint),
        torch_threads=config["threads"]["evaluate"],
        device=config["device"],
    threads: workflow.cores
    resources:
        mem_mb=mem_mb("evaluate"),
        gpu=GPU,
    conda:
        ENV
    shell:
        show_log_on_error(
            "python -m crd evaluate --data {input.data:q} --method-file {params.method_file:q} {params.checkpoint}"
            " --seed {wildcards.seed:q} --out {output.table:q} --device {params.device:q}"
            " --threads {params.torch_threads:q} --no-progress"
        )
