"""What the teacher's sites receive and return: the hooks that catch it in a forward pass
(``site_hooks``), the batch that holds it (``ActBatch``: recorded, online or live) and the one
accessor every reader of a site's tensors goes through (``site_io``: the layer-wise loss, the
least-squares init, the recorder, the finetune hidden loss). Which padding mask a site's
positions carry and whether it reads the encoder memory come from the site table
(``distill.model.SITES``), never from the site's name.

Dimension letters: B batch, L padded length (S source, T target), D d_model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from distill.model import PAD_ID, site_info, site_path

MASK_KEYS = {"source": "src_mask", "target": "tgt_mask"}  # a site row's mask -> its batch key


@dataclass
class ActBatch:
    """Activations of a batch: ``{site}.x``/``{site}.y`` (B, L, D), ``src_mask`` (B, S) and
    ``tgt_mask`` (B, T), ``memory`` (B, S, D) when a site reads it."""

    tensors: dict[str, torch.Tensor]

    def to(self, device) -> ActBatch:
        return ActBatch({k: v.to(device) for k, v in self.tensors.items()})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


class SiteIO(NamedTuple):
    """One site's tensors in a batch."""

    x: torch.Tensor  # (B, L, D) what it received
    y: torch.Tensor  # (B, L, D) what it returned
    mask: torch.Tensor  # (B, L) its positions' padding mask (source or target)
    memory: torch.Tensor | None  # (B, S, D) the encoder memory, for a site that reads it
    memory_mask: torch.Tensor | None  # (B, S), beside the memory


def site_io(batch: ActBatch, site: str) -> SiteIO:
    """``site``'s input, output, mask and (where its row says it reads it) the memory with its
    mask. The memory is None for a batch that kept none (finetune's outputs-only passes)."""
    t, row = batch.tensors, site_info(site)
    memory = t.get("memory") if row.memory else None
    memory_mask = None if memory is None else t["src_mask"]
    return SiteIO(t[f"{site}.x"], t[f"{site}.y"], t[MASK_KEYS[row.mask]], memory, memory_mask)


def reads_memory(sites: Iterable[str]) -> bool:
    """Whether any of ``sites`` reads the encoder memory (its batches must carry it)."""
    return any(site_info(s).memory for s in sites)


def padding_masks(src: torch.Tensor, tgt_in: torch.Tensor) -> dict[str, torch.Tensor]:
    """The masks of a teacher-forced pass on ``src`` (B, S) and ``tgt_in`` (B, T), by key."""
    return {"src_mask": src != PAD_ID, "tgt_mask": tgt_in != PAD_ID}


@contextlib.contextmanager
def site_hooks(model: nn.Module, sites: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, every forward pass of ``model`` puts what each of ``sites`` received and
    returned into the dict it yields, as ``{site}.x`` and ``{site}.y`` (autograd as the pass
    has it); the hooks are gone after the block, errors included."""
    got: dict[str, torch.Tensor] = {}

    def hook(site: str):
        def keep(module, args, output):
            got[f"{site}.x"], got[f"{site}.y"] = args[0], output

        return keep

    handles = [
        model.get_submodule(site_path(s, model.cfg)).register_forward_hook(hook(s)) for s in sites
    ]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()
