"""The README's and BENCHMARKS.md's current tables, generated from the committed results JSON.

    python eval/tables.py --save runs/demo   # copy the run's results into docs/results/ (+ CPU,
                                             # date, commit), then regenerate the tables
    python eval/tables.py                    # regenerate the tables from docs/results/
    python eval/tables.py --check            # exit 1 naming each table that disagrees with its JSON

docs/results/ holds what a demo run measured: ``demo-results.json`` and ``demo-results-valid.json``
(the evaluate stage's test and validation tables) and ``demo-speed.json``
(``bench/translate_speed.py``: `distill translate` of the whole test split). A table lives in a
Markdown file between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``; nothing
between the two markers is typed by hand (tests/test_tables.py runs ``--check``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from distill.checkpoint import atomic_write_json, atomic_write_text, read_json
from distill.model import format_count

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
FILES = {
    "test": "demo-results.json",
    "valid": "demo-results-valid.json",
    "speed": "demo-speed.json",
}
DOCS = ("README.md", "BENCHMARKS.md")
BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated: \2 -->)", re.S)


def _key(row: dict) -> tuple[str, str]:
    return row["variant"], row.get("stage", "")


def _ratio(r: dict | None) -> str:
    return "" if not r else f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def _replaced(row: dict) -> str:
    """Which attention a row's students replace, from its site names."""
    if not row["sites"]:
        return "none"
    if row.get("attentionless"):
        return f"all {len(row['sites'])} sites"
    kinds = {
        r"encoder\.\d+\.self_attn$": "encoder self-attention",
        r"encoder\.\d+\.self_attn_sublayer$": "encoder self-attention sublayers",
        r"encoder\.\d+$": "whole encoder layers",
        r"decoder\.\d+\.self_attn$": "decoder self-attention",
        r"decoder\.\d+\.cross_attn$": "cross-attention",
    }
    found = [
        name for pattern, name in kinds.items() if any(re.match(pattern, s) for s in row["sites"])
    ]
    hybrid = " (hybrid)" if row.get("kept") else ""
    return ", ".join(found) + hybrid


def _source(data: dict, *names: str) -> str:
    p = data["provenance"]
    files = ", ".join(f"`docs/results/{FILES[n]}`" for n in names)
    return (
        f"Measured on {p['cpu']}, {p['threads']} threads, {p['date']}, commit {p['commit']}; "
        f"generated from {files} by `python eval/tables.py`."
    )


def headline(data: dict) -> str:
    """The teacher and every variant that replaces every attention site, at each stage, with its
    validation score (where settings were chosen) and its speed as `distill translate` gives it."""
    test, valid, speed = data["test"], data["valid"], data["speed"]
    valid_rows = {_key(r): r for r in valid["rows"]}
    speed_rows = {_key(r): r for r in speed["rows"]}
    teacher = data["test"]["teacher_params"]
    lines = [
        "| variant | kinds | stage | BLEU test | / teacher | BLEU valid | / teacher "
        "| student params | `distill translate` speed / teacher | decoding, batch 64 | batch 1 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in test["rows"]:
        if row["variant"] != "teacher" and not row.get("attentionless"):
            continue
        v, s = valid_rows.get(_key(row), {}), speed_rows.get(_key(row))
        params = (
            f"(teacher: {format_count(teacher)})"
            if row["variant"] == "teacher"
            else f"{format_count(row['params_student'])} ({row['params_student'] / teacher:.1f}×)"
        )
        lines.append(
            f"| {row['variant']} | {row.get('kinds', '')} | {row.get('stage', '')} "
            f"| {row['bleu']:.2f} | {row['bleu_ratio']:.3f} "
            f"| {v.get('bleu', float('nan')):.2f} | {v.get('bleu_ratio') or 0:.3f} | {params} "
            f"| {_ratio(s and s['speed_vs_teacher']) or 'not measured'} "
            f"| {_ratio(s and s['decode_speed_vs_teacher'])} "
            f"| {_ratio(s and s['batch1_speed_vs_teacher'])} |"
        )
    return "\n".join([*lines, "", _source(data, "test", "valid", "speed")]) + "\n"


def whole_split(data: dict) -> str:
    """BLEU of every test pair as `distill translate` gives it: long sources split (today) beside
    long sources truncated (before)."""
    speed = data["speed"]
    lines = [
        "| model | stage | BLEU, long sources split | BLEU, truncated "
        "| chrF, split | chrF, truncated |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in speed["rows"]:
        lines.append(
            f"| {r['variant']} | {r['stage']} | {r['bleu_split']:.2f} | {r['bleu_truncated']:.2f} "
            f"| {r['chrf_split']:.2f} | {r['chrf_truncated']:.2f} |"
        )
    note = f"All {speed['sentences']} test pairs; sacreBLEU `{speed['bleu_signature']}`."
    return "\n".join([*lines, "", note, _source(data, "speed")]) + "\n"


def speed_table(data: dict) -> str:
    """Every timing of ``bench/translate_speed.py``: medians, ranges, ratios."""
    speed = data["speed"]
    lines = [
        "| model | stage | wall s, median (range) | / teacher | decoding s (batch 64) | / teacher "
        "| batch 1, ms/sentence | / teacher |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in speed["rows"]:
        w, d, b = r["wall_s"], r["decode_s"], r["batch1_ms_per_sentence"]
        lines.append(
            f"| {r['variant']} | {r['stage']} "
            f"| {w['median']:.2f} ({w['min']:.2f}–{w['max']:.2f}) "
            f"| {_ratio(r['speed_vs_teacher'])} "
            f"| {d['median']:.2f} ({d['min']:.2f}–{d['max']:.2f}) "
            f"| {_ratio(r['decode_speed_vs_teacher'])} "
            f"| {b['median']:.1f} ({b['min']:.1f}–{b['max']:.1f}) "
            f"| {_ratio(r['batch1_speed_vs_teacher'])} |"
        )
    note = (
        f"`distill translate EXPORT test.de --device cpu` of all {speed['sentences']} test "
        f"sources in a fresh process, {speed['rounds']} rounds, models alternating in a rotated "
        "order; wall = the whole command (start-up, loading, decoding); decoding = its own "
        f"'translated N lines in S s'; batch 1 = `--batch-size 1` on {speed['batch1_sentences']} "
        "sources spread over the split. / teacher = the teacher's time over the model's, median of "
        "the rounds (range): above 1 is faster."
    )
    return "\n".join([*lines, "", note, _source(data, "speed")]) + "\n"


def all_rows(data: dict) -> str:
    """Every row of the demo's test table, its validation score beside it."""
    valid_rows = {_key(r): r for r in data["valid"]["rows"]}
    lines = [
        "| variant | attention replaced | kinds | stage | students | BLEU test | / teacher "
        "| chrF test | BLEU valid | / teacher | student params | params replaced |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["test"]["rows"]:
        v = valid_rows.get(_key(row), {})
        lines.append(
            f"| {row['variant']} | {_replaced(row)} | {row.get('kinds', '')} "
            f"| {row.get('stage', '')} | {row.get('students', '')} | {row['bleu']:.2f} "
            f"| {row['bleu_ratio']:.3f} | {row['chrf']:.2f} | {v.get('bleu', float('nan')):.2f} "
            f"| {v.get('bleu_ratio') or 0:.3f} | {format_count(row['params_student'])} "
            f"| {format_count(row['params_replaced'])} |"
        )
    notes = [f"Test: {data['test']['note']}.", f"Validation: {data['valid']['note']}."]
    return "\n".join([*lines, "", *notes, _source(data, "test", "valid")]) + "\n"


TABLES = {
    "demo-headline": headline,
    "demo-whole-split": whole_split,
    "demo-speed": speed_table,
    "demo-all": all_rows,
}


def load(results: Path = RESULTS) -> dict:
    return {name: read_json(results / file) for name, file in FILES.items()}


def render(text: str, data: dict) -> str:
    """``text`` with every generated block replaced by its table."""

    def table(m: re.Match) -> str:
        if m.group(2) not in TABLES:
            raise SystemExit(f"unknown generated table '{m.group(2)}' (known: {', '.join(TABLES)})")
        return m.group(1) + TABLES[m.group(2)](data) + m.group(4)

    return BLOCK.sub(table, text)


def save(run_dir: Path, results: Path = RESULTS) -> None:
    """The run's results JSON into docs/results/, each with the CPU, date and commit."""
    from distill.hardware import provenance
    from distill.runs import load_teacher

    teacher, _ = load_teacher(str(run_dir))
    found = provenance(["distill", "run", "pipeline", "--config", "demo"])
    for name, src in (("test", "eval/results.json"), ("valid", "eval/results-valid.json")):
        data = read_json(run_dir / src)
        data["provenance"] = found
        data["teacher_params"] = sum(p.numel() for p in teacher.parameters())
        atomic_write_json(results / FILES[name], data)
    shutil.copyfile(run_dir / "speed" / "speed.json", results / FILES["speed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", default="", help="a run dir whose results to copy first")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a diff")
    args = parser.parse_args(argv)
    if args.save:
        save(Path(args.save))
    data = load()
    stale = []
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        new = render(text, data)
        if new != text:
            stale.append(doc)
            if not args.check:
                atomic_write_text(path, new)
    if args.check and stale:
        print(f"tables.py: out of date with docs/results/: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
