"""Tests for crd.report: the single-file HTML report read from tidy tables, sidecars and histories.

The statistics the report prints are checked against independent references on the same tables
(scipy's Wilcoxon test, a hand-written Holm step-down, numpy means), not against crd.stats."""

from __future__ import annotations

import html as htmllib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from crd.report import build_report
from crd.tidy import load_history, load_table
from report_tables import METHODS, PROFILE, make_history, make_tables


def _frame(tables: list[Path]) -> pd.DataFrame:
    return pd.concat(pd.read_csv(p) for p in tables)


def _means(tables: list[Path], metric: str = "dice") -> pd.Series:
    """Independent reference: mean over pairs of the seed-averaged pair-level values."""
    df = _frame(tables)
    df = df[(df["metric"] == metric) & df["label"].isna()]
    per_pair = df.groupby(["dataset", "method", "fixed", "moving"])["value"].mean()
    return per_pair.groupby(["dataset", "method"]).mean()


def _pair_values(tables: list[Path], dataset: str, method: str, metric: str = "dice") -> pd.Series:
    df = _frame(tables)
    df = df[(df.dataset == dataset) & (df.method == method) & (df.metric == metric) & df.label.isna()]
    return df.groupby(["fixed", "moving"])["value"].mean()


def _text(html: str) -> str:
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", html))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[list[Path], str, Path]:
    root = tmp_path_factory.mktemp("report")
    tables = make_tables(root)
    out = build_report(tables, root / "out" / "report.html")
    return tables, out.read_text(encoding="utf-8"), out


def test_single_self_contained_file(report):
    _, html, out = report
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left behind
    # per dataset: per-pair distribution, 2 scatter plots, qualitative figure, per-label plot
    assert html.count('src="data:image/png;base64,') == 2 * 5
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
    assert "one training seed: the tests below are over test pairs" in html  # the caveat of a 1-seed run


def test_dsc30_is_the_30th_percentile_of_pair_dice(report):
    tables, html, _ = report
    for ds in ("ds_a", "ds_b"):
        pairs = _pair_values(tables, ds, "crd")
        assert f">{np.quantile(pairs.to_numpy(), 0.3):.3f}<" in html.replace("\n", "")


def _holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment, written out independently of crd.stats."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _stats_rows(html: str, dataset: str) -> list[list[str]]:
    section = html[html.index(f'<h2>{dataset}</h2>') :]
    table = section[section.index('<table class="stats">') : section.index("</table>", section.index('class="stats"'))]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]
    return [[_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]


def test_comparisons_match_scipy_and_holm(tmp_path):
    """A clear win (crd over lr), a clear loss (lr vs hr) and noise: the report's p-values are
    scipy's paired Wilcoxon on the seed-averaged pair values, adjusted by Holm over every row."""
    profile = {"hr": (0.82, 2.1, 3400.0, 1), "lr": (0.76, 0.4, 820.0, 1), "crd": (0.80, 0.42, 850.0, 1)}
    tables = make_tables(tmp_path, {"ds": profile}, n_pairs=14, seeds=(0, 1), noise=0.02)
    html = build_report(tables, tmp_path / "r.html").read_text()
    rows = _stats_rows(html, "ds")
    # named first (crd vs lr, crd vs hr), then lr vs hr; Dice and HD95 each
    assert [(r[0], r[1]) for r in rows] == [
        ("crd vs lr", "Dice"), ("crd vs lr", "HD95"), ("crd vs hr", "Dice"), ("crd vs hr", "HD95"),
        ("lr vs hr", "Dice"), ("lr vs hr", "HD95"),
    ]  # fmt: skip
    raw = []
    for r in rows:
        a, b = r[0].split(" vs ")
        metric = "dice" if r[1] == "Dice" else "hd95_mm"
        va, vb = _pair_values(tables, "ds", a, metric), _pair_values(tables, "ds", b, metric)
        raw.append(wilcoxon(va - vb[va.index]).pvalue)
        places = 3 if metric == "dice" else 2
        assert r[4] == ("+" if (va - vb).mean() >= 0 else "−") + f"{abs((va - vb).mean()):.{places}f}"
        wins, ties, losses = int(((va - vb) > 0).sum()), int(((va - vb) == 0).sum()), int(((va - vb) < 0).sum())
        assert r[8] == f"{wins}/{ties}/{losses}" and r[9] == "14"
        assert "over 2 seeds" in r[10]
    for r, p, p_holm in zip(rows, raw, _holm(raw), strict=True):
        assert float(r[6].replace("< ", "")) == pytest.approx(p, rel=0.05, abs=1e-4), r
        assert float(r[7].replace("< ", "")) == pytest.approx(p_holm, rel=0.05, abs=1e-4), r
        # the verdict follows the adjusted p-value and the sign, never "does not beat"
        diff_positive = not r[4].startswith("−")
        if p_holm <= 0.05:
            assert r[11].startswith("significantly " + ("higher" if diff_positive else "lower")), r
        else:
            assert r[11] == "no significant difference", r
    assert rows[0][11] == "significantly higher (better)"  # crd over lr on Dice
    assert rows[4][11] == "significantly lower (worse)"  # lr under hr on Dice
    assert "does not beat" not in html


def test_bootstrap_interval_covers_the_mean_difference(tmp_path):
    tables = make_tables(tmp_path, {"ds": PROFILE}, n_pairs=10)
    html = build_report(tables, tmp_path / "r.html").read_text()
    for row in _stats_rows(html, "ds"):
        low, high = (float(x.replace("−", "-")) for x in row[5].strip("[]").split(", "))
        diff = float(row[4].replace("−", "-"))
        assert low <= diff <= high, row


def test_named_comparison_sentence_states_interval_test_and_pairs(report):
    tables, html, _ = report
    sentence = re.search(r"<li>(crd vs lr: Dice [^<]*)</li>", html)
    assert sentence, "no crd vs lr sentence"
    text = htmllib.unescape(sentence.group(1))
    dice = _means(tables)
    assert text.startswith(f"crd vs lr: Dice {dice['ds_a', 'crd']:.3f} vs {dice['ds_a', 'lr']:.3f}, Δ ")
    assert "95 % CI" in text and re.search(r"Holm-adjusted p (= [0-9.]+|< 0\.0001);", text) and "of 4 pairs" in text
    assert re.search(r": (significantly (higher|lower) \((better|worse)\)|no significant difference) \(", text)


def test_seeds_are_averaged_per_pair_and_their_spread_shown(tmp_path):
    tables = make_tables(tmp_path, {"ds": PROFILE}, seeds=(0, 1, 2))
    html = build_report(tables, tmp_path / "r.html").read_text()
    assert "3 training seeds (0, 1, 2)" in html and "one training seed:" not in html
    df = _frame(tables)
    crd = df[(df.method == "crd") & (df.metric == "dice") & df.label.isna()]
    per_seed = crd.groupby("seed")["value"].mean()
    assert f"seeds: {per_seed.mean():.3f} ± {per_seed.std(ddof=1):.3f} (3)" in html
    assert f"{_means(tables)['ds', 'crd']:.3f} ± " in html


def test_training_curves_from_histories(tmp_path):
    tables = make_tables(tmp_path, {"ds": PROFILE})
    histories = [make_history(tmp_path / "h", "ds", m, distilled=m == "crd") for m in ("hr", "lr", "crd")]
    html = build_report(tables, tmp_path / "r.html", histories=histories).read_text()
    assert "<h3>Training curves</h3>" in html
    assert html.count('src="data:image/png;base64,') == 6
    assert load_history(histories[0])["iteration"].min() == 0
    bad = tmp_path / "bad.history.csv"
    bad.write_text("dataset,method,seed,iteration,metric,value\nds,hr,0,x,val_dice,0.5\n")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*non-numeric iteration"):
        build_report(tables, tmp_path / "r2.html", histories=[bad])


def test_summary_across_datasets_ranks_methods(report):
    tables, html, _ = report
    assert "Summary across datasets" in html
    summary = html[html.index("Summary across datasets") : html.index("<h2>ds_a</h2>")]
    dice = _means(tables)
    hd95 = _means(tables, "hd95_mm")
    ranks = {}
    for m in METHODS:
        per = [dice[ds].rank(ascending=False)[m] for ds in ("ds_a", "ds_b")]
        per += [hd95[ds].rank(ascending=True)[m] for ds in ("ds_a", "ds_b")]
        ranks[m] = np.mean(per)
    for m, r in ranks.items():
        assert re.search(rf"<td>{m}</td>.*?<td>{r:.2f}</td>", summary, re.S), m


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
    assert html.count("data:image/png;base64,") == 5


def test_malformed_tables_raise_with_file_name(tmp_path):
    tables = make_tables(tmp_path, {"ds": {"hr": PROFILE["hr"], "lr": PROFILE["lr"]}})
    out = tmp_path / "r.html"
    out.write_text("old")
    bad = tables[1]
    pd.read_csv(bad).drop(columns=["metric"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*missing column.*metric"):
        build_report(tables, out)
    assert out.read_text() == "old"  # nothing written on failure

    header = "dataset,method,seed,fixed,moving,metric,label,value\n"
    bad.write_text(header)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*no rows"):
        load_table(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_table(bad)
    bad.write_text(header + "ds,lr,0,a,b,dice,1,NaN\n")
    assert load_table(bad).frame["value"].isna().all()  # a spelled-out NaN is a value, not an error
    bad.write_text(header + "ds,lr,0,a,b,dice,,oops\n")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*non-numeric"):
        load_table(bad)
    bad.write_text(header + "ds,lr,zero,a,b,dice,,0.5\n")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*non-numeric seed"):
        load_table(bad)
    bad.write_text(header + "ds,lr,0,a,b,dice,,0.5\nds,lr,1,a,b,dice,,0.5\n")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*one \(dataset, method, seed\)"):
        load_table(bad)
    with pytest.raises(ValueError, match="nope.csv.*not found"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="also in"):
        build_report([tables[0], tables[0]], out)


@pytest.mark.parametrize("clash", ["a table", "its sidecar", "a history"])
def test_the_report_never_replaces_its_inputs(tmp_path, clash):
    tables = make_tables(tmp_path, {"ds": {"hr": PROFILE["hr"], "lr": PROFILE["lr"]}})
    history = make_history(tmp_path, "ds", "hr")
    out = {"a table": tables[1], "its sidecar": tables[0].with_suffix(".json"), "a history": history}[clash]
    before = out.read_bytes()
    with pytest.raises(ValueError, match=f"--out {re.escape(str(out))} is the"):
        build_report(tables, out, histories=[history])
    assert out.read_bytes() == before


def test_a_method_still_improving_is_flagged_in_every_verdict_it_takes_part_in(tmp_path):
    """hr climbs steadily to its last checkpoint (still improving), lr and crd levelled off: the
    training table gives each run's status, and every comparison with hr, and only those, says
    that hr was still improving; the statuses and shares are the definition's (worked out here)."""
    tables = make_tables(tmp_path / "t", {"ds": PROFILE})
    climbing = [0.40 + 0.02 * i for i in range(11)]  # at iterations 0, 10, ..., 100
    level = [0.40, 0.50, 0.55, 0.57, 0.58, 0.58, 0.58, 0.58, 0.58, 0.58, 0.58]
    histories = [make_history(tmp_path / "h", "ds", "hr", curve=climbing),
                 make_history(tmp_path / "h", "ds", "lr", curve=level),
                 make_history(tmp_path / "h", "ds", "crd", curve=level)]  # fmt: skip
    html = build_report(tables, tmp_path / "r.html", histories=histories).read_text()
    text = _text(html)
    flag = "hr was still improving when its training ended (seed 0 of 1)"
    # the training table: last quarter (75, 100] = mean(0.56, 0.58, 0.60) = 0.58, the quarter before
    # (50, 75] = mean(0.52, 0.54) = 0.53; hr's share = (0.58 - 0.53) / (0.58 - 0.40) = 0.05 / 0.18 = 28 %
    assert re.search(r"hr\s+0\s+maximum \(100\)\s+—\s+0\.400\s+0\.600 @ 100\s+0\.580\s+\+0\.180\s+\+0\.050\s+28 %"
                     r"\s+still improving", text), text[text.find("did each network"):][:600]  # fmt: skip
    assert re.search(r"lr\s+0\s+maximum \(100\).*?0 %\s+plateau", text)
    rows = re.findall(r"<tr class=\"[a-z]*\"><td>([a-z-]+) vs ([a-z-]+)</td>.*?</tr>", html, flags=re.S)
    verdicts = re.findall(r"<tr class=\"[a-z]*\"><td>([a-z-]+ vs [a-z-]+)</td><td>(\w+)</td>.*?"
                          r"<td class=\"verdict \w+\">([^<]*)</td></tr>", html, flags=re.S)  # fmt: skip
    assert rows and len(verdicts) == len(rows)
    for pair, _metric, verdict in verdicts:
        assert ("(not at the plateau: hr)" in verdict) == ("hr" in pair.split(" vs ")), (pair, verdict)
    sentence = next(s for s in re.findall(r"<li>(crd vs hr:[^<]*)</li>", html))
    assert "Not a comparison at the plateau: " + flag in htmllib.unescape(sentence)
    assert "Not a comparison at the plateau" not in htmllib.unescape(re.findall(r"<li>(crd vs lr:[^<]*)</li>", html)[0])
