"""Shared fixtures: tiny datasets in the canonical layout, built by the tests themselves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fresh_crd_logger():
    """Undo what an in-process CLI call did to the ``crd`` logger (``setup_logging`` gives it a
    handler on this test's captured stderr and stops propagation), so a later test's ``caplog``
    sees its records and no handler writes to a closed stream."""
    logger = logging.getLogger("crd")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    for handler in saved[0]:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A generated ``synth`` dataset at 32^3 with 8 subjects (train 4, val 2, test 2): the blobs
    template (the anatomy template's structures need 64^3 to be what they are)."""
    from crd.data.synth import generate_synth

    root = tmp_path_factory.mktemp("data") / "synth"
    return generate_synth(
        root, template="blobs", n_subjects=8, shape=(32, 32, 32), n_labels=8, n_val=2, n_test=2, seed=1, progress=False
    )
