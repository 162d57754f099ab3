"""A source longer than the model's max_len is split into parts and translated whole: the splitter,
distill's translate, `distill translate` and `evaluate --source`, and transformers' generate of an
export (the same parts and tokens; left padding and too large a length limit made safe)."""

import random

import pytest

from distill.chunks import boundary_ids, split_ids

S, C = 90, 91  # ids of a piece that ends a sentence and of one that ends a clause
# In the tiny tokenizer's pieces (max_len 8: at most 7 pieces and EOS): "Ja." 4 pieces (J is
# unknown), "Die Katze!" 7, "Hallo" 3, the last two lines too long for one part.
SHORT = ["Ja.", "Die Katze!", "Hallo"]
LONG = ["Ja. Die Katze!", "Der Hund sieht den Ball und die Katze mag ein Buch heute oft."]


def test_split_prefers_sentence_ends_then_clause_ends_then_a_hard_cut():
    # the second sentence fits whole: not cut after its clause end to fill the first part
    assert split_ids([1, 2, S, 3, C, 4, 5, 6, S], 6, [S], [C]) == [[1, 2, S], [3, C, 4, 5, 6, S]]
    # a sentence over the limit: after its clause end, not every 5 pieces
    assert split_ids([1, 2, C, 3, 4, 5, 6, S], 5, [S], [C]) == [[1, 2, C], [3, 4, 5, 6, S]]
    # a clause over the limit: every `limit` pieces
    assert split_ids([1, 2, 3, 4, 5, 6, 7, S, 8], 3, [S], [C]) == [[1, 2, 3], [4, 5, 6], [7, S, 8]]
    # no end ids (an export older than them): hard cuts only
    assert split_ids([1, 2, S, 3, C, 4, 5, 6, S], 6) == [[1, 2, S, 3, C, 4], [5, 6, S]]
    # a run of ends stays together ("?!"), and what fits is one part
    assert split_ids([1, S, S, 2, 3], 3, [S]) == [[1, S, S], [2, 3]]
    assert split_ids([1, 2, S, 3], 4, [S]) == [[1, 2, S, 3]]


def test_split_packs_neighbouring_segments_into_parts_as_long_as_fit():
    assert split_ids([1, S, 2, S, 3, S, 4, S, 5, S], 4, [S]) == [[1, S, 2, S], [3, S, 4, S], [5, S]]
    assert split_ids([1, C, 2, C, 3, 4, 5, S], 4, [S], [C]) == [[1, C, 2, C], [3, 4, 5, S]]


def test_split_parts_fit_and_join_back_to_the_source_whatever_it_holds():
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.choice([S, C, 5, 6, 7, 8]) for _ in range(rng.randrange(0, 40))]
        limit = rng.randrange(1, 12)
        parts = split_ids(ids, limit, [S], [C])
        assert sum(parts, []) == ids  # nothing dropped, nothing reordered
        assert all(1 <= len(p) <= limit for p in parts) or parts == [[]]
        assert len(parts) == 1 or len(ids) > limit
        # packed: no two neighbours would fit together
        assert all(len(a) + len(b) > limit for a, b in zip(parts, parts[1:]))
    with pytest.raises(ValueError, match="limit must be >= 1"):
        split_ids([1, 2], 0)


def test_sentence_and_clause_ends_are_read_off_the_piece_strings():
    pieces = ["<pad>", ".", "<s>", "</s>", "▁Hund", ".", "▁Ja.", '?"', "!)", ",", "▁usw.,", ";"]
    pieces += ["▁", "…", ":", "▁(", "—", "3.", "▁'"]
    sentence, clause = boundary_ids(pieces)
    assert sentence == [5, 6, 7, 8, 13, 17]  # id 1 is UNK: special pieces end nothing
    assert clause == [9, 10, 11, 14, 16]
