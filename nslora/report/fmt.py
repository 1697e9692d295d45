"""Number formats shared by the terminal summary and the HTML report."""

from __future__ import annotations


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def cost(v: float | None) -> str:
    return "no price" if v is None else f"${v:.4f}"
