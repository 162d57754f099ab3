"""The finetune budget curve's chart (PNG) and its extrapolation (bench/budget_curve.py).

A curve (RUN_DIR/budget/curve.json) holds ``arms`` (rows with variant, targets, tokens,
retention), ``layerwise`` (the 0-token retention per variant), ``teacher`` (its BLEU and its own
training ``budget``) and ``extrapolation`` (per ``<variant>-<targets>`` line).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from distill.checkpoint import atomic_file
from distill.model import format_count

TARGET_RETENTION = 0.80


def extrapolate(rows: list[dict], target: float = TARGET_RETENTION) -> dict | None:
    """Least-squares retention = a + b log10(tokens) over one line's arms, solved for ``target``.

    Only while the line still rises at its last arm and is below ``target``: a flat or falling
    end says more tokens stopped helping, and a straight line in log tokens would not say when.
    """
    pts = sorted((r["tokens"], r["retention"]) for r in rows if r.get("retention") is not None)
    if len({t for t, _ in pts}) < 2 or not pts[-2][1] < pts[-1][1] < target:
        return None
    xs, ys = [math.log10(t) for t, _ in pts], [y for _, y in pts]
    slope, intercept = statistics.linear_regression(xs, ys)
    if slope <= 0:
        return None
    at = (target - intercept) / slope
    return {
        "what": f"EXTRAPOLATION, not a measurement: least-squares line of retention on "
        f"log10(training tokens) over {len(pts)} arms, solved for retention {target:.2f}",
        "arms": len(pts),
        "slope_per_decade": slope,
        "intercept": intercept,
        "target": target,
        "log10_tokens": at,
        "tokens": 10**at if at < 300 else None,  # beyond any float: log10_tokens says it
    }


def write_curve_chart(curve: dict, path: str | Path) -> None:
    """Retention against training tokens (log x): a line per (variant, targets), each variant's
    layer-wise level (the 0-token point, which a log axis cannot place), the teacher's own
    budget, the extrapolations dashed (atomic PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    lines: dict[tuple[str, str], list[dict]] = {}
    for r in curve["arms"]:
        lines.setdefault((r["variant"], r["targets"]), []).append(r)
    xs_all, drawn = [r["tokens"] for r in curve["arms"]], set()
    for (variant, targets), rows in sorted(lines.items()):
        rows = sorted((r for r in rows if r["retention"] is not None), key=lambda r: r["tokens"])
        xs, ys = [r["tokens"] for r in rows], [r["retention"] for r in rows]
        color = ax.plot(xs, ys, "o-", label=f"{variant}, {targets} targets")[0].get_color()
        layerwise = curve["layerwise"].get(variant, {}).get("retention")
        if layerwise is not None and variant not in drawn:  # one per variant, whatever targets
            ax.axhline(layerwise, color=color, ls=":", label=f"{variant} layer-wise (0 tokens)")
            drawn.add(variant)
        ex = curve["extrapolation"].get(f"{variant}-{targets}")
        if ex and ex["tokens"] and xs:
            ends = [xs[0], ex["tokens"]]
            fitted = [ex["intercept"] + ex["slope_per_decade"] * math.log10(x) for x in ends]
            reach = f"extrapolated: {ex['target']:.2f} at {format_count(ex['tokens'])} tokens"
            ax.plot(ends, fitted, "--", color=color, label=reach)
            xs_all.append(ex["tokens"])
    budget = curve["teacher"].get("budget")
    if budget:
        mark = f"teacher's own training ({format_count(budget['tokens'])} tokens)"
        ax.axvline(budget["tokens"], color="k", ls="-.", lw=1, label=mark)
        xs_all.append(budget["tokens"])
    if xs_all:
        ax.set_xlim(min(xs_all) / 2, max(xs_all) * 2)
    ax.set_xscale("log")
    ax.set_xlabel(f"finetune training tokens ({curve['unit']})", fontsize=7)
    ax.set_ylabel("valid BLEU / teacher's")
    ax.set_title(f"Retention vs finetune budget ({curve['valid']})", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
