"""The CPU memory figure is the method's working set, whatever ran before in the process
(crd.working_set; crd evaluate and crd bench)."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

from crd.evaluate import evaluate
from crd.methods import load_method


def _glibc() -> bool:
    try:
        import ctypes

        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="the working set is measured with glibc (Linux) only")

ALLOCATE_AND_FREE = '''
"""greedy: holds 154 MB (36 blocks of 1 to 8 MB), frees it, then returns no displacement."""
MODEL = None
TRAINING = None

def register_pair(fixed, moving, *, spacing, seed, threads):
    import numpy as np
    import torch
    blocks = [torch.ones(int((1 + i % 8) * 2**20 / 4)) for i in range(36)]
    assert sum(float(b[0]) for b in blocks) == 36
    return np.zeros((3, *fixed.shape), np.float32)
'''

HOLD_40_MB = '''
"""modest: holds 40 MB at once (20 blocks of 2 MB), then returns no displacement."""
MODEL = None
TRAINING = None

def register_pair(fixed, moving, *, spacing, seed, threads):
    import numpy as np
    import torch
    blocks = [torch.ones(int(2 * 2**20 / 4)) for _ in range(20)]
    assert sum(float(b[0]) for b in blocks) == 20
    return np.zeros((3, *fixed.shape), np.float32)
'''


def _method(folder, name, body):
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    path.with_suffix(".smk").write_text("# its rule file (not used here)\n")
    return load_method(path)


def _peaks(table_path):
    table = pd.read_csv(table_path)
    return table[table.metric == "peak_rss_mb"]["value"]


def test_a_method_after_one_that_freed_more_is_measured_at_its_own_amount(tiny_synth, tmp_path):
    """In one process: the greedy method (154 MB allocated and freed per pair), then the modest one
    (40 MB held at once). The RSS rise of the modest call in this process would be about half its
    amount (glibc serves it from the blocks the greedy one freed); its working set is its own."""
    greedy, modest = _method(tmp_path, "greedy", ALLOCATE_AND_FREE), _method(tmp_path, "modest", HOLD_40_MB)
    outs = {}
    for spec in (greedy, modest):
        outs[spec.name] = evaluate(tiny_synth, tmp_path / "eval" / f"{spec.name}.csv", method=spec.name,
                                   register_pair=spec.register_pair, method_file=spec.path, device="cpu",
                                   threads=1, progress=False)  # fmt: skip
    modest_peaks, greedy_peaks = _peaks(outs["modest"]), _peaks(outs["greedy"])
    assert len(modest_peaks) == len(pd.read_csv(outs["modest"]).query("metric == 'dice' and label != label"))
    assert modest_peaks.between(40 * 0.95, 40 * 1.15).all(), modest_peaks.tolist()
    greedy_mb = sum(1 + i % 8 for i in range(36))  # 154
    assert greedy_peaks.between(greedy_mb * 0.95, greedy_mb * 1.1).all(), greedy_peaks.tolist()
    # the same method measured first in a fresh run gives the same figure
    again = evaluate(tiny_synth, tmp_path / "eval2" / "modest.csv", method="modest", register_pair=modest.register_pair,
                     method_file=modest.path, device="cpu", threads=1, progress=False)  # fmt: skip
    assert abs(_peaks(again).median() - modest_peaks.median()) < 1.0
