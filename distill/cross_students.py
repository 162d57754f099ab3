"""Cross-attention students that read individual source positions (``cross_gate``, ``cross_slot``).

``cross_pw`` adds the decoder state to ONE vector per sentence computed from the whole flattened
memory: the decoder never meets a single source position, the bottleneck of the encoder-decoders
before attention. The two students here give every (target position, source position) pair its
own say, inside the line every student stays in (docs/pipeline.md, "What a student may be"):
linear maps, elementwise activations and gates, weights shared over (query, key) pairs, and sums
over positions whose weights are never normalised by data-dependent scores. The two differ in
kind (``distill.modes.KINDS``): the pair gates weigh a source position by a learned
compatibility of its content with the target's (gated pairs: additive attention without a
softmax, in the field's words), the slots by positions and the mask alone (mixing).

Dimension letters: B batch, T target length, S source length, M max_len, D d_model, H heads,
K head dim, P pair hidden width, W pre-activation width (2P for gated activations).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.cache import advance, once
from distill.modes import ACTIVATIONS, GATED, apply_activation


class PairGateStudent(nn.Module):
    """``cross_gate``: a gated sum over source positions, the gates made by one MLP shared by
    every (target position t, source position j) pair:

        g_h(t, j) = sigmoid(w_h . act(A LN(x_t) + B LN(m_j) + P_src[j] + P_rel[j - t]) + c_h)
        out_h(t)  = sum_j mask_j * g_h(t, j) * (V m_j)_h                 (heads h, concatenated)

    Each gate sees one pair only (no softmax, no division by a sum of gates, no q.k product of two
    projections: gated activations multiply two linear functions of the same pair input), so it
    must judge "is j what t reads?" from the two states and their positions. ``align`` training
    (``alignment_loss``) teaches the gates the teacher's attention probabilities during the
    layer-wise stage only; at inference nothing of the teacher is read. V starts as the teacher's
    W_V (``init_from_teacher``), so gates equal to the teacher's probabilities reproduce the site.

    forward(x (B, T, D), mask (B, T), memory (B, S, D), memory_mask (B, S), cache=None)
        -> (B, T, D)
    """

    def __init__(self, max_len: int, d: int, n_heads: int, hidden: int, activation: str = "swiglu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
        self.max_len, self.n_heads, self.activation = max_len, n_heads, activation
        width = 2 * hidden if activation in GATED else hidden
        self.x_norm, self.m_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.x_fc = nn.Linear(d, width)
        self.m_fc = nn.Linear(d, width, bias=False)
        self.src_pos = nn.Parameter(torch.randn(max_len, width) * 0.02)  # j
        self.rel_pos = nn.Parameter(torch.randn(2 * max_len - 1, width) * 0.02)  # j - t
        self.gate_fc = nn.Linear(hidden, n_heads)
        nn.init.constant_(self.gate_fc.bias, -math.log(max_len))  # gates ~ 1 / max_len at init
        self.value = nn.Linear(d, d)

    def _check(self, n: int, what: str) -> None:
        if n > self.max_len:
            raise ValueError(f"{n} {what} positions exceed the student's max_len {self.max_len}")

    def memory_side(self, memory, memory_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """What depends on the source alone, once per sentence: the pair pre-activation's memory
        term (B, S, W) and the values (B, S, H, K), zero at padded source positions."""
        self._check(memory.size(1), "memory")
        s = memory.size(1)
        keep = memory_mask[..., None].to(memory.dtype)
        term = self.m_fc(self.m_norm(memory)) + self.src_pos[:s]  # (B, S, W)
        v = (self.value(memory) * keep).unflatten(-1, (self.n_heads, -1))  # (B, S, H, K)
        return term, v

    def gate_logits(self, x, term, start: int = 0) -> torch.Tensor:
        """Gate logits (B, T, S, H) of target positions start..start+T-1 against every source
        position of ``term`` (``memory_side``'s first output)."""
        t, s, m = x.size(1), term.size(1), self.max_len
        self._check(start + t, "target")
        if t == 1:  # a decoding step: the offsets j - t are one contiguous slice, no gather
            rel = self.rel_pos[m - 1 - start : m - 1 - start + s][None]  # (1, S, W)
        else:
            tpos = torch.arange(start, start + t, device=x.device)
            rel = self.rel_pos[torch.arange(s, device=x.device)[None, :] - tpos[:, None] + m - 1]
        pre = self.x_fc(self.x_norm(x))[:, :, None] + term[:, None] + rel  # (B, T, S, W)
        return self.gate_fc(apply_activation(self.activation, pre))  # (B, T, S, H)

    def _combine(self, logits, v, mask) -> torch.Tensor:
        out = torch.einsum("btsh,bshk->bthk", torch.sigmoid(logits), v).flatten(2)  # (B, T, D)
        return out * mask[..., None].to(out.dtype)

    def forward(self, x, mask, memory, memory_mask, cache=None) -> torch.Tensor:
        """With ``cache``: the memory side once per sentence, then only the new target positions
        (output t reads position t and the memory alone)."""
        return self.forward_with_gates(x, mask, memory, memory_mask, cache)[0]

    def forward_with_gates(self, x, mask, memory, memory_mask, cache=None):
        """(output, gate logits (B, T, S, H)): the layer-wise stage's alignment loss reads both."""
        term, v = once(cache, "memory", self.memory_side, memory, memory_mask)
        logits = self.gate_logits(x, term, advance(cache, x.size(1)))
        return self._combine(logits, v, mask), logits

    @torch.no_grad()
    def init_from_teacher(self, core: nn.Module) -> None:
        """V := the teacher site's W_V (and bias): the values the teacher's heads mix."""
        self.value.weight.copy_(core.v_proj.weight)
        self.value.bias.copy_(core.v_proj.bias)


def slot_weights(t: int, s_len: torch.Tensor, max_len: int, offsets, width: float, start: int = 0):
    """Fixed weights (B, T, K, M) of K source "slots" per target position: slot k of target
    position t is a triangular window of half-width ``width`` centred at source position
    ``t + offsets[k]`` (clamped into the sentence), over the real source positions only, with its
    weights summing to 1. They depend on positions and the source length (the padding mask)
    alone, never on the data."""
    pos = torch.arange(max_len, device=s_len.device, dtype=torch.float32)  # (M,)
    tpos = torch.arange(start, start + t, device=s_len.device, dtype=torch.float32)  # (T,)
    off = torch.as_tensor(offsets, device=s_len.device, dtype=torch.float32)  # (K,)
    last = (s_len.float() - 1).clamp(min=0)[:, None, None]  # (B, 1, 1)
    centre = torch.minimum((tpos[:, None] + off[None, :])[None], last)  # (B, T, K)
    w = (1 - (pos - centre[..., None]).abs() / width).clamp(min=0)  # (B, T, K, M)
    w = w * (pos < s_len[:, None, None, None].float())
    return w / w.sum(-1, keepdim=True).clamp(min=1e-6)


class SlotStudent(nn.Module):
    """``cross_slot``: K source slots gathered with fixed, mask-only weights around the target
    position (``slot_weights``: windows at ``t + offset``), plus the mean over the real source
    positions, then one MLP shared by every target position:

        h_t = act(W_x LN(x_t) + sum_k W_k LN(slot_k(t)) + W_g LN(mean_j m_j) + b)
        out_t = W_2 LN(h_t) + b_2

    No weight depends on the data: the slots are fixed averages, the MLP reads them as inputs.

    forward(x (B, T, D), mask (B, T), memory (B, S, D), memory_mask (B, S), cache=None)
        -> (B, T, D)
    """

    OFFSETS = (-3, -2, -1, 0, 1, 2, 3)

    def __init__(self, max_len: int, d: int, hidden: int, activation: str = "leaky_relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
        self.max_len, self.activation = max_len, activation
        k = len(self.OFFSETS) + 1  # the slots and the sentence mean
        width = 2 * hidden if activation in GATED else hidden
        self.x_norm, self.slot_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.x_fc = nn.Linear(d, width)
        self.slot_fc = nn.Linear(k * d, width, bias=False)
        self.hidden_norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, d)

    def slots(self, memory, memory_mask, t: int, start: int = 0) -> torch.Tensor:
        """(B, T, K * D): the normalised slots of target positions start..start+t-1."""
        s = memory.size(1)
        if s > self.max_len or start + t > self.max_len:
            raise ValueError(f"positions exceed the student's max_len {self.max_len}")
        s_len = memory_mask.sum(1)
        w = slot_weights(t, s_len, self.max_len, self.OFFSETS, 2.0, start)[..., :s]
        mem = memory * memory_mask[..., None].to(memory.dtype)
        gathered = torch.einsum("btks,bsd->btkd", w.to(mem.dtype), mem)  # (B, T, K-1, D)
        mean = mem.sum(1) / s_len.clamp(min=1)[:, None].to(mem.dtype)  # (B, D)
        allk = torch.cat([gathered, mean[:, None, None].expand(-1, t, 1, -1)], dim=2)
        return self.slot_norm(allk).flatten(2)

    def _positions(self, x, mask, slots) -> torch.Tensor:
        h = apply_activation(self.activation, self.x_fc(self.x_norm(x)) + self.slot_fc(slots))
        return self.fc2(self.hidden_norm(h)) * mask[..., None].to(x.dtype)

    def forward(self, x, mask, memory, memory_mask, cache=None) -> torch.Tensor:
        """With ``cache``: the new positions' slots only (fixed weights, no state but the
        position count)."""
        start = advance(cache, x.size(1))
        return self._positions(x, mask, self.slots(memory, memory_mask, x.size(1), start))


def alignment_loss(logits, probs, mask, memory_mask) -> torch.Tensor:
    """Binary cross-entropy of gate logits (B, T, S, H) against the teacher's attention
    probabilities (B, H, T, S), over real (target, source) pairs: gates learn where the teacher
    looks (layer-wise stage only)."""
    target = probs.permute(0, 2, 3, 1).to(logits.dtype)  # (B, T, S, H)
    pairs = (mask[:, :, None] & memory_mask[:, None, :])[..., None].expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits[pairs], target[pairs])
