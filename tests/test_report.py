"""Tests for crd.report.build: the single-file HTML report read from tidy tables + sidecars."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from crd.report import build_report
from crd.report.build import load_table
from report_tables import METHODS, PROFILE, make_tables


def _means(tables: list[Path], metric: str = "dice") -> pd.Series:
    """Independent reference: mean over pairs of the pair-level values, by (dataset, method)."""
    df = pd.concat(pd.read_csv(p) for p in tables)
    df = df[(df["metric"] == metric) & df["label"].isna()]
    return df.groupby(["dataset", "method"])["value"].mean()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[list[Path], str, Path]:
    root = tmp_path_factory.mktemp("report")
    tables = make_tables(root)
    out = build_report(tables, root / "out" / "report.html")
    return tables, out.read_text(encoding="utf-8"), out


def test_single_self_contained_file(report):
    _, html, out = report
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left behind
    # per dataset: 2 scatter plots + qualitative figure + per-label plot
    assert html.count('src="data:image/png;base64,') == 2 * 4
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html
    for ds in ("ds_a", "ds_b"):
        assert f"<h2>{ds}</h2>" in html
    for m in METHODS:
        assert f'<td class="method">{m}<' in html


def test_mean_dice_ratios_and_best(report):
    tables, html, _ = report
    dice = _means(tables)
    for (_, _), value in dice.items():
        assert f"{value:.3f} ± " in html
    for ds in ("ds_a", "ds_b"):
        assert f"{dice[ds, 'crd'] / dice[ds, 'hr']:.2f}×" in html
        best = dice[ds].max()
        assert f"<strong>{best:.3f} ± " in html
    time = _means(tables, "time_s")
    assert f"{time['ds_a', 'crd'] / time['ds_a', 'hr']:.2f}×" in html
    # edge cases are shown, not hidden: lr has one vanished label in each dataset
    assert re.search(r'<td class="flag">0 / 1</td>', html)
    assert "Generated " in html and "crd-bench 0." in html
    assert "Fake CPU" in html and "2.5.0" in html


def _sentence(html: str, a: str, b: str) -> str:
    m = re.search(rf"<li>({a} vs {b}: Dice [^<]*)</li>", html)
    assert m, f"no {a} vs {b} sentence"
    return m.group(1)


def test_comparison_crd_beats_lr(report):
    tables, html, _ = report
    dice = _means(tables)
    s = _sentence(html, "crd", "lr")
    crd, lr = round(dice["ds_a", "crd"], 3), round(dice["ds_a", "lr"], 3)
    assert crd > lr
    assert s.startswith(f"crd vs lr: Dice {crd:.3f} vs {lr:.3f} (+{crd - lr:.3f})")
    assert "crd beats lr on mean Dice" in s
    assert "does not beat" not in s


def test_comparison_crd_does_not_beat_lr(tmp_path):
    worse = dict(PROFILE, crd=(0.74, 0.42, 850.0, 1_200_000))
    tables = make_tables(tmp_path, {"ds_w": worse})
    html = build_report(tables, tmp_path / "r.html").read_text()
    dice = _means(tables)
    crd, lr = round(dice["ds_w", "crd"], 3), round(dice["ds_w", "lr"], 3)
    s = _sentence(html, "crd", "lr")
    assert s.startswith(f"crd vs lr: Dice {crd:.3f} vs {lr:.3f} (−{lr - crd:.3f})")
    assert "crd does not beat lr on mean Dice" in s
    assert "crd does not beat hr on mean Dice" in _sentence(html, "crd", "hr")


def test_missing_baseline_omits_ratios(tmp_path):
    tables = make_tables(tmp_path, {"ds": {k: PROFILE[k] for k in ("lr", "crd")}})
    html = build_report(tables, tmp_path / "r.html", baseline="hr").read_text()
    assert "absent from this dataset; ratios are omitted" in html
    assert 'class="ratio"' not in html
    assert "crd vs hr" not in html and "crd vs lr: Dice" in html


def test_cuda_memory_shows_allocator_and_nvml(tmp_path):
    tables = make_tables(tmp_path, {"ds": PROFILE}, device="cuda")
    html = build_report(tables, tmp_path / "r.html").read_text()
    assert "alloc " in html and "NVML " in html and "CPU RSS" not in html
    assert "Fake GPU" in html


def test_text_is_escaped(tmp_path):
    tables = make_tables(tmp_path, {"<b>evil</b>": {"hr": PROFILE["hr"]}})
    html = build_report(tables, tmp_path / "r.html", title="A & B <i>").read_text()
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
    assert "A &amp; B &lt;i&gt;" in html


def test_no_example_is_reported(tmp_path):
    tables = make_tables(tmp_path, {"ds": PROFILE})
    side = tables[0].with_suffix(".json")
    data = json.loads(side.read_text())
    data["example"] = None
    side.write_text(json.dumps(data))
    html = build_report(tables, tmp_path / "r.html").read_text()
    assert "no example in the sidecar for: identity" in html
    assert html.count("data:image/png;base64,") == 4


def test_malformed_tables_raise_with_file_name(tmp_path):
    tables = make_tables(tmp_path, {"ds": {"hr": PROFILE["hr"], "lr": PROFILE["lr"]}})
    out = tmp_path / "r.html"
    out.write_text("old")
    bad = tables[1]
    pd.read_csv(bad).drop(columns=["metric"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*missing column.*metric"):
        build_report(tables, out)
    assert out.read_text() == "old"  # nothing written on failure

    bad.write_text("dataset,method,fixed,moving,metric,label,value\n")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*no rows"):
        load_table(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_table(bad)
    bad.write_text("dataset,method,fixed,moving,metric,label,value\nds,lr,a,b,dice,1,NaN\n")
    assert load_table(bad).frame["value"].isna().all()  # a spelled-out NaN is a value, not an error
    bad.write_text("dataset,method,fixed,moving,metric,label,value\nds,lr,a,b,dice,,oops\n")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*non-numeric"):
        load_table(bad)
    with pytest.raises(ValueError, match="nope.csv.*not found"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="also in"):
        build_report([tables[0], tables[0]], out)
