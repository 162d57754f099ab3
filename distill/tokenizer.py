"""Joint SentencePiece tokenizer over both languages, with fixed ids for the special tokens.

The ids of PAD, UNK, BOS and EOS are the same in every model this module trains, so batches and
models can use the module constants without a tokenizer at hand; loading a model trained
elsewhere with other ids is an error.
"""

from __future__ import annotations

import io
import logging
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from distill.checkpoint import atomic_write_bytes
from distill.errors import DataError

logger = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

# Byte fallback spends 256 pieces on raw bytes; below this size they would crowd out real pieces,
# so small vocabularies keep every training character instead (character_coverage=1.0).
BYTE_FALLBACK_MIN_VOCAB = 1024
# Training time grows with the corpus; a fixed-seed sample of this many sentences covers IWSLT
# (about 400k sentences over both sides) in a few seconds with BPE, which trains ~8x faster than
# unigram on 2 cores.
MAX_TRAIN_SENTENCES = 200_000
SAMPLE_SEED = 0


class Tokenizer:
    """A SentencePiece model with ``pad/unk/bos/eos`` ids 0/1/2/3; encodes without specials."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: SentencePiece model not found")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as err:
            raise DataError(f"{self.path}: not a SentencePiece model ({err})") from None
        found = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{self.path}: special ids pad/unk/bos/eos are {found}, "
                f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}"
            )

    @property
    def vocab_size(self) -> int:
        """Number of pieces, specials included (may be below the requested size, see ``train``)."""
        return self._sp.get_piece_size()

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, model_path: str | Path, model_type: str = "bpe"
    ) -> Tokenizer:
        """Train a model on ``texts``, write it atomically to ``model_path`` and load it.

        ``model_type`` is ``"bpe"`` (fast) or ``"unigram"``. Deterministic for the same texts:
        large corpora are subsampled with a fixed seed. The vocabulary size is a soft limit, so a
        tiny corpus yields a smaller vocabulary rather than an error; read the result's
        ``vocab_size``.
        """
        model_path = Path(model_path)
        sentences = [t for t in texts if t.strip()]
        if not sentences:
            raise DataError(f"{model_path}: no non-empty text to train the tokenizer on")
        if len(sentences) > MAX_TRAIN_SENTENCES:
            sentences = random.Random(SAMPLE_SEED).sample(sentences, MAX_TRAIN_SENTENCES)
        byte_fallback = vocab_size >= BYTE_FALLBACK_MIN_VOCAB
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.Train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                model_type=model_type,
                vocab_size=vocab_size,
                hard_vocab_limit=False,
                byte_fallback=byte_fallback,
                character_coverage=0.9995 if byte_fallback else 1.0,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                # We subsample above, deterministically; SentencePiece's own sampling is seeded
                # from the clock.
                input_sentence_size=0,
                shuffle_input_sentence=False,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as err:
            raise DataError(f"{model_path}: SentencePiece training failed ({err})") from None
        # Atomic: a crash never leaves a half-written model where a resumed run would load it.
        atomic_write_bytes(model_path, model.getvalue())
        tok = cls(model_path)
        logger.info(
            "trained %s tokenizer on %d sentences: %d pieces -> %s",
            model_type,
            len(sentences),
            tok.vocab_size,
            model_path,
        )
        return tok

    def encode(self, text: str) -> list[int]:
        """Piece ids of ``text``, without BOS/EOS."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts at once (multi-threaded inside SentencePiece)."""
        return self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode_batch`` of target sentences (one joint model serves both sides)."""
        return self.encode_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: stops at the first EOS and skips PAD and BOS."""
        return self._sp.decode(_strip_specials(ids))

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """``decode`` for many id lists at once."""
        return self._sp.decode([_strip_specials(ids) for ids in batch])

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _strip_specials(ids: Sequence[int]) -> list[int]:
    # Accept tensors and numpy arrays as well as lists: SentencePiece wants plain ints.
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return out


def hf_tokenizer(model_path: str | Path, max_len: int):
    """The transformers tokenizer of a SentencePiece model: a fast tokenizer that transformers'
    own SentencePiece conversion builds (``SpmConverter.build_tokenizer_from_spm_proto``: the
    model's normalizer, dummy prefix, merges and byte fallback), plus EOS appended to every
    sequence. It gives the ids ``Tokenizer.encode`` + EOS gives and decodes them back to the same
    text; with ``truncation=True`` a source keeps its first ``max_len - 1`` pieces and its EOS,
    as ``distill translate`` does."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if backend is None:
        raise DataError(f"{model_path}: cannot build a transformers tokenizer from this model")
    eos = proto.pieces[EOS_ID].piece
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=proto.pieces[PAD_ID].piece,
        unk_token=proto.pieces[UNK_ID].piece,
        bos_token=proto.pieces[BOS_ID].piece,
        eos_token=eos,
        model_max_length=max_len,
        padding_side="right",
        truncation_side="right",
    )
