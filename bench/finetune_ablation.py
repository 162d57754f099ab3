"""What the end-to-end stage buys: layer-wise vs tuned vs tuned-from-random, at sizes S and M.

    python bench/finetune_ablation.py --run-dir runs/demo --steps 300            # all arms, valid
    python bench/finetune_ablation.py --run-dir runs/demo --arms tuned --tag all \\
        --finetune trainable=all                                                   # one setting
    python bench/finetune_ablation.py --run-dir runs/demo --split test --steps 300 # report only

Every arm is its own run dir under RUN_DIR-ablation/<arm>[-<tag>]/ whose teacher/ and record/
(and, where the arm reuses them, students/) are symlinks to RUN_DIR's, so nothing is retrained
that the arm does not change. Arms, all with the same finetune step budget (--steps):
  layerwise  the paper's protocol: spliced layer-wise students, no end-to-end stage   (a)
  tuned      layer-wise students + the end-to-end stage                               (b)
  random     the end-to-end stage from freshly initialised students of the same shapes (c)
  size-s     students retrained at size S, then the end-to-end stage (beside tuned at M)
``--finetune``, ``--students`` and ``--record KEY=VALUE`` pass settings to those stages (a gated
cross student: ``--students modes.cross.activation=swiglu --modes cross --arms tuned --tag
swiglu``; decoder students on the teacher's decodes: ``--record targets=teacher --students
targets=teacher --modes dec_self,cross``); an arm given any of the last two trains its own
students of ``--modes``.
Each arm resumes or skips what it already finished. The table is printed last, scored on
``--split`` (valid chooses settings; test only reports).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

ARMS = ("layerwise", "tuned", "random", "size-s")
VARIANTS = ["attentionless_pw", "cross_pw"]


def link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)


def arm_dir(run: Path, arm: str, tag: str) -> Path:
    return run.parent / f"{run.name}-ablation" / (f"{arm}-{tag}" if tag else arm)


def run_arm(run: Path, arm: str, args) -> tuple[Path, float]:
    from distill_recipes import evaluate, finetune, students

    from distill.cli import load_recipe_config

    out = arm_dir(run, arm, args.tag)
    link(run / "teacher", out / "teacher")
    t0 = time.perf_counter()
    if args.record:  # its own recording (e.g. targets=teacher), so its own students too
        from distill_recipes import record

        over = [f"run_dir={out}", *args.record]
        record.main(load_recipe_config("record", args.config, over)[1])
    else:
        link(run / "record", out / "record")
    own_students = arm == "size-s" or bool(args.students) or bool(args.record)
    if own_students:  # the modes it retrains are its own, the others are RUN_DIR's
        for spec in (run / "students").glob("*/spec.json"):
            if spec.parent.name not in args.modes:
                link(spec.parent, out / "students" / spec.parent.name)
        over = [f"run_dir={out}", f"modes=[{','.join(args.modes)}]", *args.students]
        over += ["size=s"] if arm == "size-s" else []
        students.main(load_recipe_config("students", args.config, over)[1])
    else:
        link(run / "students", out / "students")
    if arm != "layerwise":
        over = [f"run_dir={out}", f"variants=[{','.join(args.variants)}]", *args.finetune]
        over += [f"train.max_steps={args.steps}"]
        over += ["init=random"] if arm == "random" else []
        finetune.main(load_recipe_config("finetune", args.config, over)[1])
    over = [f"run_dir={out}", f"variants=[teacher,{','.join(args.variants)}]"]
    over += [f"splits=[{args.split}]", f"max_sentences={args.sentences}"]
    evaluate.main(load_recipe_config("evaluate", args.config, over)[1])
    return out, time.perf_counter() - t0


def rows_of(out: Path, arm: str, split: str, own_students: bool) -> list[dict]:
    """The arm's rows; the layer-wise ones only where its students differ from RUN_DIR's."""
    stem = "results" if split == "test" else f"results-{split}"
    results = json.loads((out / "eval" / f"{stem}.json").read_text())
    keep = []
    for r in results["rows"]:
        if r["variant"] == "teacher" and arm not in ("layerwise", "tuned"):
            continue
        if arm == "layerwise" and r["stage"] == "tuned":
            continue
        if arm != "layerwise" and r["stage"] == "layer-wise" and not own_students:
            continue
        keep.append({**r, "arm": arm})
    return keep


def table(rows: list[dict]) -> str:
    head = "| arm | variant | stage | students | BLEU | chrF | BLEU / teacher | params replaced "
    head += "| student params |\n|---|---|---|---|---:|---:|---:|---:|---:|"
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['variant']} | {r['stage']} | {r['students']} | {r['bleu']:.2f} "
            f"| {r['chrf']:.2f} | {r['bleu_ratio']:.3f} | {r['params_replaced'] / 1e3:.1f}k "
            f"| {r['params_student'] / 1e6:.2f}M |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo", help="a run dir with teacher/record/students")
    p.add_argument("--config", default="demo", help="the stages' base configs")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--modes", default="alr,dec_self,cross_pw", help="modes an arm retrains")
    p.add_argument("--steps", type=int, default=300, help="finetune steps of every tuned arm")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--sentences", type=int, default=500, help="pairs scored (0 = all)")
    p.add_argument("--tag", default="", help="suffix of the arms' run dirs (one per setting)")
    p.add_argument("--finetune", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--students", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--record", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.variants, args.modes = args.variants.split(","), args.modes.split(",")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    if not (run / "students").is_dir():
        raise SystemExit(f"{run}/students: not found (run the pipeline's first three stages)")
    rows, times = [], {}
    for arm in args.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"--arms: unknown arm '{arm}' (known: {', '.join(ARMS)})")
        out, times[arm] = run_arm(run, arm, args)
        own = arm == "size-s" or bool(args.students) or bool(args.record)
        rows += rows_of(out, arm, args.split, own)
    print(f"\n{args.split} split, {args.sentences or 'all'} pairs, {args.steps} finetune steps")
    print(", ".join(f"{a}: {t / 60:.1f} min" for a, t in times.items()))
    print(table(rows))


if __name__ == "__main__":
    main()
