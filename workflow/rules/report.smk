# The single self-contained HTML report, from the tidy evaluation tables (every method, dataset and
# seed; once for a method without training, whose result no seed changes), the training
# histories and the bench table.


rule report:
    input:
        tables=reported_evals("csv"),
        sidecars=reported_evals("json"),
        examples=reported_evals("example.nii.gz"),
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
