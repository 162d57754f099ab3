"""A fresh transformers ``MarianMTModel`` in the opus-mt layout, trained on distill's batches: the
``marian`` family's teacher when none is imported (``distill run teacher`` with
``model.family=marian``, the demo-marian pipeline) and the tests' stand-in for a downloaded
opus-mt checkpoint. The result is imported like any checkpoint (``distill.marian``).

``save_opus_mt_tokenizer`` and ``opus_mt_config`` make the tokenizer and config of such a
checkpoint from a SentencePiece model and a ``ModelConfig``'s dimensions; ``MarianTraining`` is
the model as ``distill.train.fit`` trains it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from distill.marian import CONFIG_KEYS
from distill.model import PAD_ID, ModelConfig


def save_opus_mt_tokenizer(spm_path: str | Path, out: Path, source_lang: str, target_lang: str):
    """Write a MarianTokenizer in the opus-mt layout for a SentencePiece model that serves both
    sides: source.spm = target.spm, vocab.json with "</s>" 0, "<unk>" 1, the model's other
    pieces, "<pad>" last (Marian's pad and decoder start). Returns the vocabulary."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    controls = {"<pad>", "<unk>", "<s>", "</s>"}
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if piece not in controls:
            vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        tok = MarianTokenizer(
            source_spm=str(spm_path),
            target_spm=str(spm_path),
            vocab=str(Path(tmp) / "vocab.json"),
            source_lang=source_lang,
            target_lang=target_lang,
        )
        tok.save_pretrained(str(out))
    return vocab


def opus_mt_config(vocab: dict[str, int], cfg: ModelConfig, max_positions: int = 512):
    """A ``MarianConfig`` shaped like opus-mt's (post-LN, swish, tied embeddings, sinusoidal
    positions, scaled embeddings) with ``cfg``'s dimensions (through ``CONFIG_KEYS``)."""
    from transformers import MarianConfig

    pad = vocab["<pad>"]
    dims = {key: getattr(cfg, ours) for ours, keys in CONFIG_KEYS.items() for key in keys}
    return MarianConfig(
        **dims,
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        activation_function="swish",
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=max_positions,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=pad,
        eos_token_id=vocab["</s>"],
        decoder_start_token_id=pad,
        forced_eos_token_id=vocab["</s>"],
        max_length=cfg.max_len,
        num_beams=1,
        bad_words_ids=[[pad]],
    )


class MarianTraining(torch.nn.Module):
    """A ``MarianMTModel`` trained on distill's batches (distill ids; ``order`` maps them to
    Marian's): ``loss`` is label-smoothed cross-entropy over Marian's own vocabulary."""

    def __init__(self, model, order: list[int]):
        super().__init__()
        self.marian = model
        self.register_buffer("order", torch.tensor(order), persistent=False)

    def loss(self, batch, smoothing: float) -> torch.Tensor:
        src, tgt_in, tgt_out = (self.order[t] for t in (batch.src, batch.tgt_in, batch.tgt_out))
        logits = self.marian(
            input_ids=src,
            attention_mask=batch.src != PAD_ID,
            decoder_input_ids=tgt_in,
            decoder_attention_mask=batch.tgt_in != PAD_ID,
        ).logits
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(),
            tgt_out.masked_fill(batch.tgt_out == PAD_ID, -100).flatten(),
            label_smoothing=smoothing,
        )
