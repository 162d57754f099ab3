"""Speed as a user meets it: `distill translate` of the whole test split, teacher and variants
alternating, and the whole-split BLEU each translation scores (long sources split vs truncated).

    python bench/translate_speed.py runs/demo                 # -> runs/demo/speed/speed.json
    python bench/translate_speed.py runs/demo --rounds 5 --variants attentionless_gate,cross_gate
    python bench/translate_speed.py runs/demo --save docs/results/demo-speed.json

Each variant is exported as `distill export RUN --variant NAME` exports it (its tuned students
where the finetune stage tuned it) into RUN/speed/exports/. Each round runs, one after the other
and in a rotated order, `distill translate EXPORT FILE --device cpu` for the teacher and every
variant in a fresh process (what a user runs: start-up, loading and decoding at the default batch
of 64, length-sorted). Reported per model: the median and the range of
- the wall time of the whole command (the primary column: what a user waits for),
- the decoding time alone (the command's own "translated N lines in S s", batch 64),
- batch 1: `--batch-size 1` on ``--batch1-sentences`` sentences spread over the split (ms per
  sentence, decoding alone),
and the speed relative to the teacher: the teacher's time over the model's, the median over
rounds of that round's ratio, with its range (each round times both models back to back, so a
ratio is less noisy than either time). Then one more `--truncate` run per model, and sacreBLEU /
chrF of both translations of every test pair against the references: what `distill translate`
of the test sources scores, beside what truncating long sources (the old behaviour) scored.

Nothing else should run on the machine meanwhile; the CPU is written into the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from distill.bleu import score
from distill.checkpoint import atomic_write_json, atomic_write_text, read_json
from distill.data import load_pairs, spread
from distill.export import export
from distill.hardware import provenance
from distill.runs import teacher_data

DEFAULT_VARIANTS = ("attentionless_gate", "cross_gate", "attentionless")
DONE = re.compile(r"translated (\d+) lines in ([0-9.]+)s")


def translate(export_dir: Path, source: Path, out: Path, *extra: str) -> tuple[float, float]:
    """`distill translate EXPORT SOURCE --device cpu EXTRA > OUT` in a new process:
    (wall seconds of the command, its own decoding seconds)."""
    cmd = [sys.executable, "-m", "distill.cli", "translate", str(export_dir), str(source)]
    cmd += ["--device", "cpu", *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    atomic_write_text(out, done.stdout)
    found = DONE.search(done.stderr)
    if not found:
        raise SystemExit(f"{' '.join(cmd)}: no 'translated N lines in S s' on stderr")
    return wall, float(found.group(2))


def ratios(teacher: list[float], model: list[float]) -> dict:
    """Speed relative to the teacher, round by round: teacher time / model time."""
    r = [t / m for t, m in zip(teacher, model)]
    return {
        "median": round(statistics.median(r), 3),
        "min": round(min(r), 3),
        "max": round(max(r), 3),
    }


def summary(values: list[float], digits: int = 2) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def exports_of(run: Path, variants: list[str]) -> dict[str, tuple[Path, dict]]:
    """{name: (export dir, its config.json)}: the teacher and each variant, exported once as
    `distill export --variant NAME` exports it (tuned where the finetune stage tuned it)."""
    found = {}
    for name in ["teacher", *variants]:
        out = run / "speed" / "exports" / name
        if not (out / "config.json").is_file():
            export(run, name, out)
        found[name] = (out, read_json(out / "config.json"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch1-sentences", type=int, default=200)
    parser.add_argument("--save", default="", help="also write the JSON here (docs/results/...)")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    work = run / "speed"
    models = exports_of(run, [v for v in args.variants.split(",") if v])
    pairs = load_pairs(teacher_data(str(run)), "test")
    source, refs = work / "test.de", [tgt for _, tgt in pairs]
    atomic_write_text(source, "".join(src + "\n" for src, _ in pairs))
    small = work / "test-batch1.de"
    atomic_write_text(small, "".join(s + "\n" for s, _ in spread(pairs, args.batch1_sentences)))
    names = list(models)
    wall = {n: [] for n in names}
    decode = {n: [] for n in names}
    batch1 = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotated: no fixed position
        for name in order:
            w, d = translate(models[name][0], source, work / f"{name}.en")
            wall[name].append(w)
            decode[name].append(d)
            _, d1 = translate(models[name][0], small, work / f"{name}.b1.en", "--batch-size", "1")
            batch1[name].append(1000 * d1 / args.batch1_sentences)
            print(f"round {r + 1}: {name}: {w:.2f} s wall, {d:.2f} s decoding", file=sys.stderr)
    rows = []
    for name in names:
        translate(models[name][0], source, work / f"{name}.trunc.en", "--truncate")
        split = score((work / f"{name}.en").read_text().splitlines(), refs)
        trunc = score((work / f"{name}.trunc.en").read_text().splitlines(), refs)
        config = models[name][1]
        rows.append(
            {
                "variant": name,
                # as a results row names it: the teacher has no stage
                "stage": config.get("stage", "layer-wise") if config["replacements"] else "",
                "attentionless": bool(config.get("attentionless")),
                "wall_s": summary(wall[name]),
                "decode_s": summary(decode[name]),
                "batch1_ms_per_sentence": summary(batch1[name], 1),
                "speed_vs_teacher": ratios(wall["teacher"], wall[name]),
                "decode_speed_vs_teacher": ratios(decode["teacher"], decode[name]),
                "batch1_speed_vs_teacher": ratios(batch1["teacher"], batch1[name]),
                "bleu_split": split["bleu"],
                "chrf_split": split["chrf"],
                "bleu_truncated": trunc["bleu"],
                "chrf_truncated": trunc["chrf"],
            }
        )
    results = {
        "provenance": provenance(["python", "bench/translate_speed.py", *(argv or sys.argv[1:])]),
        "sentences": len(pairs),
        "batch1_sentences": args.batch1_sentences,
        "rounds": args.rounds,
        "bleu_signature": split["bleu_signature"],
        "rows": rows,
    }
    atomic_write_json(work / "speed.json", results)
    if args.save:
        atomic_write_json(Path(args.save), results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
