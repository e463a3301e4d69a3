"""Exceptions that the command line reports as one clear message (no traceback)."""


class CrdError(Exception):
    """A user-facing error: bad input file, bad config, incompatible checkpoint."""


class CheckpointError(CrdError, ValueError):
    """A checkpoint file is missing, truncated, or not a crd-bench checkpoint."""
