"""Training: the loss goes down, checkpoints describe themselves, histories are tidy, interrupted
runs resume (and a resume file is data, never code), the distillation recipe reaches the optimiser."""

import runpy

import pandas as pd
import pytest
import torch

from crd.losses import UnsupervisedLoss
from crd.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from crd.models.functional import warp
from crd.models.registration import FeatureShiftedTeacher, FullResolutionNet, LowResolutionNet
from crd.tidy import HISTORY_COLUMNS, load_history
from crd.train import TrainSettings, history_path, initialise_from, train
from repo_paths import REPO

FAST = {"iterations": 4, "checkpoint_every": 2, "val_pairs": 1, "ncc_window": 5, "lr": 1e-3}


def _killed_at_step(step: int, monkeypatch, data, out, **kwargs) -> None:
    """Run ``train`` until Adam's ``step``-th step, where it is killed (KeyboardInterrupt), as an
    interrupted job; Adam is restored afterwards."""
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        train(data, out, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)


def test_training_steps_lower_the_loss_on_a_pair():
    torch.manual_seed(0)
    from crd.deform import random_bspline_displacement

    fixed = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 32, 32, 32), 5, 1, 2)
    true = random_bspline_displacement((32, 32, 32), max_displacement=2.0, generator=torch.Generator().manual_seed(0))
    moving = warp(fixed, true)
    model = LowResolutionNet()
    loss_fn = UnsupervisedLoss(ncc_window=5, smooth_weight=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        flow = model(fixed, moving)
        terms = loss_fn(fixed, warp(moving, flow), flow)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(terms.total.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 0.01


def test_train_writes_a_self_describing_checkpoint(tiny_synth, tmp_path):
    out = train(
        tiny_synth,
        tmp_path / "hr.pt",
        method="hr",
        model_config={"kind": "fullres", "width": 0.5},
        settings=TrainSettings.from_dict(FAST),
        threads=2,
        log_file=tmp_path / "hr.log",
        progress=False,
    )
    payload = read_checkpoint(out)
    assert payload["method"] == "hr" and payload["model"] == {"kind": "fullres", "width": 0.5}
    assert payload["training"]["settings"]["iterations"] == 4
    # iteration 0 is the model before any step; then every checkpoint_every
    assert [h["iteration"] for h in payload["training"]["history"]] == [0, 2, 4]
    assert "val_dice" in payload["training"]["history"][-1]
    assert not (tmp_path / ".hr.pt.resume").exists()
    history = load_history(history_path(out))
    assert history_path(out) == tmp_path / "hr.history.csv"
    assert tuple(history.columns) == HISTORY_COLUMNS
    assert set(history["iteration"]) == {0, 2, 4} and set(history["seed"]) == {0}
    at = history.set_index(["iteration", "metric"])["value"]
    assert {"val_dice", "val_loss"} == set(at[0].index)
    for metric in ("loss", "ncc", "smooth", "grad_norm_ncc", "grad_norm_smooth", "learning_rate", "val_dice"):
        assert metric in at[4].index, metric
    assert at[4, "grad_norm_ncc"] > 0 and at[4, "learning_rate"] == pytest.approx(1e-3)
    assert "wrote" in (tmp_path / "hr.log").read_text()
    model, _ = load_model(out)
    assert isinstance(model, FullResolutionNet)


def test_interrupted_training_resumes_to_the_same_weights(tiny_synth, tmp_path, monkeypatch):
    settings = TrainSettings.from_dict(FAST)
    kwargs = dict(method="lr", model_config={"kind": "lowres"}, settings=settings, threads=1, progress=False)
    reference = train(tiny_synth, tmp_path / "ref.pt", **kwargs)

    _killed_at_step(3, monkeypatch, tiny_synth, tmp_path / "run.pt", **kwargs)
    assert (tmp_path / ".run.pt.resume").is_file() and not (tmp_path / "run.pt").exists()
    resumed = train(tiny_synth, tmp_path / "run.pt", **kwargs)
    assert read_checkpoint(resumed)["training"]["resumed_at"] == 2
    a, b = read_checkpoint(reference)["state_dict"], read_checkpoint(resumed)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_fst_starts_from_hr_backbone_and_crd_distills(tiny_synth, tmp_path):
    hr = save_checkpoint(tmp_path / "hr.pt", FullResolutionNet(), method="hr")
    fst = FeatureShiftedTeacher()
    assert "backbone" in initialise_from(fst, hr)
    torch.testing.assert_close(fst.backbone.conv1.weight, load_model(hr)[0].backbone.conv1.weight)
    save_checkpoint(tmp_path / "fst.pt", fst, method="fst")
    lr = save_checkpoint(tmp_path / "lr.pt", LowResolutionNet(), method="lr")
    out = train(
        tiny_synth,
        tmp_path / "crd.pt",
        method="crd",
        model_config={"kind": "lowres", "width": 1.0, "factor": 2},
        objective="distill",
        settings=TrainSettings.from_dict({**FAST, "iterations": 2}),
        init=lr,
        teacher=tmp_path / "fst.pt",
        threads=2,
        progress=False,
    )
    history = read_checkpoint(out)["training"]["history"]
    assert {"flow_mse", "attention_mse", "grad_norm_flow", "grad_norm_attention"} <= set(history[-1])
    assert history[0]["iteration"] == 0 and "val_dice" in history[0]  # the init's score, before any step


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown train settings \\['iters'\\]"):
        TrainSettings.from_dict({"iters": 3})


def test_interrupted_run_keeps_its_history(tiny_synth, tmp_path, monkeypatch):
    settings = TrainSettings.from_dict({**FAST, "checkpoint_every": 1})
    kwargs = dict(method="lr", model_config={"kind": "lowres"}, settings=settings, threads=1, progress=False)
    _killed_at_step(3, monkeypatch, tiny_synth, tmp_path / "run.pt", **kwargs)
    out = train(tiny_synth, tmp_path / "run.pt", **kwargs)
    assert sorted(set(load_history(history_path(out))["iteration"])) == [0, 1, 2, 3, 4]


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code in a resume file ran')",))


@pytest.mark.parametrize("content", ["pickle", "truncated", "garbage"])
def test_a_hostile_or_broken_resume_file_is_ignored_never_run(tiny_synth, tmp_path, content):
    """A resume file is read with weights_only=True: a crafted pickle does not run, a truncated or
    foreign file does not block the rerun (training starts afresh, with a warning)."""
    resume = tmp_path / ".lr.pt.resume"
    if content == "pickle":
        torch.save({"run_id": "x", "payload": _Boom()}, resume)
    elif content == "truncated":
        torch.save({"run_id": "x", "model": LowResolutionNet().state_dict()}, resume)
        resume.write_bytes(resume.read_bytes()[:1000])
    else:
        resume.write_bytes(b"not a torch file at all")
    settings = TrainSettings.from_dict({**FAST, "iterations": 2})
    out = train(tiny_synth, tmp_path / "lr.pt", method="lr", model_config={"kind": "lowres"}, settings=settings,
                threads=1, progress=False)  # fmt: skip
    assert read_checkpoint(out)["training"]["resumed_at"] == 0


def test_resume_state_loads_rng_states_on_the_cpu(tiny_synth, tmp_path, monkeypatch):
    """RNG states must come back as CPU byte tensors whatever the training device (on CUDA,
    map_location=device made Generator.set_state raise): the state is loaded with map_location cpu."""
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    settings = TrainSettings.from_dict(FAST)
    kwargs = dict(method="lr", model_config={"kind": "lowres"}, settings=settings, threads=1, progress=False)
    _killed_at_step(3, monkeypatch, tiny_synth, tmp_path / "run.pt", **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    train(tiny_synth, tmp_path / "run.pt", **kwargs)
    assert seen.get("map_location") == "cpu" and seen.get("weights_only") is True


def test_lr_decay_at_is_a_fraction_of_the_iterations():
    settings = TrainSettings.from_dict({"iterations": 25000, "lr_decay_at": [0.6, 0.8, 1.0]})
    assert settings.milestones == [15000, 20000, 25000]  # the authors' halvings
    assert TrainSettings.from_dict({"iterations": 10, "lr_decay_at": [0.55]}).milestones == [6]
    with pytest.raises(ValueError, match="lr_decay_at"):
        TrainSettings.from_dict({"lr_decay_at": [15000]})


@pytest.mark.parametrize("method", ["crd", "crd-flow", "crd-attn", "kd-hr"])
def test_distilled_methods_get_the_authors_recipe_at_the_optimiser(tiny_synth, tmp_path, method):
    """The rule of crd.recipes: Adam at 1e-4, halved after 60, 80 and 100 % of the steps, every pair
    augmented, clipping 1.0; the iterations are the configuration's, as for every method. The
    learning rate each step used is in the history."""
    from crd.methods import load_method
    from crd.recipes import DISTILLATION

    spec = load_method(REPO / "baselines" / f"{method}.py")
    assert spec.training == "distill" and spec.init == "lr"
    assert {k: spec.train[k] for k in ("lr", "lr_decay_at", "lr_decay", "grad_clip", "augment_probability")} == {
        k: DISTILLATION[k] for k in ("lr", "lr_decay_at", "lr_decay", "grad_clip", "augment_probability")
    }
    assert "iterations" not in spec.train  # no extra steps for a distilled method
    teacher_model = FullResolutionNet() if spec.teacher == "hr" else FeatureShiftedTeacher()
    teacher = save_checkpoint(tmp_path / "teacher.pt", teacher_model, method=spec.teacher)
    init = save_checkpoint(tmp_path / "lr.pt", LowResolutionNet(), method="lr")
    settings = TrainSettings.from_dict({**FAST, **spec.train, "iterations": 5, "checkpoint_every": 1})
    out = train(tiny_synth, tmp_path / f"{method}.pt", method=method, model_config=spec.model, objective="distill",
                settings=settings, init=init, teacher=teacher, threads=1, progress=False)  # fmt: skip
    history = load_history(history_path(out))
    used = history[history.metric == "learning_rate"].set_index("iteration")["value"]
    # milestones at round(0.6 * 5) = 3 and 4 (and 5): steps 1-3 at 1e-4, step 4 at 5e-5, step 5 at 2.5e-5
    assert used.to_dict() == pytest.approx({1: 1e-4, 2: 1e-4, 3: 1e-4, 4: 5e-5, 5: 2.5e-5})
    weights = runpy.run_path(str(REPO / "baselines" / f"{method}.py"))["TRAIN"]
    norms = history[history.metric.str.startswith("grad_norm_")].groupby("metric")["value"].max()
    # a term weighted 0 contributes no gradient; a term weighted 1 does
    assert (norms["grad_norm_flow"] > 0) == (weights["flow_weight"] > 0)
    assert (norms["grad_norm_attention"] > 0) == (weights["attention_weight"] > 0)
    assert isinstance(history, pd.DataFrame)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"iterations": "many"}, "iterations: expected int, got 'many'"),
        ({"iterations": 2.5}, "iterations: expected int"),
        ({"lr": "fast"}, "lr: expected float"),
        ({"lr": True}, "lr: expected float"),
        ({"lr_decay_at": 0.5}, "lr_decay_at: expected list"),
        ({"lr_decay_at": [0.5, "x"]}, "lr_decay_at: expected list"),
        ({"seed": None}, "seed: expected int, got None"),
    ],
)
def test_settings_of_the_wrong_type_are_one_line_errors(values, message):
    with pytest.raises(ValueError, match=message.replace("[", "\\[")):
        TrainSettings.from_dict(values)
    assert TrainSettings.from_dict({"lr": 1, "augment_max_displacement": None}).lr == 1


def test_outputs_are_checked_before_training(tiny_synth, tmp_path):
    """--out equal to --init, or in a folder that cannot be made: refused at once, nothing changed."""
    init = save_checkpoint(tmp_path / "lr.pt", LowResolutionNet(width=0.25), method="lr")
    before = init.read_bytes()
    model = {"kind": "lowres", "width": 0.25, "factor": 2}
    with pytest.raises(ValueError, match="--out .*lr.pt is the --init checkpoint"):
        train(tiny_synth, init, method="lr", model_config=model, settings=TrainSettings.from_dict(FAST), init=init,
              device="cpu", progress=False)  # fmt: skip
    assert init.read_bytes() == before
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    from crd.errors import CrdError

    with pytest.raises(CrdError, match=f"--out: cannot write in {blocker / 'models'}"):
        train(tiny_synth, blocker / "models" / "hr.pt", method="hr", model_config={"kind": "fullres", "width": 0.25},
              settings=TrainSettings.from_dict(FAST), device="cpu", progress=False)  # fmt: skip
    assert blocker.read_text() == "not a folder"


def test_the_command_line_reports_an_os_error_in_one_line(tmp_path, capsys):
    """An OSError from any writer (here: a file where a folder must go; likewise permission denied,
    disk full): one line with the file and the reason, exit status 2."""
    from crd.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["generate", "synth", str(blocker / "synth"), "--subjects", "6", "--val", "0", "--test", "2"]
    assert main([*argv, "--shape", "32", "32", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crd generate: error: ") and err.count("\n") == 1, err
    assert f"{blocker}: File exists" in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_training_steps_never_modify_the_cached_images(tiny_synth, probability):
    """A batch of one pair is the cached volumes themselves (no copy); a step, augmented or not,
    must leave them as they were read."""
    from crd.data.layout import open_dataset
    from crd.deform import RandomFFD
    from crd.train import TrainingObjective, _PairSampler, optimiser_step

    sampler = _PairSampler(open_dataset(tiny_synth), "train", torch.device("cpu"))
    before = {s: image.clone() for s, image in sampler.images.items()}
    model = LowResolutionNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    objective = TrainingObjective(TrainSettings.from_dict(FAST), None)
    generator = torch.Generator().manual_seed(0)
    augment = RandomFFD(probability=probability)
    for _ in range(3):
        fixed, moving = sampler.batch(1, generator)
        assert any(fixed is image for image in sampler.images.values())  # no copy of a single pair
        apply, flow = augment.sample(moving.shape[2:], 1, generator)
        optimiser_step(objective, model, optimizer, fixed, augment.apply(moving, apply, flow), 1.0)
    for s, image in sampler.images.items():
        torch.testing.assert_close(image, before[s], rtol=0, atol=0)


# ------------------------------------------------------------------------ the stopping rule


def _scripted_validation(monkeypatch, values: dict[int, float]) -> dict[int, dict[str, torch.Tensor]]:
    """Make validation return ``values[iteration]`` as the validation Dice (the iteration read from
    Adam's step count, which a resumed run restores); returns the weights seen at each iteration."""
    import crd.train as T

    holder, seen = {}, {}
    real_resume = T._resume_or_start

    def resume(run):
        holder.pop("run", None)  # iteration 0 (if validated here) has no optimiser steps yet
        real_resume(run)
        holder["run"] = run

    def validate(model, valset, loss):
        run = holder.get("run")
        state = next(iter(run.optimizer.state.values()), {}) if run is not None else {}
        it = int(state.get("step", 0))
        seen[it] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"val_loss": -values[it], "val_dice": values[it]}

    monkeypatch.setattr(T, "_resume_or_start", resume)
    monkeypatch.setattr(T, "_validate", validate)
    return seen


RULE = {**FAST, "iterations": 10, "checkpoint_every": 1, "patience": 2, "keep_best": True}


def test_the_stopping_rule_stops_on_a_plateau_and_keeps_the_best_weights(tiny_synth, tmp_path, monkeypatch):
    values = {0: 0.30, 1: 0.40, 2: 0.50, 3: 0.50, 4: 0.49, **{i: 0.6 for i in range(5, 11)}}
    seen = _scripted_validation(monkeypatch, values)
    out = train(tiny_synth, tmp_path / "lr.pt", method="lr", model_config={"kind": "lowres"},
                settings=TrainSettings.from_dict(RULE), threads=1, progress=False)  # fmt: skip
    payload = read_checkpoint(out)
    history = load_history(history_path(out))
    assert sorted(set(history["iteration"])) == [0, 1, 2, 3, 4]  # stale at 3 and 4: patience 2 reached
    last = history[history["iteration"] == 4].set_index("metric")["value"]
    assert last["max_iterations"] == 10 and last["selected_iteration"] == 2 and last["patience"] == 2
    assert payload["training"]["stopped_early"] and payload["training"]["selected_iteration"] == 2
    for k, v in payload["state_dict"].items():
        assert torch.equal(v, seen[2][k]), k  # the checkpoint holds iteration 2's weights, not 4's
    assert not any(torch.equal(v, seen[4][k]) for k, v in payload["state_dict"].items() if v.dtype.is_floating_point)
    assert not (tmp_path / ".lr.pt.resume").exists()


@pytest.mark.parametrize("patience", [0, 3])
def test_without_a_plateau_training_runs_to_its_maximum(tiny_synth, tmp_path, monkeypatch, patience):
    """A rising validation Dice never stops the run; patience 0 (no rule) never stops it either,
    even when the Dice is flat; the last weights are kept when they are the best."""
    rising = patience > 0
    values = {i: (0.3 + 0.01 * i if rising else 0.3) for i in range(11)}
    seen = _scripted_validation(monkeypatch, values)
    settings = TrainSettings.from_dict({**RULE, "patience": patience, "keep_best": rising})
    out = train(tiny_synth, tmp_path / "lr.pt", method="lr", model_config={"kind": "lowres"}, settings=settings,
                threads=1, progress=False)  # fmt: skip
    payload = read_checkpoint(out)
    assert max(load_history(history_path(out))["iteration"]) == 10
    assert not payload["training"]["stopped_early"] and payload["training"]["selected_iteration"] == 10
    assert all(torch.equal(v, seen[10][k]) for k, v in payload["state_dict"].items())


def test_min_delta_makes_small_rises_count_as_no_improvement(tiny_synth, tmp_path, monkeypatch):
    values = {0: 0.30, 1: 0.40, 2: 0.401, 3: 0.402, **{i: 0.5 for i in range(4, 11)}}
    _scripted_validation(monkeypatch, values)
    settings = TrainSettings.from_dict({**RULE, "min_delta": 0.005})
    out = train(tiny_synth, tmp_path / "lr.pt", method="lr", model_config={"kind": "lowres"}, settings=settings,
                threads=1, progress=False)  # fmt: skip
    assert max(load_history(history_path(out))["iteration"]) == 3
    assert read_checkpoint(out)["training"]["selected_iteration"] == 1


def test_a_resumed_run_stops_where_an_uninterrupted_one_does_with_the_same_weights(tiny_synth, tmp_path, monkeypatch):
    """The rule's state (best score, its weights, checkpoints without a rise) is in the resume file:
    killed after iteration 3 (one stale checkpoint), the resumed run stops at 5 with iteration 2's
    weights, bit for bit those of a run never interrupted."""
    values = {0: 0.30, 1: 0.40, 2: 0.50, **{i: 0.45 for i in range(3, 11)}}
    settings = TrainSettings.from_dict({**RULE, "patience": 3})
    kwargs = dict(method="lr", model_config={"kind": "lowres"}, settings=settings, threads=1, progress=False)
    _scripted_validation(monkeypatch, values)
    (tmp_path / "whole").mkdir()
    whole = train(tiny_synth, tmp_path / "whole" / "lr.pt", **kwargs)
    _killed_at_step(4, monkeypatch, tiny_synth, tmp_path / "lr.pt", **kwargs)
    assert torch.load(tmp_path / ".lr.pt.resume", weights_only=True)["best"]["stale"] == 1
    resumed = train(tiny_synth, tmp_path / "lr.pt", **kwargs)
    a, b = read_checkpoint(whole), read_checkpoint(resumed)
    assert b["training"]["resumed_at"] == 3 and a["training"]["resumed_at"] == 0
    assert a["training"]["selected_iteration"] == b["training"]["selected_iteration"] == 2
    assert max(load_history(history_path(resumed))["iteration"]) == 5
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    ha, hb = (load_history(history_path(p)).query("metric != 'elapsed_s'").reset_index(drop=True)
              for p in (whole, resumed))  # fmt: skip
    pd.testing.assert_frame_equal(ha, hb)


def test_stopping_settings_are_checked():
    with pytest.raises(ValueError, match="val_pairs"):
        TrainSettings.from_dict({"patience": 2, "val_pairs": 0})
    with pytest.raises(ValueError, match="patience, min_delta and min_iterations"):
        TrainSettings.from_dict({"patience": -1})
    with pytest.raises(ValueError, match="patience, min_delta and min_iterations"):
        TrainSettings.from_dict({"min_iterations": -1})
    with pytest.raises(ValueError, match="expected bool"):
        TrainSettings.from_dict({"keep_best": 1})


# ------------------------------------------------------------------------ training on crops


def test_training_on_crops_runs_and_draws_crops_inside_the_volume(tiny_synth, tmp_path, monkeypatch):
    import crd.train as T

    offsets = []
    real = T.Crop.random.__func__

    def spy(cls, shape, size, generator):
        crop = real(cls, shape, size, generator)
        offsets.append(crop.offset)
        return crop

    monkeypatch.setattr(T.Crop, "random", classmethod(spy))
    settings = TrainSettings.from_dict({**FAST, "crop": [32, 16, 16]})
    out = train(tiny_synth, tmp_path / "hr.pt", method="hr", model_config={"kind": "fullres", "width": 0.5},
                settings=settings, threads=1, progress=False)  # fmt: skip
    assert len(offsets) == 4 and all(o[0] == 0 and 0 <= o[1] <= 16 and 0 <= o[2] <= 16 for o in offsets)
    assert len(set(offsets)) > 1
    assert read_checkpoint(out)["training"]["settings"]["crop"] == [32, 16, 16]


@pytest.mark.parametrize("crop", [[32, 48, 16], [32, 24, 16]])
def test_a_crop_that_does_not_fit_is_refused_naming_the_setting(tiny_synth, tmp_path, crop):
    from crd.errors import CrdError

    settings = TrainSettings.from_dict({**FAST, "crop": crop})
    with pytest.raises(CrdError, match=r"train setting crop .*multiple of 32"):
        train(tiny_synth, tmp_path / "lr.pt", method="lr", model_config={"kind": "lowres"}, settings=settings,
              threads=1, progress=False)  # fmt: skip
    assert not (tmp_path / "lr.pt").exists()


def test_min_iterations_is_a_warm_up_for_the_rule_and_the_selection(tiny_synth, tmp_path, monkeypatch):
    """A fine-tuned student drops below its start, then recovers. Without a warm-up the rule stops
    it at once and keeps its initialisation (iteration 0); with min_iterations 3 neither the rule
    nor the selection looks before iteration 3: it stops at 5 (two stale checkpoints after the best
    at 3) with iteration 3's weights, although iteration 0 scored higher."""
    values = {0: 0.50, 1: 0.40, 2: 0.45, 3: 0.48, 4: 0.47, 5: 0.47, **{i: 0.6 for i in range(6, 11)}}
    seen = _scripted_validation(monkeypatch, values)
    kwargs = dict(method="lr", model_config={"kind": "lowres"}, threads=1, progress=False)
    plain = train(tiny_synth, tmp_path / "a.pt", settings=TrainSettings.from_dict({**RULE, "patience": 2}), **kwargs)
    assert max(load_history(history_path(plain))["iteration"]) == 2
    assert read_checkpoint(plain)["training"]["selected_iteration"] == 0
    warm = TrainSettings.from_dict({**RULE, "patience": 2, "min_iterations": 3})
    out = train(tiny_synth, tmp_path / "b.pt", settings=warm, **kwargs)
    assert max(load_history(history_path(out))["iteration"]) == 5
    payload = read_checkpoint(out)
    assert payload["training"]["selected_iteration"] == 3
    assert all(torch.equal(v, seen[3][k]) for k, v in payload["state_dict"].items())
