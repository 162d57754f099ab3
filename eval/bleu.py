"""Score a file of translations against a file of references (one sentence per line).

    python -m distill_eval.bleu HYPOTHESES REFERENCES     # prints BLEU, chrF and their signatures

The same sacreBLEU settings (13a, cased, detokenized) as every table this project writes; the
scoring itself is the library's (``distill.bleu``), so this folder imports the library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill.bleu import score


def read_lines(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("hypotheses")
    p.add_argument("references")
    args = p.parse_args(argv)
    try:
        hyps, refs = read_lines(args.hypotheses), read_lines(args.references)
    except (OSError, UnicodeDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(hyps) != len(refs):
        print(
            f"error: {args.hypotheses} has {len(hyps)} lines, {args.references} {len(refs)}",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(score(hyps, refs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
