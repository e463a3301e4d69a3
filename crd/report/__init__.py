"""The single-file HTML report (crd report)."""

from crd.report.build import build_report

__all__ = ["build_report"]
