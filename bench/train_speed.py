"""Student and end-to-end (finetune) training steps before and after the fast paths, side by side.

    python bench/train_speed.py                          # the demo's shapes, 2 threads
    python bench/train_speed.py --modes alr,cross_pw --rounds 5 --json out.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python bench/train_speed.py                      # the AVX2 kernels on any x86 CPU

Students (one Adam step over every site of a mode, the demo's size per mode, batch 64 from an
fp16 recording): torch's default Adam (on CPU a loop over the parameters, the code before) vs its
fused kernel, both fp32, and bf16 autocast with the fused kernel.
Finetune (attentionless_pw spliced, every weight trained, batches of 2000 tokens): the old loss
(logits at every padded position, autograd's log-softmax + KL) with the default Adam vs the new one
(logits at real tokens only, distill.losses.distill_kl) with fused Adam; then bf16.
bf16 arms run only where the CPU computes bf16 natively (emulated bf16 on AVX2 kernels is ~30x
slower than fp32; `--force-bf16` runs them anyway). Arms alternate within each round; the median
of the rounds is reported. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.data import token_batches
from distill.hardware import describe_cpu, native_bf16
from distill.losses import distill_kl, mode_loss, output_at_real_tokens, student_key
from distill.model import PAD_ID, PRESETS, ModelConfig, Seq2SeqTransformer
from distill.modes import VARIANTS, mode_sites, recorded_sites
from distill.record import DiskBatches, Recording, record
from distill.students import build_student, splice

# the demo's student sizes (recipes/configs/students/demo.yaml); residual where the demo has it
DEMO_STUDENTS = {
    "alr": ("m", False),
    "alrr": ("m", True),
    "aslr": ("xs", False),
    "elr": ("l", True),
    "dec_self": ("m", False),
    "cross": ("m", False),
    "cross_pw": ("m", False),
}
ARMS = {  # name: (precision, fused Adam)
    "before: fp32, default Adam": ("fp32", False),
    "fp32, fused Adam": ("fp32", True),
    "bf16 autocast, fused Adam": ("bf16", True),
}


def fake_examples(n: int, cfg: ModelConfig, seed: int = 0):
    """Random sentences with ragged lengths (5..max_len-1 tokens), EOS-terminated sources."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ls, lt = torch.randint(5, cfg.max_len, (2,), generator=g).tolist()
        src = torch.randint(4, cfg.vocab_size, (ls - 1,), generator=g).tolist() + [3]
        out.append((src, torch.randint(4, cfg.vocab_size, (lt - 1,), generator=g).tolist()))
    return out


def timed(step, batches, precision: str, steps: int) -> float:
    """Seconds per step over ``steps`` steps, after one untimed warm-up step."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        step(batches[0])
        t0 = time.perf_counter()
        for i in range(steps):
            step(batches[(i + 1) % len(batches)])
    return (time.perf_counter() - t0) / steps


def train_step(module, loss_fn, fused: bool):
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], 1e-4, fused=fused)

    def step(batch):
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_students(cfg, rec, modes, steps, rounds, bf16: bool) -> dict:
    arms = {a: v for a, v in ARMS.items() if bf16 or v[0] != "bf16"}
    out = {}
    for mode in modes:
        size, residual = DEMO_STUDENTS[mode]
        sites = mode_sites(mode, cfg)
        batches = DiskBatches(rec, sites, 64, seed=0, epoch=0)
        data = [batches[i] for i in range(len(batches))]
        times: dict[str, list[float]] = {a: [] for a in arms}
        for _ in range(rounds):
            for arm, (precision, fused) in arms.items():
                torch.manual_seed(0)
                students = torch.nn.ModuleDict(
                    {
                        student_key(s): build_student(mode, cfg, size, residual=residual)
                        for s in sites
                    }
                )
                step = train_step(students, partial(mode_loss, students, sites), fused)
                times[arm].append(timed(step, data, precision, steps))
        out[mode] = {a: round(64 / statistics.median(t), 1) for a, t in times.items()}
        print(mode, size, out[mode], flush=True)
    return out


def old_finetune_loss(model, teacher, batch):
    """The loss before the fast path: logits at every position, autograd's KL."""
    with torch.no_grad():
        t_logits = teacher(batch.src, batch.tgt_in)
    logits = model(batch.src, batch.tgt_in)
    mask = batch.tgt_out != PAD_ID
    logq, logp = F.log_softmax(logits.float(), -1), F.log_softmax(t_logits.float(), -1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum()


def new_finetune_loss(model, teacher, batch):
    with torch.no_grad():
        t_logits, _ = output_at_real_tokens(teacher, batch)
    logits, _ = output_at_real_tokens(model, batch)
    return distill_kl(logits, t_logits, 1.0)


def bench_finetune(cfg, examples, steps, rounds, bf16: bool) -> dict:
    teacher = Seq2SeqTransformer(cfg).eval().requires_grad_(False)
    batches = token_batches(examples, 2000, shuffle=True)
    arms = {
        "before: padded logits, autograd KL, default Adam": (old_finetune_loss, "fp32", False),
        "real-token logits, fused KL, fused Adam": (new_finetune_loss, "fp32", True),
        "same, bf16 autocast": (new_finetune_loss, "bf16", True),
    }
    arms = {a: v for a, v in arms.items() if bf16 or v[1] != "bf16"}
    times: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(rounds):
        for arm, (loss, precision, fused) in arms.items():
            torch.manual_seed(0)
            model = Seq2SeqTransformer(cfg).train()
            model.load_state_dict(teacher.state_dict())
            sites = {
                s: build_student(m, cfg, DEMO_STUDENTS[m][0])
                for m in VARIANTS["attentionless_pw"]
                for s in mode_sites(m, cfg)
            }
            splice(model, sites)
            step = train_step(model, partial(loss, model, teacher), fused)
            times[arm].append(timed(step, batches, precision, steps))
    sentences = statistics.mean(b.src.size(0) for b in batches)
    out = {a: round(sentences / statistics.median(t), 1) for a, t in times.items()}
    print("finetune attentionless_pw", out, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default=",".join(DEMO_STUDENTS))
    p.add_argument("--steps", type=int, default=10, help="timed steps per arm and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--force-bf16", action="store_true", help="bf16 arms without native bf16 too")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(**{**PRESETS["demo"], "vocab_size": 8000})
    bf16 = native_bf16() or args.force_bf16
    print(describe_cpu(), f"| native bf16: {native_bf16()}", flush=True)
    modes = [m for m in args.modes.split(",") if m]
    examples = fake_examples(640, cfg)
    result = {"cpu": describe_cpu(), "threads": args.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        model = Seq2SeqTransformer(cfg).eval()
        sites = recorded_sites(modes, cfg)
        record(model, examples, sites, Path(tmp), shard_size=640, dtype="fp16", progress=False)
        result["students_samples_per_s"] = bench_students(
            cfg, Recording(Path(tmp)), modes, args.steps, args.rounds, bf16
        )
    if not args.skip_finetune:
        result["finetune_sentences_per_s"] = bench_finetune(
            cfg, examples, args.steps, args.rounds, bf16
        )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
