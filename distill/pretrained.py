"""Export directories: loading one into distill (``from_pretrained``).

An export directory (written by ``distill.export.export``) holds:
    config.json             teacher dimensions, tokenizer, ``replacements`` {site: a
                            ``StudentSpec``'s dict} and the keys transformers reads
                            (model_type, auto_map, ids); schema: ``distill.export_config``; for
                            people, not read back: ``attentionless``, ``student_kinds`` ({site:
                            ``mixing`` or ``gated pairs``}), ``teacher_attention`` (the sites that
                            keep the teacher's attention), ``hybrid`` ({base, kept} or null) and
                            ``base_model`` (an imported teacher's Hub id, or null)
    model.safetensors       state dict of the spliced model: replaced attention has no weights here
    spm.model               the SentencePiece tokenizer, with tokenizer.json for transformers (a
                            Marian teacher's export: its renumbered MarianTokenizer files instead,
                            each tokenizer class writes its own: ``export_files``)
    generation_config.json  generate() defaults that match distill's own decoding
    distill_hf.py, distill_model.py, ...   the modelling code transformers loads with
                            ``trust_remote_code=True``: distill's own modules, written at export
                            time (``distill.remote_code``), so loading needs no distill install
    README.md               the model card

``config.json`` is the one description of the architecture: distill and transformers both rebuild
the model from it, so loading checks it strictly and names the key that does not fit. An export
written before the modelling code was included (one-line configuration_distill.py and
modeling_distill.py that import distill) loads here the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from distill.checkpoint import load_state_dict, load_tensors, read_json
from distill.errors import CheckpointError, DataError
from distill.export_config import build_model, parse_config
from distill.model import Seq2SeqTransformer

log = logging.getLogger(__name__)


class TranslationModel(Seq2SeqTransformer):
    """An exported model: a ``Seq2SeqTransformer`` that carries its tokenizer and translates."""

    tokenizer = None  # set by ``from_pretrained``

    def too_long(self, texts: list[str]) -> list[int]:
        """Indices of ``texts`` longer than ``max_len`` tokens with their EOS (split if run)."""
        limit = self.cfg.max_len - 1
        return [i for i, ids in enumerate(self.tokenizer.encode_batch(texts)) if len(ids) > limit]

    def translate(
        self,
        texts: list[str],
        beam: int = 1,
        batch_size: int = 64,
        progress: bool = False,
        long: str = "split",
    ) -> list[str]:
        """One translation per text (empty in, empty out). A source longer than the model can
        encode is split into parts that are translated and joined (``long="truncate"``: cut, the
        old behaviour; ``distill.decode.translate_texts``); how many is logged."""
        from distill.decode import translate_texts

        out, n_long = translate_texts(
            self,
            self.tokenizer,
            texts,
            beam=beam,
            batch_size=batch_size,
            progress=progress,
            long=long,
        )
        if n_long:  # a split drops nothing; a cut does
            log.log(
                logging.INFO if long == "split" else logging.WARNING,
                "%d of %d sources exceed max_len %d tokens with EOS: %s",
                n_long,
                len(texts),
                self.cfg.max_len,
                "split into parts, translated and joined" if long == "split" else "truncated",
            )
        return out


def is_export(path: str | Path) -> bool:
    """Whether ``path`` looks like an export directory (as opposed to a run directory)."""
    return (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").exists()


def from_pretrained(
    path: str | Path, device: str | torch.device = "auto"
) -> tuple[TranslationModel, object]:
    """(model in eval mode with ``.translate``, tokenizer) from an export directory, on
    ``device``: ``auto`` (a GPU when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.
    """
    from distill.device import resolve_device
    from distill.tokenizer import load_tokenizer

    device = resolve_device(device)  # a bad name fails before anything loads
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not an export directory")
    cfg, replacements = parse_config(read_json(path / "config.json"), path / "config.json")
    tensors = load_tensors(path / "model.safetensors")
    if tensors and all(k.startswith("model.") for k in tensors):  # saved by transformers
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    try:
        tok = load_tokenizer(path)
    except DataError as err:  # a missing or unreadable tokenizer makes the export incomplete
        raise CheckpointError(str(err)) from None
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{tok.path}: tokenizer has {tok.vocab_size} pieces, "
            f"config.json says vocab_size {cfg.vocab_size}"
        )
    model = build_model(cfg, replacements, TranslationModel)
    load_state_dict(model, tensors, path / "model.safetensors")
    model.tokenizer = tok
    return model.to(device).eval(), tok
