"""The paper's protocols, pair for pair.

The expected lists are written here from the logic of the public code, not from our specs:
the CRD authors' ``core/datasets.py`` (BlaiseBrain/CRD_registration: ``generate_atlas``,
``generate_atlas_val``, ``generate_pairs``, ``generate_pairs_val``, ``generate_lspig_val``,
``generate_oasis_pairs``, ``generate_oasis_pairs_val``) and the recursive cascaded networks'
``datasets/brain.json`` / ``datasets/liver.json`` (the ids of their preprocessed files). Where the
authors list a folder with ``os.listdir`` (an order that depends on the file system), the
restatement takes the sorted order, as crd-bench documents.
"""

from __future__ import annotations

import json

import pytest

import fake_archives as fake
from crd.data.layout import open_dataset
from crd.data.prepare import prepare_dataset
from crd.data.specs import SPECS
from crd.data.specs.base import SpecError
from repo_paths import REPO

# RCN's datasets/brain.json "lpba-val" (S02..S40) and atlas "lpba/S01"
LPBA_IDS = [f"S{i:02d}" for i in range(1, 41)]
# RCN's datasets/liver.json "sliver-val", in its own order (19 scans: 1..20 without 14)
SLIVER_RCN = ["10", "11", "17", "4", "5", "13", "12", "19", "6", "2", "15", "16", "7", "18", "20", "1", "9", "3", "8"]
# RCN's datasets/liver.json "lspig-val" (17 pigs, pre- and after-gas)
PIGS = ["2017_02", "2017_03", "2017_04", "2017_07", "2017_08", "2017_10", "2017_11", "2017_12", "2017_13",
        "2018_01", "2018_08", "2018_09", "2018_11", "2018_12", "2018_13", "2018_14", "2018_15"]  # fmt: skip
LSPIG_IDS = [f"{p}_{g}" for p in PIGS for g in ("aftergas", "pregas")]


# --- the authors' functions, restated (fixed first, moving second, as their evaluation uses them) --


def authors_generate_atlas(files):
    """generate_atlas / generate_atlas_val before the [:27] / [27:] cut: atlas S01, each other moving."""
    return [("S01", d) for d in files if "S01" not in d]


def authors_generate_pairs(files):
    """generate_pairs / generate_pairs_val before the [:270] / [270:] cut: every ordered pair, row by row."""
    return [(d1, d2) for i, d1 in enumerate(files) for j, d2 in enumerate(files) if i != j]


def authors_generate_lspig_val(files):
    files = sorted(files)
    pairs = []
    for i in range(0, len(files), 2):
        pairs += [(files[i], files[i + 1]), (files[i + 1], files[i])]
    return pairs


def authors_generate_oasis_pairs_val(files):
    files = sorted(files, key=lambda x: int(x[-8:-4]))  # OASIS_OAS1_0438_MR1 -> 438
    return [(files[i], files[i + 1]) for i in range(len(files) - 1)]


def _split(rows):
    out = {"train": [], "val": [], "test": []}
    for split, fixed, moving in rows:
        out[split].append((fixed, moving))
    return out


def _pairs(name, ids, **options):
    spec = SPECS[name]
    return _split(spec.pairs(None, ids, spec.resolve_options(options)))


def test_lpba40_paper_is_the_authors_27_training_and_12_test_moving_images():
    got = _pairs("lpba40", LPBA_IDS, protocol="paper")
    pairs = authors_generate_atlas(sorted(LPBA_IDS))
    assert got["train"] == pairs[:27] and got["test"] == pairs[27:] and got["val"] == []
    assert [m for _, m in got["test"]] == [f"S{i}" for i in range(29, 41)]
    assert len(got["train"]) == 27 and len(got["test"]) == 12


def test_lpba40_crd_bench_protocol_stays_as_it_was():
    got = _pairs("lpba40", LPBA_IDS)
    assert [m for _, m in got["test"]] == [f"S{i}" for i in range(31, 41)]
    assert [m for _, m in got["val"]] == ["S28", "S29", "S30"] and len(got["train"]) == 26


def test_sliver_paper_is_the_authors_first_270_pairs_for_training_and_72_for_test():
    got = _pairs("sliver", SLIVER_RCN, protocol="paper")
    by_number = sorted(SLIVER_RCN, key=int)
    pairs = authors_generate_pairs(by_number)
    assert len(pairs) == 342  # their comment: 342 = 19 * 18
    assert got["train"] == pairs[:270] and got["test"] == pairs[270:] and got["val"] == []
    assert len(got["test"]) == 72
    # 270 = 15 fixed scans x 18: the test pairs are those whose fixed scan is one of the last four
    assert sorted({f for f, _ in got["test"]}, key=int) == ["17", "18", "19", "20"]
    assert {m for _, m in got["test"]} & {f for f, _ in got["train"]}  # a split by pair, not by scan


def test_sliver_crd_bench_protocol_is_every_ordered_pair_for_test():
    got = _pairs("sliver", SLIVER_RCN)
    assert got["train"] == [] and sorted(got["test"]) == sorted(authors_generate_pairs(SLIVER_RCN))


def test_lspig_is_the_authors_pairs_in_their_order():
    got = _pairs("lspig", LSPIG_IDS)
    assert got["test"] == authors_generate_lspig_val(LSPIG_IDS)
    assert len(got["test"]) == 34 and got["train"] == got["val"] == []


def test_oasis_paper_tests_the_learn2reg_subjects_as_the_authors_oasis_test_pairs_them():
    ids = [f"OASIS_OAS1_{i:04d}_MR1" for i in range(1, 458) if i % 23 or i > 430]  # gaps, as the real ids
    got = _pairs("oasis", ids, protocol="paper")
    test_ids = sorted(ids)[-20:]
    assert test_ids[0] == "OASIS_OAS1_0438_MR1" and test_ids[-1] == "OASIS_OAS1_0457_MR1"
    assert got["test"] == authors_generate_oasis_pairs_val(test_ids) and got["val"] == []
    train = sorted(ids)[:-20]
    assert got["train"] == authors_generate_pairs(train)  # generate_oasis_pairs: every ordered pair


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("lpba40", {"protocol": "paper", "test": 10}, "protocol paper fixes test = 12"),
        ("lpba40", {"protocol": "paper", "val": 3}, "protocol paper fixes val = 0"),
        ("oasis", {"protocol": "paper", "val": 6}, "protocol paper fixes val = 0"),
        ("sliver", {"protocol": "authors"}, "unknown protocol 'authors'; valid: crd-bench, paper"),
        ("lspig", {"protocol": "crd-bench"}, "unknown protocol 'crd-bench'; valid: paper"),
    ],
)
def test_options_a_protocol_fixes_are_refused_in_one_line(name, options, message):
    with pytest.raises(SpecError, match=message):
        SPECS[name].resolve_options(options)


def test_too_few_scans_for_the_papers_sliver_split_is_one_line():
    class Src:
        label = "sliver_val.h5"

    with pytest.raises(SpecError, match="first 270 ordered pairs .* 17 scans give 272|first 270 ordered pairs"):
        SPECS["sliver"].pairs(Src(), [str(i) for i in range(1, 17)], SPECS["sliver"].resolve_options(
            {"protocol": "paper"}))  # fmt: skip


def test_prepared_sliver_records_its_protocol_and_trains_under_the_papers(tmp_path):
    """End to end from an RCN-style sliver_val.h5 of 19 scans: pairs.csv and dataset.json."""
    fake.rcn_h5(tmp_path / "sliver_val.h5", SLIVER_RCN, shape=(8, 8, 8))
    out = prepare_dataset("sliver", tmp_path, tmp_path / "sliver", options={"protocol": "paper"}, progress=False)
    data = open_dataset(out)
    pairs = authors_generate_pairs(sorted(SLIVER_RCN, key=int))
    assert data.pairs_for("train") == pairs[:270] and data.pairs_for("test") == pairs[270:]
    record = json.loads((out / "dataset.json").read_text())["generator"]["protocol"]
    assert record["name"] == "paper" and "LiverTrain" in record["source"] and record["deviations"]
    # crd evaluate carries the record into its sidecar, which the report's dataset header reads
    from crd.cli import main

    table = tmp_path / "eval" / "identity.csv"
    identity = str(REPO / "baselines" / "identity.py")
    assert main(["evaluate", "--data", str(out), "--out", str(table), "--method-file", identity,
                 "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    assert json.loads(table.with_suffix(".json").read_text())["protocol"] == record


def test_every_paper_protocol_names_its_source_and_every_spec_says_which_it_follows():
    for name, spec in SPECS.items():
        for proto in spec.protocols.values():
            assert proto.summary and proto.source, name
            if proto.name == "paper":
                assert "BlaiseBrain/CRD_registration core/datasets.py" in proto.source, name
        if not spec.protocols:  # crd-bench's own: says the dataset is not the paper's
            assert "not one of the paper's datasets" in spec.protocol_of({}).summary, name


def _lpba_h5(path, ids, shape=(8, 8, 8)):
    """An RCN-style lpba_val.h5: one group per subject, uint8 volume, LPBA40 label values."""
    import h5py
    import numpy as np

    from crd.data.specs.lpba40 import LABELS

    rng = np.random.default_rng(5)
    values = np.array([0, *sorted(LABELS)])
    with h5py.File(path, "w") as f:
        for sid in ids:
            g = f.create_group(sid)
            g["volume"] = rng.integers(0, 256, shape).astype(np.uint8)
            g["segmentation"] = values[rng.integers(0, len(values), shape)].astype(np.int16)
    return path


def test_lpba40_rcn_reads_the_authors_file_with_their_split_and_scaling(tmp_path):
    """lpba40-rcn: RCN's lpba_val.h5 as the authors read it: volume / 255, their 27 / 12 split."""
    import h5py
    import numpy as np

    _lpba_h5(tmp_path / "lpba_val.h5", LPBA_IDS)
    out = prepare_dataset("lpba40-rcn", tmp_path, tmp_path / "lpba", progress=False)
    data = open_dataset(out)
    pairs = authors_generate_atlas(sorted(LPBA_IDS))
    assert data.pairs_for("train") == pairs[:27] and data.pairs_for("test") == pairs[27:]
    assert data.pairs_for("val") == []
    with h5py.File(tmp_path / "lpba_val.h5") as f:
        raw, seg = np.asarray(f["S07"]["volume"]), np.asarray(f["S07"]["segmentation"])
    np.testing.assert_array_equal(data.load_image("S07"), raw.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(data.load_labels("S07"), seg)
    assert data.info["spacing_unit"] == "voxel"
    assert json.loads((out / "dataset.json").read_text())["generator"]["protocol"]["name"] == "paper"
