# Score every method on the test pairs: tidy table + sidecar + example warped image.
# An evaluation job reserves every local core, so no other job disturbs its timings; torch
# itself uses `threads.evaluate` threads (recorded in the sidecar).


rule evaluate:
    input:
        data=lambda wc: dataset_dir(wc.dataset),
        checkpoint=lambda wc: (
            model_path(trained_on(wc.dataset), wc.method) if METHODS[wc.method].has_checkpoint else []
        ),
    output:
        table=eval_path("{dataset}", "{method}", "csv"),
        sidecar=eval_path("{dataset}", "{method}", "json"),
        example=eval_path("{dataset}", "{method}", "example.nii.gz"),
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_{{method}}.log",
    wildcard_constraints:
        method=_alternatives(GENERIC),
        dataset=_alternatives(DATASETS),
    params:
        method_file=lambda wc: METHODS[wc.method].path,
        checkpoint=lambda wc, input: f"--checkpoint {input.checkpoint}" if input.checkpoint else "",
        torch_threads=config["threads"]["evaluate"],
        device=config["device"],
    threads: workflow.cores
    resources:
        mem_mb=mem_mb("evaluate"),
        gpu=GPU,
    conda:
        ENV
    shell:
        "{CRD} evaluate --data {input.data} --method-file {params.method_file} {params.checkpoint}"
        " --out {output.table} --device {params.device} --threads {params.torch_threads}"
        " --log {log} --no-progress"
