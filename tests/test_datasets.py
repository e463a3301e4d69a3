"""The public datasets, offline: a loopback server serves miniature archives laid out like the real
ones; each goes download -> verify -> read -> preprocess -> pairs, and the result is checked."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import fake_archives as fake
from crd.data.download import DownloadError
from crd.data.layout import open_dataset
from crd.data.prepare import MissingSourceError, TermsError, download_dataset, prepare_dataset
from crd.data.specs import SPECS, get_spec
from crd.data.specs.base import SpecError
from http_server import serve

# small output sizes keep the tests fast
SMALL = {
    "oasis": {"val": 2, "test": 3},
    "lpba40": {"shape": [16, 16, 16], "val": 2, "test": 2},
    "lits": {"shape": [16, 16, 16], "box_mm": [40.0, 40.0, 40.0], "val": 2, "test": 2},
    "abdomenctct": {"val": 2},
}
BUILDERS = {
    "oasis": fake.oasis_tar,
    "lpba40": fake.lpba40_zip,
    "lits": fake.lits_tar,
    "abdomenctct": fake.abdomenctct_zip,
}


def _sha(path):
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    return {name: build(folder) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def prepared(archives, tmp_path_factory):
    """Every automatic dataset downloaded over loopback HTTP and prepared once."""
    root = tmp_path_factory.mktemp("work")
    files = {f"/{name}/{p.name}": p.read_bytes() for name, p in archives.items()}
    out = {}
    with serve(files) as srv:
        for name, path in archives.items():
            downloads = root / "downloads" / name
            got = download_dataset(
                name, downloads, accept_terms=True, progress=False,
                urls={path.name: f"{srv.url}/{name}/{path.name}"}, checksums={path.name: _sha(path)},
            )
            assert [p.name for p in got] == [path.name]
            out[name] = prepare_dataset(name, downloads, root / "data" / name,
                                        options=SMALL[name], threads=2, progress=False)
    return out


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_prepared_layout_labels_and_splits(prepared, archives, name):
    ds = open_dataset(prepared[name])  # checks files, headers, shapes, spacing
    spec = get_spec(name)
    assert ds.labels == dict(spec.labels)
    assert ds.info["checksums"] == {archives[name].name: _sha(archives[name])}
    assert ds.info["generator"]["options"] == spec.resolve_options(SMALL[name])
    assert ds.info["crd_version"] and ds.info["license"] == spec.license
    train, val, test = (set(ds.subjects(s)) for s in ("train", "val", "test"))
    if name == "lpba40":  # atlas-based: the atlas is in every split, the moving images are not
        assert {f for f, _ in ds.pairs_for("test")} == {"S01"}
        train, val, test = (x - {"S01"} for x in (train, val, test))
    assert train and val and test
    assert not (train & test) and not (train & val) and not (val & test)
    for subject in ds.all_subjects():
        image, labels = ds.load_image(subject), ds.load_labels(subject)
        assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
        assert set(np.unique(labels)) - {0} <= set(spec.labels)
        assert (labels > 0).any()


def test_oasis_pairs_follow_learn2reg(prepared):
    ds = open_dataset(prepared["oasis"])
    ids = [f"OASIS_OAS1_{i}_MR1" for i in fake.OASIS_IDS]
    assert ds.pairs_for("test") == [(ids[-3], ids[-2]), (ids[-2], ids[-1])]
    assert ds.pairs_for("val") == [(ids[-5], ids[-4])]
    assert len(ds.pairs_for("train")) == 3 * 2
    # stored arrays unchanged (the authors' weights expect them as distributed)
    assert ds.shape == (16, 20, 24)


def test_lits_is_reoriented_cropped_and_windowed(prepared):
    ds = open_dataset(prepared["lits"])
    assert ds.shape == (16, 16, 16)
    assert np.allclose(ds.spacing, 40.0 / 15)
    affine = ds.load_affine(ds.all_subjects()[0])
    assert np.all(np.diag(affine)[:3] > 0)  # RAS
    labels = ds.load_labels(ds.all_subjects()[0])
    assert set(np.unique(labels)) == {0, 1}  # tumour merged into the liver
    # the miniature livers (~0.8 x 30 mm wide) fit the 40 mm box: nothing cropped
    assert ds.info["preprocess_warnings"] == []


def test_lits_says_when_the_box_crops_the_liver(prepared, tmp_path, capsys):
    downloads = prepared["lits"].parent.parent / "downloads" / "lits"
    small_box = {**SMALL["lits"], "box_mm": [10.0, 10.0, 10.0]}
    ds = open_dataset(prepare_dataset("lits", downloads, tmp_path / "l", options=small_box,
                                      progress=False))
    assert ds.info["preprocess_warnings"] and "exceeds box_mm" in ds.info["preprocess_warnings"][0]
    assert "warning:" in capsys.readouterr().err


def test_abdomenctct_uses_learn2reg_pairs(prepared):
    ds = open_dataset(prepared["abdomenctct"])
    assert ds.pairs_for("test") == [(f"AbdomenCTCT_{f:04d}", f"AbdomenCTCT_{m:04d}")
                                    for f, m in fake.ABDOMEN_VAL_PAIRS]
    assert ds.spacing == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_prepare_is_deterministic(prepared, tmp_path, name):
    downloads = prepared[name].parent.parent / "downloads" / name
    again = prepare_dataset(name, downloads, tmp_path / name, options=SMALL[name], threads=1,
                            progress=False)
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(prepared[name]) for p in prepared[name].rglob("*") if p.is_file())
    for rel in files:
        assert (again / rel).read_bytes() == (prepared[name] / rel).read_bytes(), rel


def test_terms_must_be_accepted(tmp_path):
    with pytest.raises(TermsError, match=r"accept_terms: true.*datasets.oasis"):
        download_dataset("oasis", tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_corrupted_archive_fails_and_leaves_nothing(archives, tmp_path):
    good = archives["abdomenctct"]
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with serve({"/a.zip": bytes(data)}) as srv:
        with pytest.raises(DownloadError, match="checksum mismatch"):
            download_dataset("abdomenctct", tmp_path / "dl", progress=False,
                             urls={good.name: f"{srv.url}/a.zip"},
                             checksums={good.name: _sha(good)})
    assert list((tmp_path / "dl").iterdir()) == []


def test_interrupted_download_resumes(archives, tmp_path, monkeypatch):
    monkeypatch.setattr("crd.data.download.CHUNK_BYTES", 4096)  # the miniature is small
    path = archives["lits"]
    with serve({"/t.tar": path.read_bytes()}) as srv:
        srv.cut_after, srv.cuts = len(path.read_bytes()) // 3, 1
        got = download_dataset("lits", tmp_path, progress=False, urls={path.name: f"{srv.url}/t.tar"},
                               checksums={path.name: _sha(path)})
        assert got[0].read_bytes() == path.read_bytes()
        assert [status for _, _, status in srv.log] == [200, 206]


def test_broken_archive_in_prepare_leaves_no_output(archives, tmp_path):
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "Task03_Liver.tar").write_bytes(archives["lits"].read_bytes()[:5000])
    with pytest.raises(Exception, match="Task03_Liver.tar"):
        prepare_dataset("lits", downloads, tmp_path / "data" / "lits", options=SMALL["lits"],
                        progress=False)
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_missing_download_says_what_to_run(tmp_path):
    with pytest.raises(MissingSourceError, match="crd download oasis"):
        prepare_dataset("oasis", tmp_path, tmp_path / "out", progress=False)


@pytest.mark.parametrize("name", ["sliver", "lspig"])
def test_bring_your_own_missing_gives_instructions(name, tmp_path):
    spec = SPECS[name]
    with pytest.raises(MissingSourceError) as info:
        prepare_dataset(name, tmp_path, tmp_path / "out", progress=False)
    msg = str(info.value)
    assert spec.own_files[0] in msg and f"datasets.{name}.path" in msg and "github.com" in msg
    assert not (tmp_path / "out").exists()


def test_sliver_and_lspig_from_rcn_h5(tmp_path):
    fake.rcn_h5(tmp_path / "sliver_val.h5", ["1", "2", "3"])
    fake.rcn_h5(tmp_path / "lspig_val.h5",
                ["2017_01_aftergas", "2017_01_pregas", "2017_02_aftergas", "2017_02_pregas"])
    sliver = open_dataset(prepare_dataset("sliver", tmp_path, tmp_path / "sliver", progress=False))
    assert len(sliver.pairs_for("test")) == 6 and sliver.pairs_for("train") == []
    assert sliver.info["spacing_unit"] == "voxel"
    lspig = open_dataset(prepare_dataset("lspig", tmp_path, tmp_path / "lspig", progress=False))
    assert lspig.pairs_for("test") == [  # the authors' LspigTest: sorted, after-gas fixed first
        ("2017_01_aftergas", "2017_01_pregas"), ("2017_01_pregas", "2017_01_aftergas"),
        ("2017_02_aftergas", "2017_02_pregas"), ("2017_02_pregas", "2017_02_aftergas")]
    assert set(np.unique(lspig.load_labels("2017_01_pregas"))) == {0, 1}


def test_unknown_option_and_dataset(tmp_path):
    with pytest.raises(SpecError, match="unknown preprocess option.*valid: protocol, test, val"):
        prepare_dataset("oasis", tmp_path, tmp_path / "o", options={"size": 3})
    with pytest.raises(SpecError, match="unknown dataset 'oasis2'"):
        get_spec("oasis2")


def test_wrong_archive_is_named(archives, tmp_path):
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "neurite-oasis.v1.0.tar").write_bytes(archives["lits"].read_bytes())
    with pytest.raises(SpecError, match="no OASIS_OAS1_xxxx_MR1"):
        prepare_dataset("oasis", downloads, tmp_path / "o", progress=False)


def test_abdomen_falls_back_to_the_evaluation_pairs(tmp_path):
    from crd.data.archive import Archive
    from crd.data.specs.abdomenctct import _test_pairs

    pairs = _test_pairs(Archive(fake.abdomenctct_zip(tmp_path, with_pairs=False)))
    assert len(pairs) == 45 and pairs[0] == ("AbdomenCTCT_0001", "AbdomenCTCT_0004")


def test_pairs_csv_has_no_duplicates(prepared):
    for root in prepared.values():
        pairs = pd.read_csv(root / "pairs.csv")
        assert not pairs.duplicated().any()


def test_a_split_without_pairs_is_refused():
    from crd.data.specs.base import inter_subject_pairs

    with pytest.raises(SpecError, match="1 val subject"):
        inter_subject_pairs(["a", "b"], ["c"], ["d", "e"])
    with pytest.raises(SpecError, match="1 train subject"):
        inter_subject_pairs(["a"], [], ["d", "e"])


def test_cli_datasets_download_prepare(archives, tmp_path, capsys):
    from crd.cli import main

    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in SPECS) and "option box_mm" in listing
    assert main(["download", "oasis", str(tmp_path / "dl")]) == 2
    assert "accept_terms: true" in capsys.readouterr().err
    path = archives["abdomenctct"]
    with serve({"/a.zip": path.read_bytes()}) as srv:
        assert main(["download", "abdomenctct", str(tmp_path / "dl"), "--no-progress",
                     "--url", f"{path.name}={srv.url}/a.zip", "--checksum", f"{path.name}={_sha(path)}"]) == 0
    assert main(["prepare", "abdomenctct", str(tmp_path / "dl"), str(tmp_path / "out"),
                 "--options", '{"val": 2}', "--no-progress"]) == 0
    assert open_dataset(tmp_path / "out").pairs_for("test")
    assert main(["prepare", "abdomenctct", str(tmp_path / "dl"), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_sliver_from_the_original_scans(tmp_path):
    folder = fake.sliver07_originals(tmp_path / "sliver07")
    assert sorted(p.suffix for p in folder.iterdir()) == [".mhd"] * 6 + [".raw"] * 6
    options = {"shape": [16, 16, 16], "box_mm": [40.0, 40.0, 40.0]}
    ds = open_dataset(prepare_dataset("sliver", folder, tmp_path / "out", options=options,
                                      progress=False))
    assert ds.all_subjects() == ["liver-001", "liver-002", "liver-003"]
    assert len(ds.pairs_for("test")) == 6
    assert np.allclose(ds.spacing, 40.0 / 15) and ds.info["spacing_unit"] == "mm"
    assert len(ds.info["checksums"]) == 12  # every .mhd and .raw used
    affine = ds.load_affine("liver-001")
    assert np.all(np.diag(affine)[:3] > 0)  # LPS MetaImage -> RAS
    labels = ds.load_labels("liver-002")
    assert set(np.unique(labels)) == {0, 1}
    image = ds.load_image("liver-002")
    # HU window: liver (80 HU) -> 0.36, air -> 0 (edges blurred by the anti-aliasing)
    assert np.median(image[labels == 1]) > 0.3 and np.median(image[labels == 0]) == 0.0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_documents_itself(name):
    spec = SPECS[name]
    assert spec.name == name and spec.title and spec.homepage.startswith("http")
    assert spec.license and spec.citation and spec.protocol and spec.intensity and spec.notes
    assert spec.labels and all(isinstance(k, int) and k > 0 for k in spec.labels)
    assert set(spec.option_help) == set(spec.options)
    assert bool(spec.sources) != bool(spec.own_files)  # downloaded xor brought
    for source in spec.sources:
        assert source.url.startswith("https://") and source.filename and source.hash_origin
        assert source.known_hash is None or source.known_hash.split(":")[0] in ("sha256", "md5")
    if spec.own_files:
        assert spec.instructions and "http" in spec.instructions


def test_the_catalog_the_workflow_reads_agrees_with_the_specs_and_the_schema():
    """crd.data.catalog (stdlib only, read by the workflow) lists exactly the specs' datasets, the
    bring-your-own and test-only ones as the specs say, and the schema's `source` values."""
    import yaml

    from crd.data import catalog
    from crd.data.specs import SPECS
    from repo_paths import REPO

    assert set(catalog.DOWNLOADED) | set(catalog.BRING_YOUR_OWN) == set(SPECS)
    assert {n for n, s in SPECS.items() if s.bring_your_own} == set(catalog.BRING_YOUR_OWN)
    assert {n for n, s in SPECS.items() if s.protocol.startswith("test only")} == set(catalog.TEST_ONLY)
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    enum = schema["properties"]["datasets"]["additionalProperties"]["properties"]["source"]["enum"]
    assert enum == list(catalog.SOURCES)
