"""The one tiny seeded teacher of the unit tests, and inputs for it."""

from __future__ import annotations

import torch
from torch import nn

from distill.model import EOS_ID, PAD_ID, PRESETS, ModelConfig, Seq2SeqTransformer

UNIT = ModelConfig(**PRESETS["unit"])  # max_len 8, vocab 96: no corpus, milliseconds
# ModelConfig overrides that make a teacher of each layer layout (ModelConfig.layout)
LAYOUTS = {
    "pre_ln": {},
    "post_ln": {"family": "marian"},
    "sas": {"block": "sas"},
    "sas_p": {"block": "sas_p"},
}


def tiny_teacher(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    """A randomly initialised teacher of the ``unit`` preset (plus ``overrides``), eval mode."""
    torch.manual_seed(seed)
    return Seq2SeqTransformer(ModelConfig(**{**PRESETS["unit"], **overrides})).eval()


class PassThrough(nn.Module):
    """Wraps a site's module and returns exactly its output (incremental steps included):
    splicing it in must change nothing."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def random_src(b: int = 4, s: int = 6, seed: int = 1) -> torch.Tensor:
    """(b, s) source ids of ragged lengths, each ending in EOS, then padding."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 96, (b, s), generator=g)
    for i in range(b):
        n = s - i % 3
        src[i, n - 1] = EOS_ID
        src[i, n:] = PAD_ID
    return src
