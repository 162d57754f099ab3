"""Score a run dir (its teacher, and every spliced variant it holds) with sacreBLEU and chrF.

    distill evaluate runs/demo                        # the demo test split, greedy
    distill evaluate runs/demo --source my.tsv --beam 4

Writes RUN_DIR/eval/results.json and results.md (for --source demo) or prints the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from distill.data import DataConfig, load_pairs
from distill.errors import ConfigError
from distill.runs import load_teacher
from eval.bleu import evaluate_model

log = logging.getLogger("recipes.evaluate")


@dataclass
class Config:
    run_dir: str = ""
    beam: int = 1
    batch_size: int = 64
    max_sentences: int = 0
    data: DataConfig = field(default_factory=DataConfig)


def source_pairs(source: str, pair: str, max_sentences: int = 0) -> list[tuple[str, str]]:
    """Test pairs of a named corpus, or of a TSV file."""
    if source in ("demo", "iwslt2017"):
        pairs = load_pairs(DataConfig(source=source, pair=pair), "test")
    elif Path(source).suffix in (".tsv", ".gz"):
        pairs = load_pairs(DataConfig(source="tsv", pair=pair, path=source), "test")
    else:
        raise ConfigError(f"--source must be demo, iwslt2017 or a .tsv file, got '{source}'")
    return pairs[:max_sentences] if max_sentences else pairs


def evaluate_path(path: str, source: str = "demo", beam: int = 1, pair: str = "de-en",
                  batch_size: int = 64, max_sentences: int = 0) -> dict:
    model, tok = load_teacher(path)
    pairs = source_pairs(source, pair, max_sentences)
    result, _ = evaluate_model(model, tok, pairs, beam=beam, batch_size=batch_size, progress=True)
    print(f"teacher  BLEU {result['bleu']:6.2f}  chrF {result['chrf']:6.2f}  "
          f"({result['n']} sentences, {result['truncated_sources']} truncated, "
          f"{result['sentences_per_s']} sent/s)  {result['bleu_signature']}")
    return result


def main(cfg: Config) -> dict:
    return evaluate_path(cfg.run_dir, cfg.data.source, cfg.beam, cfg.data.pair, cfg.batch_size,
                         cfg.max_sentences)
