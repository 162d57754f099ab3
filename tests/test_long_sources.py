"""A source longer than the model's max_len is split into parts and translated whole: the splitter,
distill's translate, `distill translate` and `evaluate --source`, and transformers' generate of an
export (the same parts and tokens; left padding and too large a length limit made safe)."""

import logging
import random

import pytest
import torch

import distill
from distill.bleu import score
from distill.chunks import boundary_ids, split_ids
from distill.cli import main
from distill.decode import beam_search, greedy, translate_texts
from distill.export import export
from distill.model import EOS_ID, PAD_ID
from tests.helpers import tiny_teacher
from tests.test_export import write_run

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


@pytest.fixture(scope="module")
def teacher(tiny_tokenizer):
    return tiny_teacher(vocab_size=tiny_tokenizer.vocab_size)


def _translate_parts(model, tok, text: str, beam: int = 1) -> list[list[int]]:
    """The tokens of each part of ``text`` (as the splitter cuts it), each decoded on its own."""
    parts = split_ids(tok.encode(text), model.cfg.max_len - 1, *boundary_ids(tok.pieces()))
    src = torch.tensor([p + [EOS_ID] + [PAD_ID] * (7 - len(p)) for p in parts])
    return greedy(model, src) if beam == 1 else beam_search(model, src, beam)


@pytest.mark.parametrize("beam", [1, 2])
def test_a_long_source_is_translated_as_its_parts_joined(teacher, tiny_tokenizer, beam):
    tok = tiny_tokenizer
    assert [len(ids) for ids in tok.encode_batch(SHORT + LONG)] == [4, 7, 3, 11, 36]
    texts = [LONG[0], "", SHORT[2], LONG[1]]
    out, n_long = translate_texts(teacher, tok, texts, beam=beam)
    assert n_long == 2 and out[1] == ""
    parts = _translate_parts(teacher, tok, LONG[0], beam)
    assert len(parts) == 2 and all(parts)  # "Ja." | "Die Katze!", each translated to something
    assert out[0] == tok.decode(parts[0] + parts[1])
    assert out[3] == tok.decode(sum(_translate_parts(teacher, tok, LONG[1], beam), []))
    alone, _ = translate_texts(teacher, tok, [SHORT[2]], beam=beam)
    assert out[2] == alone[0]  # a short source is untouched by the parts batched beside it
    # every part in its own batch: the same
    assert translate_texts(teacher, tok, texts, beam=beam, batch_size=1) == (out, 2)


def test_truncate_keeps_the_old_cut_for_comparison(teacher, tiny_tokenizer):
    tok = tiny_tokenizer
    cut, n_long = translate_texts(teacher, tok, LONG, long="truncate")
    ids = [x[:7] + [EOS_ID] for x in tok.encode_batch(LONG)]
    assert n_long == 2 and cut == [tok.decode(greedy(teacher, torch.tensor([x]))[0]) for x in ids]
    assert cut != translate_texts(teacher, tok, LONG)[0]
    with pytest.raises(ValueError, match="long must be one of split, truncate"):
        translate_texts(teacher, tok, LONG, long="drop")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("long")
    run = write_run(root / "run", tiny_tokenizer)
    return {v: export(run, v, root / v) for v in ("teacher", "attentionless_gate")}


def test_distill_translate_splits_long_lines_and_strict_and_truncate_keep_the_old_ways(
    exports, tmp_path, capsys, caplog
):
    path = str(exports["attentionless_gate"])
    model, _ = distill.from_pretrained(path)
    lines = [SHORT[0], "", LONG[0], SHORT[1], LONG[1]]
    text = tmp_path / "in.txt"
    text.write_text("\n".join(lines) + "\n")
    assert main(["-q", "translate", path, str(text)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "".join(line + "\n" for line in model.translate(lines))
    with caplog.at_level(logging.INFO, logger="distill.pretrained"):
        assert model.translate(lines)[2] == model.translate([LONG[0]])[0] != ""
    assert "2 of 5 sources exceed max_len 8 tokens with EOS: split into parts" in caplog.text
    assert "2 line(s) exceed max_len 8 tokens with EOS (line 3, 5); each is split" in captured.err
    assert main(["-q", "translate", path, str(text), "--truncate"]) == 0
    captured = capsys.readouterr()
    cut = model.translate(lines, long="truncate")
    assert (
        captured.out
        == "".join(line + "\n" for line in cut)
        != "".join(line + "\n" for line in model.translate(lines))
    )
    assert "(line 3, 5); truncating them" in captured.err
    assert main(["-q", "translate", path, str(text), "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "2 line(s) exceed max_len 8" in captured.err
    assert "(line 3, 5); shorten or split them" in captured.err and captured.err.count("\n") == 1
    with pytest.raises(SystemExit) as stop:  # argparse refuses the pair
        main(["-q", "translate", path, str(text), "--strict", "--truncate"])
    assert stop.value.code == 2 and "not allowed with argument --strict" in capsys.readouterr().err


def test_evaluate_with_a_source_file_translates_long_sources_whole(exports, tmp_path, capsys):
    from distill_recipes.evaluate import evaluate_path

    tsv = tmp_path / "pairs.tsv"
    pairs = [(LONG[0], "Yes. The cat!"), (SHORT[2], "Hello"), (LONG[1], "The dog sees the ball.")]
    tsv.write_text("de\ten\n" + "".join(f"{d}\t{e}\n" for d, e in pairs), encoding="utf-8")
    results = evaluate_path(str(exports["teacher"]), source=str(tsv))
    capsys.readouterr()
    assert "all 3 pairs of" in results["note"] and "(long sources split)" in results["note"]
    row = results["rows"][0]
    model, _ = distill.from_pretrained(exports["teacher"])
    sources, references = [d for d, _ in pairs], [e for _, e in pairs]
    whole = score(model.translate(sources), references)
    assert row["split_sources"] == 2 and (row["bleu"], row["chrf"]) == (
        whole["bleu"],
        whole["chrf"],
    )
    assert score(model.translate(sources, long="truncate"), references)["chrf"] != whole["chrf"]
