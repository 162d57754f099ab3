"""Self-attention students that mix positions with learned, content-blind weights (``enc_mix``,
``dec_mix``).

The flat MLPs (``alr``, ``dec_self``) replace a self-attention site with millions of weights, one
per (input position, feature, hidden unit). A mixing student keeps attention's shape, a weighted
sum of per-position values, and replaces what makes it attention, weights from q.k scores and a
softmax, by one learned weight per (head, query position, key position):

    out_h(t) = sum_j A_h[t, j] * allowed(t, j) * (V x_j)_h / n(t)      (heads h, concatenated)

``allowed(t, j)``: key j is a real position (and j <= t in the decoder); ``n(t)``: how many keys
are allowed, which depends on the padding mask alone (a mean over positions, inside the line every
student stays in: docs/pipeline.md, "What a student may be"). No weight reads two positions'
content, so the kind is ``MIXING``. V starts as the teacher site's W_V (``init_from_teacher``) and
A as all ones: the student begins as the mean of the allowed values, what a teacher head with
uniform attention gives. Dividing by n(t) rather than starting A at 1 / max_len is that choice:
the start is the exact mean for every length, not a sum shrunk by max_len.

Dimension letters: B batch, L length, n new positions, M max_len, D d_model, H heads, K head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.cache import advance, append, recompute


class MixStudent(nn.Module):
    """A learned (head, query position, key position) mixing of the site's values: D*D + D +
    H*M*M parameters. Causal (``dec_mix``): with a cache it keeps the values of earlier positions
    and their mask, so a step costs O(t * D) and equals the full pass.

    forward(x (B, L, D), mask (B, L), memory=None, memory_mask=None, cache=None) -> (B, L, D)
    """

    def __init__(self, max_len: int, d: int, n_heads: int, causal: bool = False):
        super().__init__()
        self.max_len, self.n_heads, self.causal = max_len, n_heads, causal
        self.value = nn.Linear(d, d)
        self.mix = nn.Parameter(torch.ones(n_heads, max_len, max_len))  # A: the mean at init

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None) -> torch.Tensor:
        """With ``cache`` (causal only; a non-causal site re-runs over the prefix): only the new
        positions, reading the cached values of the earlier ones."""
        if cache is not None and not self.causal:
            return recompute(self, x, mask, memory, memory_mask, cache)
        n = x.size(1)
        start = advance(cache, n)
        if start + n > self.max_len:
            raise ValueError(f"{start + n} positions exceed the student's max_len {self.max_len}")
        real = mask[..., None].to(x.dtype)
        v = (self.value(x) * real).unflatten(-1, (self.n_heads, -1))  # (B, n, H, K)
        v, keys = append(cache, "v", v, 1), append(cache, "mask", mask, 1)  # (B, L, H, K), (B, L)
        allowed = keys[:, None, :].expand(-1, n, -1)  # (B, n, L)
        if self.causal:
            tpos = torch.arange(start, start + n, device=x.device)
            jpos = torch.arange(keys.size(1), device=x.device)
            allowed = allowed & (jpos[None, :] <= tpos[:, None])
        allowed = allowed.to(x.dtype)
        count = allowed.sum(-1, keepdim=True).clamp(min=1)  # (B, n, 1): mask-only
        weights = self.mix[:, start : start + n, : keys.size(1)] * (allowed / count)[:, None]
        out = torch.einsum("bhtj,bjhk->bthk", weights, v).flatten(2)  # (B, n, D)
        return out * real

    @torch.no_grad()
    def init_from_teacher(self, core: nn.Module) -> None:
        """V := the teacher site's W_V (and bias); the identity where the site has none (shaped
        attention mixes the normalised input itself)."""
        if hasattr(core, "v_proj"):
            self.value.weight.copy_(core.v_proj.weight)
            self.value.bias.copy_(core.v_proj.bias)
        else:
            self.value.weight.copy_(torch.eye(self.value.in_features))
            self.value.bias.zero_()
