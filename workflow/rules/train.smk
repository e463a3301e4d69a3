# Training of every method that has weights: unsupervised (hr, lr, hr-half, fst) or distilled (crd).
# What a method needs (init / teacher checkpoints) comes from its file in baselines/.


def _needed(wc, what):
    name = getattr(METHODS[wc.method], what)
    return model_path(wc.dataset, name) if name else []


rule train:
    input:
        data=lambda wc: dataset_dir(wc.dataset),
        init=lambda wc: _needed(wc, "init"),
        teacher=lambda wc: _needed(wc, "teacher"),
    output:
        model_path("{dataset}", "{method}"),
    log:
        f"{RESULTS}/{{dataset}}/logs/train_{{method}}.log",
    wildcard_constraints:
        method=_alternatives(TRAINED),
        dataset=_alternatives(DATASETS),
    params:
        method_file=lambda wc: METHODS[wc.method].path,
        settings=lambda wc: json.dumps(train_settings(wc.method), sort_keys=True),
        init=lambda wc, input: f"--init {input.init}" if input.init else "",
        teacher=lambda wc, input: f"--teacher {input.teacher}" if input.teacher else "",
        device=config["device"],
    threads: config["threads"]["train"]
    resources:
        mem_mb=mem_mb("train"),
        gpu=GPU,
    conda:
        ENV
    shell:
        "{CRD} train --data {input.data} --method-file {params.method_file} --out {output}"
        " --settings {params.settings:q} {params.init} {params.teacher}"
        " --device {params.device} --threads {threads} --log {log}"
