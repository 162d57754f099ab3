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


def fit_losses(student: nn.Module, target: torch.Tensor, *inputs, steps: int = 40) -> list[float]:
    """The masked MSE at each of ``steps`` Adam steps (lr 1e-2) of ``student`` toward ``target``
    on a site's ``inputs`` (x, mask[, memory, memory_mask]), through the students' own
    ``training_pass`` (no alignment term)."""
    from distill.students import training_pass
    from distill.train import masked_mean

    opt = torch.optim.Adam(student.parameters(), 1e-2)
    losses = []
    for _ in range(steps):
        pred, scored, aligned = training_pass(student, *inputs)
        assert aligned is None
        loss = masked_mean((pred - target) ** 2, scored)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def decode_in_steps(model: Seq2SeqTransformer, first: int = 3):
    """Teacher-forced logits of random targets (one row padded after 5) decoded with the cache,
    ``first`` positions at once and then one at a time, beside the full pass: (stepped, full,
    real rows (B, T), the per-layer caches, the source)."""
    src = random_src()
    tgt = torch.randint(4, model.cfg.vocab_size, (src.size(0), model.cfg.max_len))
    tgt[1, 5:] = PAD_ID
    memory, mask = model.encode(src)
    cache = [{} for _ in model.decoder]
    outs = [model.decode(tgt[:, :first], memory, mask, cache, start=0)]
    for t in range(first, tgt.size(1)):
        outs.append(model.decode(tgt[:, t : t + 1], memory, mask, cache, start=t))
    return torch.cat(outs, 1), model.decode(tgt, memory, mask), tgt != PAD_ID, cache, src


def assert_the_cache_changes_no_decode(model: Seq2SeqTransformer) -> None:
    """Greedy and beam-2 search give the same tokens with and without the decoding cache."""
    from distill.decode import beam_search, greedy

    src = random_src(b=3, seed=7)
    assert greedy(model, src) == greedy(model, src, use_cache=False)
    cached = beam_search(model, src, beam=2)
    assert cached == beam_search(model, src, beam=2, use_cache=False)
    assert any(cached)
