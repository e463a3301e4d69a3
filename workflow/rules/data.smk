# Datasets into the canonical layout (docs/conventions.md): <data_root>/<dataset>/{images,labels,...}.
SYNTH = [d for d, spec in config["datasets"].items() if spec["source"] in catalog.GENERATED]


rule generate_synth:
    output:
        directory(f"{DATA}/{{dataset}}"),
    log:
        f"{LOGS}/{{dataset}}/generate.log",
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
        "python -m crd generate synth {output:q} {params.args} --overwrite --no-progress > {log:q} 2>&1"


# Public datasets: download (checksum-verified, resumable; partial files kept between runs) ->
# prepare (one job per dataset, subjects in parallel). Bring-your-own sets (crd.data.catalog) have no
# download: their prepare job reads the files in `path` and, when missing, says where to get them.
DOWNLOADED = [d for d, s in config["datasets"].items() if s["source"] in catalog.DOWNLOADED]
PLACED = [d for d, s in config["datasets"].items() if s["source"] in catalog.BRING_YOUR_OWN]


rule download:
    output:
        f"{DOWNLOADS}/{{dataset}}/download.done",
    log:
        f"{LOGS}/{{dataset}}/download.log",
    wildcard_constraints:
        dataset=_alternatives(DOWNLOADED),
    params:
        folder=lambda wc: source_dir(wc.dataset),
        source=lambda wc: config["datasets"][wc.dataset]["source"],
        terms=lambda wc: "--accept-terms" if config["datasets"][wc.dataset]["accept_terms"] else "",
        files=lambda wc: download_args(wc.dataset),
    threads: 1
    resources:
        mem_mb=mem_mb("download"),
    conda:
        ENV
    shell:
        show_log_on_error(
            "python -m crd download {params.source:q} {params.folder:q} {params.terms} {params.files} --no-progress"
            " && touch {output:q}"
        )


rule prepare:
    input:
        lambda wc: [] if wc.dataset in PLACED else f"{DOWNLOADS}/{wc.dataset}/download.done",
    output:
        directory(f"{DATA}/{{dataset}}"),
    log:
        f"{LOGS}/{{dataset}}/prepare.log",
    wildcard_constraints:
        dataset=_alternatives(DOWNLOADED + PLACED),
    params:
        folder=lambda wc: source_dir(wc.dataset),
        source=lambda wc: config["datasets"][wc.dataset]["source"],
        options=lambda wc: json.dumps(config["datasets"][wc.dataset]["preprocess"], sort_keys=True),
    threads: config["threads"]["prepare"]
    resources:
        mem_mb=mem_mb("prepare"),
    conda:
        ENV
    shell:
        show_log_on_error(
            "python -m crd prepare {params.source:q} {params.folder:q} {output:q} --options {params.options:q}"
            " --threads {threads:q} --overwrite --no-progress"
        )


# Every job that reads a dataset needs this check: the folder's dataset.json must record the options
# the configuration asks for (synth's generate, a public set's source and preprocess). A folder made
# by hand, or by another configuration sharing data_root, stops the run here with one line naming the
# key and both values, before any training. The options are params, so changing them reruns it.


localrules:
    check_data,  # a few file reads: on the submitting host, not a cluster job


rule check_data:
    input:
        data=lambda wc: dataset_dir(wc.dataset),
    output:
        data_check_path("{dataset}"),
    log:
        f"{LOGS}/{{dataset}}/check_data.log",
    wildcard_constraints:
        dataset=_alternatives(DATASETS),
    params:
        args=lambda wc: data_check_args(wc.dataset),
    threads: 1
    resources:
        mem_mb=mem_mb("prepare"),
    conda:
        ENV
    shell:
        show_log_on_error("python -m crd check-data {input.data:q} {params.args} --out {output:q}")
