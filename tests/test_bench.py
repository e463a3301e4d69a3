"""crd bench: the efficiency table (smoke runs at a tiny size; no timing assertions)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from crd.bench import COLUMNS, parse_size, run_bench
from crd.cli import main
from crd.report import build_report
from report_tables import make_tables


def test_parse_size():
    assert parse_size("160x192x224") == (160, 192, 224)
    assert parse_size("32") == (32, 32, 32)
    with pytest.raises(ValueError, match="DxHxW"):
        parse_size("32xa")


def test_cli_smoke_subprocess_per_case(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    argv = ["bench", "--methods", "hr", "crd", "identity", "--sizes", "32x32x32", "--device", "cpu"]
    argv += ["--threads", "1", "--repeats", "1", "--warmup", "0", "--train-step", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "hr" in printed and "crd" in printed
    t = pd.read_csv(out)
    assert tuple(t.columns) == COLUMNS
    assert set(t.method) == {"hr", "crd", "identity"}
    assert set(t.options) == {"fp32"} and set(t.device) == {"cpu"} and set(t["size"]) == {"32x32x32"}
    for metric in ("latency_median_s", "latency_iqr_s", "peak_rss_mb", "process_peak_rss_mb", "params", "case_wall_s"):
        assert set(t[t.metric == metric].method) == {"hr", "crd", "identity"}, metric
    hr = t[t.method == "hr"]
    assert (hr[hr.value != 0].ratio_to_hr == 1.0).all()  # a zero (an IQR of one repeat) has no ratio
    assert hr[hr.value == 0].ratio_to_hr.isna().all()
    v = t.set_index(["method", "metric"])
    assert v.loc[("hr", "params"), "value"] == 320419
    assert v.loc[("crd", "params"), "ratio_to_hr"] == 1.0  # same backbone
    assert v.loc[("identity", "params"), "value"] == 0
    assert v.loc[("crd", "latency_median_s"), "value"] > 0
    # the training step: unsupervised for hr, distillation (teacher forward included) for crd
    assert ("hr", "train_step_s") in v.index and ("crd", "train_step_s") in v.index
    assert ("identity", "train_step_s") not in v.index
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["device"]["device"] == "cpu" and side["isolation"] == "subprocess per case"
    assert side["weights"] == {"hr": "random", "crd": "random", "identity": "random"}


def test_in_process_option_cases_are_separate(tmp_path):
    out = run_bench(
        "baselines",
        ["hr", "lr"],
        [(32, 32, 32)],
        tmp_path / "b.csv",
        device="cpu",
        repeats=1,
        warmup=0,
        options=["bf16"],
        threads=1,
        isolate="none",
        log=lambda _: None,
    )
    t = pd.read_csv(out)
    assert set(t.options) == {"fp32", "bf16"}
    for opt in ("fp32", "bf16"):
        r = t[(t.options == opt) & (t.method == "hr") & (t.metric == "latency_median_s")]
        assert len(r) == 1 and r.ratio_to_hr.iloc[0] == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cuda-graphs"], "needs a CUDA device"),
        (["--tf32"], "needs a CUDA device"),
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--sizes", "30x32x32"], "multiples of"),
        (["--repeats", "0"], "repeats >= 1"),
    ],
)
def test_bad_flags_are_refused(tmp_path, capsys, extra, message):
    argv = ["bench", "--device", "cpu", "--sizes", "32x32x32", "--out", str(tmp_path / "b.csv")]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.csv").exists()


@pytest.mark.parametrize("option, tf32_inside", [("tf32", True), ("fp32", False), ("bf16", False)])
def test_only_the_tf32_case_runs_with_tf32_and_the_settings_come_back(monkeypatch, option, tf32_inside):
    """The fp32 reference is true float32 (select_device turns TF32 off on CUDA); the ``tf32`` case
    alone turns it on for cuDNN and cuBLAS while it runs, and the bench's settings are restored."""
    import torch

    import crd.bench as B
    from crd.runtime import math_settings

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # as use_true_fp32 leaves them
    seen = []
    monkeypatch.setattr(B, "_run_case_on", lambda case, device: seen.append(math_settings()) or {"metrics": {}})
    try:
        B.run_case({"device": "cpu", "option": option})
        after = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert seen[0]["cudnn_allow_tf32"] is tf32_inside and seen[0]["matmul_allow_tf32"] is tf32_inside
    assert after == (False, False)


def test_the_sidecar_gives_an_fp32_cases_math_settings_not_an_option_cases(tmp_path, monkeypatch):
    """The sidecar's device block takes the math settings (TF32, ...) of an fp32 case, the
    reference, never those of an option case such as tf32, even when every fp32 case failed."""
    import crd.bench as B

    def run_case(case):
        if case["option"] == "fp32" and case["method"] == "hr":
            raise RuntimeError("fp32 hr failed")
        return {"metrics": {"latency_median_s": 1.0}, "weights": None, "process": {"ran_as": case["option"]}}

    monkeypatch.setattr(B, "run_case", run_case)
    for methods, expected in ((["hr"], None), (["hr", "identity"], "fp32")):
        out = run_bench(
            "baselines", methods, [(32, 32, 32)], tmp_path / "b.csv", device="cpu", repeats=1, warmup=0,
            options=["bf16"], isolate="none", keep_going=True, log=lambda line: None,
        )  # fmt: skip
        assert json.loads(out.with_suffix(".json").read_text())["device"].get("ran_as") == expected


def test_report_efficiency_section(tmp_path):
    tables = make_tables(tmp_path / "eval")
    rows = []
    for method, (sec, mb) in {"hr": (2.0, 1000.0), "crd": (0.3, 120.0)}.items():
        for metric, value in (("latency_median_s", sec), ("peak_rss_mb", mb), ("params", 320419.0)):
            base = {"latency_median_s": 2.0, "peak_rss_mb": 1000.0, "params": 320419.0}[metric]
            rows.append(("64x64x64", method, "fp32", "cpu", metric, value, value / base))
    bench = tmp_path / "bench.csv"
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(bench, index=False)
    html = build_report(tables, tmp_path / "r.html", bench=bench).read_text()
    assert "Efficiency" in html and "64x64x64, fp32 (cpu)" in html
    assert "0.15×" in html and "0.12×" in html  # crd's time and memory ratios to hr
    assert "Not benched" not in html
    from report_tables import add_oracle

    with_oracle = build_report(add_oracle(tables), tmp_path / "r3.html", bench=bench).read_text()
    assert "Not benched: x2-oracle@hr: oracles have no latency of their own" in with_oracle
    with pytest.raises(ValueError, match="bench table"):
        build_report(tables, tmp_path / "r2.html", bench=tmp_path / "missing.csv")


def test_the_schemes_methods_get_ratios_to_their_own_network(tmp_path):
    """crd@X, lr@X, fst@X: time and memory as ratios to X in the same run (X = monai-localnet here);
    other methods get no such column value, and a group without scheme methods no such column."""
    tables = make_tables(tmp_path / "eval")
    figures = {"monai-localnet": (0.40, 200.0), "lr@monai-localnet": (0.10, 50.0), "crd@monai-localnet": (0.10, 50.0),
               "fst@monai-localnet": (1.0, 500.0), "hr": (2.0, 1000.0)}  # fmt: skip
    rows = []
    for method, (sec, mb) in figures.items():
        for metric, value in (("latency_median_s", sec), ("peak_rss_mb", mb)):
            rows.append(("64x64x64", method, "fp32", "cpu", metric, value, float("nan")))
    bench = tmp_path / "bench.csv"
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(bench, index=False)
    html = build_report(tables, tmp_path / "r.html", bench=bench).read_text()
    assert "× its network (time / memory)" in html
    assert "0.25× / 0.25× (monai-localnet)" in html and "2.50× / 2.50× (monai-localnet)" in html
    assert html.count("(monai-localnet)</td>") == 3


def _failing_case(monkeypatch, failures):
    """Make ``run_case`` raise ``failures[method]`` for the named methods (in-process cases)."""
    import crd.bench as B

    real = B.run_case

    def run_case(case):
        if case["method"] in failures:
            raise failures[case["method"]]
        return real(case)

    monkeypatch.setattr(B, "run_case", run_case)


def test_a_case_out_of_memory_is_a_row_and_the_bench_goes_on(tmp_path, monkeypatch):
    import torch

    _failing_case(monkeypatch, {"lr": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")})
    out = run_bench(
        "baselines", ["hr", "lr", "identity"], [(32, 32, 32)], tmp_path / "b.csv",
        device="cpu", repeats=1, warmup=0, isolate="none", log=lambda line: None,
    )  # fmt: skip
    t = pd.read_csv(out)
    lr = t[t.method == "lr"].set_index("metric")
    assert set(lr.index) == {"out_of_memory", "case_wall_s"} and lr.loc["out_of_memory", "value"] == 1.0
    assert "latency_median_s" in set(t[t.method == "identity"].metric)  # the case after it ran
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["complete"] is True
    assert list(side["cases_not_ok"]) == ["32x32x32 fp32 lr"]
    assert side["cases_not_ok"]["32x32x32 fp32 lr"].startswith("out of memory: CUDA out of memory")
    from crd.bench import summary

    assert "lr          OUT OF MEMORY" in summary(out)
    html = build_report(make_tables(tmp_path / "eval"), tmp_path / "r.html", bench=out).read_text()
    assert '<tr><td>lr</td><td colspan="6">out of memory</td></tr>' in html


def test_other_failures_stop_the_bench_unless_keep_going(tmp_path, monkeypatch, capsys):
    _failing_case(monkeypatch, {"lr": RuntimeError("no compiler found")})
    out = tmp_path / "b.csv"
    argv = ["bench", "--methods", "hr", "lr", "identity", "--sizes", "32", "--device", "cpu", "--isolate", "none"]
    argv += ["--repeats", "1", "--warmup", "0", "--out", str(out)]
    with pytest.raises(RuntimeError, match="no compiler"):
        main(argv)
    # written after every case: the case before the failure is kept, the sidecar says incomplete
    assert set(pd.read_csv(out).method) == {"hr"}
    assert json.loads(out.with_suffix(".json").read_text())["complete"] is False

    assert main([*argv, "--keep-going"]) == 2
    err = capsys.readouterr().err
    assert "some cases failed" in err and "32x32x32 fp32 lr" in err
    t = pd.read_csv(out)
    assert set(t.method) == {"hr", "lr", "identity"}
    assert t[(t.method == "lr") & (t.metric == "failed")].value.tolist() == [1.0]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["complete"] is True and "no compiler found" in side["cases_not_ok"]["32x32x32 fp32 lr"]


def test_a_subprocess_case_out_of_memory_is_recognised():
    from crd.bench import _is_out_of_memory

    assert _is_out_of_memory(RuntimeError("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"))
    assert _is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9e12"))
    assert not _is_out_of_memory(RuntimeError("shape mismatch"))


def test_every_bench_option_is_a_cli_flag_and_a_config_value(capsys):
    """One list of options (crd.bench.OPTIONS): each has its ``crd bench --<option>`` flag and is
    a value the workflow config's ``bench.options`` accepts (the bench rule passes them as flags)."""
    import yaml

    from crd.bench import OPTIONS
    from repo_paths import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["bench"]["properties"]["options"]["items"]["enum"] == list(OPTIONS)
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert all(f"--{opt}" in text for opt in OPTIONS)
