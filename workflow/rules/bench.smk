# The efficiency bench: latency and memory of every reported method's inference (field + warp,
# batch 1, random inputs: timings do not depend on the weights) at each configured size, ratios to
# hr from the same run. A bench job reserves every local core, like evaluate, so nothing disturbs
# its timings; on the CPU each case runs in its own subprocess (crd.bench).

# an oracle (x2-oracle@...) has no latency of its own: it runs the method it restricts
BENCHED = [m for m in REPORTED if METHODS[m].model is not None and not METHODS[m].is_oracle]


rule bench:
    output:
        table=bench_path(),
        sidecar=bench_path("json"),
    log:
        f"{LOGS}/bench.log",
    params:
        methods=BENCHED,
        sizes=config["bench"]["sizes"],
        repeats=config["bench"]["repeats"],
        warmup=config["bench"]["warmup"],
        flags=bench_flags(),
        torch_threads=config["threads"]["bench"],
        device=config["device"],
        baselines=REPO / config["baselines"],
    threads: workflow.cores
    resources:
        mem_mb=mem_mb("bench"),
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m crd bench --methods-dir {params.baselines:q} --methods {params.methods:q} --sizes {params.sizes:q}"
        " --repeats {params.repeats:q} --warmup {params.warmup:q} {params.flags} --device {params.device:q}"
        " --threads {params.torch_threads:q} --out {output.table:q} > {log:q} 2>&1"
