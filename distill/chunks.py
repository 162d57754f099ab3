"""Over-long sources split into parts the model can encode, nothing dropped.

A model encodes at most ``max_len`` tokens, EOS included, so a source of more than ``limit =
max_len - 1`` pieces is translated part by part and the parts' translations joined
(``distill.decode.translate_texts``; ``distill.hf``'s ``generate`` does the same with transformers).
``split_ids`` cuts after pieces that end a sentence, inside a sentence that is still too long after
pieces that end a clause, and only inside a clause that is still too long every ``limit`` pieces;
then it packs neighbouring segments into parts as long as fit (fewer parts: more context for each).

Which pieces end a sentence or a clause is read off the vocabulary's piece strings
(``boundary_ids``): the tokenizer's for distill, an export's config.json (``sentence_end_ids``,
``clause_end_ids``, written at export time) for transformers. Part of every export's remote code
(``distill.remote_code``): standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from distill.ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID

SENTENCE_END = ".!?…。！？؟।"
CLAUSE_END = ",;:、，；：—–"
# Closing quotes and brackets after the punctuation still end the sentence: `."` or `?)`.
CLOSING = "\"')]}»”’›」』"
WORD_START = "▁"  # SentencePiece's mark of a piece that starts a word


def boundary_ids(pieces: Sequence[str]) -> tuple[list[int], list[int]]:
    """(ids of the pieces that end a sentence, ids of those that end a clause) of a vocabulary
    given as its piece strings by id: a piece whose text, closing quotes and brackets removed,
    ends with a character of ``SENTENCE_END`` (``CLAUSE_END``). Special pieces end nothing."""
    sentence, clause = [], []
    for i, piece in enumerate(pieces):
        text = piece.strip(WORD_START).rstrip(CLOSING)
        if i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID) or not text:
            continue
        if text[-1] in SENTENCE_END:
            sentence.append(i)
        elif text[-1] in CLAUSE_END:
            clause.append(i)
    return sentence, clause


def _cut_after(ids: list[int], ends: set[int]) -> list[list[int]]:
    """``ids`` cut after each run of pieces in ``ends`` (``?!`` stays together)."""
    segments, start = [], 0
    for k in range(1, len(ids)):
        if ids[k - 1] in ends and ids[k] not in ends:
            segments.append(ids[start:k])
            start = k
    return segments + [ids[start:]]


def _pack(segments: Iterable[list[int]], limit: int) -> list[list[int]]:
    """Neighbouring segments (each at most ``limit`` long) joined greedily into parts of at most
    ``limit``: left to right, a segment joins the part before it while it fits (the fewest parts
    for segments kept in order)."""
    parts: list[list[int]] = []
    for segment in segments:
        if parts and len(parts[-1]) + len(segment) <= limit:
            parts[-1] = parts[-1] + segment
        else:
            parts.append(list(segment))
    return parts


def split_ids(
    ids: Sequence[int],
    limit: int,
    sentence_ends: Iterable[int] = (),
    clause_ends: Iterable[int] = (),
) -> list[list[int]]:
    """``ids`` (a source's piece ids, without EOS) as parts of at most ``limit`` ids whose
    concatenation is ``ids``: one part when it fits, else cut after sentence ends, then after
    clause ends within a sentence over ``limit``, then every ``limit`` ids within a clause over
    it, and packed (``_pack``). Without end ids (an export from before they were written) every
    cut is a hard one."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    ids = list(ids)
    if len(ids) <= limit:
        return [ids]
    sentence_ends, clause_ends = set(sentence_ends), set(clause_ends)
    segments = []
    for sentence in _cut_after(ids, sentence_ends):
        for clause in _cut_after(sentence, clause_ends) if len(sentence) > limit else [sentence]:
            segments += [clause[k : k + limit] for k in range(0, len(clause), limit)]
    return _pack(segments, limit)
