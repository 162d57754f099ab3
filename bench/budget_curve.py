"""How BLEU retention grows with the end-to-end (finetune) budget: one finetune arm per budget.

    python bench/budget_curve.py runs/demo --variant attentionless_pw --tokens 0.3M,1M,3M,10M
    python bench/budget_curve.py runs/demo --tokens 1M,3M --targets teacher --extra temperature=2
    python bench/budget_curve.py runs/demo --tokens 0.3M,1M,3M,10M --dry-run     # plans only

Budgets are in training tokens (``distill/budget.py``: the real target tokens, EOS included, of
the batches the optimizer stepped on). The demo in that unit: the teacher's 2600 steps of
2000-token batches are 4.31M, 2.55 passes over the filtered train split (143,786 sentences, 1.69M
tokens); the demo finetune (2 epochs of 20k sentences, 298 steps) is 0.47M (its batches hold up
to 0.6M positions with padding). Every run prints the teacher's budget beside the plans.

Each budget is an arm, RUN_DIR/budget/<variant>-<targets>-<tokens: 300k, 1M>/ (teacher/ and
students/ are symlinks to RUN_DIR's) where the finetune recipe runs with --config (default: the
demo's), the --extra keys and ``distill.budget.plan_budget``'s settings: below one pass, one
epoch of sentences spread over the whole split (``max_sentences``), the budget rounded up to a
sentence; above, every sentence for as many epochs as it takes, cut by ``train.max_steps`` at
the batch that reaches the budget. fit's cosine decays to 0 at exactly that last step; the
warm-up keeps the config's share of its own steps (demo: 30 of 298). With --targets teacher the
plan uses the references' lengths, the tokens recorded are those of the teacher's decodes the
arm trained on, and each arm decodes its own sentences (the recipe caches decodes per run dir).

The tuned variant, and once the teacher and the layer-wise variant (the 0-token point), are
scored with sacreBLEU on --valid-sentences valid pairs evenly spread, greedy; retention = BLEU /
teacher BLEU. Rows go to RUN_DIR/budget/curve.json (atomically, after each arm); a finished arm
is skipped, a killed one resumes from its finetune checkpoint. The plot: retention against
tokens, log x; where a line still rises at its last arm, a least-squares line of retention on
log10(tokens), extrapolated (dashed) to where it would reach 0.80: labelled as an extrapolation,
not a measurement, in curve.json and in the output.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from distill_eval.budget import extrapolate, write_curve_chart
from distill_recipes import finetune

from distill.bleu import evaluate_model
from distill.budget import BudgetPlan, horizon, plan_budget, replay, training_tokens
from distill.checkpoint import atomic_write_json, read_json
from distill.config import build, config_path, load_yaml, to_dict
from distill.data import encode_pairs, load_pairs, scored_pairs, spread
from distill.errors import ConfigError, DistillError
from distill.hardware import cpu_info
from distill.modes import VARIANTS
from distill.runs import (
    finetune_dir,
    load_teacher,
    load_variant,
    teacher_data,
    tuned_spec,
    variant_spec,
)

PLANNED = ("run_dir", "variants", "targets", "max_sentences", "train.epochs", "train.max_steps")
PLANNED += ("train.warmup",)  # set per arm: --extra may not
UNIT = "real target tokens (ids + EOS) of the batches the optimizer stepped on"


@dataclass(frozen=True)
class Arm:
    """One budget of one (variant, targets) line: the plan that spends it and its warm-up."""

    variant: str
    targets: str
    budget: int
    plan: BudgetPlan
    warmup: int

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.targets}-{label(self.budget)}"

    def overrides(self, split_size: int) -> list[str]:
        """The finetune keys the plan sets (max_sentences 0: the whole split)."""
        p = self.plan
        n = p.sentences if p.sentences < split_size else 0
        over = [f"max_sentences={n}", f"train.epochs={p.epochs}", f"train.max_steps={p.max_steps}"]
        return over + [f"train.warmup={self.warmup}"]

    def describe(self) -> str:
        p = self.plan
        return (
            f"{self.name}: {p.sentences:,} sentences x {p.epochs} epoch(s), {p.steps:,} steps "
            f"(max_steps {p.max_steps}, warm-up {self.warmup}), {p.tokens:,} tokens"
        )


def parse_tokens(text: str) -> int:
    """``0.3M``, ``300k``, ``2500`` -> a token count."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?)([kKmMgG]?)", text.strip())
    n = round(float(m[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m[2].lower()]) if m else 0
    if n < 1:
        raise ConfigError(f"--tokens: '{text}' is not a token count like 0.3M, 300k or 2500")
    return n


def label(n: int) -> str:
    """An arm's budget in its directory name: 300k, 1M, 2.5k."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return str(n)


def plan_arm(train: list, budget: int, base: finetune.Config, variant: str, targets: str) -> Arm:
    """The arm that spends ``budget`` on ``train`` (the filtered split) with ``base``'s batches and
    the share of its own steps ``base`` warms up for."""
    bt, seed, tr = base.batch_tokens, base.train.seed, base.train
    base_steps = horizon(spread(train, base.max_sentences), bt, seed, tr.epochs, tr.max_steps)
    p = plan_budget(train, budget, bt, seed)
    warmup = max(1, round(min(1.0, tr.warmup / base_steps) * p.steps))
    return Arm(variant, targets, budget, p, warmup)


def teacher_budget(run: Path, train: list) -> dict | None:
    """The teacher's own training in training tokens, replayed from its config.yaml; None for an
    imported (pretrained or Marian-trained) teacher, whose batches are not ours to replay."""
    found = load_yaml(run / "teacher" / "config.yaml")
    if found.get("pretrained") or found.get("model", {}).get("family") == "marian":
        return None
    tr, bt = found["train"], found["data"]["batch_tokens"]
    steps, tokens = replay(train, bt, tr["seed"], tr["epochs"], tr["max_steps"])
    return {
        "steps": steps,
        "batch_tokens": bt,
        "tokens": tokens,
        "passes": tokens / training_tokens(train),
    }


def link(src: Path, dst: Path) -> None:
    """A relative symlink: the arm reads RUN_DIR's stage read-only, nothing is copied."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)


def score(model, tok, pairs, teacher_bleu: float | None = None) -> dict:
    """sacreBLEU BLEU and chrF of greedy decodes; retention against ``teacher_bleu`` if given (a
    teacher at 0 BLEU, as a tiny run's, gives none)."""
    result, _ = evaluate_model(model, tok, pairs)
    row = {k: result[k] for k in ("bleu", "chrf", "bleu_signature")}
    if teacher_bleu is not None:
        row["retention"] = result["bleu"] / teacher_bleu if teacher_bleu > 0 else None
    return row


def finetune_config(args, run_dir: Path, plan_overrides: Sequence[str] = ()) -> finetune.Config:
    """--config + --extra for one variant and targets, then the arm's plan."""
    over = [f"run_dir={run_dir}", f"variants=[{args.variant}]", f"targets={args.targets}"]
    path = config_path("finetune", args.config)
    return build(finetune.Config, path, [*over, *args.extra, *plan_overrides])


def check_settings(cfg: finetune.Config, variant: str) -> None:
    """An arm dir trained (or half trained) with other settings is not this arm: refuse it."""
    path = finetune_dir(cfg.run_dir, variant) / "config.yaml"
    if path.exists():
        old, new = load_yaml(path), to_dict(cfg)
        if differ := sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)):
            raise ConfigError(
                f"{path}: the arm was trained with other {', '.join(differ)} (--config, --extra); "
                "use another run dir or delete the arm"
            )


def run_arm(
    run: Path, arm: Arm, cfg: finetune.Config, args, teacher, tok, train, pairs, curve: dict
) -> dict:
    """Train (or resume) one arm, then score it: its curve.json row."""
    out = Path(cfg.run_dir)
    link(run / "teacher", out / "teacher")
    link(run / "students", out / "students")
    tuned_before = tuned_spec(out, arm.variant) is not None
    resumed = tuned_before or (finetune_dir(out, arm.variant) / "checkpoint").exists()
    started = time.perf_counter()
    finetune.main(cfg)
    wall = None if tuned_before else round(time.perf_counter() - started, 1)
    spec = tuned_spec(out, arm.variant)
    if cfg.targets == "teacher":  # what it trained on: the recipe's own examples (cached decodes)
        train = finetune._examples(cfg, teacher, tok, "train", cfg.max_sentences)
    else:
        train = spread(train, cfg.max_sentences)
    p = arm.plan
    _, tokens = replay(train, cfg.batch_tokens, cfg.train.seed, p.epochs, p.max_steps)
    model, tok, _ = load_variant(out, VARIANTS[arm.variant], tuned=arm.variant)
    return {
        "arm": arm.name,
        "variant": arm.variant,
        "targets": arm.targets,
        "budget": arm.budget,
        "sentences": p.sentences,
        "epochs": p.epochs,
        "max_steps": p.max_steps,
        "warmup": arm.warmup,
        "planned_steps": p.steps,
        "steps": spec["settings"]["steps"],  # what the recipe took
        "planned_tokens": p.tokens,
        "tokens": tokens,  # replayed on what it trained on (the teacher's decodes, if those)
        "wall_s": wall,  # this call's; None when an earlier call finished the training
        "resumed": resumed,
        "cpu": cpu_info()["model"],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "config": args.config,
        "extra": args.extra,
        "valid_kd": spec.get("valid_kd"),
        **score(model, tok, pairs, curve["teacher"]["bleu"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", help="a run dir with teacher/ and the variant's students/")
    p.add_argument("--variant", default="attentionless_pw")
    p.add_argument("--tokens", required=True, help="budgets in training tokens: 0.3M,1M,3M,10M")
    p.add_argument("--targets", default="reference", choices=("reference", "teacher"))
    p.add_argument("--valid-sentences", type=int, default=500, help="valid pairs BLEU is on")
    p.add_argument("--out-png", default="", help="default RUN_DIR/budget/curve.png")
    p.add_argument("--config", default="demo", help="the finetune config the arms start from")
    p.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE", help="finetune keys")
    p.add_argument("--dry-run", action="store_true", help="print each arm's plan, train nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return run(args)
    except DistillError as err:
        print(f"budget_curve: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Plan every arm, then (unless --dry-run) train, score, extrapolate and plot."""
    for text in args.extra:
        if text.partition("=")[0].strip() in PLANNED:
            raise ConfigError(f"--extra {text}: the budget plan sets {', '.join(PLANNED)}")
    if args.valid_sentences < 1:
        raise ConfigError(f"--valid-sentences must be >= 1, got {args.valid_sentences}")
    budgets = sorted({parse_tokens(t) for t in args.tokens.split(",")})
    run_dir = Path(args.run_dir)
    base = finetune_config(args, run_dir)  # bad --extra keys fail before any data loads
    teacher, tok = load_teacher(run_dir)
    variant_spec(run_dir, VARIANTS[args.variant])  # missing students fail before any training
    train, _ = encode_pairs(load_pairs(teacher_data(run_dir), "train"), tok, teacher.cfg.max_len)
    arms = [plan_arm(train, b, base, args.variant, args.targets) for b in budgets]
    budget = teacher_budget(run_dir, train)
    print(f"training tokens: {UNIT}")
    print(f"one pass over the train split: {training_tokens(train):,} ({len(train):,} sentences)")
    if budget:
        print(
            f"the teacher's own training: {budget['steps']:,} steps of {budget['batch_tokens']:,}"
            f"-token batches = {budget['tokens']:,} ({budget['passes']:.2f} passes)"
        )
    for arm in arms:
        ratio = f", {arm.plan.tokens / budget['tokens']:.3g}x the teacher's" if budget else ""
        print(arm.describe() + ratio)
    if args.dry_run:
        return 0

    out = run_dir / "budget"
    path = out / "curve.json"
    data = teacher_data(run_dir)
    pairs, note = scored_pairs(data, "valid", tok, teacher.cfg.max_len, args.valid_sentences)
    valid = f"{note}, greedy"
    empty = {"unit": UNIT, "valid": valid, "arms": [], "layerwise": {}, "extrapolation": {}}
    curve = read_json(path) if path.exists() else empty
    if curve["valid"] != valid:
        raise ConfigError(f"{path}: scored on {curve['valid']}, not {valid} (--valid-sentences)")
    if "teacher" not in curve:  # the 1.0 and the 0-token points: once
        curve["teacher"] = {**score(teacher, tok, pairs), "budget": budget}
    if args.variant not in curve["layerwise"]:
        model, _, _ = load_variant(run_dir, VARIANTS[args.variant])
        curve["layerwise"][args.variant] = score(model, tok, pairs, curve["teacher"]["bleu"])
    atomic_write_json(path, curve)
    for arm in arms:
        cfg = finetune_config(args, out / arm.name, arm.overrides(len(train)))
        check_settings(cfg, arm.variant)
        done = any(r["arm"] == arm.name for r in curve["arms"])
        if done and tuned_spec(cfg.run_dir, arm.variant) is not None:
            print(f"{arm.name}: finished, skipped")
            continue
        row = run_arm(run_dir, arm, cfg, args, teacher, tok, train, pairs, curve)
        curve["arms"] = [r for r in curve["arms"] if r["arm"] != arm.name] + [row]
        atomic_write_json(path, curve)
    key = f"{args.variant}-{args.targets}"
    line = [r for r in curve["arms"] if f"{r['variant']}-{r['targets']}" == key]
    curve["extrapolation"].pop(key, None)
    if ex := extrapolate(line):
        curve["extrapolation"][key] = ex
        reach = label(round(ex["tokens"])) if ex["tokens"] else f"1e{ex['log10_tokens']:.0f}"
        print(f"{key}: {ex['what']}: {reach} tokens")
    atomic_write_json(path, curve)
    png = Path(args.out_png) if args.out_png else out / "curve.png"
    write_curve_chart(curve, png)
    for r in sorted(line, key=lambda r: r["tokens"]):
        kept = "n/a" if r["retention"] is None else f"{r['retention']:.3f}"
        print(
            f"{r['arm']}: {r['tokens']:,} tokens, {r['steps']} steps, BLEU {r['bleu']:.2f}, "
            f"chrF {r['chrf']:.2f}, retention {kept}, valid KD {r['valid_kd']:.4f}"
        )
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
