# Training of every method that has weights, once per seed: unsupervised (hr, lr, hr-half, fst,
# ...) or distilled (crd, kd-hr, ...). What a method needs (init / teacher checkpoints of the same
# seed) comes from its file in baselines/. Each job writes the checkpoint and its training history.


rule train:
    input:
        data=lambda wc: dataset_dir(wc.dataset),
        checked=lambda wc: data_check_path(wc.dataset),
        init=lambda wc: _needed(wc, "init"),
        teacher=lambda wc: _needed(wc, "teacher"),
    output:
        model=model_path("{dataset}", "{method}", "{seed}"),
        history=history_path("{dataset}", "{method}", "{seed}"),
    log:
        log_path("{dataset}", "{seed}", "train_{method}"),
    wildcard_constraints:
        method=_alternatives(TRAINED),
        dataset=_alternatives(DATASETS),
        seed=r"\d+",
    params:
        method_file=lambda wc: method_file(wc.method),
        settings=lambda wc: json.dumps(train_settings(wc.method, wc.seed), sort_keys=True),
        init=lambda wc, input: _option("--init", input.init),
        teacher=lambda wc, input: _option("--teacher", input.teacher),
        device=config["device"],
        launcher=lambda wc: train_launcher(wc.method),
        torch_threads=lambda wc: train_threads(wc.method),
    # train.processes data-parallel processes (torchrun), each with threads.train threads (or the
    # method's method_train threads) and, with resources.gpu, its own GPU
    priority: lambda wc: train_priority(wc.method)
    threads: lambda wc: train_processes(wc.method) * train_threads(wc.method)
    resources:
        mem_mb=lambda wc: train_processes(wc.method) * mem_mb("train"),
        gpu=lambda wc: train_processes(wc.method) * GPU,
    conda:
        ENV
    shell:
        show_log_on_error(
            "{params.launcher} crd train --data {input.data:q} --method-file {params.method_file:q}"
            " --out {output.model:q} --settings {params.settings:q} {params.init} {params.teacher}"
            " --device {params.device:q} --threads {params.torch_threads:q} --no-progress"
        )
