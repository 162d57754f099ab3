"""The device check of issue 26: every stage on one CUDA GPU, checked and measured.

    bash bench/gpu_check.sh           # what runs this: (a) and (b), under 9 minutes on an H200
    bash bench/gpu_check.sh --cpu     # (a) with the CPU as the device: what `make test` runs
    python bench/gpu_check.py --out DIR [--cpu] [--steps-scale X]

(a) The tiny pipeline end to end on the GPU and on the CPU (``ACCELERATE_USE_CPU=1``) in one
    process: per row of the results table BLEU within ``TOL_BLEU`` and chrF within ``TOL_CHRF``;
    the GPU run's export gives the in-memory model's logits on the GPU; the run dir the GPU wrote
    evaluates on the CPU with the GPU's scores. With ``--cpu`` the CPU is the device: one run,
    compared with itself; the code path is the same.
(b) The paper-sized pipeline (``recipes/configs/*/paper.yaml``: 6+6 layers, d 128, 8 heads,
    max_len 50, 8,000 pieces, size M students, batches of 2000 sentences) on the embedded demo
    corpus at ``PAPER`` step budgets (about 6 minutes on one H200; ``--steps-scale`` scales
    them): teacher tokens/s, record sentences/s, student samples/s per mode, finetune
    sentences/s per variant, decoding sentences/s per row (teacher vs attentionless), peak GPU
    memory per stage, and the BLEU table.
Everything measured goes to DIR/gpu_check.json, a summary to stdout, the stages' logs to
stderr. An error stops the script at once; a check of (a) that does not hold fails it at the
end, after (b) has measured. ``datasets`` is blocked: the GPU machine has none, and the demo
corpus must not need it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.modules["datasets"] = None  # any `import datasets` on this path now fails

import torch  # noqa: E402
from distill_recipes.evaluate import evaluate_run  # noqa: E402

from distill import progress  # noqa: E402
from distill.checkpoint import atomic_write_json, read_json  # noqa: E402
from distill.cli import load_recipe_config  # noqa: E402
from distill.data import collate, encode_pairs, load_pairs, spread, token_batches  # noqa: E402
from distill.export import export  # noqa: E402
from distill.modes import VARIANTS  # noqa: E402
from distill.pretrained import from_pretrained  # noqa: E402
from distill.record import Recording, epoch_plan  # noqa: E402
from distill.runs import load_teacher, load_variant, teacher_data  # noqa: E402

log = logging.getLogger("gpu_check")
TOL_BLEU, TOL_CHRF = 1.0, 2.0  # GPU vs CPU runs of the tiny pipeline: float noise, trained in
STAGES = ("teacher", "record", "students", "finetune", "evaluate")
PAPER = {  # config overrides of (b): the paper's settings, on the demo corpus, few steps
    "teacher": [
        "data.source=demo",
        "data.max_train_pairs=50000",
        "train.max_steps=1200",
        "train.ckpt_every=1000",
        "train.mixed_precision=auto",
        "eval.max_sentences=1000",
    ],
    "record": ["max_sentences=6000", "valid_sentences=500"],
    "students": ["train.max_steps=40"],
    "finetune": [
        "max_sentences=20000",
        "valid_sentences=500",
        "train.max_steps=100",
        "train.mixed_precision=auto",
    ],
    "evaluate": ["max_sentences=1000"],
}


def scaled(override: str, scale: float) -> str:
    """``train.max_steps=N`` times ``scale`` (at least 1); any other override as it is."""
    key, _, value = override.partition("=")
    return f"{key}={max(1, round(int(value) * scale))}" if key == "train.max_steps" else override


def use(device: str) -> None:
    """Make the CPU or the GPU the device of every stage run next (accelerate's)."""
    from accelerate.state import AcceleratorState

    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    else:
        os.environ.pop("ACCELERATE_USE_CPU", None)
    AcceleratorState._reset_state(reset_partial_state=True)


def run_stage(stage: str, config: str, run: Path, overrides: list[str]) -> dict:
    """One recipe in this process; its seconds and (on a GPU) peak memory."""
    module, cfg = load_recipe_config(stage, config, [f"run_dir={run}", *overrides])
    cuda = torch.cuda.is_available() and not os.environ.get("ACCELERATE_USE_CPU")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    module.main(cfg)
    out = {"seconds": round(time.perf_counter() - started, 1)}
    if cuda:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    log.info("%s (%s): %s", stage, config, out)
    return out


def table(run: Path) -> dict[tuple[str, str], dict]:
    rows = read_json(run / "eval" / "results.json")["rows"]
    return {(r["variant"], r["stage"]): r for r in rows}


def compare(a: dict, b: dict, what: str, failed: list[str]) -> float:
    """The largest BLEU gap between two results tables of the same rows; a row past the
    tolerances is added to ``failed``."""
    if a.keys() != b.keys():
        raise SystemExit(f"{what}: other rows ({sorted(a)} vs {sorted(b)})")
    gap = 0.0
    for key, row in a.items():
        db, dc = abs(row["bleu"] - b[key]["bleu"]), abs(row["chrf"] - b[key]["chrf"])
        if db > TOL_BLEU or dc > TOL_CHRF:
            failed.append(
                f"{what}: {' '.join(key)} BLEU {row['bleu']} vs {b[key]['bleu']}, "
                f"chrF {row['chrf']} vs {b[key]['chrf']}"
            )
        gap = max(gap, db)
    return gap


def tiny(work: Path, device: str, failed: list[str], overrides: list[str] = ()) -> dict:
    """(a): the tiny pipeline (with the pipeline ``overrides``) on ``device`` and on the CPU, the
    export, the cross-device eval; a check that does not hold goes to ``failed`` (b still runs
    and measures)."""
    runs, seconds = {}, {}
    for where in dict.fromkeys((device, "cpu")):
        use(where)
        runs[where] = work / f"tiny-{where}"
        seconds[where] = run_stage("pipeline", "tiny", runs[where], list(overrides))["seconds"]
    found = {
        "seconds": seconds,
        "bleu_gap_vs_cpu": compare(table(runs[device]), table(runs["cpu"]), "tiny", failed),
    }
    use(device)
    run, out = runs[device], work / "tiny-export"
    export(run, "attentionless", out)
    exported, tok = from_pretrained(out, device=device)
    spliced, _, _ = load_variant(run, VARIANTS["attentionless"], "attentionless", device=device)
    pairs, _ = encode_pairs(load_pairs(teacher_data(run), "test"), tok, exported.cfg.max_len)
    batch = collate(pairs[:64], list(range(min(64, len(pairs))))).to(device)
    with torch.no_grad():
        gap = (exported(batch.src, batch.tgt_in) - spliced(batch.src, batch.tgt_in)).abs().max()
    found["export_vs_in_memory_max_abs_logit_diff"] = gap.item()
    if gap.item() > 1e-5:
        failed.append(f"tiny: the export's logits differ from the in-memory model's by {gap}")
    use("cpu")  # the run dir the device wrote, evaluated on the CPU
    _, cfg = load_recipe_config("evaluate", "tiny", [f"run_dir={run}", "device=cpu"])
    rows = {(r["variant"], r["stage"]): r for r in evaluate_run(cfg)["rows"]}
    found["bleu_gap_evaluated_on_cpu"] = compare(rows, table(run), "evaluated on cpu", failed)
    return found


def paper(work: Path, scale: float) -> dict:
    """(b): the paper-sized pipeline on the GPU, measured stage by stage."""
    use("cuda")
    run = work / "paper"
    overrides = {stage: [scaled(o, scale) for o in found] for stage, found in PAPER.items()}
    stages = {s: run_stage(s, "paper", run, overrides[s]) for s in STAGES}
    model, tok = load_teacher(run)
    data = teacher_data(run)
    train, _ = encode_pairs(load_pairs(data, "train"), tok, model.cfg.max_len)
    _, tcfg = load_recipe_config("teacher", "paper", [f"run_dir={run}", *overrides["teacher"]])
    teacher_batches = token_batches(train, tcfg.data.batch_tokens, shuffle=True, seed=0)
    _, fcfg = load_recipe_config("finetune", "paper", [f"run_dir={run}", *overrides["finetune"]])
    tune = token_batches(spread(train, fcfg.max_sentences), fcfg.batch_tokens, shuffle=True)
    _, scfg = load_recipe_config("students", "paper", [f"run_dir={run}", *overrides["students"]])
    plan = epoch_plan(Recording(run / "record" / "train").shard_sizes, scfg.batch_size, 0, 0)
    per_step = {
        "teacher": sum(b.ntokens for b in teacher_batches) / len(teacher_batches),
        "students": sum(b - a for _, a, b in plan) / len(plan),
        "finetune": sum(len(b) for b in tune) / len(tune),
    }

    def rate(path: Path, unit: float) -> float | None:
        """steps/s of a stage's last logged step (since its start: validations and checkpoints
        included) times the work of a step; None if no step was logged."""
        logged = [json.loads(x) for x in path.read_text().splitlines() if "steps_per_s" in x]
        return round(logged[-1]["steps_per_s"] * unit, 1) if logged else None

    recorded = sum(
        read_json(run / "record" / s / "manifest.json")["sentences"] for s in ("train", "valid")
    )
    rows = read_json(run / "eval" / "results.json")["rows"]
    return {
        "stages": stages,
        "overrides": overrides,
        "teacher_tokens_per_s": rate(run / "teacher" / "metrics.jsonl", per_step["teacher"]),
        "record_sentences_per_s": round(recorded / stages["record"]["seconds"], 1),
        "students_samples_per_s": {
            mode: rate(run / "students" / mode / "metrics.jsonl", per_step["students"])
            for mode in scfg.modes
        },
        "finetune_sentences_per_s": {
            v: rate(run / "finetune" / v / "metrics.jsonl", per_step["finetune"])
            for v in fcfg.variants
        },
        "decode_sentences_per_s": {
            f"{r['variant']} {r['stage']}".strip(): r["sentences_per_s"] for r in rows
        },
        "peak_gpu_mib": max(s.get("peak_gpu_mib", 0) for s in stages.values()),
        "results_md": (run / "eval" / "results.md").read_text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="work dir; gpu_check.json is written here")
    parser.add_argument("--cpu", action="store_true", help="(a) only, the CPU as the device")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scales (b)'s steps")
    parser.add_argument(
        "--tiny",
        nargs="*",
        default=[],
        help="overrides of (a)'s tiny pipeline (the test suite runs fewer modes on the CPU)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    progress.QUIET = True
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: torch.cuda.is_available() is False (use --cpu)")
    out = Path(args.out)
    if not args.cpu and (out / "paper").exists():  # its finished stages would be skipped
        raise SystemExit(f"{out / 'paper'} exists: remove it or use another work dir")
    started = time.perf_counter()
    device, failed = "cpu" if args.cpu else "cuda", []
    found = {
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tiny": tiny(out, device, failed, args.tiny),
    }
    print(f"(a) tiny, {found['device']}: {json.dumps(found['tiny'])}", flush=True)
    if not args.cpu:
        found["paper"] = paper(out, args.steps_scale)
        summary = {k: v for k, v in found["paper"].items() if k not in ("results_md", "overrides")}
        print(f"(b) paper-sized: {json.dumps(summary)}\n{found['paper']['results_md']}", flush=True)
    found["seconds"] = round(time.perf_counter() - started, 1)
    found["failed"] = failed
    atomic_write_json(out / "gpu_check.json", found)
    if failed:
        raise SystemExit(f"{len(failed)} check(s) failed: {'; '.join(failed)}")
    print(f"gpu_check: OK in {found['seconds']} s; {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
