"""The single-file HTML report, built from the tidy evaluation tables (nothing recomputed)."""

from crd.report.build import build_report, load_table

__all__ = ["build_report", "load_table"]
