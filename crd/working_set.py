"""The CPU working set of a registration call, measured in a fresh process.

Why a process of its own: the RSS rise of a call in a process that ran other calls before depends
on what those left in the C allocator. glibc keeps freed blocks and serves later requests from them
(its mmap threshold grows after large frees), so a method measured after another one, or after its
own warm-up, can show no rise at all. Here a child process is started with glibc's
``M_MMAP_THRESHOLD`` fixed at 64 KiB from its first allocation (:data:`crd.profiling.WORKING_SET_ENV`):
every block of 64 KiB or more gets pages of its own and returns them when freed, so the rise of
each call is exactly the peak of what it allocates, whatever ran before, in any order.

The child builds the method as ``crd evaluate`` does (a checkpoint, a model config, or a method
file's ``register_pair``), calls it once untimed (lazy initialisation, caches such as oneDNN's),
then measures each input: the RSS high-water mark over the RSS before the call
(:func:`crd.profiling.measure`), in MB. Counted: everything the call allocates, outputs included.
Not counted: what exists before it (interpreter, libraries, weights, inputs, caches kept from the
warm-up) and blocks under 64 KiB served from memory the heap already holds. Timing is not done
here: with every large block fresh, a call pays page faults a steady process does not.

Used by ``crd evaluate`` (per test pair, on the CPU) and ``crd bench`` (per case, on the CPU), so
both report the same quantity. Spec (JSON on stdin), output (JSON on stdout)::

    {"threads": 2, "seed": 0,
     "model": {...} | null, "checkpoint": "path" | null, "method_file": "path" | null,
     "method_files": ["paths of files that bring networks"],
     "data": "dataset folder", "pairs": [["fixed", "moving"], ...]}      # or
     "random": [D, H, W], "calls": 3}
    -> {"exact": true, "mb": [...], "why": null}  |  {"exact": false, "mb": [], "why": "..."}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["measure_working_sets"]


def measure_working_sets(spec: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
    """Run the child (``python -m crd.working_set``) on ``spec``; returns its output (see the module
    docstring). A failing child raises ``RuntimeError`` with the end of its error output."""
    from crd.profiling import WORKING_SET_ENV

    package_root = str(Path(__file__).resolve().parents[1])  # this crd, whatever the child's sys.path
    env = {**os.environ, **WORKING_SET_ENV,
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "crd.working_set"], input=json.dumps(spec), text=True,
                          capture_output=True, env=env, timeout=timeout, check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError("measuring the working set failed: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _register(spec: dict[str, Any], spacing: tuple[float, ...]):
    """The call to measure, built as ``crd evaluate`` builds it."""
    import torch

    from crd.evaluate import _external_method, _load_scored_model, _network_method
    from crd.methods import load_method
    from crd.models.registration import use_method_models

    use_method_models(load_method(Path(p)) for p in spec.get("method_files") or [])
    method_file = spec.get("method_file")
    if spec.get("model") is None and spec.get("checkpoint") is None:
        if method_file is None:
            raise ValueError("the spec names no model, checkpoint or method file")
        register_pair = load_method(Path(method_file)).register_pair
        dataset = SimpleNamespace(spacing=spacing)  # all that _external_method reads of a dataset
        return _external_method(register_pair, dataset, int(spec.get("seed") or 0), int(spec["threads"]),
                                Path(method_file)).register  # fmt: skip
    checkpoint = Path(spec["checkpoint"]) if spec.get("checkpoint") else None
    model, *_ = _load_scored_model(checkpoint, spec.get("model"), "working set", spec.get("seed"),
                                   torch.device("cpu"))  # fmt: skip
    return _network_method(model).register


def _inputs(spec: dict[str, Any]):
    """``(spacing, iterator of (fixed, moving) tensors (1, 1, D, H, W))``."""
    import torch

    if spec.get("random") is not None:
        size = tuple(int(s) for s in spec["random"])
        g = torch.Generator().manual_seed(0)

        def random_pairs():
            for _ in range(int(spec.get("calls") or 1)):
                yield torch.rand((1, 1, *size), generator=g), torch.rand((1, 1, *size), generator=g)

        return (1.0, 1.0, 1.0), random_pairs()
    from crd.data.layout import open_dataset

    dataset = open_dataset(Path(spec["data"]))

    def dataset_pairs():
        for fixed_id, moving_id in spec["pairs"]:
            yield (torch.from_numpy(dataset.load_image(fixed_id))[None, None],
                   torch.from_numpy(dataset.load_image(moving_id))[None, None])  # fmt: skip

    return tuple(float(s) for s in dataset.spacing), dataset_pairs()


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from crd.profiling import measure, working_set_support
    from crd.runtime import configure_threads

    exact, why = working_set_support()
    if not exact:
        return {"exact": False, "mb": [], "why": why}
    configure_threads(int(spec["threads"]))
    spacing, inputs = _inputs(spec)
    register = _register(spec, spacing)
    device = torch.device("cpu")
    values, warmed = [], False
    for fixed, moving in inputs:
        if not warmed:
            register(fixed, moving)  # untimed warm-up: lazy initialisation, kept caches
            warmed = True
        with measure(device) as m:
            out = register(fixed, moving)
        del out
        values.append(m.peak_rss_mb)
    return {"exact": True, "mb": values, "why": None}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(_child(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
