"""Shared fixtures: tiny datasets in the canonical layout, built by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A generated ``synth`` dataset at 32^3 with 8 subjects (train 4, val 2, test 2): the blobs
    template (the anatomy template's structures need 64^3 to be what they are)."""
    from crd.data.synth import generate_synth

    root = tmp_path_factory.mktemp("data") / "synth"
    return generate_synth(
        root, template="blobs", n_subjects=8, shape=(32, 32, 32), n_labels=8, n_val=2, n_test=2, seed=1, progress=False
    )
