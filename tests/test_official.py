"""Importing the CRD authors' weights: our models reproduce their network exactly.

The reference below is an independent, plain functional re-statement of the authors' network,
written from the description in docs/architecture.md alone: ``F.conv3d`` on their raw state dict with
their key names, nothing from ``crd.models``. It runs on random weights saved in their format
(always) and on the released files (when ``../shared/crd-official`` is present).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crd.cli import main
from crd.errors import CheckpointError
from crd.models.checkpoint import load_model, read_checkpoint
from crd.models.official import import_official
from repo_paths import SHARED

OFFICIAL = SHARED / "crd-official"
FILES = {"lr": "oasis_lr_student_init.pth", "fst": "oasis_fst_teacher.pth"}
needs_official = pytest.mark.skipif(
    not all((OFFICIAL / f).is_file() for f in FILES.values()),
    reason=f"the authors' released weights are not present in {OFFICIAL} (they are never redistributed)",
)

# ---------------------------------------------------------------------------------------------
# the authors' network, from docs/architecture.md
# ---------------------------------------------------------------------------------------------

PREFIX = "module.defnet_0."
# name: (out channels, in channels, stride); every conv is 3x3x3, padding 1, with a bias
BACKBONE = {
    "conv1": (16, 2, 1),
    "conv2": (32, 16, 2),
    "conv3": (32, 32, 2),
    "conv4": (32, 32, 2),
    "conv5": (32, 32, 2),
    "decode5": (32, 32, 1),
    "decode4": (32, 64, 1),
    "decode3": (32, 64, 1),
    "decode2": (32, 64, 1),
    "decode2_1": (16, 32, 1),
    "decode1": (16, 32, 1),
    "flow": (3, 16, 1),
}
FUSION = {
    "fuse5": (32, 64, 1),
    "fuse4": (32, 96, 1),
    "fuse3": (32, 80, 1),
    "fuse2": (32, 64, 1),
    "fuse1": (16, 48, 1),
    "flow_f": (3, 16, 1),
}
LAYERS = {"lr": BACKBONE, "fst": {**BACKBONE, **FUSION}}


def conv(sd, name, x, stride=1):
    return F.conv3d(x, sd[PREFIX + name + ".weight"], sd[PREFIX + name + ".bias"], stride=stride, padding=1)


def act(x):
    return F.leaky_relu(x, 0.2)


def ref_backbone(sd, x):
    """Decoder features of the U-Net; decoder upsampling is F.interpolate(x, size=skip) (nearest)."""
    e1 = act(conv(sd, "conv1", x))
    e2 = act(conv(sd, "conv2", e1, 2))
    e4 = act(conv(sd, "conv3", e2, 2))
    e8 = act(conv(sd, "conv4", e4, 2))
    e16 = act(conv(sd, "conv5", e8, 2))
    d16 = act(conv(sd, "decode5", e16))
    d8 = act(conv(sd, "decode4", torch.cat([F.interpolate(d16, size=e8.shape[2:]), e8], 1)))
    d4 = act(conv(sd, "decode3", torch.cat([F.interpolate(d8, size=e4.shape[2:]), e4], 1)))
    d2 = act(conv(sd, "decode2", torch.cat([F.interpolate(d4, size=e2.shape[2:]), e2], 1)))
    d2 = act(conv(sd, "decode2_1", d2))
    d1 = act(conv(sd, "decode1", torch.cat([F.interpolate(d2, size=e1.shape[2:]), e1], 1)))
    return {"16x": d16, "8x": d8, "4x": d4, "2x": d2, "1x": d1}


def amap(f):
    return (f * f).sum(1)


def ref_student(sd, fixed, moving):
    """Naive LR model: trilinear x0.5 (align_corners False), backbone, flow x2 upsampled, times 2."""
    x = F.interpolate(torch.cat([fixed, moving], 1), scale_factor=0.5, mode="trilinear", align_corners=False)
    f = ref_backbone(sd, x)
    flow = 2.0 * F.interpolate(conv(sd, "flow", f["1x"]), scale_factor=2, mode="trilinear", align_corners=False)
    return flow, [amap(f[k]) for k in ("1x", "2x", "4x", "8x")]


def ref_teacher(sd, fixed, moving, lr_align_corners=True):
    """FST: one backbone on the HR and on the x0.5 (align_corners True) input, fused at HR scales."""
    x = torch.cat([fixed, moving], 1)
    hr = ref_backbone(sd, x)
    lr = ref_backbone(sd, F.interpolate(x, scale_factor=0.5, mode="trilinear", align_corners=lr_align_corners))

    def up(t, like):
        return F.interpolate(t, size=like.shape[2:], mode="trilinear", align_corners=True)

    f5 = act(conv(sd, "fuse5", torch.cat([lr["8x"], hr["16x"]], 1)))
    f4 = act(conv(sd, "fuse4", torch.cat([up(f5, hr["8x"]), lr["4x"], hr["8x"]], 1)))
    f3 = act(conv(sd, "fuse3", torch.cat([up(f4, hr["4x"]), lr["2x"], hr["4x"]], 1)))
    f2 = act(conv(sd, "fuse2", torch.cat([up(f3, hr["2x"]), lr["1x"], hr["2x"]], 1)))
    f1 = act(conv(sd, "fuse1", torch.cat([up(f2, hr["1x"]), hr["1x"]], 1)))
    return conv(sd, "flow_f", f1), [amap(f) for f in (f2, f3, f4, f5)]


REFERENCE = {"lr": ref_student, "fst": ref_teacher}


def random_official_state(kind, seed=0):
    """Random weights in the authors' format (prefixed keys), scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    names = list(LAYERS[kind])
    if kind == "fst":  # the released teacher holds the (unused) HR flow head last
        names.remove("flow")
        names.append("flow")
    state = {}
    for name in names:
        c_out, c_in, _ = LAYERS[kind][name]
        std = (2.0 / (c_in * 27)) ** 0.5
        state[PREFIX + name + ".weight"] = torch.randn(c_out, c_in, 3, 3, 3, generator=g) * std
        state[PREFIX + name + ".bias"] = torch.randn(c_out, generator=g) * 0.1
    return state


def random_pair(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 1, *shape, generator=g)
    # smooth a little, so that the images look more like images than like noise
    x = F.avg_pool3d(x.view(2, 1, *shape), 3, stride=1, padding=1, count_include_pad=False).view(2, 1, 1, *shape)
    return x[0], x[1]


def assert_equivalent(model, state, kind, shape):
    fixed, moving = random_pair(shape)
    with torch.no_grad():
        ref_flow, ref_maps = REFERENCE[kind](state, fixed, moving)
        flow, maps = model.forward_with_maps(fixed, moving)
    expected = ref_flow.flip(1)  # their (W, H, D) channels -> our (D, H, W)
    assert flow.shape == expected.shape == (1, 3, *shape)
    assert (flow - expected).abs().max().item() <= 1e-4
    assert len(maps) == len(ref_maps) == 4
    for ours, ref in zip(maps, ref_maps, strict=True):
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    return flow, expected


@pytest.fixture(scope="module")
def random_imports(tmp_path_factory):
    """The two random official-format files and their imported crd-bench checkpoints."""
    folder = tmp_path_factory.mktemp("official")
    out = {}
    for seed, kind in enumerate(("lr", "fst")):
        state = random_official_state(kind, seed)
        src = folder / f"{kind}.pth"
        torch.save(state, src)
        dst = import_official(src, folder / f"{kind}.pt", kind)
        out[kind] = (src, dst, state)
    return out


# ---------------------------------------------------------------------------------------------
# equivalence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 64, 96), (64, 32, 64)])
@pytest.mark.parametrize("kind", ["lr", "fst"])
def test_imported_random_weights_reproduce_the_reference(random_imports, kind, shape):
    _, dst, state = random_imports[kind]
    model, _ = load_model(dst)
    flow, _ = assert_equivalent(model, state, kind, shape)
    assert flow.std() > 0.1  # the comparison is not between two near-zero fields


def test_the_reference_tells_the_conventions_apart(random_imports):
    """Without the channel reversal, or with the student's align_corners in the teacher's LR path,
    the fields differ far beyond the tolerance: the equivalence test has teeth."""
    _, dst, state = random_imports["fst"]
    model, _ = load_model(dst)
    fixed, moving = random_pair((32, 64, 96))
    with torch.no_grad():
        flow = model(fixed, moving)
        right = ref_teacher(state, fixed, moving)[0].flip(1)
        wrong_corners = ref_teacher(state, fixed, moving, lr_align_corners=False)[0].flip(1)
    assert (flow - right).abs().max() <= 1e-4
    assert (flow - right.flip(1)).abs().max() > 1e-2
    assert (flow - wrong_corners).abs().max() > 1e-3


@needs_official
@pytest.mark.parametrize("shape", [(32, 64, 96), (64, 32, 64)])
@pytest.mark.parametrize("kind", ["lr", "fst"])
def test_imported_official_weights_reproduce_the_reference(tmp_path, kind, shape):
    src = OFFICIAL / FILES[kind]
    state = torch.load(src, map_location="cpu", weights_only=True)
    model, _ = load_model(import_official(src, tmp_path / f"{kind}.pt", kind))
    assert_equivalent(model, state, kind, shape)


# ---------------------------------------------------------------------------------------------
# key mapping, parameter counts, provenance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, n_params", [("lr", 320_419), ("fst", 605_254)])
def test_key_mapping_and_parameter_counts(random_imports, kind, n_params):
    src, dst, state = random_imports[kind]
    assert sum(v.numel() for v in state.values()) == n_params
    payload = read_checkpoint(dst)
    ours = payload["state_dict"]
    assert sum(v.numel() for v in ours.values()) == n_params
    assert len(ours) == len(state)
    for key, value in state.items():
        name = key.removeprefix(PREFIX)
        module = name.rsplit(".", 1)[0]
        our_key = name if module in FUSION else "backbone." + name
        expected = value.flip(0) if module in ("flow", "flow_f") else value
        torch.testing.assert_close(ours[our_key], expected, rtol=0, atol=0)
    model, _ = load_model(dst)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert payload["method"] == f"{kind}-official"
    assert payload["model"] == (
        {"kind": "lowres", "width": 1.0, "factor": 2} if kind == "lr" else {"kind": "fst", "width": 1.0}
    )
    assert payload["input"]["normalisation"] == "none"
    training = payload["training"]
    assert training["source"] == "BlaiseBrain/CRD_registration"
    assert "not redistributed" in training["license"]
    assert training["source_file"] == src.name and len(training["source_sha256"]) == 64
    assert training["matches_release"] is False  # random weights are not the released file


@needs_official
@pytest.mark.parametrize("kind", ["lr", "fst"])
def test_the_released_files_are_recognised(tmp_path, kind):
    payload = read_checkpoint(import_official(OFFICIAL / FILES[kind], tmp_path / "m.pt", kind))
    assert payload["training"]["matches_release"] is True
    assert payload["training"]["upstream_file"].startswith("ckpt/")
    assert payload["input"]["normalisation"] == "none"


@pytest.mark.parametrize("kind", ["lr", "fst"])
def test_the_input_record_says_images_are_fed_as_stored(random_imports, kind):
    """The authors' OasisTrain/OasisTest read aligned_norm and convert it to float, no rescaling:
    the checkpoint says "none" (crd register follows it), not min-max per image."""
    record = read_checkpoint(random_imports[kind][1])["input"]
    assert record["normalisation"] == "none"
    assert "as stored" in record["intensity"] and "no per-image rescaling" in record["intensity"]
    assert "aligned_norm" in record["intensity"] and "0.43" in record["intensity"]
    assert "min-max" not in record["intensity"]
    assert record["flow_channels"] == "D,H,W"
    assert record["array_order"] == "reversed"  # their loaders read NIfTI with SimpleITK


def test_cli_import_official(random_imports, tmp_path, capsys):
    src, _, _ = random_imports["lr"]
    dst = tmp_path / "lr.pt"
    assert main(["import-official", str(src), str(dst), "--kind", "lr"]) == 0
    assert str(dst) in capsys.readouterr().out
    assert load_model(dst)[1]["method"] == "lr-official"


# ---------------------------------------------------------------------------------------------
# bad files: refused with what was expected, nothing written
# ---------------------------------------------------------------------------------------------


class NotATensor:
    pass


def _bad_file(case, folder, random_imports):
    src, _, _ = random_imports["lr"]
    state = dict(random_imports["lr"][2])
    path = folder / f"{case}.pth"
    if case == "missing file":
        return folder / "nowhere.pth", "lr"
    if case == "not a dict":
        torch.save(list(state.values()), path)
    elif case == "values not tensors":
        state[PREFIX + "conv1.bias"] = 0.5
        torch.save(state, path)
    elif case == "python objects":
        state[PREFIX + "conv1.bias"] = NotATensor()
        torch.save(state, path)
    elif case == "missing key":
        del state[PREFIX + "conv3.weight"]
        torch.save(state, path)
    elif case == "extra key":
        state[PREFIX + "extra.weight"] = torch.zeros(1)
        torch.save(state, path)
    elif case == "wrong shape":
        state[PREFIX + "conv1.weight"] = torch.zeros(16, 1, 3, 3, 3)
        torch.save(state, path)
    elif case == "not finite":
        state[PREFIX + "decode1.bias"] = torch.full((16,), float("nan"))
        torch.save(state, path)
    elif case == "truncated":
        data = src.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not a torch file":
        path.write_text("conv1.weight: 0.5\n")
    elif case == "teacher given as lr":
        return random_imports["fst"][0], "lr"
    elif case == "student given as fst":
        return random_imports["lr"][0], "fst"
    return path, "lr"


BAD = {
    "missing file": "nowhere.pth: file not found",
    "not a dict": r"a mapping of parameter name -> tensor; found a list",
    "values not tensors": r"these entries are not tensors: module.defnet_0.conv1.bias",
    "python objects": r"holds Python objects other than tensors .*NotATensor.*expected a plain state dict",
    "missing key": r"missing conv3.weight\. Expected exactly the 24 keys module.defnet_0.<name> for conv1, conv2",
    "extra key": r"unexpected extra.weight\. Expected exactly the 24 keys",
    "wrong shape": r"conv1.weight has shape \(16, 1, 3, 3, 3\), expected \(16, 2, 3, 3, 3\)",
    "not finite": r"decode1.bias hold NaN or infinite values",
    "truncated": r"cannot be read as a PyTorch file, truncated or damaged",
    "not a torch file": r"not a PyTorch file \(it starts with b'conv'.*expected one of the CRD authors' released",
    "teacher given as lr": r"unexpected flow_f.bias.*Expected exactly the 24 keys.*use kind 'fst'",
    "student given as fst": r"missing flow_f.bias.*Expected exactly the 36 keys.*use kind 'lr'",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_refused_and_nothing_is_written(random_imports, tmp_path, case):
    src, kind = _bad_file(case, tmp_path, random_imports)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match=BAD[case]):
        import_official(src, out / "m.pt", kind)
    assert list(out.iterdir()) == []


def test_cli_refuses_a_bad_file_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_text("hello")
    assert main(["import-official", str(bad), str(tmp_path / "m.pt"), "--kind", "fst"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crd import-official: error:") and "not a PyTorch file" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_import_never_replaces_the_authors_file(tmp_path):
    src = tmp_path / "lr.pth"
    torch.save(random_official_state("lr", 0), src)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="is the authors' checkpoint"):
        import_official(src, src, "lr")
    assert src.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# array order: crd register on NIfTI files equals the authors' pipeline on the same files
# ---------------------------------------------------------------------------------------------


def _write_pair(folder, shape, seed=3):
    """A random smooth pair as NIfTI files, of a shape whose three sides differ (so that the two
    orders give different grids), with a non-trivial affine."""
    import nibabel as nib
    import numpy as np

    fixed, moving = random_pair(shape, seed)
    affine = np.diag([1.2, 0.9, 1.0, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 2.5]
    paths = {}
    for name, image in (("fixed", fixed), ("moving", moving)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(image[0, 0].numpy(), affine), str(paths[name]))
    return paths


def _authors_field(state, kind, paths):
    """The authors' pipeline on the files: SimpleITK's arrays (their load_nii), their network, and
    their field (x, y, z) brought onto nibabel's (i, j, k) grid: array axes reversed, and channel
    x (their last array axis, which is nibabel's i) first, as it already is."""
    import SimpleITK as sitk

    def load_nii(path):
        return torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))[None, None].float()

    with torch.no_grad():
        raw = REFERENCE[kind](state, load_nii(paths["fixed"]), load_nii(paths["moving"]))[0]
    return raw[0].permute(3, 2, 1, 0).numpy()  # (3, k, j, i) -> (i, j, k, 3)


@pytest.mark.parametrize("kind", ["lr", "fst"])
def test_register_with_default_options_equals_the_authors_pipeline(random_imports, tmp_path, kind, capsys):
    """crd import-official + crd register (default options) on NIfTI files give the field of the
    authors' network fed as their loaders feed it (SimpleITK's reversed axes); fed in nibabel's
    order instead (--array-order stored), the field is far from it: the order matters."""
    import nibabel as nib
    import numpy as np

    _, dst, state = random_imports[kind]
    paths = _write_pair(tmp_path, (32, 64, 96))
    expected = _authors_field(state, kind, paths)
    fields = {}
    for order in (None, "stored"):
        out = tmp_path / f"flow-{order}.nii.gz"
        args = ["register", "--checkpoint", str(dst), "--fixed", str(paths["fixed"]), "--moving",
                str(paths["moving"]), "--out-warped", str(tmp_path / f"w-{order}.nii.gz"), "--out-flow", str(out),
                "--device", "cpu"]
        assert main(args + (["--array-order", order] if order else [])) == 0
        fields[order] = np.asarray(nib.load(str(out)).dataobj)
    assert "array order reversed" in capsys.readouterr().out
    assert fields[None].shape == expected.shape == (32, 64, 96, 3)
    assert np.abs(expected).std() > 0.1
    assert np.abs(fields[None] - expected).max() <= 1e-4
    assert np.abs(fields["stored"] - expected).max() > 1e-2


def test_evaluate_and_bench_load_the_recorded_order(random_imports):
    """crd evaluate and crd bench load checkpoints through load_for_inference, which wraps a
    network that expects the reversed order; a crd train checkpoint stays as it is."""
    from crd.models.array_order import ArrayOrderAdapter
    from crd.models.checkpoint import load_for_inference

    model, payload = load_for_inference(random_imports["lr"][1])
    assert isinstance(model, ArrayOrderAdapter) and payload["input"]["array_order"] == "reversed"
    bare, _ = load_for_inference(random_imports["lr"][1], array_order="stored")
    assert not isinstance(bare, ArrayOrderAdapter)


def test_a_checkpoint_imported_before_the_order_was_recorded_is_fed_the_authors_order(
    random_imports, tmp_path, caplog
):
    """An older import (no array_order in its input entry) still runs as the authors' pipeline,
    with one line telling the user to re-import it; a crd train checkpoint without the entry is
    fed as stored, silently."""
    from crd.models.checkpoint import atomic_torch_save, load_for_inference

    payload = read_checkpoint(random_imports["fst"][1])
    del payload["input"]["array_order"]
    old = tmp_path / "old-import.pt"
    atomic_torch_save(payload, old)
    with caplog.at_level("WARNING"):
        _, loaded = load_for_inference(old)
    assert loaded["input"]["array_order"] == "reversed"
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "re-import" in lines[0].lower() and str(old) in lines[0]
    payload["training"] = {"settings": {"seed": 0}}
    trained = tmp_path / "trained.pt"
    atomic_torch_save(payload, trained)
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, loaded = load_for_inference(trained)
    assert loaded["input"]["array_order"] == "stored" and not caplog.records


def test_crd_train_refuses_a_teacher_that_expects_another_order(random_imports):
    """crd train feeds the dataset's arrays as stored; the authors' teacher expects them reversed."""
    from crd.errors import CrdError
    from crd.models.registration import build_model
    from crd.train import _load_teacher

    student = build_model({"kind": "lowres", "width": 1.0, "factor": 2})
    with pytest.raises(CrdError, match="expects arrays in the reversed order"):
        _load_teacher(random_imports["fst"][1], student, "crd", torch.device("cpu"))
