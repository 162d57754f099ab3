"""The results table (Markdown) and chart (PNG) of an evaluation."""

from __future__ import annotations

from pathlib import Path

from distill.checkpoint import atomic_file
from distill.model import format_count
from distill.runs import trained_text

KINDS_NOTE = (
    "Kinds: mixing = no weight compares the content of two positions (a model of mixing "
    "students only is attention-free in the field's sense too); gated pairs = a learned "
    "compatibility of two positions' content weights each source position (`cross_gate`), "
    "which the field calls additive attention without a softmax (Bahdanau et al. 2015; sigmoid "
    "attention, Ramapuram et al. 2024). Attentionless (this project's word) = every attention "
    "site holds a student, of either kind."
)


def write_markdown(results: dict) -> str:
    """A Markdown table: one row per variant."""
    lines = [
        "| variant | stage | students | kinds | BLEU | chrF | BLEU / teacher | sites "
        "| params replaced | student params | sentences/s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    hybrids, tuned = {}, {}
    for r in results["rows"]:
        if r.get("stage") == "tuned":
            tuned.setdefault(r["trainable"], []).append(r["variant"])
        ratio = "" if r.get("bleu_ratio") is None else f"{r['bleu_ratio']:.3f}"
        name = r["variant"]
        if r.get("kept"):
            hybrids[name] = r["kept"]
            name += " (hybrid)"
        lines.append(
            f"| {name} | {r.get('stage', '')} | {r.get('students', '')} | {r.get('kinds', '')} "
            f"| {r['bleu']:.2f} | {r['chrf']:.2f} "
            f"| {ratio} | {len(r['sites'])} "
            f"| {format_count(r['params_replaced'])} | {format_count(r['params_student'])} "
            f"| {r['sentences_per_s']:.1f} |"
        )
    sig = results["rows"][0]["bleu_signature"] if results["rows"] else ""
    lines += [
        "",
        f"Scored on: {results['note']}; decoding: "
        f"{'greedy' if results['beam'] == 1 else 'beam ' + str(results['beam'])}. Stage: "
        "layer-wise = students trained one site at a time and spliced in with no fine-tuning (the "
        "paper's protocol); tuned = the spliced model after the end-to-end finetune stage.",
        *(f"Tuned {', '.join(names)}: {trained_text(t)}." for t, names in tuned.items()),
        KINDS_NOTE,
        *(
            f"{name}: hybrid, not attentionless: keeps the teacher's attention at "
            + ", ".join(f"`{site}`" for site in kept)
            + "."
            for name, kept in hybrids.items()
        ),
        f"sacreBLEU signature: `{sig}`",
    ]
    return "\n".join(lines) + "\n"


def _colour(row: dict) -> str:
    if row["variant"] == "teacher":
        return "#444"
    return "#3b7dd8" if row.get("attentionless") else "#e08a2c"  # orange: teacher attention left


def write_chart(results: dict, path: str | Path) -> None:
    """Bars of BLEU per variant, annotated with student parameters and speed (atomic PNG);
    the teacher grey, attentionless variants blue, the rest (teacher attention kept) orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    names = [r["variant"] + (" (tuned)" if r.get("stage") == "tuned" else "") for r in rows]
    bars = ax.bar(
        names,
        [r["bleu"] for r in rows],
        color=[_colour(r) for r in rows],
    )
    for bar, r in zip(bars, rows):
        ax.annotate(
            f"{format_count(r['params_student'])}\n{r['sentences_per_s']:.0f}/s",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_ylabel("sacreBLEU")
    ax.set_title(
        "BLEU per variant (labels: student parameters, sentences/s; "
        "blue: attentionless, orange: keeps teacher attention)",
        fontsize=9,
    )
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
