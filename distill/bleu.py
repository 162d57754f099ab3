"""Corpus BLEU and chrF with sacreBLEU (13a, cased, detokenized), signatures recorded."""

from __future__ import annotations

import time
from typing import Any

from sacrebleu.metrics import BLEU, CHRF


def score(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """sacreBLEU corpus BLEU + chrF of detokenized ``hypotheses`` against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "n": len(references),
    }


def evaluate_model(
    model,
    tok,
    pairs: list[tuple[str, str]],
    beam: int = 1,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Translate the sources of ``pairs`` and score them; adds decoding speed and how many
    sources were too long for the model (``split_sources``: translated in parts, nothing
    dropped; ``distill.decode.translate_texts``)."""
    from distill.decode import translate_texts

    sources = [s for s, _ in pairs]
    started = time.perf_counter()
    hyps, n_long = translate_texts(
        model, tok, sources, beam=beam, batch_size=batch_size, progress=progress
    )
    elapsed = time.perf_counter() - started
    result = score(hyps, [t for _, t in pairs])
    result.update(
        beam=beam,
        sentences_per_s=round(len(pairs) / max(elapsed, 1e-9), 2),
        split_sources=n_long,
    )
    return result, hyps
