"""The teacher's layer layouts (``ModelConfig.layout``), which ``Seq2SeqTransformer`` stacks:
    pre_ln    x + W_O(Attn(LN x)), then x + MLP(LN x)      (block pre_ln, norm pre: the default)
    post_ln   LN(x + W_O(Attn x)), then LN(x + MLP x)      (block pre_ln, norm post: Marian's)
    sas       A·LN(x) (shaped attention, no skip, no W_V / W_O), then x + g·MLP(LN x)
    sas_p     A·LN(x) + g·MLP(LN x): one norm, the branches in parallel, no skip
SAS and SAS-P are "Simplifying Transformer Blocks" (He & Hofmann, ICLR 2024): ``ShapedAttention``
says what A is and why cross-attention keeps the standard sublayer in both. The primitives
(attention core, sublayers, dropout) are in ``distill.blocks``.

Dimension letters: B batch, L length, D d_model, H heads, K head dim (D / H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.blocks import (
    AttentionCore,
    AttentionSublayer,
    Dropout,
    FeedForwardSublayer,
    ModelConfig,
    allowed_keys,
    feed_forward,
    merge_heads,
    split_heads,
)
from distill.cache import extend_self_cache, part, running_sum

# --- simplified attention and sublayers (SAS, SAS-P) ---------------------------------------------


class ShapedAttention(nn.Module):
    """Shaped self-attention without value and output projections ("Simplifying Transformer
    Blocks", He & Hofmann, ICLR 2024). Per head h, on head h's slice x_h of the input (V = I):
        out_h = A_h x_h,   A_h = alpha_h I + beta_h softmax(Q_h K_h^T / sqrt(K)) - gamma_h C
    heads concatenated (no W_O). C is uniform attention over the allowed keys: the non-pad ones,
    and in the decoder those at or before the query (the causal prefix). W_Q starts at zero and
    alpha = beta = gamma = 1, so softmax = C and A = I at initialisation. The gains are trained.

    Self-attention only: the identity term needs queries and keys to be the same positions, which
    cross-attention's are not (target queries, source keys), so cross-attention stays the
    standard sublayer with its skip, W_V and W_O: without them the decoder's own state would have
    no path through it. Attention dropout is not applied (the paper trains without it).
    With ``cache`` (causal only) it keeps the keys and values, and running sums for C.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.alpha = nn.Parameter(torch.ones(n_heads, 1, 1))  # identity
        self.beta = nn.Parameter(torch.ones(n_heads, 1, 1))  # softmax attention
        self.gamma = nn.Parameter(torch.ones(n_heads, 1, 1))  # uniform (centring) attention
        self.reset_query()

    def reset_query(self) -> None:
        """W_Q = 0: every score is 0 and softmax is C, so A starts as the identity."""
        nn.init.zeros_(self.q_proj.weight)
        nn.init.zeros_(self.q_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(x, self.n_heads)  # (B, H, L, K)

    def _combine(self, v, attended, centred) -> torch.Tensor:
        return merge_heads(self.alpha * v + self.beta * attended - self.gamma * centred)

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None) -> torch.Tensor:
        if memory is not None:
            raise ValueError("shaped attention is self-attention: it takes no memory")
        if cache is not None and not self.causal:
            raise ValueError("only causal shaped attention decodes incrementally")
        v = self._heads(x)
        q, k = self._heads(self.q_proj(x)), self._heads(self.k_proj(x))
        real = mask[:, None, :, None].to(v.dtype)  # (B, 1, L, 1)
        if self.causal:  # prefix means
            total = running_sum(cache, "sum", (v * real).cumsum(2))  # (B, H, L, K)
            centred = total / running_sum(cache, "count", real.cumsum(2)).clamp(min=1)
        else:
            centred = (v * real).sum(2, keepdim=True) / real.sum(2, keepdim=True).clamp(min=1)
        k, v_all, mask = extend_self_cache(cache, k, v, mask)
        allowed = allowed_keys(mask, self.causal, x.size(1))
        attended = F.scaled_dot_product_attention(q, k, v_all, attn_mask=allowed)
        return self._combine(v, attended, centred)


class ShapedAttentionSublayer(nn.Module):
    """SAS's attention sub-block: A·LN(x), with no skip and no W_V / W_O."""

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.attn = ShapedAttention(cfg.d_model, cfg.n_heads, causal)

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None) -> torch.Tensor:
        return self.attn(self.norm(x), mask, memory, memory_mask, cache=cache)


class GainedFeedForwardSublayer(FeedForwardSublayer):
    """x + g·dropout(MLP(LN(x))) with a trained gain g, 0.1 at the start (the paper's MLP
    residual gain, O(1/sqrt(depth))): a block without an attention skip starts near LN(x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.gain = nn.Parameter(torch.tensor(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gain * self.drop(self.ff(self.norm(x)))


class CrossAttentionBranch(nn.Module):
    """SAS-P's cross-attention: W_O(cross-attention(h, memory)) on the layer's normalised input,
    added beside the other branches (no norm or skip of its own)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = AttentionCore(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = Dropout(cfg.dropout)

    def forward(self, h, mask, memory, memory_mask, cache: dict | None = None) -> torch.Tensor:
        return self.drop(self.out_proj(self.attn(h, mask, memory, memory_mask, cache=cache)))


# --- layers ---------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward sublayer (pre_ln, post-LN, or SAS's sublayers)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sas = cfg.block == "sas"
        self.self_attn_sublayer = ShapedAttentionSublayer(cfg) if sas else AttentionSublayer(cfg)
        self.ff_sublayer = GainedFeedForwardSublayer(cfg) if sas else FeedForwardSublayer(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.ff_sublayer(self.self_attn_sublayer(x, mask))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention, feed-forward (SAS: shaped self-attention and the
    gained feed-forward sublayer; cross-attention is the standard sublayer in every block)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sas = cfg.block == "sas"
        self_attn = ShapedAttentionSublayer if sas else AttentionSublayer
        self.self_attn_sublayer = self_attn(cfg, causal=True)
        self.cross_attn_sublayer = AttentionSublayer(cfg)
        self.ff_sublayer = GainedFeedForwardSublayer(cfg) if sas else FeedForwardSublayer(cfg)

    def forward(self, y, mask, memory, memory_mask, cache: dict | None = None) -> torch.Tensor:
        y = self.self_attn_sublayer(y, mask, cache=part(cache, "self"))
        y = self.cross_attn_sublayer(y, mask, memory, memory_mask, cache=part(cache, "cross"))
        return self.ff_sublayer(y)


class ParallelEncoderLayer(nn.Module):
    """SAS-P: x -> A·LN(x) + g·MLP(LN(x)), one LayerNorm, both branches on its output; the only
    path for x itself is A's identity term alpha·I (the paper's skipless parallel block)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn_sublayer = ShapedAttentionSublayer(cfg)  # its norm: the layer's one norm
        self.ff = feed_forward(cfg)
        self.gain = nn.Parameter(torch.tensor(0.1))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.self_attn_sublayer.norm(x)
        return self.self_attn_sublayer.attn(h, mask) + self.gain * self.drop(self.ff(h))


class ParallelDecoderLayer(nn.Module):
    """SAS-P in the decoder: causal shaped self-attention, cross-attention (W_O·CrossAttn) and
    the gained MLP, all three on one LN(y), summed; no skip but the self-attention's alpha·I."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn_sublayer = ShapedAttentionSublayer(cfg, causal=True)
        self.cross_attn_sublayer = CrossAttentionBranch(cfg)
        self.ff = feed_forward(cfg)
        self.gain = nn.Parameter(torch.tensor(0.1))
        self.drop = Dropout(cfg.dropout)

    def forward(self, y, mask, memory, memory_mask, cache: dict | None = None) -> torch.Tensor:
        h = self.self_attn_sublayer.norm(y)
        own = self.self_attn_sublayer.attn(h, mask, cache=part(cache, "self"))
        cross = self.cross_attn_sublayer(h, mask, memory, memory_mask, part(cache, "cross"))
        return own + cross + self.gain * self.drop(self.ff(h))
