"""``crd register``: grids checked, padding and cropping, outputs in our convention, atomic writes."""

from __future__ import annotations

import logging
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from crd.atomic import OutputClashError
from crd.cli import main
from crd.errors import CheckpointError
from crd.models.checkpoint import load_for_inference, save_checkpoint
from crd.models.functional import warp
from crd.models.official import OFFICIAL_PREFIX, expected_shapes, import_official
from crd.models.registration import IdentityNet, LowResolutionNet
from crd.register import InputImageError, intensity_range_warning, normalise_intensity, pad_to_multiple, register
from model_helpers import with_visible_field
from repo_paths import REPO, SHARED

OFFICIAL = SHARED / "crd-official"
FILES = {"lr": "oasis_lr_student_init.pth", "fst": "oasis_fst_teacher.pth"}

SHAPE = (40, 50, 36)  # no side a multiple of 32
AFFINE = np.array([[0.0, 0.0, -1.1, 20.0], [-0.9, 0.0, 0.0, 30.0], [0.0, 1.2, 0.0, -15.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture
def crd_records(caplog, monkeypatch):
    """caplog for the ``crd`` loggers even after an earlier CLI call in this process set them up
    (``setup_logging`` stops propagation to the root logger, where caplog listens)."""
    monkeypatch.setattr(logging.getLogger("crd"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="crd")
    return caplog


def blob(shape, seed=0):
    """A textured ellipsoid in [0, 1] on a zero background (a small stand-in for a brain)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.8, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0))
    tex = ndimage.gaussian_filter(rng.random(shape), 2)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return ndimage.gaussian_filter(np.where(r < 1, 0.3 + 0.7 * tex, 0.0), 1).astype(np.float32)


def save(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture
def pair(tmp_path):
    """Fixed and moving images (arbitrary intensity range) and moving labels on one oblique grid."""
    fixed = blob(SHAPE, 0) * 800.0 + 5.0
    moving = blob(SHAPE, 1) * 800.0 + 5.0
    labels = (moving > 300).astype(np.uint8) + (moving > 500).astype(np.uint8)
    return {
        "fixed": save(tmp_path / "fixed.nii.gz", fixed),
        "moving": save(tmp_path / "moving.nii.gz", moving),
        "labels": save(tmp_path / "labels.nii.gz", labels),
        "moving_array": moving,
        "labels_array": labels,
    }


@pytest.fixture
def unit_pair(tmp_path):
    """Fixed and moving images inside [0, 1] but far from spanning it (min 0.02, max about 0.6, as
    OASIS aligned_norm has white matter near 0.43): min-max per image changes them a lot."""
    fixed = blob(SHAPE, 0) * 0.6 + 0.02
    moving = blob(SHAPE, 1) * 0.6 + 0.02
    labels = (moving > 0.3).astype(np.uint8)
    return {
        "fixed": save(tmp_path / "ufixed.nii.gz", fixed),
        "moving": save(tmp_path / "umoving.nii.gz", moving),
        "labels": save(tmp_path / "ulabels.nii.gz", labels),
        "moving_array": moving,
        "labels_array": labels,
    }


def run(checkpoint, pair, out, **extra):
    return register(
        checkpoint,
        pair["fixed"],
        pair["moving"],
        out / "warped.nii.gz",
        out_flow=out / "flow.nii.gz",
        moving_labels=pair["labels"],
        out_warped_labels=out / "warped_labels.nii.gz",
        device="cpu",
        **extra,
    )


def test_identity_checkpoint_gives_the_moving_image_back(tmp_path, pair):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    result = run(ckpt, pair, tmp_path / "out")
    warped = nib.load(str(result.warped))
    flow = nib.load(str(result.flow))
    labels = nib.load(str(result.warped_labels))
    assert warped.shape == labels.shape == SHAPE and flow.shape == (*SHAPE, 3)
    for img in (warped, flow, labels):
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    assert warped.get_data_dtype() == np.float32 and flow.get_data_dtype() == np.float32
    assert labels.get_data_dtype() == np.uint8
    assert np.all(flow.get_fdata() == 0)
    # the zero field samples at the voxel centres: equal up to float32 round-off of the sampling grid
    # (about 1e-6 voxel, times the image gradient)
    np.testing.assert_allclose(warped.get_fdata(), pair["moving_array"], rtol=1e-5, atol=1e-4)
    assert np.array_equal(np.asanyarray(labels.dataobj), pair["labels_array"])
    assert result.padded_shape == SHAPE and result.mean_displacement == 0.0


def expected_flow(model, pair, minmax=True):
    """Independently: min-max to [0, 1] (or not), zero-pad 12/12, 7/7, 14/14 voxels, run, crop."""

    def prepared(path):
        a = nib.load(str(path)).get_fdata(dtype=np.float32)
        if minmax:
            a = (a - a.min()) / (a.max() - a.min())
        return F.pad(torch.from_numpy(a)[None, None], (14, 14, 7, 7, 12, 12))

    with torch.no_grad():
        full = model(prepared(pair["fixed"]), prepared(pair["moving"]))
    return full[0, :, 12:52, 7:57, 14:50].permute(1, 2, 3, 0).numpy()


def test_lowres_model_is_padded_to_its_multiple_and_cropped_back(tmp_path, pair):
    torch.manual_seed(0)
    model = with_visible_field(LowResolutionNet(width=0.25)).eval()
    ckpt = save_checkpoint(tmp_path / "lr.pt", model, method="lr")
    result = run(ckpt, pair, tmp_path / "out", threads=2, normalisation="minmax")
    assert model.size_multiple == 32 and result.padded_shape == (64, 64, 64)
    assert result.normalisation == "minmax" and result.warnings == []
    flow = nib.load(str(result.flow)).get_fdata(dtype=np.float32)
    assert flow.shape == (*SHAPE, 3)
    np.testing.assert_allclose(nib.load(str(result.flow)).affine, AFFINE, atol=1e-5)
    expected = expected_flow(model, pair)
    np.testing.assert_allclose(flow, expected, atol=1e-5)
    assert np.abs(expected).max() > 1e-3  # a random model gives a non-zero field

    # the warped image is the moving image (own intensities) warped by that field
    u = torch.from_numpy(flow).permute(3, 0, 1, 2)[None]
    moving = torch.from_numpy(pair["moving_array"])[None, None]
    expected_warped = warp(moving, u)[0, 0].numpy()
    np.testing.assert_allclose(nib.load(str(result.warped)).get_fdata(), expected_warped, rtol=1e-5, atol=1e-3)
    labels = np.asanyarray(nib.load(str(result.warped_labels)).dataobj)
    expected_labels = warp(torch.from_numpy(pair["labels_array"].astype(np.float32))[None, None], u, mode="nearest")
    assert np.array_equal(labels, expected_labels[0, 0].numpy().astype(np.uint8))


def test_the_warm_up_is_one_untimed_registration_at_the_real_size(tmp_path, pair, monkeypatch):
    """On CUDA kernels are chosen per input shape (cuDNN autotuning), so a warm-up at another size
    leaves the timed call to pay for it: the warm-up must call the model and the warps with the
    timed call's tensors (shapes, dtype, device), under inference mode, before the clock starts."""
    import crd.register

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "lr.pt", with_visible_field(LowResolutionNet(width=0.25)).eval(), method="lr")
    events = []

    def seen(kind, *tensors, **extra):
        described = tuple((tuple(t.shape), t.dtype, t.device.type) for t in tensors)
        events.append((kind, described, torch.is_inference_mode_enabled(), *extra.values()))

    real_forward, real_warp, real_measure = LowResolutionNet.forward, crd.register.warp, crd.register.measure

    def forward(self, fixed, moving):
        seen("model", fixed, moving)
        return real_forward(self, fixed, moving)

    def spied_warp(moving, flow, mode="bilinear", **kwargs):
        seen("warp", moving, flow, mode=mode)
        return real_warp(moving, flow, mode=mode, **kwargs)

    def spied_measure(device):
        events.append(("timing starts",))
        return real_measure(device)

    monkeypatch.setattr(LowResolutionNet, "forward", forward)
    monkeypatch.setattr(crd.register, "warp", spied_warp)
    monkeypatch.setattr(crd.register, "measure", spied_measure)
    result = run(ckpt, pair, tmp_path / "out")
    assert result.padded_shape == (64, 64, 64)
    image, padded = ((1, 1, *SHAPE), torch.float32, "cpu"), ((1, 1, 64, 64, 64), torch.float32, "cpu")
    flow = ((1, 3, *SHAPE), torch.float32, "cpu")
    registration = [
        ("model", (padded, padded), True),
        ("warp", (image, flow), True, "bilinear"),
        ("warp", (image, flow), True, "nearest"),
    ]
    assert events == [*registration, ("timing starts",), *registration]


def random_official_checkpoint(path, kind="lr", seed=0):
    """``crd import-official`` of random weights in the authors' format (scaled so activations
    stay O(1)): a checkpoint whose ``input`` entry is the importer's."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(kind).items():
        if key.endswith(".weight"):
            state[OFFICIAL_PREFIX + key] = torch.randn(*shape, generator=g) * (2.0 / (shape[1] * 27)) ** 0.5
        else:
            state[OFFICIAL_PREFIX + key] = torch.randn(*shape, generator=g) * 0.1
    torch.save(state, path.with_suffix(".pth"))
    return import_official(path.with_suffix(".pth"), path, kind)


def _checkpoint_recording(tmp_path, record):
    """A random LowResolutionNet checkpoint whose ``input`` entry records ``record`` (``None``: as
    ``crd train`` writes it, with no normalisation), or the importer's (``"official"``)."""
    if record == "official":
        ckpt = random_official_checkpoint(tmp_path / "official.pt")
        return load_for_inference(ckpt)[0], ckpt  # fed in the recorded (authors') array order
    torch.manual_seed(2)
    model = with_visible_field(LowResolutionNet(width=0.25), seed=2).eval()
    spec = None if record is None else {"intensity": "test", "normalisation": record}
    return model, save_checkpoint(tmp_path / "lr.pt", model, method="lr", input_spec=spec)


@pytest.mark.parametrize(
    "record, fed",
    [("none", "none"), ("minmax", "minmax"), (None, "none"), ("official", "none")],
    ids=["none", "minmax", "crd-train", "imported"],
)
def test_default_options_follow_the_checkpoint_record(tmp_path, unit_pair, crd_records, record, fed):
    """No --normalisation: a checkpoint that says "none" (the authors' weights; crd train's, which
    say nothing, as crd evaluate feeds dataset images) gets the arrays unchanged; "minmax" gets
    each image scaled to [0, 1]. Compared with the model called directly on the arrays."""
    model, ckpt = _checkpoint_recording(tmp_path, record)
    result = run(ckpt, unit_pair, tmp_path / "out")
    assert result.normalisation == fed and result.warnings == [] and not crd_records.records
    flow = nib.load(str(result.flow)).get_fdata(dtype=np.float32)
    expected = expected_flow(model, unit_pair, minmax=fed == "minmax")
    other = expected_flow(model, unit_pair, minmax=fed != "minmax")
    np.testing.assert_allclose(flow, expected, atol=1e-5)
    assert np.abs(expected - other).max() > 100 * 1e-5  # the two inputs give different fields


def test_normalisation_can_be_overridden(tmp_path, pair, unit_pair):
    model, ckpt = _checkpoint_recording(tmp_path, "minmax")
    result = run(ckpt, unit_pair, tmp_path / "out", normalisation="none")
    assert result.normalisation == "none"
    flow = nib.load(str(result.flow)).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(flow, expected_flow(model, unit_pair, minmax=False), atol=1e-5)

    model, ckpt = _checkpoint_recording(tmp_path, "official")
    result = run(ckpt, pair, tmp_path / "out1", normalisation="minmax")
    assert result.normalisation == "minmax" and result.warnings == []
    flow = nib.load(str(result.flow)).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(flow, expected_flow(model, pair, minmax=True), atol=1e-5)
    with pytest.raises(InputImageError, match="normalisation 'zscore': expected one of minmax, none"):
        run(ckpt, pair, tmp_path / "out2", normalisation="zscore")


def test_images_far_outside_unit_range_fed_as_stored_are_warned_about(tmp_path, pair, unit_pair, crd_records):
    """Raw intensities (here 5 to about 800) given to a checkpoint that says "none": one line per
    image naming the file, its range and the way out; the registration still runs."""
    ckpt = save_checkpoint(
        tmp_path / "identity.pt", IdentityNet(), method="identity", input_spec={"normalisation": "none"}
    )
    result = run(ckpt, pair, tmp_path / "out")
    assert [r.levelname for r in crd_records.records] == ["WARNING", "WARNING"]
    assert [r.getMessage() for r in crd_records.records] == result.warnings
    for name, message in zip(("fixed", "moving"), result.warnings, strict=True):
        assert "\n" not in message
        hi = nib.load(str(pair[name])).get_fdata().max()
        assert message.startswith(f"crd register: warning: {name} {pair[name]}: intensities span [5, {hi:.4g}]")
        assert "far outside [0, 1]" in message and "pass --normalisation minmax" in message
    assert result.warped.is_file()
    crd_records.clear()
    assert run(ckpt, pair, tmp_path / "out2", normalisation="minmax").warnings == []  # rescaled: all well
    assert run(ckpt, unit_pair, tmp_path / "out3").warnings == []
    assert not crd_records.records


@pytest.mark.parametrize(
    "lo, hi, mode, warns",
    [(0.0, 1.0, "none", False), (-0.4, 1.4, "none", False), (0.0, 1.6, "none", True), (-0.6, 1.0, "none", True),
     (0.0, 4000.0, "none", True), (0.0, 4000.0, "minmax", False)],
)  # fmt: skip
def test_intensity_range_warning_threshold(tmp_path, lo, hi, mode, warns):
    image = np.array([lo, 0.5, hi], dtype=np.float32)
    message = intensity_range_warning(image, "moving", tmp_path / "m.nii.gz", mode)
    assert (message is not None) == warns
    if warns:
        assert f"[{lo:.4g}, {hi:.4g}]" in message


def test_cli_warning_is_one_line_on_stderr(tmp_path):
    """As a user sees it (no logging set up): a raw MRI-like image up to 4000, default options."""
    ckpt = save_checkpoint(
        tmp_path / "identity.pt", IdentityNet(), method="identity", input_spec={"normalisation": "none"}
    )
    fixed = save(tmp_path / "f.nii.gz", blob(SHAPE, 0) * 0.6)
    moving = save(tmp_path / "raw.nii.gz", blob(SHAPE, 1) * 4000.0)
    argv = ["register", "--checkpoint", str(ckpt), "--fixed", str(fixed), "--moving", str(moving)]
    argv += ["--out-warped", str(tmp_path / "w.nii.gz"), "--device", "cpu", "--threads", "1"]
    done = subprocess.run([sys.executable, "-m", "crd", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    hi = nib.load(str(moving)).get_fdata().max()
    assert lines[0].startswith(f"crd register: warning: moving {moving}: intensities span [0, {hi:.4g}]")
    assert lines[0].endswith("pass --normalisation minmax, or scale the images to [0, 1] first")
    assert "(normalisation none, array order stored)" in done.stdout


@pytest.mark.parametrize("shape, multiple", [((40, 50, 36), 32), ((5, 16, 17), 16), ((3, 4, 5), 1)])
def test_pad_to_multiple_centres_and_crops_back(shape, multiple):
    x = torch.rand(1, 2, *shape)
    padded, crop = pad_to_multiple(x, multiple)
    assert all(s % multiple == 0 and s - multiple < o <= s for s, o in zip(padded.shape[2:], shape, strict=True))
    assert torch.equal(padded[(slice(None), slice(None), *crop)], x)
    assert padded.sum() == pytest.approx(x.sum().item())  # zeros only were added
    for s, c in zip(padded.shape[2:], crop, strict=True):
        assert abs(c.start - (s - c.stop)) <= 1  # split evenly between the two ends


def test_normalisation_follows_the_checkpoint_record():
    image = np.array([[[2.0, 4.0, 6.0]]], dtype=np.float32)
    np.testing.assert_allclose(normalise_intensity(image, {"normalisation": "minmax"}), [[[0.0, 0.5, 1.0]]])
    np.testing.assert_allclose(normalise_intensity(image, {"normalisation": "none"}), image)
    # no record (crd train's checkpoints): as stored, as crd evaluate feeds dataset images
    np.testing.assert_allclose(normalise_intensity(image, {}), image)
    assert not normalise_intensity(np.full((2, 2, 2), 3.0), {"normalisation": "minmax"}).any()
    with pytest.raises(CheckpointError, match="normalisation 'zscore' is unknown"):
        normalise_intensity(image, {"normalisation": "zscore"})


def test_cli_round_trip_prints_time_and_memory(tmp_path, pair, capsys):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    out = tmp_path / "out"
    argv = ["register", "--checkpoint", str(ckpt), "--fixed", str(pair["fixed"]), "--moving", str(pair["moving"])]
    assert main([*argv, "--out-warped", str(out / "w.nii"), "--device", "cpu", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "registered 40x50x36 with identity on cpu (normalisation none, array order stored):" in printed
    assert " s (field " in printed
    assert "peak RSS" in printed and f"wrote {out / 'w.nii'}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["w.nii"]  # no temporary files left


def test_a_4d_image_with_one_volume_is_read_as_3d(tmp_path, pair):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    moving4 = save(tmp_path / "moving4.nii.gz", pair["moving_array"][..., None])
    result = register(ckpt, pair["fixed"], moving4, tmp_path / "w.nii.gz", device="cpu")
    assert nib.load(str(result.warped)).shape == SHAPE


def _grid_cases(tmp_path, pair):
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    return {
        "shape": (
            save(tmp_path / "small.nii.gz", blob((40, 50, 32))),
            None,
            r"shapes \(40, 50, 36\) and \(40, 50, 32\)",
        ),
        "affine": (
            save(tmp_path / "shifted.nii.gz", pair["moving_array"], moved),
            None,
            r"affines differ by up to 0\.5 mm",
        ),
        "labels": (
            pair["moving"],
            save(tmp_path / "lab.nii.gz", pair["labels_array"], np.eye(4)),
            r"moving and moving labels must share one voxel grid",
        ),
    }


@pytest.mark.parametrize("case", ["shape", "affine", "labels"])
def test_images_on_different_grids_are_refused_and_nothing_is_written(tmp_path, pair, case, capsys):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    moving, labels, message = _grid_cases(tmp_path, pair)[case]
    out = tmp_path / "out"
    with pytest.raises(InputImageError, match=message):
        register(ckpt, pair["fixed"], moving, out / "w.nii.gz", moving_labels=labels,
                 out_warped_labels=out / "l.nii.gz" if labels else None, device="cpu")  # fmt: skip
    argv = ["register", "--checkpoint", str(ckpt), "--fixed", str(pair["fixed"]), "--moving", str(moving)]
    argv += ["--out-warped", str(out / "w.nii.gz"), "--out-flow", str(out / "u.nii.gz"), "--device", "cpu"]
    if labels:
        argv += ["--moving-labels", str(labels), "--out-warped-labels", str(out / "l.nii.gz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("crd register: error:") and "resample them to the same grid first" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out_warped_labels": "l.nii.gz"}, "give --moving-labels and --out-warped-labels together"),
        ({"out_flow": "u.mgz"}, r"--out-flow .*u.mgz: outputs are NIfTI"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(tmp_path, pair, kwargs, message):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    kwargs = {k: tmp_path / "out" / v for k, v in kwargs.items()}
    with pytest.raises(InputImageError, match=message):
        register(ckpt, pair["fixed"], pair["moving"], tmp_path / "out" / "w.nii.gz", device="cpu", **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_and_unreadable_inputs_are_named(tmp_path, pair):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    with pytest.raises(InputImageError, match="moving .*nowhere.nii.gz: file not found"):
        register(ckpt, pair["fixed"], tmp_path / "nowhere.nii.gz", tmp_path / "w.nii.gz", device="cpu")
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not an image")
    with pytest.raises(InputImageError, match="fixed .*junk.nii.gz: cannot be read by nibabel"):
        register(ckpt, junk, pair["moving"], tmp_path / "w.nii.gz", device="cpu")
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        register(tmp_path / "none.pt", pair["fixed"], pair["moving"], tmp_path / "w.nii.gz", device="cpu")


def _truncated_copy(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_truncated_inputs_are_one_line_errors_naming_the_file(tmp_path, pair):
    """A .nii.gz cut in half opens (nibabel reads the header lazily) but its voxels do not."""
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    cut = _truncated_copy(pair["moving"], tmp_path / "cut.nii.gz")
    with pytest.raises(InputImageError, match=r"moving .*cut.nii.gz: its voxels cannot be read, the file is truncated"):
        register(ckpt, pair["fixed"], cut, tmp_path / "out" / "w.nii.gz", device="cpu")
    cut_labels = _truncated_copy(pair["labels"], tmp_path / "cut_labels.nii.gz")
    with pytest.raises(InputImageError, match=r"moving labels .*cut_labels.nii.gz: its voxels cannot be read"):
        register(ckpt, pair["fixed"], pair["moving"], tmp_path / "out" / "w.nii.gz", device="cpu",
                 moving_labels=cut_labels, out_warped_labels=tmp_path / "out" / "l.nii.gz")  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("clash", ["fixed", "moving", "labels", "checkpoint", "other output"])
def test_an_output_never_replaces_an_input_or_another_output(tmp_path, pair, clash):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    target = {"fixed": pair["fixed"], "moving": pair["moving"], "labels": pair["labels"], "checkpoint": ckpt,
              "other output": tmp_path / "w.nii.gz"}[clash]  # fmt: skip
    if clash == "checkpoint":  # a checkpoint named like an image, so only the clash can refuse it
        target = tmp_path / "identity.nii.gz"
        ckpt = save_checkpoint(target, IdentityNet(), method="identity")
    before = {p: p.read_bytes() for p in (pair["fixed"], pair["moving"], pair["labels"], ckpt)}
    with pytest.raises(OutputClashError, match=f"--out-flow {target} (is the|is also)"):
        register(ckpt, pair["fixed"], pair["moving"], tmp_path / "w.nii.gz", out_flow=target, device="cpu",
                 moving_labels=pair["labels"], out_warped_labels=tmp_path / "l.nii.gz")  # fmt: skip
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "w.nii.gz").exists() and not (tmp_path / "l.nii.gz").exists()


def test_the_command_line_refuses_an_output_that_is_an_input_in_one_line(tmp_path, pair, capsys):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    before = pair["fixed"].read_bytes()
    argv = ["register", "--checkpoint", str(ckpt), "--fixed", str(pair["fixed"]), "--moving", str(pair["moving"]),
            "--out-warped", str(tmp_path / "w.nii.gz"), "--out-flow", str(pair["fixed"]), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out-flow {pair['fixed']} is the fixed image" in err
    assert pair["fixed"].read_bytes() == before and not (tmp_path / "w.nii.gz").exists()


def test_an_output_through_a_link_to_an_input_is_refused(tmp_path, pair):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(pair["fixed"])
    before = pair["fixed"].read_bytes()
    with pytest.raises(OutputClashError, match="is the fixed image"):
        register(ckpt, pair["fixed"], pair["moving"], link, device="cpu")
    assert pair["fixed"].read_bytes() == before


def test_outputs_are_written_all_or_none(tmp_path, pair, monkeypatch):
    """The third image fails to save: the first two are not left behind, nor any temporary file."""
    import crd.volumes

    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    real_save = crd.volumes.nib.save
    calls = []

    def failing_save(img, name):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(img, name)

    monkeypatch.setattr(crd.volumes.nib, "save", failing_save)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        register(ckpt, pair["fixed"], pair["moving"], out / "w.nii.gz", out_flow=out / "u.nii.gz", device="cpu",
                 moving_labels=pair["labels"], out_warped_labels=out / "l.nii.gz")  # fmt: skip
    assert len(calls) == 3 and sorted(p.name for p in out.iterdir()) == []


def test_non_finite_voxels_are_registered_as_zero_with_a_warning(tmp_path, unit_pair, crd_records):
    ckpt = save_checkpoint(tmp_path / "identity.pt", IdentityNet(), method="identity")
    img = nib.load(str(unit_pair["moving"]))
    data = img.get_fdata(dtype=np.float32)
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    moving = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), str(moving))
    result = register(ckpt, unit_pair["fixed"], moving, tmp_path / "w.nii.gz", device="cpu")
    assert result.warnings == [
        f"crd register: warning: moving {moving}: 3 of {data.size} voxels are NaN or infinite; they are registered as 0"
    ]
    assert np.isfinite(nib.load(str(result.warped)).get_fdata()).all()


# ---------------------------------------------------------------------------------------------
# the authors' weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not all((OFFICIAL / f).is_file() for f in FILES.values()),
    reason=f"the authors' released weights are not present in {OFFICIAL} (they are never redistributed)",
)
@pytest.mark.parametrize("kind", ["lr", "fst"])
def test_official_weights_identity_and_shifts_in_our_convention(tmp_path, kind):
    """fixed == moving: an identity-like result. A shift of the moving image by +2 voxels along one
    array axis: the mean field points along that axis (our channel order, our sign convention)."""
    ckpt = import_official(OFFICIAL / FILES[kind], tmp_path / f"{kind}.pt", kind)
    image = blob((64, 80, 72)) * 0.6  # fed as stored, in [0, 1] as OASIS aligned_norm
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fixed = save(tmp_path / "fixed.nii.gz", image, affine)
    result = register(ckpt, fixed, fixed, tmp_path / "same.nii.gz", out_flow=tmp_path / "u.nii.gz", device="cpu")
    assert result.mean_displacement < 1.0  # voxels; 0.73 (lr) and 0.53 (fst) at the time of writing
    warped = nib.load(str(result.warped)).get_fdata()
    assert np.abs(warped - image).mean() < 0.02 * image.max()
    for axis in range(3):
        moving = save(tmp_path / f"moving{axis}.nii.gz", np.roll(image, 2, axis), affine)
        out = tmp_path / f"u{axis}.nii.gz"
        register(ckpt, fixed, moving, tmp_path / "w.nii.gz", out_flow=out, device="cpu")
        # moving(p) = fixed(p - 2 e): inside the object u ~ +2 e (the background does not say)
        mean = nib.load(str(out)).get_fdata()[image > 0.1 * image.max()].mean(axis=0)
        assert mean[axis] > 0.7 and np.argmax(np.abs(mean)) == axis, mean


EXTERNAL = '''"""shift-tool: a method without a network: moves every voxel 2 voxels along axis 0."""
MODEL = None
TRAINING = None


def register_pair(fixed, moving, *, spacing, seed, threads):
    import numpy as np

    assert len(spacing) == 3 and seed == 0 and threads >= 1
    field = np.zeros((3, *fixed.shape), np.float32)
    field[0] = 2.0
    field[1] = spacing[1] / 10.0  # the fixed image's voxel size reaches the tool
    return field
'''


def test_a_method_without_a_network_registers_through_its_method_file(tmp_path, capsys):
    """crd register --method-file <a register_pair method> (no checkpoint): the tool's field,
    written as every field, and the moving image and labels warped with it."""
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "shift-tool.py").write_text(EXTERNAL)
    (folder / "shift-tool.smk").write_text("# its own rules\n")
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    fixed = save(tmp_path / "f.nii.gz", blob(SHAPE, 0), affine)
    moving = save(tmp_path / "m.nii.gz", blob(SHAPE, 1), affine)
    labels = save(tmp_path / "l.nii.gz", (blob(SHAPE, 1) > 0.5).astype(np.int16), affine)
    argv = ["register", "--method-file", str(folder / "shift-tool.py"), "--fixed", str(fixed), "--moving", str(moving),
            "--out-warped", str(tmp_path / "w.nii.gz"), "--out-flow", str(tmp_path / "u.nii.gz"),
            "--moving-labels", str(labels), "--out-warped-labels", str(tmp_path / "wl.nii.gz"),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert "with shift-tool on cpu (normalisation none, array order stored)" in capsys.readouterr().out
    flow = nib.load(str(tmp_path / "u.nii.gz")).get_fdata(dtype=np.float32)
    assert np.all(flow[..., 0] == 2.0) and np.allclose(flow[..., 1], 0.15) and np.all(flow[..., 2] == 0.0)
    expected = warp(torch.from_numpy(nib.load(str(moving)).get_fdata(dtype=np.float32))[None, None],
                    torch.from_numpy(np.moveaxis(flow, -1, 0))[None])[0, 0].numpy()  # fmt: skip
    np.testing.assert_allclose(nib.load(str(tmp_path / "w.nii.gz")).get_fdata(dtype=np.float32), expected, atol=1e-6)
    assert nib.load(str(tmp_path / "wl.nii.gz")).get_data_dtype() == np.int16


def test_register_without_a_checkpoint_needs_a_register_pair_method(tmp_path, capsys):
    fixed = save(tmp_path / "f.nii.gz", blob(SHAPE, 0))
    argv = ["register", "--fixed", str(fixed), "--moving", str(fixed), "--out-warped", str(tmp_path / "w.nii.gz")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --checkpoint, or --method-file of a method without a network" in err[0]
    assert main([*argv, "--method-file", str(REPO / "baselines" / "hr.py")]) == 2
    assert "give --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "w.nii.gz").exists()
