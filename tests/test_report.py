"""Tests for crd.report: the single-file HTML report read from tidy tables, sidecars and histories.

The statistics the report prints are checked against an independent reference on the same tables
(tests/stats_reference.py: the documented bootstrap, interval, p-value, ties and Holm written out
with loops; pandas means), not against crd.stats."""

from __future__ import annotations

import html as htmllib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stats_reference as R
from crd.report import build_report
from crd.tidy import load_history, load_table
from report_tables import ALL_ORDERED, METHODS, PROFILE, make_designed_tables, make_history, make_tables


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
    assert "one training seed: the verdicts below are about these trained models" in html  # a 1-seed run's caveat


def test_dsc30_is_the_30th_percentile_of_pair_dice(report):
    tables, html, _ = report
    for ds in ("ds_a", "ds_b"):
        pairs = _pair_values(tables, ds, "crd")
        assert f">{np.quantile(pairs.to_numpy(), 0.3):.3f}<" in html.replace("\n", "")


def _stats_rows(html: str, dataset: str) -> list[list[str]]:
    """The cells of the comparison table's body rows (after its two header rows)."""
    section = html[html.index(f'<h2>{dataset}</h2>') :]
    start = section.index("<h3>Comparisons</h3>")
    start = section.index('<table class="stats">', start)
    table = section[start : section.index("</table>", start)]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[2:]
    return [[_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]


def _signed(x: float, places: int) -> str:
    return ("+" if x >= 0 else "−") + f"{abs(x):.{places}f}"


def _p_text(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else (f"{p:.2g}" if p < 0.1 else f"{p:.2f}")


def _per_seed_values(tables: list[Path], method: str, metric: str) -> dict[int, pd.Series]:
    df = _frame(tables)
    df = df[(df.method == method) & (df.metric == metric) & df.label.isna()]
    return {int(s): g.groupby(["fixed", "moving"])["value"].mean() for s, g in df.groupby("seed")}


def test_every_printed_comparison_figure_matches_an_independent_reference(tmp_path):
    """Rows of every strength (tests/report_tables.py, DESIGNED_SHIFTS): each figure of the table is
    recomputed from the CSVs with the reference bootstrap, Holm and verdict rule; the design's
    borderline rows make Bonferroni-for-Holm, a swapped p-value, pair resampling, an unresampled
    seed level, another interval level or a mean-sign direction print something else."""
    tables = make_designed_tables(tmp_path)
    html = build_report(tables, tmp_path / "r.html").read_text()
    rows = _stats_rows(html, "ds")
    assert [(r[0], r[1]) for r in rows] == [
        ("crd vs lr", "Dice"), ("crd vs lr", "HD95"), ("crd vs hr", "Dice"), ("crd vs hr", "HD95"),
        ("lr vs hr", "Dice"), ("lr vs hr", "HD95"),
    ]  # fmt: skip
    reference = []
    for r in rows:
        a, b = r[0].split(" vs ")
        metric, places, higher = ("dice", 3, True) if r[1] == "Dice" else ("hd95_mm", 2, False)
        va, vb = _pair_values(tables, "ds", a, metric), _pair_values(tables, "ds", b, metric)
        pairs = list(va.index)
        d = [R.difference(x, y) for x, y in zip(va, vb[va.index], strict=True)]
        models = R.replicates([d], pairs, resample_seeds=False, n_boot=9_999)
        sa, sb = _per_seed_values(tables, a, metric), _per_seed_values(tables, b, metric)
        cells = [[R.difference(x, y) for x, y in zip(sa[s][pairs], sb[s][pairs], strict=True)] for s in sorted(sa)]
        methods = R.replicates(cells, pairs, resample_seeds=True, n_boot=9_999)
        reference.append((r, places, higher, float(np.mean(d)), R.interval(models), R.p_value(models),
                          [float(np.mean(c)) for c in cells], R.interval(methods), R.p_value(methods), d))  # fmt: skip
    holm_models = R.holm([x[5] for x in reference])
    holm_methods = R.holm([x[8] for x in reference])
    for (r, places, higher, delta, ci, p, per_seed, mci, mp, d), ph, mph in zip(reference, holm_models, holm_methods,
                                                                                  strict=True):  # fmt: skip
        assert r[4] == _signed(delta, places), r
        # as methods (the headline, first), then as these models
        assert r[5] == ", ".join(_signed(x, places) for x in per_seed), r
        assert r[6] == f"[{_signed(mci[0], places)}, {_signed(mci[1], places)}]", r
        assert r[7] == _p_text(mph), r
        assert r[8] == R.verdict(mci, mph, higher, mp), r
        assert r[9] == f"[{_signed(ci[0], places)}, {_signed(ci[1], places)}]", r
        assert r[10] == _p_text(p) and r[11] == _p_text(ph), r
        assert r[12] == R.verdict(ci, ph, higher, p), r
        assert r[13] == f"{sum(x > 0 for x in d)}/{sum(x == 0 for x in d)}/{sum(x < 0 for x in d)}" and r[14] == "30"
    # the design covers every branch: a null row, Holm but not Bonferroni, models but not methods,
    # significant before Holm's correction only
    verdicts = [(r[12], r[8]) for r, *_ in reference]  # (as these models, as methods)
    assert ("no significant difference", "no significant difference") in verdicts
    bonferroni = [min(1.0, len(reference) * x[5]) for x in reference]
    assert any(ph <= 0.05 < pb for ph, pb in zip(holm_models, bonferroni, strict=True))
    assert ("significantly higher (worse)", "no significant difference (p ≤ 0.05 before Holm's correction)") in verdicts
    assert len({r[10] for r in rows}) >= 3  # distinct p-values: a swap between rows shows
    assert "6 subjects (each in 10 of 30 pairs)" in _text(html)  # the unit resampled is said


def test_the_headline_sentence_is_about_the_methods_when_there_are_seeds(tmp_path):
    tables = make_designed_tables(tmp_path)
    html = build_report(tables, tmp_path / "r.html").read_text()
    sentence = _text(re.search(r"<li>(crd vs hr: Dice [^<]*)</li>", html).group(1))
    assert "HD95 2.63 vs 2.57, Δ +0.05; as methods (3 seeds, per seed +0.05, +0.05, +0.06): 95 % CI +0.01 to +0.09: " \
        "no significant difference (p ≤ 0.05 before Holm's correction) (Holm-adjusted p = 0.054); as these trained " \
        "models (seed-averaged): 95 % CI +0.01 to +0.08: significantly higher (worse) (Holm-adjusted p = 0.035)" \
        in sentence, sentence
    # the verdict cell coloured is the methods' one (here not significant), not these models'
    assert re.search(r'<td class="verdict same">significantly higher \(worse\)</td>', html)
    assert re.search(r'<td class="verdict same">no significant difference \(p ≤ 0.05 before Holm', html)
    assert re.search(r'<td class="verdict worse">significantly lower \(worse\)</td>', html)  # crd vs hr Dice


def test_one_seed_verdicts_are_about_these_models(tmp_path):
    tables = make_designed_tables(tmp_path, seeds=(0,))
    html = build_report(tables, tmp_path / "r.html").read_text()
    assert all(len(r) == 11 for r in _stats_rows(html, "ds"))  # no columns about the methods
    assert "As methods" not in html and "As these trained models (test subjects redrawn)" in html
    assert "these trained models (one seed: nothing said about the methods)" in _text(html)


def test_a_constructed_skewed_loss_reads_consistently_in_the_report(tmp_path):
    """Issue 22's case through the whole report: crd better by 0.01 on 29 of 30 pairs, worse by 0.5 on one."""
    tables = make_tables(tmp_path, {"ds": {m: PROFILE[m] for m in ("hr", "lr", "crd")}}, pairs=ALL_ORDERED)
    from report_tables import set_pair_values

    lr = {p: 0.6 for p in ALL_ORDERED}
    crd = {p: 0.61 for p in ALL_ORDERED}
    crd[ALL_ORDERED[7]] = 0.1
    for csv in tables:
        method = csv.stem.split("__")[1]
        if method in ("lr", "crd"):
            set_pair_values(csv, "dice", lr if method == "lr" else crd)
    html = build_report(tables, tmp_path / "r.html").read_text()
    row = _stats_rows(html, "ds")[0]
    assert row[:5] == ["crd vs lr", "Dice", "0.593", "0.600", "−0.007"] and row[9] == "29/0/1"
    low, high = (float(x.replace("−", "-")) for x in row[5].strip("[]").split(", "))
    assert low < 0 < high and row[8] == "no significant difference"


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
    assert "95 % CI" in text and re.search(r"Holm-adjusted p (= [0-9.]+|< 0\.0001)\);", text) and "of 4 pairs" in text
    assert re.search(r": (significantly (higher|lower) \((better|worse)\)|no significant difference) \(", text)
    assert "these trained models (one seed: nothing said about the methods)" in text


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
                          r"<td class=\"verdict \w+\">([^<]*)</td>", html, flags=re.S)  # fmt: skip
    assert rows and len(verdicts) == len(rows)
    for pair, _metric, verdict in verdicts:
        assert ("(not at the plateau: hr)" in verdict) == ("hr" in pair.split(" vs ")), (pair, verdict)
    sentence = next(s for s in re.findall(r"<li>(crd vs hr:[^<]*)</li>", html))
    assert "Not a comparison at the plateau: " + flag in htmllib.unescape(sentence)
    assert "Not a comparison at the plateau" not in htmllib.unescape(re.findall(r"<li>(crd vs lr:[^<]*)</li>", html)[0])


def test_the_x2_ceiling_is_reported_as_an_oracle_with_what_the_students_recover(tmp_path):
    from report_tables import add_oracle

    tables = add_oracle(make_designed_tables(tmp_path))
    html = build_report(tables, tmp_path / "r.html").read_text()
    text = _text(html)
    # in the results table, marked, without time or memory, never the best
    row = re.search(r'<td class="method">x2-oracle@hr<.*?</tr>', html, re.S).group(0)
    assert "oracle, not a method: hr's field on the x2 grid" in _text(row)
    assert "<strong>" not in row
    # not compared, not ranked, said why
    assert all("x2-oracle" not in r[0] for r in _stats_rows(html, "ds"))
    assert "x2-oracle@hr (hr): oracles, not methods" in text
    # the ceiling table: recovered = (crd - lr) / (oracle - lr), its interval from the reference bootstrap
    section = html[html.index("The x2 ceiling: what the x2 students recover"):]
    cells = [_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", section[: section.index("</table>")], re.S)]
    assert cells[:2] == ["crd", "x2-oracle@hr (hr)"]
    crd, lr, oracle = (_per_seed_values(tables, m, "dice") for m in ("crd", "lr", "x2-oracle@hr"))
    pairs = list(crd[0].index)
    averaged = [sum(v[s][pairs] for s in v) / len(v) for v in (crd, lr, oracle)]
    num = [[R.difference(a, b) for a, b in zip(averaged[0], averaged[1], strict=True)]]
    den = [[R.difference(a, b) for a, b in zip(averaged[2], averaged[1], strict=True)]]
    num_r = R.replicates(num, pairs, resample_seeds=False, n_boot=9_999)
    den_r = R.replicates(den, pairs, resample_seeds=False, n_boot=9_999)
    low, high = R.interval([x / y for x, y in zip(num_r, den_r, strict=True)])

    def pct(x):
        return ("+" if x >= 0 else "−") + f"{abs(100 * x):.0f} %"

    assert cells[7] == f"{pct(np.mean(num) / np.mean(den))} [{pct(low)}, {pct(high)}]"  # as these models
    assert cells[6].endswith("]") and "%" in cells[6]  # as methods (three seeds)
    sentence = _text(re.search(r"<li>(crd vs lr: Dice [^<]*)</li>", html).group(1))
    assert "Of the lr → x2-oracle@hr gap in Dice" in sentence and "crd recovers" in sentence


def test_a_cpu_memory_figure_that_is_not_the_working_set_is_not_printed(tmp_path):
    """A table from an evaluation that recorded the timed call's RSS rise (no cpu_memory in its
    sidecar), or one where the working set could not be measured: a note, no number."""
    tables = make_tables(tmp_path, {"ds": PROFILE})
    old = next(t for t in tables if "__lr__" in t.name)
    side = json.loads(old.with_suffix(".json").read_text())
    del side["cpu_memory"]
    old.with_suffix(".json").write_text(json.dumps(side))
    musl = next(t for t in tables if "__crd__" in t.name)
    side = json.loads(musl.with_suffix(".json").read_text())
    side["cpu_memory"] = {"measured": "working set", "exact": False, "why": "no glibc"}
    musl.with_suffix(".json").write_text(json.dumps(side))
    html = build_report(tables, tmp_path / "r.html").read_text()
    text = _text(html)
    assert "lr: CPU memory not shown (seed 0): its table records the RSS rise of the timed call" in text
    assert "crd: no CPU memory figure (seed 0): no glibc." in text
    lr_mem = _means(tables, "peak_rss_mb")["ds", "lr"]
    hr_mem = _means(tables, "peak_rss_mb")["ds", "hr"]
    assert f"{lr_mem:,.0f}" not in text and f"{hr_mem:,.0f}" in text


def test_the_per_label_plot_names_structures_and_a_distant_classical_method_gets_its_own_axis(tmp_path):
    from crd.report import plots
    from crd.report.summary import summarise

    assert plots.label_ticks([1, 2, 3], {1: "cortex_1", 3: "vessel_1"}) == ([0, 1, 2], ["cortex_1", "2", "vessel_1"])
    positions, texts = plots.label_ticks(list(range(1, 101)), {}, most=40)
    assert positions == list(range(0, 100, 2)) and texts[:2] == ["1", "3"]
    profile = {"hr": (0.52, 2.0, 60.0, 320_000), "lr": (0.45, 0.4, 8.0, 320_000), "syn": (0.73, 0.8, 15.0, None)}
    tables = make_tables(tmp_path, {"ds": profile}, n_pairs=12, noise=0.01)
    for csv in tables:  # the dataset's label names travel in the sidecar
        side = json.loads(csv.with_suffix(".json").read_text())
        side["label_names"] = {"1": "cortex_1", "2": "white_1", "3": "vessel_1"}
        csv.with_suffix(".json").write_text(json.dumps(side))
        if "__syn__" in csv.name:  # a classical method: no parameters
            frame = pd.read_csv(csv)
            frame[frame.metric != "params"].to_csv(csv, index=False)
    by_method = {}
    for csv in tables:
        t = load_table(csv)
        by_method.setdefault(t.method, []).append(t)
    results = [summarise(ts) for ts in by_method.values()]
    assert results[0].label_names == {1: "cortex_1", 2: "white_1", 3: "vessel_1"}
    data = [r.values("dice").dropna() for r in results]
    assert plots._far_apart(results, data) == [False, False, True]
    data[2] = data[2] - 0.25  # within the networks' range: one axis
    assert plots._far_apart(results, data) == [False, False, False]
    assert plots.pair_distribution(results, plots.colours([r.method for r in results]))


def test_the_dataset_header_names_its_protocol_and_unvalidated_training(tmp_path):
    """The protocol dataset.json records reaches the report through the sidecars (name, source,
    deviations); methods trained with no validation pairs are named: their plateau is unknown."""
    tables = make_tables(tmp_path, {"ds": PROFILE})
    protocol = {"name": "paper", "summary": "atlas S01 fixed; the first 27 train, the last 12 test",
                "source": "BlaiseBrain/CRD_registration core/datasets.py: BrainTrain", "deviations": ["sorted here"]}
    for csv in tables:
        sidecar = json.loads(csv.with_suffix(".json").read_text())
        csv.with_suffix(".json").write_text(json.dumps({**sidecar, "protocol": protocol}))
    history = make_history(tmp_path / "h", "ds", "hr")
    frame = pd.read_csv(history)
    frame.loc[frame["metric"] == "val_dice", "metric"] = "loss"  # a run with no validation pairs
    frame.to_csv(history, index=False)
    html = build_report(tables, tmp_path / "r.html", histories=[history]).read_text()
    assert ("Pairs: protocol <b>paper</b>: atlas S01 fixed; the first 27 train, the last 12 test (from "
            "BlaiseBrain/CRD_registration core/datasets.py: BrainTrain). Deviations from it: sorted here.") in html
    assert "hr: trained with no validation pairs (the dataset&#39;s protocol has none)" in html


def _evaluated_once(tables: list[Path], name: str, *, flag: bool) -> list[Path]:
    """``tables`` plus a method ``name`` evaluated once (seed 0): lr's seed-0 table under another name,
    its sidecar saying ``seed_independent`` (as crd evaluate writes it for a method without training)
    when ``flag``."""
    source = next(p for p in tables if p.stem.endswith("__lr__s0"))
    frame = pd.read_csv(source).assign(method=name)
    target = source.with_name(f"ds__{name}__s0.csv")
    frame.to_csv(target, index=False)
    side = json.loads(source.with_suffix(".json").read_text())
    target.with_suffix(".json").write_text(json.dumps({**side, "method": name, "seed_independent": flag}))
    return [*tables, target]


def test_a_method_evaluated_once_stands_beside_every_seed_of_the_others(tmp_path):
    """A method without training is evaluated once (crd.methods.MethodSpec.evaluated_once); its one
    table is set beside each of hr's three seeds, so its comparison with hr is one about the methods
    (hr's seeds and the subjects redrawn), recomputed here with the reference bootstrap; the report
    says so. Without the sidecar's seed_independent, one table of a three-seed run cannot tell."""
    base = make_designed_tables(tmp_path / "t")
    html = build_report(_evaluated_once(base, "classic", flag=True), tmp_path / "r.html").read_text()
    row = next(r for r in _stats_rows(html, "ds") if r[:2] == ["classic vs hr", "Dice"])
    once = _per_seed_values(base, "lr", "dice")[0]  # lr's seed 0 is "classic"
    hr = _per_seed_values(base, "hr", "dice")
    pairs = list(once.index)
    cells = [[R.difference(x, y) for x, y in zip(once[pairs], hr[s][pairs], strict=True)] for s in sorted(hr)]
    methods = R.replicates(cells, pairs, resample_seeds=True, n_boot=9_999)
    assert row[5] == ", ".join(_signed(float(np.mean(c)), 3) for c in cells), row  # one value against 3 seeds
    assert row[6] == f"[{_signed(R.interval(methods)[0], 3)}, {_signed(R.interval(methods)[1], 3)}]", row
    text = _text(html)
    assert "classic (seed 0): no training, so its result is the same under every seed: evaluated once" in text
    assert "no training: one evaluation for every seed" in text

    html = build_report(_evaluated_once(base, "classic", flag=False), tmp_path / "r2.html").read_text()
    row = next(r for r in _stats_rows(html, "ds") if r[:2] == ["classic vs hr", "Dice"])
    assert row[5:9] == ["—", "—", "—", "one seed: cannot tell"], row  # nothing said about the methods
    assert "no training: one evaluation" not in _text(html)
