"""The method plugins of baselines/: one contract test over every file, and the loader's errors."""

from pathlib import Path

import pytest
import torch

from crd.methods import MethodError, load_method, load_methods, training_order
from crd.models.registration import build_model, use_method_models
from crd.train import TrainSettings
from repo_paths import REPO

PLUGINS = sorted((REPO / "baselines").glob("*.py"))
use_method_models(load_method(p) for p in PLUGINS)  # the networks method files bring (fourier-net)


def test_the_first_method_set_is_there():
    assert {p.stem for p in PLUGINS} >= {"identity", "hr", "lr", "hr-half", "fst", "crd"}
    # the paper's ablations and a second shrunk model
    assert {p.stem for p in PLUGINS} >= {"kd-hr", "crd-flow", "crd-attn", "hr-quarter"}


@pytest.mark.parametrize("path", PLUGINS, ids=[p.stem for p in PLUGINS])
def test_every_plugin_honours_the_contract(path):
    spec = load_method(path)
    assert spec.name == path.stem
    assert spec.description.startswith(f"{spec.name}:"), "docstring starts with 'name: what it is'"
    if spec.is_oracle:  # built around its teacher's network, from that network's checkpoint
        from crd.models.oracle import GridOracle

        teacher = build_model(load_method(path.parent / f"{spec.oracle_of}.py").model)
        options = {k: v for k, v in spec.model.items() if k != "kind"}
        x = torch.rand(1, 1, 32, 32, 32)
        assert GridOracle(teacher, **options)(x, x).shape == (1, 3, 32, 32, 32)
    elif spec.model is not None:
        model = build_model(spec.model)
        x = torch.rand(1, 1, 32, 32, 32)
        assert model(x, x).shape == (1, 3, 32, 32, 32)
        if spec.training == "distill":  # the teacher's maps sit on the student's grids (1/2, 1/4, ...)
            teacher = build_model(load_method(path.parent / f"{spec.teacher}.py").model)
            flow, maps = model.forward_with_maps(x, x)
            t_flow, t_maps = teacher.forward_with_maps(x, x)
            assert flow.shape == t_flow.shape == (1, 3, 32, 32, 32)
            assert [m.shape for m in maps] == [t.shape for t in t_maps]
            levels = {"crd@monai-voxelmorph": 2, "crd@monai-localnet": 3}.get(spec.name, 4)
            assert [m.shape[-1] for m in maps] == [16, 8, 4, 2][:levels]
    else:  # no network: it brings its own rule file, and register_pair for crd evaluate to score it
        assert spec.rule_file is not None and spec.rule_file.is_file() and spec.training is None
        assert callable(spec.register_pair)
    TrainSettings.from_dict(spec.train)  # its TRAIN overrides are known settings with valid values
    for dep in spec.needs:
        assert (path.parent / f"{dep}.py").is_file()
    assert load_methods(path.parent, [spec.name])  # its dependencies resolve


def test_dependencies_come_first():
    specs = load_methods(REPO / "baselines", ["crd"])
    assert set(specs) == {"crd", "lr", "fst", "hr"}
    order = training_order(specs)
    assert order.index("hr") < order.index("fst") < order.index("crd")
    assert order.index("lr") < order.index("crd")


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(text)
    return path


def test_malformed_plugins_are_refused_with_the_file_name(tmp_path):
    with pytest.raises(MethodError, match="nomodel.py: a method file must define MODEL"):
        load_method(_write(tmp_path, "nomodel", "TRAINING = None\n"))
    with pytest.raises(MethodError, match="badtrain.py: TRAINING must be one of"):
        load_method(_write(tmp_path, "badtrain", "MODEL = {'kind': 'fullres'}\nTRAINING = 'rl'\n"))
    with pytest.raises(MethodError, match="needs a TEACHER"):
        load_method(_write(tmp_path, "noteacher", "MODEL = {'kind': 'lowres'}\nTRAINING = 'distill'\n"))
    with pytest.raises(MethodError, match="cannot be read"):
        load_method(_write(tmp_path, "broken", "MODEL = {\n"))


def test_register_pair_is_for_methods_without_a_network(tmp_path):
    body = "def register_pair(fixed, moving, *, spacing, seed, threads):\n    return None\n"
    with pytest.raises(MethodError, match="net.py: register_pair is for methods without a network"):
        load_method(_write(tmp_path, "net", "MODEL = {'kind': 'fullres'}\nTRAINING = 'unsupervised'\n" + body))
    (tmp_path / "notfn.smk").write_text("")
    with pytest.raises(MethodError, match="notfn.py: register_pair must be a function"):
        load_method(_write(tmp_path, "notfn", "MODEL = None\nregister_pair = 3\n"))
    (tmp_path / "tool.smk").write_text("")
    assert callable(load_method(_write(tmp_path, "tool", "MODEL = None\n" + body)).register_pair)


def test_unknown_and_cyclic_dependencies_are_refused(tmp_path):
    _write(tmp_path, "a", "MODEL = {'kind': 'fullres'}\nTRAINING = 'unsupervised'\nINIT = 'b'\n")
    _write(tmp_path, "b", "MODEL = {'kind': 'fullres'}\nTRAINING = 'unsupervised'\nINIT = 'a'\n")
    with pytest.raises(MethodError, match="cycle"):
        load_methods(tmp_path)
    with pytest.raises(MethodError, match="unknown method 'zzz'"):
        load_methods(tmp_path, ["zzz"])
    _write(tmp_path, "c", "MODEL = {'kind': 'fullres'}\nTRAINING = 'unsupervised'\nINIT = 'identity'\n")
    _write(tmp_path, "identity", "MODEL = {'kind': 'identity'}\n")
    with pytest.raises(MethodError, match="produces no checkpoint"):
        load_methods(tmp_path, ["c"])


# an oracle is built around its teacher's network, never from its config (tests/test_oracle.py)
MODEL_PLUGINS = [p for p in PLUGINS if load_method(p).model is not None and not load_method(p).is_oracle]


@pytest.mark.parametrize("path", MODEL_PLUGINS, ids=[p.stem for p in MODEL_PLUGINS])
def test_every_model_follows_the_written_contract(path, tmp_path):
    """crd.models.contract: the Protocol, the size multiple, odd sizes padded and cropped back by the
    one inference, and a checkpoint round trip that gives identical outputs."""
    from crd.models.checkpoint import load_model, save_checkpoint
    from crd.models.contract import DistillableModel, RegistrationModel
    from crd.models.inference import infer

    spec = load_method(path)
    torch.manual_seed(0)
    model = build_model(spec.model).eval()
    assert isinstance(model, RegistrationModel) and model.config == build_model(model.config).config
    m = model.size_multiple
    assert isinstance(m, int) and m >= 1
    x = torch.rand(1, 1, 2 * m, m, 3 * m) if m > 1 else torch.rand(1, 1, 5, 6, 7)
    with torch.no_grad():
        assert model(x, x).shape == (1, 3, *x.shape[2:])  # multiples of size_multiple need no padding
    if spec.training == "distill" or any(load_method(q).teacher == spec.name for q in PLUGINS):
        assert isinstance(model, DistillableModel)
    odd = (1, 1, 37, 29, 33)
    fixed, moving = torch.rand(odd), torch.rand(odd)
    with torch.no_grad():
        result = infer(model, fixed, moving, labels=torch.randint(0, 3, odd).float())
    assert result.flow.shape == (1, 3, *odd[2:]) and result.warped.shape == odd
    assert result.warped_labels is not None and set(result.warped_labels.unique().tolist()) <= {0.0, 1.0, 2.0}
    ckpt = save_checkpoint(tmp_path / "m.pt", model, method=spec.name)
    again, _ = load_model(ckpt)
    with torch.no_grad():
        assert torch.equal(infer(again, fixed, moving).flow, result.flow)


def test_methods_without_training_are_evaluated_once(tmp_path):
    """No training and no oracle: one evaluation per dataset stands for every seed (identity,
    ants-syn); a trained method, an oracle and a SEED_DEPENDENT tool are evaluated per seed."""
    specs = load_methods(REPO / "baselines")
    once = {name for name, spec in specs.items() if spec.evaluated_once}
    assert once == {"identity", "ants-syn"}
    (tmp_path / "sampler.smk").write_text("")
    tool = load_method(_write(tmp_path, "sampler", "MODEL = None\nSEED_DEPENDENT = True\n"))
    assert tool.seed_dependent and not tool.evaluated_once
    with pytest.raises(MethodError, match="trained.py: SEED_DEPENDENT is for methods without training"):
        load_method(_write(tmp_path, "trained", "MODEL = {'kind': 'fullres'}\nTRAINING = 'unsupervised'\n"
                                                "SEED_DEPENDENT = True\n"))  # fmt: skip
    with pytest.raises(MethodError, match="yes.py: SEED_DEPENDENT must be True or False"):
        load_method(_write(tmp_path, "yes", "MODEL = {'kind': 'identity'}\nSEED_DEPENDENT = 'yes'\n"))
