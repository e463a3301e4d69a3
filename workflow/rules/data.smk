# Datasets into the canonical layout (DESIGN.md): <data_root>/<dataset>/{images,labels,...}.
SYNTH = [d for d, spec in config["datasets"].items() if spec["source"] == "synth"]


def generate_args(dataset):
    g = config["datasets"][dataset].get("generate", {})
    args = []
    for key, value in g.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list) else [value]
        args.append(" ".join([flag] + [str(v) for v in values]))
    return " ".join(args)


rule generate_synth:
    output:
        directory(f"{DATA}/{{dataset}}"),
    log:
        f"{RESULTS}/logs/{{dataset}}/generate.log",
    wildcard_constraints:
        dataset=_alternatives(SYNTH),
    params:
        args=lambda wc: generate_args(wc.dataset),
    threads: 1
    resources:
        mem_mb=mem_mb("generate"),
    conda:
        ENV
    shell:
        "{CRD} generate synth {output} {params.args} --overwrite --no-progress > {log} 2>&1"
