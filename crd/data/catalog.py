"""The dataset sources crd-bench knows and how each arrives (standard library only: the workflow
imports it before any job runs, also where numpy is not installed).

The specs (:mod:`crd.data.specs`) hold everything else about each public dataset; a test keeps
the two, and the config schema's ``source`` list, in agreement.
"""

from __future__ import annotations

__all__ = ["GENERATED", "DOWNLOADED", "BRING_YOUR_OWN", "TEST_ONLY", "TRAINS_UNDER", "SOURCES"]

GENERATED: tuple[str, ...] = ("synth",)
"""Generated offline by ``crd generate``."""

DOWNLOADED: tuple[str, ...] = ("oasis", "lpba40", "lits", "abdomenctct")
"""Downloaded (checksum-verified) and prepared by ``crd download`` / ``crd prepare``."""

BRING_YOUR_OWN: tuple[str, ...] = ("lpba40-rcn", "sliver", "lspig")
"""Read from files the user places in the dataset's ``path`` (no public download)."""

TEST_ONLY: tuple[str, ...] = ("sliver", "lspig")
"""Only test pairs: evaluated with the models of the dataset named by ``train_on`` (unless its
``protocol`` is one of :data:`TRAINS_UNDER`)."""

TRAINS_UNDER: dict[str, tuple[str, ...]] = {"sliver": ("paper",)}
"""Test-only sources that have training pairs of their own under these protocols (SLIVER under
the paper's: the authors train on its first 270 ordered pairs)."""

SOURCES: tuple[str, ...] = GENERATED + DOWNLOADED + BRING_YOUR_OWN
"""Every value of a dataset's ``source`` in the config."""
