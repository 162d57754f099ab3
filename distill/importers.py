"""Teachers from other libraries' checkpoints: one converter per Hugging Face ``model_type`` (the
checkpoint's config.json says it). ``CONVERTERS`` is the seam where a new teacher family's
converter goes (docs/DESIGN.md, "Teacher families"); the teacher recipe's ``pretrained=PATH``
calls ``import_checkpoint`` and never a family's module by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distill.checkpoint import read_json
from distill.errors import CheckpointError
from distill.model import Seq2SeqTransformer

# model_type -> the module that converts its checkpoints: ``import_checkpoint(path, max_len)``
# returning an ``Imported`` (CheckpointError, naming the file, for a checkpoint it cannot use)
CONVERTERS = {"marian": "distill.marian"}


@dataclass(frozen=True)
class Imported:
    """A converted checkpoint: the teacher (eval mode) and how to save its tokenizer, renumbered
    to distill's ids, into a new directory (``distill.tokenizer.load_tokenizer`` reads it)."""

    model: Seq2SeqTransformer
    write_tokenizer: Callable[[Path], None]


def import_checkpoint(path: str | Path, max_len: int) -> Imported:
    """The teacher in the transformers checkpoint directory ``path``, for sequences of
    ``max_len`` tokens, converted by its ``model_type``'s converter."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (a transformers checkpoint is one)")
    config = read_json(path / "config.json")
    found = config.get("model_type") if isinstance(config, dict) else None
    if found not in CONVERTERS:
        known = ", ".join(repr(k) for k in CONVERTERS)
        raise CheckpointError(
            f"{path / 'config.json'}: model_type is {found!r}; distill imports {known} "
            "checkpoints (distill.importers.CONVERTERS)"
        )
    return importlib.import_module(CONVERTERS[found]).import_checkpoint(path, max_len)
