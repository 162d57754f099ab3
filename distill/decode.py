"""Batched greedy and beam-search decoding for ``Seq2SeqTransformer``.

Decoding is incremental: every decoder site keeps its own cache (``distill.cache``).
The teacher's attention caches K/V, the one-pass causal students their normalised inputs and
hidden groups (and the cross students their memory terms, once per sentence), the per-position
student its prefix; a site with no incremental form re-runs alone over the prefix. Each step
feeds only the newest token and gives the logits a full recomputation would.

Dimension letters: B sentences, N = B * beam hypotheses, t current length, V vocabulary.
"""

from __future__ import annotations

import torch

from distill.chunks import boundary_ids, split_ids
from distill.data import sentence_batches, unsort
from distill.model import BOS_ID, EOS_ID, PAD_ID, Seq2SeqTransformer, reorder_cache
from distill.progress import progress_bar


class _Stepper:
    """Next-token log-probabilities for a batch of growing prefixes, one new token per call."""

    def __init__(
        self,
        model: Seq2SeqTransformer,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        use_cache: bool = True,
    ):
        self.model, self.memory, self.memory_mask = model, memory, memory_mask
        self.cache = [{} for _ in model.decoder] if use_cache else None

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (N, t) -> log-probs (N, V) for position t."""
        if self.cache is None:
            logits = self.model.decode(prefix, self.memory, self.memory_mask)[:, -1]
        else:
            t = prefix.size(1) - 1
            logits = self.model.decode(
                prefix[:, -1:], self.memory, self.memory_mask, self.cache, start=t
            )[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        # PAD is never an output (a finished row's PAD inputs are masked, never attended to).
        logp[:, PAD_ID] = float("-inf")
        return logp

    def reorder(self, index: torch.Tensor) -> None:
        """Keep hypotheses ``index`` (beam search reshuffles rows every step)."""
        self.memory = self.memory.index_select(0, index)
        self.memory_mask = self.memory_mask.index_select(0, index)
        if self.cache is not None:
            reorder_cache(self.cache, index)


def _max_steps(model: Seq2SeqTransformer, max_len: int | None) -> int:
    return min(max_len or model.cfg.max_len, model.cfg.max_len)


@torch.no_grad()
def greedy(
    model: Seq2SeqTransformer,
    src: torch.Tensor,
    max_len: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """src (B, S) -> token ids per sentence (no BOS, no EOS), argmax at every step.
    ``use_cache=False`` re-runs the decoder over the whole prefix at every step (the reference
    the cached path is tested against)."""
    memory, memory_mask = model.encode(src)
    step = _Stepper(model, memory, memory_mask, use_cache)
    b = src.size(0)
    prefix = torch.full((b, 1), BOS_ID, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    for _ in range(_max_steps(model, max_len)):
        token = step(prefix).argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, PAD_ID), token)
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        done |= token == EOS_ID
        if bool(done.all()):
            break
    return [strip_ids(row) for row in prefix[:, 1:].tolist()]


def strip_ids(ids: list[int]) -> list[int]:
    """Generated ids up to (not including) the first EOS or PAD."""
    out = []
    for i in ids:
        if i in (EOS_ID, PAD_ID):
            break
        out.append(i)
    return out


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src: torch.Tensor,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_len: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """src (B, S) -> best hypothesis per sentence (no BOS, no EOS).

    Scores are summed log-probs; a finished hypothesis is ranked by score / length**length_penalty
    (length counts the EOS) and each sentence keeps its ``beam`` best. Each step keeps the
    ``beam`` best unfinished continuations out of the top 2*beam candidates; an EOS candidate
    ranked within the top ``beam`` finishes a hypothesis, and at max_len every top-``beam``
    candidate does. A sentence stops once it holds ``beam`` finished hypotheses and its best open
    one, scored at its current length, does not beat the worst of them. This is transformers'
    default beam search (``early_stopping=False``): an export's ``generate(num_beams=k)`` returns
    the same tokens.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    b, k = src.size(0), beam
    memory, memory_mask = model.encode(src)
    rows = torch.arange(b, device=src.device).repeat_interleave(k)
    memory, memory_mask = memory.index_select(0, rows), memory_mask.index_select(0, rows)
    step = _Stepper(model, memory, memory_mask, use_cache)
    prefix = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=src.device)
    scores = torch.full((b, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start identical: only the first may expand
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]  # best first
    done = [False] * b
    steps = _max_steps(model, max_len)
    for t in range(steps):
        logp = step(prefix)  # (N, V)
        vocab = logp.size(-1)
        total = (scores[:, :, None] + logp.view(b, k, vocab)).view(b, k * vocab)
        cand_scores, cand = total.topk(min(2 * k, k * vocab), dim=1)  # (B, 2k)
        cand_beam, cand_tok = cand // vocab, cand % vocab
        is_eos = cand_tok == EOS_ID
        length, last = t + 1, t == steps - 1
        ends = (is_eos[:, :k] | last) & torch.isfinite(cand_scores[:, :k])
        for i, j in ends.nonzero().tolist():
            hyp = prefix[i * k + int(cand_beam[i, j]), 1:].tolist() + [int(cand_tok[i, j])]
            finished[i].append((float(cand_scores[i, j]) / length**length_penalty, hyp))
            finished[i] = sorted(finished[i], key=lambda h: -h[0])[:k]
        if last:
            break
        # Best k non-EOS candidates: a stable sort on is_eos keeps score order within each group.
        order = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :k]
        scores = cand_scores.gather(1, order)
        sel_beam, sel_tok = cand_beam.gather(1, order), cand_tok.gather(1, order)
        for i in range(b):
            best_open = float(scores[i, 0]) / length**length_penalty
            full = len(finished[i]) == k
            done[i] = done[i] or (full and not best_open > finished[i][-1][0])
        scores = scores.masked_fill(torch.tensor(done, device=src.device)[:, None], float("-inf"))
        index = (torch.arange(b, device=src.device)[:, None] * k + sel_beam).view(-1)
        prefix = torch.cat([prefix.index_select(0, index), sel_tok.view(-1, 1)], dim=1)
        step.reorder(index)
        if all(done):
            break
    return [strip_ids(f[0][1]) if f else [] for f in finished]


def translate_ids(
    model: Seq2SeqTransformer, src: torch.Tensor, beam: int = 1, length_penalty: float = 1.0
) -> list[list[int]]:
    """Greedy for beam 1, beam search otherwise."""
    if beam == 1:
        return greedy(model, src)
    return beam_search(model, src, beam, length_penalty)


LONG = ("split", "truncate")  # what translate_texts does with a source over max_len - 1 pieces


@torch.no_grad()
def translate_texts(
    model: Seq2SeqTransformer,
    tok,
    texts: list[str],
    beam: int = 1,
    batch_size: int = 64,
    length_penalty: float = 1.0,
    progress: bool = False,
    long: str = "split",
) -> tuple[list[str], int]:
    """Translate ``texts`` in length-sorted batches; returns (translations, n_long): how many
    sources were longer than ``max_len`` tokens with their EOS.

    ``long="split"``: such a source is cut into parts that fit (``distill.chunks.split_ids``, at
    the tokenizer's sentence and clause ends), every part of every text is translated in the same
    batches and a text's translation is the decoded concatenation of its parts' tokens (what
    ``generate`` of an export returns for it). ``long="truncate"``: its first ``max_len - 1``
    pieces only (the old behaviour, for comparison). Empty inputs give empty outputs without
    running the model.
    """
    if long not in LONG:
        raise ValueError(f"long must be one of {', '.join(LONG)}, got '{long}'")
    model.eval()
    device = next(model.parameters()).device
    limit = model.cfg.max_len - 1
    ends = boundary_ids(tok.pieces()) if long == "split" else ((), ())
    parts, owner, n_long = [], [], 0  # every part to translate, and the text it belongs to
    for i, ids in enumerate(tok.encode_batch(texts)):
        if len(ids) > limit:
            n_long += 1
            ids_parts = split_ids(ids, limit, *ends) if long == "split" else [ids[:limit]]
        else:
            ids_parts = [ids] if ids else []
        parts += ids_parts
        owner += [i] * len(ids_parts)
    batches, order = sentence_batches([ids + [EOS_ID] for ids in parts], batch_size)
    hyps = []
    for src in progress_bar(batches, desc="translate", unit="batch", show=progress, leave=False):
        hyps += translate_ids(model, src.to(device), beam, length_penalty)
    joined: dict[int, list[int]] = {}
    for i, ids in zip(owner, unsort(hyps, order)):
        joined[i] = joined.get(i, []) + ids
    out = [""] * len(texts)
    for i, text in zip(joined, tok.decode_batch(list(joined.values())) if joined else []):
        out[i] = text
    return out, n_long
