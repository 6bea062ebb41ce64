"""Vector plots for the site, drawn at build time with matplotlib's SVG backend.

Every curve shows the exact 95% interval of each point (a shaded band or error bars).
Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global state)
and saved as SVG with a fixed hash salt and no date, so a rebuild from the same results
gives the same bytes. Series differ by marker and line style as well as by color
(Okabe–Ito palette), so they stay distinguishable in grayscale and for color-blind
readers.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

#: Okabe & Ito (2008) color-blind-safe colors.
BLUE, ORANGE, GREEN, VERMILION, GRAY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#555555"
_RC = {"svg.hashsalt": "gauntlet", "svg.fonttype": "none", "font.size": 10,
       "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}
NORM_LABEL = {"linf": "ℓ∞ ε", "l2": "ℓ2 ε (RMS per input value)"}


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(5.6, 3.6), layout="constrained")
    FigureCanvasSVG(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    return path


def _yerr(df: pd.DataFrame, value: str, low: str, high: str) -> list[list[float]] | None:
    """Asymmetric error bars (below, above) from interval columns; None when absent."""
    if low not in df or high not in df:
        return None
    lo = pd.to_numeric(df[low], errors="coerce")
    hi = pd.to_numeric(df[high], errors="coerce")
    v = pd.to_numeric(df[value], errors="coerce")
    if lo.isna().all() or hi.isna().all():
        return None
    return [list((v - lo).fillna(0).clip(lower=0)), list((hi - v).fillna(0).clip(lower=0))]


def _band(ax: object, x: pd.Series, low: pd.Series, high: pd.Series, color: str, step: str | None = None) -> None:
    """A shaded interval band (nothing when the interval columns are empty)."""
    lo = pd.to_numeric(low, errors="coerce")
    hi = pd.to_numeric(high, errors="coerce")
    keep = ~(lo.isna() | hi.isna())
    if keep.any():
        ax.fill_between(list(x[keep]), list(lo[keep]), list(hi[keep]), color=color, alpha=0.18, linewidth=0,
                        step=step)


def eps_curve(curve: pd.DataFrame, norm: str, path: Path,
              fixed_eps: float | None = None) -> Path | None:
    """Accuracy versus ε: the per-ε worst case over attacks (shaded 95% band) and the naive
    baseline's curve (95% error bars).

    Args:
        curve: :func:`gauntlet.leaderboard.details.sweep_curve` output (eps, worst_case, naive and
            their ``_ci_low``/``_ci_high``).
        norm: ``"linf"`` or ``"l2"`` (axis label).
        path: where to write the SVG.
        fixed_eps: the fixed threat's ε, marked with a vertical line.

    Returns:
        ``path``, or None when fewer than two ε were measured (nothing to draw).
    """
    if len(curve) < 2:
        return None
    with matplotlib.rc_context(_RC):
        fig, ax = _figure()
        _band(ax, curve["eps"], curve.get("worst_case_ci_low", pd.Series(dtype=float)),
              curve.get("worst_case_ci_high", pd.Series(dtype=float)), BLUE)
        ax.plot(curve["eps"], curve["worst_case"], color=BLUE, marker="o", markersize=7, linestyle="-",
                label="worst case over attacks run at that ε (band: 95% interval)")
        naive = curve.dropna(subset=["naive"])
        if not naive.empty:
            ax.errorbar(naive["eps"], naive["naive"], yerr=_yerr(naive, "naive", "naive_ci_low", "naive_ci_high"),
                        color=ORANGE, marker="s", markersize=5, markerfacecolor="white", linestyle="--",
                        capsize=3, elinewidth=1, label="naive baseline (bars: 95% interval)")
        if fixed_eps is not None:
            ax.axvline(fixed_eps, color=GRAY, linestyle=":", linewidth=1)
            ax.annotate(f"fixed ε = {fixed_eps:g}", (fixed_eps, 1.02), fontsize=8, color=GRAY,
                        xytext=(3, 0), textcoords="offset points")
        ax.set_xlabel(NORM_LABEL[norm])
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.08)
        ax.set_xlim(left=0)
        ax.legend(loc="lower left", fontsize=8, frameon=True, framealpha=0.85, edgecolor="none")
        return _save(fig, path)


def certified_curve(curve: pd.DataFrame, threat_radii: dict[str, float], path: Path,
                    empirical: pd.DataFrame | None = None) -> Path | None:
    """Certified accuracy versus raw ℓ2 radius (shaded 95% band), fixed threats' radii marked.

    Args:
        curve: :func:`gauntlet.leaderboard.worst.certified_curve` output (radius, accuracy, ci_low,
            ci_high).
        threat_radii: threat id → raw ℓ2 radius ε·√d (vertical lines).
        path: where to write the SVG.
        empirical: optional (radius, accuracy, ci_low, ci_high) rows of empirical worst-case
            accuracy on the same axes (the ℓ2 sweep converted to raw radius).

    Returns:
        ``path``, or None when there is no curve.
    """
    if curve.empty:
        return None
    with matplotlib.rc_context(_RC):
        fig, ax = _figure()
        _band(ax, curve["radius"], curve["ci_low"], curve["ci_high"], GREEN, step="post")
        ax.step(curve["radius"], curve["accuracy"], where="post", color=GREEN, linestyle="-",
                label="certified accuracy (band: 95% interval)")
        if empirical is not None and not empirical.empty:
            ax.errorbar(empirical["radius"], empirical["accuracy"],
                        yerr=_yerr(empirical, "accuracy", "ci_low", "ci_high"), color=VERMILION, marker="^",
                        linestyle="--", capsize=3, elinewidth=1,
                        label="empirical worst case (ℓ2 sweep; bars: 95% interval)")
        styles = (":", "-.")
        for k, (threat, r) in enumerate(sorted(threat_radii.items(), key=lambda kv: kv[1])):
            if math.isfinite(r):
                ax.axvline(r, color=GRAY, linestyle=styles[k % 2], linewidth=1)
                ax.annotate(f"{threat}\nr = {r:.3g}", (r, 1.0), fontsize=8, color=GRAY,
                            xytext=(3, -2), textcoords="offset points", va="top")
        ax.set_xlabel("raw ℓ2 radius")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.08)
        ax.set_xlim(left=0)
        ax.legend(loc="upper right", fontsize=8, frameon=True, framealpha=0.85, edgecolor="none",
                  bbox_to_anchor=(1.0, 0.8))
        return _save(fig, path)
