"""Decoding speed of the teacher and every variant of a run dir, side by side in one run.

    python bench/decode_speed.py --run-dir runs/demo                 # 2 threads, the test sources
    python bench/decode_speed.py --run-dir runs/demo --quick         # fewer sentences
    python bench/decode_speed.py --run-dir runs/demo --json out.json
    python bench/decode_speed.py --run-dir runs/demo --variants attentionless_pw+keep1  # hybrids

For each variant (alr, aslr, elr, dec_self, dec_self_pp, cross, cross_pw, attentionless,
attentionless_pw, the hybrids named by ``--variants``, and the tuned rows the finetune stage
wrote): greedy and beam 4 at batch 64
(sentences/s) and at batch 1 (ms per sentence, and ms per generated token: variants translate
to different lengths), with the per-site cache, and the same greedy at batch 64 with the cache
off (``use_cache=False``: every step re-runs the decoder over the prefix, which is how spliced
decoder students decoded before the per-site cache). A mode whose students the run has not
trained (e.g. dec_self_pp) is timed with freshly initialised students of the run's size:
speed does not depend on the weights; the table marks them. Ratios to the teacher come last,
then where one greedy step's time goes (per sublayer kind) for the teacher and the
attentionless variants.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from distill.data import _pad, encode_pairs, load_pairs
from distill.decode import beam_search, greedy
from distill.model import EOS_ID, PAD_ID, AttentionCore, ModelConfig
from distill.modes import VARIANTS, mode_sites, resolve_variants
from distill.runs import load_teacher, load_variant, students_dir, teacher_data, tuned_spec
from distill.students import build_student, splice

ORDER = [v for v in VARIANTS if v != "alrr"]  # alrr: the shape and cost of alr


def sources(run_dir: str, tok, max_len: int, n: int) -> list[list[int]]:
    """Source ids (with EOS) of the first ``n`` length-filtered test pairs."""
    examples, _ = encode_pairs(load_pairs(teacher_data(run_dir), "test"), tok, max_len)
    return [src for src, _ in examples[:n]]


def batches(srcs: list[list[int]], size: int) -> list[torch.Tensor]:
    return [_pad(srcs[i : i + size]) for i in range(0, len(srcs), size)]


def fresh_variant(run_dir: str, mode: str, size: str):
    """The teacher with untrained students of ``mode`` (for speed only)."""
    model, _ = load_teacher(run_dir)
    torch.manual_seed(0)
    splice(
        model, {s: build_student(mode, model.cfg, size).eval() for s in mode_sites(mode, model.cfg)}
    )
    return model.eval()


def variants(
    run_dir: str, size: str, names: list[str], cfg: ModelConfig
) -> list[tuple[str, torch.nn.Module]]:
    trained = {p.parent.name for p in students_dir(run_dir).glob("*/spec.json")}
    out = []
    for variant in resolve_variants(names, cfg, "--variants"):
        name, modes, kept = variant.name, variant.modes, variant.kept
        if set(modes) <= trained:
            out.append((name, load_variant(run_dir, modes, kept=kept)[0]))
            if modes and tuned_spec(run_dir, name):
                out.append((f"{name} (tuned)", load_variant(run_dir, modes, name, kept)[0]))
        elif len(modes) == 1:
            out.append((f"{name} (untrained)", fresh_variant(run_dir, modes[0], size)))
    return out


def timed(fn, reps: int = 1) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(model, big: list[torch.Tensor], single: list[torch.Tensor], reps: int) -> dict:
    n_big = sum(b.size(0) for b in big)

    def run(fn, bs):
        return lambda: [fn(b) for b in bs]

    with torch.no_grad():
        # Variants decode to different lengths: per generated token (EOS included) too.
        steps = sum(len(greedy(model, b)[0]) + 1 for b in single)
        out = {
            "greedy_64_sent_s": n_big / timed(run(lambda b: greedy(model, b), big), reps),
            "greedy_64_nocache_sent_s": n_big
            / timed(run(lambda b: greedy(model, b, use_cache=False), big), 1),
            "beam4_64_sent_s": n_big / timed(run(lambda b: beam_search(model, b, 4), big), reps),
            "greedy_1_ms": 1e3 * timed(run(lambda b: greedy(model, b), single), reps) / len(single),
            "beam4_1_ms": 1e3
            * timed(run(lambda b: beam_search(model, b, 4), single), reps)
            / len(single),
        }
        out["greedy_1_ms_token"] = out["greedy_1_ms"] * len(single) / steps
    return {k: round(v, 2) for k, v in out.items()}


def step_profile(model, big: list[torch.Tensor]) -> dict[str, float]:
    """Share of one greedy decode's time per decoder sublayer kind (+ encoder, generator)."""
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []

    def kind_of(layer_part, name):
        if name == "ff_sublayer":
            return "ffn"
        student = not isinstance(layer_part.attn, AttentionCore)
        what = "self-attn" if name == "self_attn_sublayer" else "cross-attn"
        return f"{what} ({'student' if student else 'teacher'})"

    def watch(module, kind):
        handles.append(
            module.register_forward_pre_hook(
                lambda m, a: starts.__setitem__(id(m), time.perf_counter())
            )
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o: spent.__setitem__(
                    kind, spent[kind] + time.perf_counter() - starts[id(m)]
                )
            )
        )

    for layer in model.decoder:
        for name in ("self_attn_sublayer", "cross_attn_sublayer", "ff_sublayer"):
            watch(getattr(layer, name), kind_of(getattr(layer, name), name))
    watch(model.generator, "generator")
    for layer in model.encoder:
        watch(layer, "encoder")
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in big:
            greedy(model, b)
    total = time.perf_counter() - t0
    for h in handles:
        h.remove()
    spent["other (embed, norms, search)"] = total - sum(spent.values())
    return {k: round(100 * v / total, 1) for k, v in spent.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sentences", type=int, default=256, help="batch-64 sentences")
    p.add_argument("--single", type=int, default=32, help="batch-1 sentences")
    p.add_argument("--reps", type=int, default=2, help="best of N timings")
    p.add_argument("--size", default="m", help="size of untrained stand-in students")
    p.add_argument("--quick", action="store_true", help="64 + 8 sentences, one repetition")
    p.add_argument("--json", default="")
    p.add_argument("--variants", default="", help="more variants to time, e.g. hybrids (a,b,...)")
    args = p.parse_args()
    if args.quick:
        args.sentences, args.single, args.reps = 64, 8, 1
    torch.set_num_threads(args.threads)
    teacher, tok = load_teacher(args.run_dir)
    srcs = sources(args.run_dir, tok, teacher.cfg.max_len, max(args.sentences, args.single))
    big, single = batches(srcs[: args.sentences], 64), batches(srcs[: args.single], 1)
    assert all(int(b[0, (b[0] != PAD_ID).sum() - 1]) == EOS_ID for b in single)
    rows = {}
    extra = [v for v in args.variants.split(",") if v]
    models = variants(args.run_dir, args.size, ORDER + extra, teacher.cfg)
    for name, model in models:
        rows[name] = measure(model, big, single, args.reps)
        print(name, rows[name], flush=True)
    profiled = ("teacher", "attentionless", "attentionless_pw")
    profiles = {n: step_profile(m, big) for n, m in models if n in profiled}
    base = rows["teacher"]
    print(
        f"\n{args.sentences} test sentences at batch 64, {args.single} at batch 1, "
        f"{args.threads} threads, best of {args.reps}"
    )
    print(
        "| variant | greedy b64 sent/s | no cache | beam4 b64 sent/s | greedy b1 ms | b1 ms/token "
        "| beam4 b1 ms | greedy b64 / teacher | cache speed-up | beam4 b64 / teacher "
        "| greedy b1 teacher / this | per token |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['greedy_64_sent_s']:.1f} | {r['greedy_64_nocache_sent_s']:.1f} "
            f"| {r['beam4_64_sent_s']:.1f} | {r['greedy_1_ms']:.2f} | {r['greedy_1_ms_token']:.2f} "
            f"| {r['beam4_1_ms']:.2f} "
            f"| {r['greedy_64_sent_s'] / base['greedy_64_sent_s']:.2f} "
            f"| {r['greedy_64_sent_s'] / r['greedy_64_nocache_sent_s']:.1f}x "
            f"| {r['beam4_64_sent_s'] / base['beam4_64_sent_s']:.2f} "
            f"| {base['greedy_1_ms'] / r['greedy_1_ms']:.2f} "
            f"| {base['greedy_1_ms_token'] / r['greedy_1_ms_token']:.2f} |"
        )
    for name, prof in profiles.items():
        print(
            f"\nwhere greedy decoding time goes, {name}: "
            + ", ".join(f"{k} {v}%" for k, v in prof.items())
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "profiles": profiles}, indent=1))


if __name__ == "__main__":
    main()
