# The single self-contained HTML report, from the tidy evaluation tables (every method, dataset and
# seed), the training histories and the bench table.


rule report:
    input:
        tables=[eval_path(d, m, s) for d in DATASETS for m in REPORTED for s in SEEDS],
        sidecars=[eval_path(d, m, s, "json") for d in DATASETS for m in REPORTED for s in SEEDS],
        examples=[eval_path(d, m, s, "example.nii.gz") for d in DATASETS for m in REPORTED for s in SEEDS],
        histories=_histories(),
        bench=bench_path(),
    output:
        report_path(),
    log:
        f"{LOGS}/report.log",
    params:
        baseline=config["report_baseline"],
    threads: 1
    resources:
        mem_mb=mem_mb("report"),
    conda:
        ENV
    shell:
        show_log_on_error(
            "python -m crd report --tables {input.tables:q} --histories {input.histories:q} --out {output:q}"
            " --baseline {params.baseline:q} --bench {input.bench:q}"
        )
