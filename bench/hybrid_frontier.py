"""Which decoder layers should a hybrid keep? Every keep-set, scored on the validation split.

    python bench/hybrid_frontier.py runs/demo --base attentionless_pw --k 1,2
    python bench/hybrid_frontier.py runs/demo --base attentionless --k 1 --valid-sentences 200

A hybrid ``<base>+keep<i>[_<j>...]`` is the variant ``base`` with the teacher's own
cross-attention left at decoder layers i, j, ... (``distill.modes.resolve_variant``). For each k
this scores the teacher, the base and every hybrid that keeps k layers, layer-wise (the students
as trained, no finetune), greedy, on ``--valid-sentences`` pairs evenly spread over the
length-filtered validation split (the pairs ``distill run evaluate ... splits=[valid]
max_sentences=N`` scores), and prints BLEU, its ratio to the teacher's, parameters (whole model,
students), decoding sentences/s and the best keep-set per k. Settings are chosen here, on
validation; report the chosen hybrid on the test split with ``distill run evaluate ...
variants=[teacher,BASE,HYBRID]``. Writes RUN_DIR/eval/hybrid-frontier.json (atomically).
"""

from __future__ import annotations

import argparse
import logging
import sys
from itertools import combinations
from pathlib import Path

from distill.bleu import evaluate_model
from distill.checkpoint import atomic_write_json
from distill.data import scored_pairs
from distill.errors import ConfigError, DistillError
from distill.model import count_parameters, format_count
from distill.modes import hybrid_name, resolve_variants
from distill.runs import load_teacher, load_variant, teacher_data

log = logging.getLogger("bench.hybrid_frontier")


def frontier(run_dir: str, base: str, ks: list[int], valid_sentences: int = 500) -> dict:
    """Rows (teacher, base, each hybrid of each k) scored on the validation split, the best
    hybrid per k (highest BLEU; the first keep-set on a tie) and the note on the pairs."""
    teacher, tok = load_teacher(run_dir)
    n_dec = teacher.cfg.n_dec
    if not ks or any(not 1 <= k <= n_dec for k in ks):
        raise ConfigError(f"--k: each k must be in 1..{n_dec} (decoder layers), got {ks}")
    names = [base] + [hybrid_name(base, s) for k in ks for s in combinations(range(n_dec), k)]
    variants = resolve_variants(names, teacher.cfg, "--base")
    pairs, note = scored_pairs(
        teacher_data(run_dir), "valid", tok, teacher.cfg.max_len, valid_sentences
    )
    rows = [_row("teacher", [], teacher, tok, pairs, 0)]
    for v in variants:
        model, _, info = load_variant(run_dir, v.modes, kept=v.kept)
        rows.append(_row(v.name, list(v.kept), model, tok, pairs, info["student"]))
    for r in rows:
        r["bleu_ratio"] = round(r["bleu"] / rows[0]["bleu"], 3) if rows[0]["bleu"] else None
    best = {}
    for k in ks:
        of_k = [r for r in rows if len(r["kept"]) == k]
        best[str(k)] = max(of_k, key=lambda r: r["bleu"])["variant"]  # max keeps the first tie
    return {"base": base, "split": "valid", "note": note, "rows": rows, "best": best}


def _row(name: str, kept: list[str], model, tok, pairs, student: int) -> dict:
    log.info("scoring %s on %d validation pairs", name, len(pairs))
    result, _ = evaluate_model(model, tok, pairs, beam=1, progress=True)
    return {
        "variant": name,
        "kept": kept,
        "bleu": result["bleu"],
        "chrf": result["chrf"],
        "params_total": count_parameters(model),
        "params_student": student,
        "sentences_per_s": result["sentences_per_s"],
    }


def table(results: dict) -> str:
    """The frontier as Markdown, then the best keep-set per k."""
    lines = [
        "| variant | kept teacher cross-attention | BLEU | BLEU / teacher | parameters "
        "| student params | sentences/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        ratio = "" if r["bleu_ratio"] is None else f"{r['bleu_ratio']:.3f}"
        kept = ", ".join(r["kept"]) or ("all" if r["variant"] == "teacher" else "none")
        lines.append(
            f"| {r['variant']} | {kept} | {r['bleu']:.2f} | {ratio} "
            f"| {format_count(r['params_total'])} | {format_count(r['params_student'])} "
            f"| {r['sentences_per_s']:.1f} |"
        )
    lines += ["", f"Scored on: {results['note']}; greedy, layer-wise students."]
    lines += [f"best keeping {k}: {name}" for k, name in results["best"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--base", default="attentionless_pw", help="a variant replacing cross-attention")
    p.add_argument("--k", default="1,2", help="how many decoder layers keep their cross-attention")
    p.add_argument("--valid-sentences", type=int, default=500, help="0: the whole split")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        ks = sorted({int(k) for k in args.k.split(",")})
    except ValueError:
        p.error(f"--k: a comma-separated list of integers, got '{args.k}'")
    try:
        results = frontier(args.run_dir, args.base, ks, args.valid_sentences)
    except DistillError as err:
        print(f"hybrid_frontier: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.run_dir) / "eval" / "hybrid-frontier.json"
    atomic_write_json(out, results)
    print(table(results))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
