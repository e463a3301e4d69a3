"""CI runs the README's set-up commands as written: the markers, the extractor and the smoke config."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest
import yaml

from repo_paths import REPO

readme_commands = runpy.run_path(str(REPO / ".ci" / "readme_command.py"))["readme_commands"]


def test_readme_has_the_main_and_test_commands():
    commands = readme_commands((REPO / "README.md").read_text())
    assert set(commands) == {"main", "test"}
    assert commands["test"].split("&&")[-1].strip() == "pytest"
    assert commands["main"].split("&&")[-1].strip().startswith("snakemake ")
    for command in commands.values():
        assert "pip install torch==2.13.0" in command  # never an unpinned (CUDA) torch in CI


def test_ci_runs_what_the_readme_says():
    script = (REPO / ".ci" / "run").read_text()
    assert 'bash -euo pipefail -c "$test_cmd"' in script
    assert "readme_command.py test" in script and "readme_command.py main" in script
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "pytest" not in code.replace("$test_cmd", "")  # no second, different test command


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- ci: test -->\n\nno code block\n", "no indented command"),
        ("<!-- ci: test -->\n    a\n<!-- ci: test -->\n    b\n", "appears twice"),
    ],
)
def test_extractor_refuses_a_broken_readme(text, message):
    with pytest.raises(ValueError, match=message):
        readme_commands(text)


def test_extractor_cli_names_the_missing_marker(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing here\n")
    out = subprocess.run([sys.executable, str(REPO / ".ci" / "readme_command.py"), "test", str(readme)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "ci: test" in out.stderr and str(readme) in out.stderr


def test_smoke_config_layers_on_the_default_and_keeps_every_method(tmp_path):
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    assert "methods" not in smoke  # the default methods, whatever they are
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config.yaml"), str(REPO / "config" / "smoke.yaml"), "-n", "--cores", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    for method in default["methods"]:
        assert f"eval/{method}.csv" in out.stdout, method
