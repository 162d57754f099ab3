"""The tokenizers a teacher can have, with fixed ids for the special tokens: ``Tokenizer`` (the
joint SentencePiece model over both languages that the teacher stage trains) and ``MarianVocab``
(an imported Marian teacher's MarianTokenizer, renumbered by ``distill.marian``); each writes
itself into an export directory. ``load_tokenizer`` finds which one a directory holds.

The ids of PAD, UNK, BOS and EOS are the same in every tokenizer, so batches and models can use
the module constants without a tokenizer at hand; loading one with other ids is an error.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from distill.checkpoint import atomic_write_bytes
from distill.errors import CheckpointError, DataError
from distill.ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


# Byte fallback spends 256 pieces on raw bytes; below this size they would crowd out real pieces,
# so small vocabularies keep every training character instead (character_coverage=1.0).
BYTE_FALLBACK_MIN_VOCAB = 1024
# Training time grows with the corpus; a fixed-seed sample of this many sentences covers IWSLT
# (about 400k sentences over both sides) in a few seconds with BPE, which trains ~8x faster than
# unigram on 2 cores.
MAX_TRAIN_SENTENCES = 200_000
SAMPLE_SEED = 0
# An export's transformers tokenizer cuts a source only beyond this many pieces, with
# ``truncation=True``: the model splits a longer source than it can encode into parts itself
# (``distill.hf``), so cutting at ``max_len`` would drop text the model can translate.
EXPORT_MAX_PIECES = 4096


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

    def pieces(self) -> list[str]:
        """The piece strings by id (what ``distill.chunks.boundary_ids`` reads)."""
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

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

    def export_info(self) -> dict:
        """An export's ``tokenizer`` entry in config.json: its type, its file, its size."""
        return {"file": "spm.model", "type": "sentencepiece", "vocab_size": self.vocab_size}

    def export_files(self, out: Path) -> None:
        """Write it into the export directory ``out``: spm.model, and the transformers tokenizer
        of it for ``AutoTokenizer`` (``hf_tokenizer``)."""
        shutil.copyfile(self.path, Path(out) / "spm.model")
        hf_tokenizer(self.path, EXPORT_MAX_PIECES).save_pretrained(out)

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


def hf_tokenizer(model_path: str | Path, max_length: int):
    """The transformers tokenizer of a SentencePiece model: a fast tokenizer that transformers'
    own SentencePiece conversion builds (``SpmConverter.build_tokenizer_from_spm_proto``: the
    model's normalizer, dummy prefix, merges and byte fallback), plus EOS appended to every
    sequence. It gives the ids ``Tokenizer.encode`` + EOS gives and decodes them back to the same
    text; with ``truncation=True`` a source keeps its first ``max_length - 1`` pieces and its
    EOS."""
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
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


def marian_tokenizer(path: str | Path, **kwargs):
    """transformers' ``MarianTokenizer`` of a directory; ``CheckpointError`` if it cannot load."""
    from transformers import MarianTokenizer

    try:
        return MarianTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot load its MarianTokenizer ({first})") from None


class MarianVocab:
    """distill's tokenizer interface over a renumbered ``MarianTokenizer`` (written by
    ``distill.marian.write_tokenizer``): sources through the source SentencePiece model, targets
    through the target one, decoding as transformers' ``batch_decode(...,
    skip_special_tokens=True)`` does."""

    FILES = ("source.spm", "target.spm", "vocab.json")  # a MarianTokenizer's
    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, path: str | Path):
        self.path = Path(path)
        for name in self.FILES:
            if not (self.path / name).is_file():
                raise DataError(f"{self.path / name}: file not found (a MarianTokenizer's files)")
        self.hf = marian_tokenizer(self.path)
        ids = (self.hf.pad_token_id, self.hf.unk_token_id, self.hf.bos_token_id)
        if ids + (self.hf.eos_token_id,) != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(f"{self.path / 'vocab.json'}: not renumbered to distill's ids")

    @property
    def vocab_size(self) -> int:
        return len(self.hf.encoder)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Source-side piece ids, without EOS."""
        return (
            self.hf(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
            if texts
            else []
        )

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Target-side piece ids, without EOS."""
        if not texts:
            return []
        return self.hf(text_target=list(texts), add_special_tokens=False, verbose=False)[
            "input_ids"
        ]

    def pieces(self) -> list[str]:
        """The piece strings by id (vocab.json: both sides share the ids)."""
        by_id = {i: piece for piece, i in self.hf.encoder.items()}
        return [by_id.get(i, "") for i in range(self.vocab_size)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id list: stops at the first EOS, skips the special pieces."""
        cut = []
        for ids in batch:
            ids = [int(i) for i in ids]
            cut.append(ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids)
        return self.hf.batch_decode(cut, skip_special_tokens=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_batch([ids])[0]

    def export_info(self) -> dict:
        """An export's ``tokenizer`` entry in config.json: its type, its file, its size."""
        return {"file": "vocab.json", "type": "marian", "vocab_size": self.vocab_size}

    def export_files(self, out: Path) -> None:
        """Copy its files into the export directory ``out``, where ``AutoTokenizer`` loads the
        renumbered MarianTokenizer; its length limit (``max_len`` in the teacher's run dir)
        becomes ``EXPORT_MAX_PIECES``, as ``Tokenizer``'s export has."""
        for file in sorted(p.name for p in self.path.iterdir() if p.is_file()):
            shutil.copyfile(self.path / file, Path(out) / file)
        config = Path(out) / "tokenizer_config.json"
        settings = json.loads(config.read_text(encoding="utf-8"))
        settings["model_max_length"] = EXPORT_MAX_PIECES
        config.write_text(json.dumps(settings, indent=2, ensure_ascii=False), encoding="utf-8")

    def __repr__(self) -> str:
        return f"MarianVocab({str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(directory: str | Path) -> Tokenizer | MarianVocab:
    """The tokenizer saved in ``directory``: a renumbered MarianTokenizer (source.spm, ...) or
    distill's own SentencePiece model (spm.model)."""
    directory = Path(directory)
    if (directory / MarianVocab.FILES[0]).is_file():
        return MarianVocab(directory)
    return Tokenizer(directory / "spm.model")
