"""A cross-attention student with no pairwise content comparison (``cross_dense``): the "dense
synthesizer" (Tay et al. 2020, arXiv 2005.00743) at a decoder cross-attention site.

Cross-attention weighs source position j for target position t by q_t . k_j, a comparison of
two positions' content. Here the weights are made from the decoder state alone: one small MLP of
x_t produces one score per (head, source position index), and the values are the teacher's
(V m_j, V started as the site's W_V):

    s_h(t, .) = W2 act(W1 x_t + b1) + b2                     (H * max_len scores, of x_t alone)
    out_h(t)  = sum_j sigmoid(s_h(t, j)) * real_j * (V m_j)_h / n_src     (heads h, concatenated)

``real_j``: source position j is real; ``n_src``: how many are, the padding mask alone (a mean
over positions, inside the line every student stays in: docs/pipeline.md, "What a student may
be"). A weight reads one position's content (the target's) plus the source position index and
never m_j's content, so the kind is ``MIXING``. The sigmoid keeps each weight in (0, 1) without
normalising over positions (no softmax, no division by a data-dependent sum).

Start: the final layer's bias is 0, so every weight starts near sigmoid(0) = 0.5 (the MLP's
random first outputs are small) and the student starts near half the mean of the real values,
what a teacher head with uniform attention gives, halved. Bias 0 keeps the sigmoid at its
steepest, where a large bias (start at the exact mean) would saturate it and slow the first
steps; the halving is one scale the first steps learn.

Decoding: out(t) reads x_t and the memory only (position-wise in the decoder), so a cached step
computes V m and n_src once per sentence (as the pair-gate student keeps its memory term) and
then only the new target positions; cached equals full.

Dimension letters: B batch, T target length, S source length, M max_len, D d_model, H heads,
K head dim, P hidden width, W pre-activation width (2P for gated activations).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.cache import once
from distill.modes import ACTIVATIONS, GATED, apply_activation


class DenseStudent(nn.Module):
    """``cross_dense``: per-head weights over source position indices from an MLP of the decoder
    state alone, on the site's values: D*W + W + P*H*M + H*M + D*D + D parameters.

    forward(x (B, T, D), mask (B, T), memory (B, S, D), memory_mask (B, S), cache=None)
        -> (B, T, D)
    """

    def __init__(self, max_len: int, d: int, n_heads: int, hidden: int, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
        self.max_len, self.n_heads, self.activation = max_len, n_heads, activation
        width = 2 * hidden if activation in GATED else hidden
        self.fc1 = nn.Linear(d, width)
        self.fc2 = nn.Linear(hidden, n_heads * max_len)
        nn.init.zeros_(self.fc2.bias)  # weights start near sigmoid(0) = 0.5 (module docstring)
        self.value = nn.Linear(d, d)

    def memory_side(self, memory, memory_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """What depends on the source alone, once per sentence: the values (B, S, H, K), zero at
        padded source positions, and the number of real source positions (B, 1, 1, 1)."""
        s = memory.size(1)
        if s > self.max_len:
            raise ValueError(f"{s} memory positions exceed the student's max_len {self.max_len}")
        keep = memory_mask[..., None].to(memory.dtype)
        v = (self.value(memory) * keep).unflatten(-1, (self.n_heads, -1))  # (B, S, H, K)
        count = memory_mask.sum(1).clamp(min=1).to(memory.dtype)[:, None, None, None]
        return v, count

    def weights(self, x, s: int) -> torch.Tensor:
        """Weights (B, T, H, S) of source positions 0..s-1 from the decoder states x alone."""
        h = apply_activation(self.activation, self.fc1(x))
        scores = self.fc2(h).unflatten(-1, (self.n_heads, self.max_len))[..., :s]  # (B, T, H, S)
        return torch.sigmoid(scores)

    def forward(self, x, mask, memory, memory_mask, cache=None) -> torch.Tensor:
        """With ``cache``: the memory side once per sentence, then only the new target positions
        (output t reads position t and the memory alone)."""
        v, count = once(cache, "memory", self.memory_side, memory, memory_mask)
        w = self.weights(x, v.size(1)) / count  # n_src: mask-only normalisation
        out = torch.einsum("bths,bshk->bthk", w, v).flatten(2)  # (B, T, D)
        return out * mask[..., None].to(out.dtype)

    @torch.no_grad()
    def init_from_teacher(self, core: nn.Module) -> None:
        """V := the teacher site's W_V (and bias): the values the teacher's heads mix."""
        self.value.weight.copy_(core.v_proj.weight)
        self.value.bias.copy_(core.v_proj.bias)
