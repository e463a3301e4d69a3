"""The mutation check of crd.stats (benchmarks/stats_mutations.py) stays applicable: each listed
fault's text occurs exactly once in the current sources, and the faults named in issue 22 are all
there. The check itself (16 test runs, about 2 minutes) is run by hand; its output is in the README."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from repo_paths import REPO as REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("stats_mutations", REPO_ROOT / "benchmarks" / "stats_mutations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_every_fault_still_applies_exactly_once():
    module = _module()
    for fault in module.FAULTS:
        text = (REPO_ROOT / fault.file).read_text(encoding="utf-8")
        assert text.count(fault.old) == 1, f"{fault.name}: occurs {text.count(fault.old)} times in {fault.file}"
        assert fault.old != fault.new


def test_the_listed_faults_cover_the_issue():
    names = {f.name for f in _module().FAULTS}
    for needed in ("interval-level", "unpaired-resampling", "zero-method", "holm-running-max", "tie-tolerance-none",
                   "dsc30-interpolation", "direction-mean-sign", "unit-pairs", "unit-seeds"):  # fmt: skip
        assert needed in names


def test_list_and_unknown_fault():
    script = str(REPO_ROOT / "benchmarks" / "stats_mutations.py")
    listed = subprocess.run([sys.executable, script, "--list"], capture_output=True, text=True, check=True).stdout
    assert "holm-running-max" in listed and "Bonferroni" in listed
    bad = subprocess.run([sys.executable, script, "--only", "nope"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown fault(s): nope" in bad.stderr
