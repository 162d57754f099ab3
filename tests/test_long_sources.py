"""A source longer than the model's max_len is split into parts and translated whole: the splitter,
distill's translate, `distill translate` and `evaluate --source`, and transformers' generate of an
export (the same parts and tokens; left padding and too large a length limit made safe)."""

import json
import logging
import random
import shutil

import pytest
import torch

import distill
from distill.bleu import score
from distill.chunks import boundary_ids, split_ids
from distill.cli import main
from distill.decode import beam_search, greedy, translate_texts
from distill.errors import CheckpointError
from distill.export import export
from distill.model import BOS_ID, EOS_ID, PAD_ID
from distill.tokenizer import EXPORT_MAX_PIECES
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


@pytest.fixture(scope="module")
def hf_models(exports):
    from transformers import AutoModelForSeq2SeqLM

    return {
        v: AutoModelForSeq2SeqLM.from_pretrained(str(path), trust_remote_code=True).eval()
        for v, path in exports.items()
    }


@pytest.fixture(scope="module")
def hf_tok(exports):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(exports["teacher"]))


def test_the_export_records_the_ends_and_its_tokenizer_cuts_nothing_the_model_can_split(
    exports, hf_tok, tiny_tokenizer, tmp_path
):
    config = json.loads((exports["teacher"] / "config.json").read_text())
    sentence, clause = boundary_ids(tiny_tokenizer.pieces())
    assert sentence and (config["sentence_end_ids"], config["clause_end_ids"]) == (sentence, clause)
    assert hf_tok.model_max_length == EXPORT_MAX_PIECES
    long = " ".join(["Der Hund sieht den Ball."] * 40)  # 520 pieces
    ids = hf_tok([long], truncation=True)["input_ids"][0]
    assert ids == tiny_tokenizer.encode(long) + [EOS_ID] and len(ids) > 500
    bad = shutil.copytree(exports["teacher"], tmp_path / "bad")
    (bad / "config.json").write_text(json.dumps({**config, "clause_end_ids": [3, 96]}))
    with pytest.raises(CheckpointError, match="'clause_end_ids' must be a list of piece ids"):
        distill.from_pretrained(bad)


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


def _batch(hf_tok, texts: list[str], side: str = "right") -> dict:
    return hf_tok(texts, return_tensors="pt", padding=True, truncation=True, padding_side=side)


@pytest.mark.parametrize("variant", ["teacher", "attentionless_gate"])
def test_generate_splits_long_rows_as_distill_translate_does(hf_models, hf_tok, exports, variant):
    model, _ = distill.from_pretrained(exports[variant])
    texts = [LONG[1], SHORT[0], LONG[0], SHORT[2]]
    batch = _batch(hf_tok, texts)
    assert batch["input_ids"].size(1) == 37  # the long rows reach the model whole
    for beam in (1, 3):
        with torch.no_grad():
            out = hf_models[variant].generate(**batch, num_beams=beam)
        assert hf_tok.batch_decode(out, skip_special_tokens=True) == model.translate(texts, beam)
        assert out[:, 0].eq(BOS_ID).all() and out.size(1) > model.cfg.max_len + 1
        tokens = out[:, 1:].tolist()  # each row: its parts' tokens, EOS or PAD only at the end
        assert all(
            EOS_ID not in row[:-1] or set(row[row.index(EOS_ID) + 1 :]) <= {PAD_ID}
            for row in tokens
        )


def test_generate_refuses_options_whose_rows_cannot_be_joined(hf_models, hf_tok):
    hf = hf_models["teacher"]
    long, short = _batch(hf_tok, LONG), _batch(hf_tok, SHORT)
    with torch.no_grad():
        assert hf.generate(**short, return_dict_in_generate=True).sequences.size(0) == 3
        with pytest.raises(ValueError, match="split into parts .* which return_dict_in_generate"):
            hf.generate(**long, return_dict_in_generate=True)
        with pytest.raises(ValueError, match="which num_return_sequences cannot be"):
            hf.generate(**long, num_beams=2, num_return_sequences=2)


def test_an_export_without_the_end_ids_splits_every_max_len_minus_one_pieces(
    exports, tiny_tokenizer, tmp_path
):
    from distill.hf import DistillConfig, DistillForConditionalGeneration

    old = shutil.copytree(exports["teacher"], tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    for key in ("sentence_end_ids", "clause_end_ids"):
        del config[key]
    (old / "config.json").write_text(json.dumps(config))
    hf = DistillForConditionalGeneration.from_pretrained(str(old)).eval()
    assert hf.config.sentence_end_ids is None
    model, tok = distill.from_pretrained(old)
    ids = tok.encode(LONG[0])  # "Ja." | "Die Katze!" at the sentence end; hard: 7 | 4 pieces
    src = torch.tensor([ids + [EOS_ID]])
    with torch.no_grad():
        out = hf.generate(src)
    hard = [ids[:7] + [EOS_ID], ids[7:] + [EOS_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert out[0, 1:].tolist() == sum(greedy(model, torch.tensor(hard)), [])  # no EOS: max_len
    assert DistillConfig.from_pretrained(str(exports["teacher"])).sentence_end_ids


def test_generate_lowers_a_length_limit_past_max_len_with_one_warning(hf_models, caplog):
    from transformers import GenerationConfig
    from transformers.utils.logging import warning_once

    hf = hf_models["attentionless_gate"]
    src = torch.tensor([[5, 6, 7, EOS_ID], [8, 9, EOS_ID, PAD_ID]])
    never = {"suppress_tokens": [PAD_ID, EOS_ID]}  # nothing ends early: decode to the limit
    warning_once.cache_clear()
    with torch.no_grad():
        full = hf.generate(src, max_new_tokens=8, **never)
        assert not caplog.records and full.size(1) == 9
        assert torch.equal(hf.generate(src, max_new_tokens=100, **never), full)
        assert torch.equal(hf.generate(src, max_new_tokens=100, **never), full)
        clamped = [r.getMessage() for r in caplog.records]
        assert clamped == [
            "generate: max_new_tokens=100 is more than this model decodes "
            "(max_len 8 tokens); using max_new_tokens=8"
        ]
        # a GenerationConfig of the user's own: lowered in a copy, the user's left as it was
        mine = GenerationConfig(max_new_tokens=30, **never)
        assert torch.equal(hf.generate(src, generation_config=mine), full)
        assert mine.max_new_tokens == 30 and "using max_new_tokens=8" in caplog.messages[-1]
        assert torch.equal(hf.generate(src, max_length=9, max_new_tokens=None, **never), full)
        assert torch.equal(hf.generate(src, max_length=60, max_new_tokens=None, **never), full)
        assert caplog.messages[-1].endswith("(max_len 8 tokens); using max_length=9")


@pytest.mark.parametrize("beam", [1, 3])
def test_a_left_padded_batch_gives_what_the_right_padded_one_gives(hf_models, hf_tok, beam):
    hf = hf_models["attentionless_gate"]
    for texts in (SHORT, SHORT + LONG):
        right, left = _batch(hf_tok, texts), _batch(hf_tok, texts, "left")
        assert left["attention_mask"][:, 0].tolist() != [1] * len(texts)  # padded before
        with torch.no_grad():
            expected = hf.generate(**right, num_beams=beam)
            assert torch.equal(hf.generate(**left, num_beams=beam), expected)
            # no attention mask: the PAD ids say where the padding is
            assert torch.equal(hf.generate(left["input_ids"], num_beams=beam), expected)
