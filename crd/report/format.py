"""Number formatting for the report: significant digits, ratios, parameters, p-values, intervals."""

from __future__ import annotations

import math

__all__ = ["DASH", "fmt_num", "fmt_mean_sd", "fmt_params", "fmt_ratio", "fmt_p", "fmt_signed", "decimals"]

DASH = "—"


def decimals(x: float, sig: int = 3, cap: int = 6) -> int:
    """Decimals that show ``x`` to ``sig`` significant digits (at most ``cap``)."""
    if x == 0 or not math.isfinite(x):
        return 0
    return min(cap, max(0, sig - 1 - math.floor(math.log10(abs(x)))))


def fmt_num(x: float | None, places: int | None = None) -> str:
    """``x`` to 3 significant digits (or fixed ``places``), thousands separated; ``"—"`` if absent."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    d = decimals(x) if places is None else places
    return f"{x:,.{d}f}"


def fmt_signed(x: float | None, places: int) -> str:
    """``"+0.026"`` / ``"−0.013"`` (a true minus sign)."""
    if x is None or not math.isfinite(x):
        return DASH
    return ("+" if x >= 0 else "−") + f"{abs(x):.{places}f}"


def fmt_mean_sd(mean: float, sd: float, n: int, places: int | None = None) -> str:
    """``"mean ± sd"`` with the mean's decimals for both (no ``±`` for a single value)."""
    if n == 0 or not math.isfinite(mean):
        return DASH
    d = decimals(mean) if places is None else places
    text = fmt_num(mean, d)
    if n > 1 and math.isfinite(sd):
        text += f" ± {fmt_num(sd, d)}"
    return text


def fmt_params(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def fmt_ratio(r: float | None) -> str:
    """``"0.21×"``: two decimals between 0.01 and 100, otherwise scientific/integer."""
    if r is None or not math.isfinite(r):
        return DASH
    if r == 0:
        return "0×"
    if abs(r) >= 100:
        return f"{r:,.0f}×"
    if abs(r) < 0.01:
        return f"{r:.1e}×"
    return f"{r:.2f}×"


def fmt_p(p: float | None) -> str:
    """A p-value: two significant digits, ``"< 0.0001"`` below that."""
    if p is None or not math.isfinite(p):
        return DASH
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"
