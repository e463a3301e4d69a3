# The single self-contained HTML report, from the tidy evaluation tables and the bench table.


rule report:
    input:
        tables=[eval_path(d, m) for d in DATASETS for m in REPORTED],
        sidecars=[eval_path(d, m, "json") for d in DATASETS for m in REPORTED],
        examples=[eval_path(d, m, "example.nii.gz") for d in DATASETS for m in REPORTED],
        bench=bench_path(),
    output:
        report_path(),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        baseline=config["report_baseline"],
    threads: 1
    resources:
        mem_mb=mem_mb("report"),
    conda:
        ENV
    shell:
        "{CRD} report --tables {input.tables} --out {output} --baseline {params.baseline} --bench {input.bench} > {log} 2>&1"
