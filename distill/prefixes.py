"""Sequence-level distillation targets: the teacher's own decodes (Kim & Rush 2016), greedy or
by beam search (their setting: beam search over the training sources).

Teacher-forced on reference targets, a decoder site sees prefixes of human translations; at
inference it sees prefixes of its own output. Replacing each target by the teacher's greedy
decode of the source makes the recorded (or online) activations those of the prefixes students
will actually meet.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from distill.checkpoint import atomic_write_json, read_json
from distill.data import Example, sentence_batches, unsort
from distill.decode import beam_search, greedy
from distill.model import Seq2SeqTransformer

log = logging.getLogger(__name__)

TARGETS = ("reference", "teacher")  # what the decoder is teacher-forced on


def _sources_hash(examples: Sequence[Example]) -> str:
    return hashlib.sha256(json.dumps([list(s) for s, _ in examples]).encode()).hexdigest()


def _cached(cache: Path | None, n: int, digest: str) -> list[list[int]] | None:
    """The cached decodes when ``cache`` was written for exactly these sources, else None."""
    if cache is None or not cache.is_file():
        return None
    found = read_json(cache)
    if (
        isinstance(found, dict)
        and found.get("sentences") == n
        and found.get("sources_sha256") == digest
        and isinstance(found.get("decodes"), list)
        and len(found["decodes"]) == n
    ):
        log.info("teacher targets from %s", cache)
        return found["decodes"]
    log.info("%s holds decodes of other sources: decoding again", cache)
    return None


@torch.no_grad()
def teacher_targets(
    model: Seq2SeqTransformer,
    examples: Sequence[Example],
    *,
    batch_size: int = 200,
    cache: Path | None = None,
    progress: bool = True,
    beam: int = 1,
) -> list[Example]:
    """``examples`` with each target replaced by the teacher's decode of its source: greedy
    (``beam=1``) or its best hypothesis of a beam search of width ``beam``.

    Order is kept. A decode is cut to ``max_len - 1`` tokens (room for BOS/EOS); an empty one
    (the teacher emitted EOS first) keeps the reference target, so every example still has a
    target. With ``cache`` (a JSON file) decodes of the same sources are read instead of redone.
    """
    from distill.progress import progress_bar

    digest = _sources_hash(examples)
    decodes = _cached(cache, len(examples), digest)
    if decodes is None:
        model.eval()
        device = next(model.parameters()).device
        batches, order = sentence_batches([s for s, _ in examples], batch_size)
        hyps: list[list[int]] = []
        for src in progress_bar(batches, desc="teacher targets", unit="batch", show=progress):
            src = src.to(device)  # (B, S) -> B id lists
            hyps += greedy(model, src) if beam == 1 else beam_search(model, src, beam)
        decodes = unsort(hyps, order)
        if cache is not None:
            atomic_write_json(
                cache, {"sentences": len(examples), "sources_sha256": digest, "decodes": decodes}
            )
    limit = model.cfg.max_len - 1
    out, empty, cut = [], 0, 0
    for (src, ref), hyp in zip(examples, decodes):
        if not hyp:
            empty += 1
            hyp = ref
        elif len(hyp) > limit:
            cut += 1
            hyp = hyp[:limit]
        out.append((src, list(hyp)))
    log.info(
        "teacher targets for %d sentences: %d empty decodes kept the reference, %d cut to %d",
        len(out),
        empty,
        cut,
        limit,
    )
    return out
