"""Training speed of our teacher vs transformers' MarianMTModel with the same dimensions.

    python bench/teacher_speed.py [--steps N] [--warmup N] [--threads 2] [--vocab 8000]
                                  [--batch-tokens 1500] [--rounds N] [--json PATH]
                                  [--precision fp32|bf16] [--compile-marian]
                                  [--blocks sas,sas_p]

One training step = forward + label-smoothed (0.1) cross-entropy + backward + Adam step: ours
as the teacher recipe trains (``distill.losses.teacher_loss``: the output layer at real tokens
only, the fused cross-entropy), Marian as transformers users train it (full logits, then
``F.cross_entropy``). ``--precision bf16`` runs both under bf16 autocast; ``--compile-marian``
adds Marian under ``torch.compile`` (inductor) as a third arm; ``--blocks sas,sas_p`` adds our
teacher with the simplified blocks (``ModelConfig.block``). All train on the same fixed list
of seeded synthetic batches (ragged lengths 5..50, sorted by length and cut under a padded-token
budget, padded with PAD_ID), with the same thread count and the same optimizer. Measurement is
interleaved, the order flipping each round (A B, B A, ...), so that
drift of the machine hits both models alike; warm-up steps are excluded. Reported: the median over
rounds of target (non-pad) tokens per second, and the per-step time split into forward + loss,
backward and optimizer step. The CPU (model, AVX-512 / bf16 / AMX, torch's kernels) is printed
first, the ratio last.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import MarianConfig, MarianMTModel

from distill.hardware import cpu_info, describe_cpu, native_bf16
from distill.losses import teacher_loss
from distill.model import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    PRESETS,
    ModelConfig,
    Seq2SeqTransformer,
)

MIN_LEN, SMOOTHING = 5, 0.1
PHASES = ("fwd", "bwd", "opt")


@dataclass
class Batch:
    src: torch.Tensor  # (B, S)
    tgt_in: torch.Tensor  # (B, T): BOS + target
    tgt_out: torch.Tensor  # (B, T): target + EOS
    ntokens: int  # non-pad target tokens


LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]  # (model, batch) -> scalar loss


def synthetic_batches(
    n: int, vocab: int, max_len: int, batch_tokens: int, seed: int
) -> list[Batch]:
    """``n`` batches sampled from a token-bucketed pool of random sentence pairs.

    Source lengths are uniform in [MIN_LEN, max_len]; a target is 0.8-1.25x its source, as in
    translation. Batches hold as many pairs as fit ``B * max(S, T) <= batch_tokens``.
    """
    rng = random.Random(seed)
    lengths = []
    for _ in range(n * batch_tokens // MIN_LEN):  # enough pairs for at least n buckets
        s = rng.randint(MIN_LEN, max_len)
        t = min(max(round(s * rng.uniform(0.8, 1.25)), MIN_LEN), max_len)
        lengths.append((s, t))
    lengths.sort(key=lambda st: (max(st), st))
    buckets, current, width = [], [], 0
    for s, t in lengths:
        if current and (len(current) + 1) * max(width, s, t) > batch_tokens:
            buckets.append(current)
            current, width = [], 0
        current.append((s, t))
        width = max(width, s, t)
    buckets.append(current)
    rng.shuffle(buckets)

    def ids(k: int) -> list[int]:
        return [rng.randint(EOS_ID + 1, vocab - 1) for _ in range(k)]

    batches = []
    for pairs in buckets[:n]:
        b, s_max, t_max = len(pairs), max(s for s, _ in pairs), max(t for _, t in pairs)
        src = torch.full((b, s_max), PAD_ID)
        tgt_in, tgt_out = torch.full((b, t_max), PAD_ID), torch.full((b, t_max), PAD_ID)
        for i, (s, t) in enumerate(pairs):
            words = ids(t - 1)
            src[i, :s] = torch.tensor(ids(s - 1) + [EOS_ID])
            tgt_in[i, :t] = torch.tensor([BOS_ID] + words)
            tgt_out[i, :t] = torch.tensor(words + [EOS_ID])
        batches.append(Batch(src, tgt_in, tgt_out, int((tgt_out != PAD_ID).sum())))
    return batches


def build_ours(vocab: int, block: str = "pre_ln") -> tuple[torch.nn.Module, LossFn]:
    """The teacher at the paper preset (layer layout ``block``) and the teacher recipe's loss."""
    model = Seq2SeqTransformer(ModelConfig(**PRESETS["paper"], vocab_size=vocab, block=block))
    return model, lambda m, b: teacher_loss(m, b, SMOOTHING)


def build_marian(vocab: int) -> tuple[torch.nn.Module, LossFn]:
    """MarianMTModel with the paper preset's dimensions, dropouts and special ids."""
    p = PRESETS["paper"]
    cfg = MarianConfig(
        vocab_size=vocab,
        decoder_vocab_size=vocab,
        d_model=p["d_model"],
        encoder_layers=p["n_enc"],
        decoder_layers=p["n_dec"],
        encoder_attention_heads=p["n_heads"],
        decoder_attention_heads=p["n_heads"],
        encoder_ffn_dim=p["d_ff"],
        decoder_ffn_dim=p["d_ff"],
        activation_function="relu",
        # Ours drops out attention weights and the FFN hidden layer too, at the same rate.
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.1,
        max_position_embeddings=p["max_len"],
        scale_embedding=True,  # ours scales by sqrt(D)
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        forced_eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID,
        share_encoder_decoder_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )
    model = MarianMTModel(cfg)

    def loss(m: torch.nn.Module, b: Batch) -> torch.Tensor:
        logits = m(
            input_ids=b.src,
            attention_mask=b.src != PAD_ID,
            decoder_input_ids=b.tgt_in,
            decoder_attention_mask=b.tgt_in != PAD_ID,
            use_cache=False,
        ).logits  # (B, T, V)
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            b.tgt_out.flatten(),
            ignore_index=PAD_ID,
            label_smoothing=SMOOTHING,
        )

    return model, loss


def build_marian_compiled(vocab: int) -> tuple[torch.nn.Module, LossFn]:
    """Marian under ``torch.compile`` (inductor; dynamic shapes: every batch has its own)."""
    model, loss = build_marian(vocab)
    return model, torch.compile(loss, dynamic=True)


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def run_steps(model, loss_fn, optimizer, batches: list[Batch], bf16: bool) -> dict[str, float]:
    """Train on ``batches``; returns seconds per phase, CPU seconds and the target tokens seen."""
    spent = dict.fromkeys(PHASES, 0.0)
    cpu = time.process_time()
    for b in batches:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, b)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        for name, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
            spent[name] += dt
    return {**spent, "cpu": time.process_time() - cpu, "tokens": sum(b.ntokens for b in batches)}


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    batches = synthetic_batches(
        args.steps, args.vocab, PRESETS["paper"]["max_len"], args.batch_tokens, args.seed
    )
    bf16 = args.precision == "bf16"
    print(f"CPU: {describe_cpu()}; native bf16: {native_bf16()}; precision {args.precision}")
    arms = [("ours", build_ours), ("marian", build_marian)]
    if args.compile_marian:
        arms.append(("marian+compile", build_marian_compiled))
    for block in filter(None, args.blocks.split(",")):
        arms.append((f"ours-{block}", lambda vocab, block=block: build_ours(vocab, block)))
    models = {}
    for name, build in arms:
        torch.manual_seed(args.seed)
        model, loss_fn = build(args.vocab)
        model.train()
        opt = torch.optim.Adam(trainable(model), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        warm = [batches[i % len(batches)] for i in range(args.warmup)]
        started = time.perf_counter()
        run_steps(model, loss_fn, opt, warm, bf16)
        print(f"{name}: {args.warmup} warm-up steps in {time.perf_counter() - started:.1f} s")
        models[name] = (model, loss_fn, opt)

    rounds: dict[str, list[dict]] = {name: [] for name in models}
    order = list(models)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            rounds[name].append(run_steps(*models[name], batches, bf16))

    results = {}
    for name, runs in rounds.items():
        walls = [sum(run[p] for p in PHASES) for run in runs]
        rates = [run["tokens"] / wall for run, wall in zip(runs, walls)]
        results[name] = {
            "params": sum(p.numel() for p in trainable(models[name][0])),
            "tokens_per_s": statistics.median(rates),
            "tokens_per_s_min": min(rates),
            "tokens_per_s_max": max(rates),
            # Busy cores; well under --threads means another process took the CPU meanwhile.
            "cores_busy": statistics.median(run["cpu"] / wall for run, wall in zip(runs, walls)),
            **{
                f"{p}_ms": 1e3 * statistics.median(run[p] for run in runs) / args.steps
                for p in PHASES
            },
        }
    ratio = results["ours"]["tokens_per_s"] / results["marian"]["tokens_per_s"]
    ratios = {
        name: results["ours"]["tokens_per_s"] / res["tokens_per_s"]
        for name, res in results.items()
        if name != "ours"
    }

    tokens = sum(b.ntokens for b in batches)
    attn = models["marian"][0].config._attn_implementation
    print(
        f"{args.steps} steps x {args.rounds} rounds per model, {tokens / args.steps:.0f} target "
        f"tokens/step, {args.threads} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Marian attention '{attn}'"
    )
    print(
        f"{'model':<16}{'params':>11}{'tokens/s':>10}{'(min-max)':>15}"
        f"{'fwd+loss ms':>13}{'bwd ms':>8}{'opt ms':>8}{'cores':>7}"
    )
    for name, res in results.items():
        spread = f"{res['tokens_per_s_min']:.0f}-{res['tokens_per_s_max']:.0f}"
        print(
            f"{name:<16}{res['params']:>11,}{res['tokens_per_s']:>10.0f}{spread:>15}"
            f"{res['fwd_ms']:>13.1f}{res['bwd_ms']:>8.1f}{res['opt_ms']:>8.1f}"
            f"{res['cores_busy']:>7.2f}"
        )
    for name, value in ratios.items():
        if not name.startswith("ours-"):
            print(f"ours / {name} (tokens/s, {args.precision}, {describe_cpu()}): {value:.2f}x")
    for name, value in ratios.items():
        if name.startswith("ours-"):
            print(f"{name} / ours (pre_ln) tokens/s: {1 / value:.2f}x")

    report = {
        "args": vars(args),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "marian_attention": attn,
        "cpu": cpu_info(),
        "native_bf16": native_bf16(),
        "results": results,
        "ratio": ratio,
        "ratios": ratios,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="measured steps per model per round")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per model")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured steps per model first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch-tokens", type=int, default=1500, help="padded tokens per batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--compile-marian", action="store_true", help="add Marian + torch.compile")
    ap.add_argument("--blocks", default="", help="also ours with these blocks, e.g. sas,sas_p")
    args = ap.parse_args()
    for name in ("steps", "rounds", "threads", "batch_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.vocab <= EOS_ID + 1:
        ap.error(f"--vocab must be > {EOS_ID + 1}")
    if args.batch_tokens < PRESETS["paper"]["max_len"]:
        ap.error(f"--batch-tokens must be >= max_len ({PRESETS['paper']['max_len']})")
    return args


if __name__ == "__main__":
    main(parse_args())
