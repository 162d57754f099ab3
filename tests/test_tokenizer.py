"""SentencePiece tokenizer: round trip, special ids, deterministic atomic training, bad models,
finding it in a directory and writing it into an export."""

import shutil
import time

import pytest
import torch

from distill.data import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from distill.errors import DataError
from distill.tokenizer import load_tokenizer


def texts_of(pairs):
    return [text for pair in pairs for text in pair]


def test_round_trip_and_special_ids(tiny_tokenizer, tiny_pairs):
    tok = tiny_tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert tok.vocab_size <= 96
    texts = texts_of(tiny_pairs)
    ids = tok.encode_batch(texts)
    assert ids == [tok.encode(t) for t in texts]
    assert all(min(row) > EOS_ID for row in ids)  # no specials from encode
    assert tok.decode_batch(ids) == texts
    assert all(tok.decode(row) == text for row, text in zip(ids, texts))


def test_decode_skips_pad_bos_and_stops_at_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    hello, more = tok.encode("Der Hund."), tok.encode("Die Katze!")
    assert tok.decode([BOS_ID, *hello, EOS_ID, *more, PAD_ID]) == "Der Hund."
    assert tok.decode(torch.tensor([BOS_ID, *hello, PAD_ID, PAD_ID])) == "Der Hund."
    assert tok.decode_batch([[BOS_ID, *more, EOS_ID, PAD_ID], hello]) == ["Die Katze!", "Der Hund."]


def test_training_is_fast_deterministic_and_atomic(tmp_path, tiny_pairs):
    texts = texts_of(tiny_pairs)
    start = time.perf_counter()
    Tokenizer.train(texts, 96, tmp_path / "a" / "spm.model")
    assert time.perf_counter() - start < 5
    Tokenizer.train(texts, 96, tmp_path / "b" / "spm.model")
    assert (tmp_path / "a" / "spm.model").read_bytes() == (
        tmp_path / "b" / "spm.model"
    ).read_bytes()
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["spm.model"]  # no temp file left


def test_vocab_size_is_a_soft_limit(tmp_path, tiny_pairs):
    tok = Tokenizer.train(texts_of(tiny_pairs[:20]), 8000, tmp_path / "spm.model")
    assert 8 < tok.vocab_size < 8000
    assert tok.decode(tok.encode(tiny_pairs[0][0])) == tiny_pairs[0][0]


def test_unseen_characters_with_and_without_byte_fallback(tmp_path, tiny_pairs):
    text = "Zoë sagt: Ωmega 😀"
    small = Tokenizer.train(texts_of(tiny_pairs), 96, tmp_path / "small.model")
    assert UNK_ID in small.encode(text)
    large = Tokenizer.train(texts_of(tiny_pairs), 1024, tmp_path / "large.model")
    assert UNK_ID not in large.encode(text)
    assert large.decode(large.encode(text)) == text


def test_missing_or_corrupt_model_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="missing.model: SentencePiece model not found"):
        Tokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(DataError, match="bad.model: not a SentencePiece model"):
        Tokenizer(bad)
    with pytest.raises(DataError, match="no non-empty text"):
        Tokenizer.train(["", "  "], 96, tmp_path / "empty.model")


def test_load_tokenizer_finds_it_and_it_writes_itself_into_an_export(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    teacher, out = tmp_path / "teacher", tmp_path / "export"
    teacher.mkdir()
    out.mkdir()
    shutil.copyfile(tiny_tokenizer.path, teacher / "spm.model")
    tok = load_tokenizer(teacher)
    assert isinstance(tok, Tokenizer) and tok.vocab_size == tiny_tokenizer.vocab_size
    tok.export_files(out)
    info = tok.export_info()
    assert info == {"file": "spm.model", "type": "sentencepiece", "vocab_size": tok.vocab_size}
    text = "Der Hund sieht den Ball."
    assert load_tokenizer(out).encode(text) == tok.encode(text)
    hf = AutoTokenizer.from_pretrained(str(out))
    assert hf(text)["input_ids"] == tok.encode(text) + [EOS_ID]
    with pytest.raises(DataError, match="spm.model"):
        load_tokenizer(tmp_path)
