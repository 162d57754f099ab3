"""Distillation costs side by side in one run: recording, disk, student training, decoding.

    python bench/distill_speed.py --threads 2                 # paper-sized teacher (random weights)
    python bench/distill_speed.py --threads 2 --preset demo --json out.json

Reports:
  * recording sentences/s and bytes per token, fp16 vs fp32 (all sites of the six modes);
  * the projected disk for full IWSLT2017 de-en at paper settings (206,112 train pairs; the mean
    source/target lengths are taken from --mean-src/--mean-tgt, defaults from our BPE on the
    demo corpus);
  * student training samples/s per mode (size --size, batch --batch);
  * decoding sentences/s with decoder self-attention replaced by the one-pass causal student vs
    the paper's per-position student (max_len passes), same sentences, same greedy decoder.
Weights are random: speed does not depend on them, and no download is needed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from distill.decode import greedy
from distill.losses import mode_loss
from distill.model import EOS_ID, PRESETS, ModelConfig, Seq2SeqTransformer
from distill.modes import DEFAULT_MODES, mode_sites, recorded_sites
from distill.record import DiskBatches, Recording, record
from distill.students import build_student, splice

IWSLT_TRAIN_PAIRS = 206_112
ENCODER_AND_DECODER_MODES = DEFAULT_MODES


def fake_examples(n: int, cfg: ModelConfig, seed: int = 0):
    """Random sentences with realistic ragged lengths (5..max_len-1 tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ls, lt = torch.randint(5, cfg.max_len, (2,), generator=g).tolist()
        src = torch.randint(4, cfg.vocab_size, (ls - 1,), generator=g).tolist() + [EOS_ID]
        out.append((src, torch.randint(4, cfg.vocab_size, (lt - 1,), generator=g).tolist()))
    return out


def bench_recording(model, examples, sites, root: Path) -> dict:
    out = {}
    tokens = sum(len(s) + len(t) + 1 for s, t in examples)
    for dtype in ("fp32", "fp16"):
        t0 = time.perf_counter()
        manifest = record(
            model,
            examples,
            sites,
            root / dtype,
            shard_size=500,
            dtype=dtype,
            batch_size=100,
            progress=False,
        )
        dt = time.perf_counter() - t0
        out[dtype] = {
            "sentences_per_s": round(len(examples) / dt, 1),
            "bytes_per_token": round(manifest["bytes"] / tokens, 1),
            "bytes": manifest["bytes"],
        }
    return out


def bench_students(cfg, rec: Recording, size: str, batch: int, steps: int) -> dict:
    out = {}
    for mode in ENCODER_AND_DECODER_MODES:
        sites = mode_sites(mode, cfg)
        torch.manual_seed(0)
        students = torch.nn.ModuleDict(
            {s.replace(".", "/"): build_student(mode, cfg, size) for s in sites}
        )
        opt = torch.optim.Adam(students.parameters(), lr=1e-4)
        batches = DiskBatches(rec, sites, batch, seed=0, epoch=0)
        data = [batches[i % len(batches)] for i in range(steps + 1)]
        seen, t0 = 0, None
        for i, b in enumerate(data):
            if i == 1:  # the first step pays one-off allocation costs
                t0, seen = time.perf_counter(), 0
            loss = mode_loss(students, sites, b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += b["src_mask"].size(0)
        out[mode] = {
            "samples_per_s": round(seen / (time.perf_counter() - t0), 1),
            "sites": len(sites),
        }
    return out


def bench_decoding(cfg, examples, n: int, size: str) -> dict:
    from distill.data import collate

    batch = collate(examples[:n], list(range(n)))
    out = {}
    for mode in ("dec_self", "dec_self_pp"):
        torch.manual_seed(0)
        model = Seq2SeqTransformer(cfg).eval()
        splice(model, {s: build_student(mode, cfg, size).eval() for s in mode_sites(mode, cfg)})
        t0 = time.perf_counter()
        # Random weights rarely emit EOS: every sentence decodes to max_len, the worst case.
        greedy(model, batch.src)
        out[mode] = {"sentences_per_s": round(n / (time.perf_counter() - t0), 2)}
    out["one_pass_speedup"] = round(
        out["dec_self"]["sentences_per_s"] / out["dec_self_pp"]["sentences_per_s"], 1
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=list(PRESETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--size", default="m")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--decode-sentences", type=int, default=32)
    p.add_argument("--mean-src", type=float, default=27.0)
    p.add_argument("--mean-tgt", type=float, default=25.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(**{**PRESETS[args.preset], "vocab_size": 8000, "dropout": 0.0})
    torch.manual_seed(0)
    model = Seq2SeqTransformer(cfg).eval()
    examples = fake_examples(args.sentences, cfg)
    sites = recorded_sites(ENCODER_AND_DECODER_MODES, cfg)
    result = {
        "preset": args.preset,
        "threads": args.threads,
        "sites": len(sites),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["recording"] = bench_recording(model, examples, sites, Path(tmp))
        iwslt_tokens = IWSLT_TRAIN_PAIRS * (args.mean_src + args.mean_tgt + 1)
        result["iwslt2017_de_en_projection_gb"] = {
            d: round(iwslt_tokens * result["recording"][d]["bytes_per_token"] / 1e9, 1)
            for d in ("fp16", "fp32")
        }
        rec = Recording(Path(tmp) / "fp32")
        result["students"] = bench_students(cfg, rec, args.size, args.batch, args.steps)
    result["decoding"] = bench_decoding(cfg, examples, args.decode_sentences, args.size)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
