"""The Hub's three-line usage of an export vs `distill translate`, on a whole test split.

    python bench/hub_usage.py --export exports/demo-attentionless_pw            # greedy, beam 4
    python bench/hub_usage.py --run-dir runs/demo --variant attentionless_pw \\
        --export exports/demo-attentionless_pw --sentences 500                 # export first

For every source of the run's test split (all pairs, long sources split into parts by `generate`
as `distill translate` splits them): AutoTokenizer + AutoModelForSeq2SeqLM.generate +
batch_decode, and distill's own `translate`, in batches of the same size; prints how many outputs
differ (the target: none) and the time each took.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--export", required=True, help="an export dir (made from --run-dir if absent)")
    p.add_argument("--run-dir", default="", help="the run to export from, and whose test split")
    p.add_argument("--variant", default="attentionless_pw")
    p.add_argument("--beams", default="1,4")
    p.add_argument("--sentences", type=int, default=0, help="0 = every pair of the test split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import distill
    from distill.data import DataConfig, load_pairs, spread
    from distill.export import export

    torch.set_num_threads(args.threads)
    out = Path(args.export)
    if not out.exists():
        if not args.run_dir:
            raise SystemExit(f"{out}: not found (give --run-dir to export it first)")
        export(args.run_dir, args.variant, out)
    model, _ = distill.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    data = DataConfig(**config["data"]) if config["data"]["source"] == "demo" else None
    if data is None:
        raise SystemExit("this benchmark reads the demo corpus's test split")
    sources = spread([s for s, _ in load_pairs(data, "test")], args.sentences)
    sources = [s for s in sources if s.strip()]  # empty lines: distill gives "" without decoding
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    hf = AutoModelForSeq2SeqLM.from_pretrained(str(out), trust_remote_code=True).eval()
    print(f"{out}: {len(sources)} test sources, batch {args.batch_size}, {args.threads} threads")
    for beam in (int(b) for b in args.beams.split(",")):
        t0 = time.perf_counter()
        ours = model.translate(sources, beam=beam, batch_size=args.batch_size)
        t1 = time.perf_counter()
        theirs = []
        with torch.no_grad():
            for i in range(0, len(sources), args.batch_size):
                chunk = sources[i : i + args.batch_size]
                batch = tok(chunk, return_tensors="pt", padding=True, truncation=True)
                out_ids = hf.generate(**batch, num_beams=beam)
                theirs += tok.batch_decode(out_ids, skip_special_tokens=True)
        t2 = time.perf_counter()
        differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        print(
            f"beam {beam}: {len(differ)} of {len(sources)} outputs differ; distill translate "
            f"{t1 - t0:.1f} s, AutoTokenizer + generate + batch_decode {t2 - t1:.1f} s"
        )
        for i in differ[:3]:
            print(f"  {sources[i]!r}\n    distill: {ours[i]!r}\n    hub:     {theirs[i]!r}")


if __name__ == "__main__":
    main()
