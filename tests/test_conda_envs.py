"""`snakemake --use-conda`: the pinned environments name what pyproject.toml asks for, at versions
it accepts, and every rule that runs a command says which environment (conda itself cannot be
installed here, so the environments are checked as files)."""

from __future__ import annotations

import re

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from repo_paths import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _pins(env_file: str) -> dict[str, Version]:
    """The `name==version` pip pins of a conda environment file."""
    env = yaml.safe_load((REPO / "workflow" / "envs" / env_file).read_text(encoding="utf-8"))
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"{env_file}: expected one pip: list"
    pins = {}
    for line in pips[0]:
        if line.startswith("--"):  # a pip option (an index), not a requirement
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{env_file}: {line!r} is not pinned with =="
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _check(env_file: str, requirements: list[str]) -> None:
    pins = _pins(env_file)
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r) for r in requirements}
    wanted.pop("snakemake")  # it runs the jobs from outside their environment
    assert set(pins) == set(wanted), (
        f"{env_file} and pyproject.toml differ: only in the env {sorted(set(pins) - set(wanted))}, "
        f"only in pyproject {sorted(set(wanted) - set(pins))}"
    )
    for name, requirement in wanted.items():
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{env_file}: {name}=={pins[name]} does not satisfy pyproject's {requirement}"
        )


def test_the_main_environment_pins_the_package_dependencies():
    _check("crd.yaml", _project()["dependencies"])


def test_the_ants_environment_is_the_main_one_plus_the_ants_extra():
    project = _project()
    _check("ants.yaml", [*project["dependencies"], *project["optional-dependencies"]["ants"]])
    main, ants = _pins("crd.yaml"), _pins("ants.yaml")
    differ = {name for name in main if main[name] != ants[name]}
    assert differ <= {"numpy", "scipy", "torch"}, (
        f"ants.yaml should differ from crd.yaml only where antspyx pins (and in torch's CPU build): {differ}"
    )


def test_the_ants_environment_takes_the_cpu_build_of_torch():
    """Its rule runs on the CPU: torch is the same release as the main environment's, its CPU
    build (local version +cpu) from PyTorch's CPU wheel index, not PyPI's CUDA build."""
    env = yaml.safe_load((REPO / "workflow" / "envs" / "ants.yaml").read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip
    main, ants = _pins("crd.yaml")["torch"], _pins("ants.yaml")["torch"]
    assert ants.local == "cpu" and ants.public == main.public


def _rules(path) -> dict[str, str]:
    """`rule name:` -> its text, for one Snakemake file."""
    text = path.read_text(encoding="utf-8")
    parts = re.split(r"^(?:local)?rule (\S+):\n", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_rule_that_runs_a_command_names_its_environment():
    files = [*(REPO / "workflow" / "rules").glob("*.smk"), *(REPO / "baselines").glob("*.smk"), REPO / "Snakefile"]
    checked = []
    for path in files:
        for name, body in _rules(path).items():
            if not re.search(r"^    (shell|run|script):", body, flags=re.M):
                continue  # e.g. `all`: no command
            conda = re.search(r"^    conda:\n\s+(\S+)", body, flags=re.M)
            assert conda, f"{path.name}: rule {name} runs a command but has no conda: directive"
            env = conda.group(1).strip("\"'")
            if env != "ENV":  # ENV: common.smk's name for ../envs/crd.yaml
                assert (path.parent / env).resolve().is_file(), f"{path.name}: rule {name}: {env} does not exist"
            checked.append(name)
    assert {"train", "evaluate", "report", "bench", "ants_syn_evaluate"} <= set(checked)
