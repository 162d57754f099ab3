"""The teacher's building blocks, read top to bottom: its config and the teacher families (the
presets of its structure), dropout, the attention core and the standard sublayers. The layer
layouts built from them (pre-LN, post-LN, SAS, SAS-P) are in ``distill.layers``; the helpers of a
site's decoding cache in ``distill.cache``.

Dimension letters: B batch, L length, D d_model, H heads, K head dim (D / H).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.cache import extend_self_cache, once


@dataclass
class ModelConfig:
    """Teacher dimensions and structure; defaults are the paper's (6+6 layers, d 128, 8 heads,
    FFN 512, pre-LN).

    ``family`` says where the teacher comes from (a row of ``FAMILIES``). The structure is read
    from fields that each mean one thing: ``block`` (the layer's sublayers), ``norm`` (where the
    standard block's LayerNorms sit), ``positions`` (the sinusoidal table's layout) and
    ``final_norm`` (a LayerNorm after each stack). Left unset (None), the last three are the
    family's; a converted family (marian) always has its own, whatever the config says.
    """

    vocab_size: int = 8000
    d_model: int = 128
    n_heads: int = 8
    d_ff: int = 512
    n_enc: int = 6
    n_dec: int = 6
    dropout: float = 0.1
    max_len: int = 50
    family: str = "distill"  # a row of FAMILIES: "distill" (trained here) or "marian" (converted)
    activation: str = "relu"  # of the feed-forward sublayers: relu, swish (Marian's) or gelu
    block: str = "pre_ln"  # layer layout: pre_ln (the standard block), sas or sas_p (see BLOCKS)
    norm: str | None = None  # "pre": LN before each sublayer; "post": LN after the residual sum
    positions: str | None = None  # sinusoidal table: sin_cos_interleaved or sin_cos_halves
    final_norm: bool | None = None  # a LayerNorm after the last layer of each stack

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        row = FAMILIES[self.family]
        for name in FAMILY_FIELDS:
            if getattr(self, name) is None or row.converted:
                setattr(self, name, getattr(row, name))
        for name, known in (("block", BLOCKS), ("norm", NORMS), ("positions", POSITIONS)):
            if getattr(self, name) not in known:
                raise ValueError(
                    f"{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}"
                )
        if not isinstance(self.final_norm, bool):
            raise ValueError(f"final_norm must be true or false, got {self.final_norm!r}")
        if self.block not in row.blocks:
            raise ValueError(
                f"block {self.block!r} is not one of the {self.family} family's "
                f"({', '.join(row.blocks)})"
            )
        if self.block != "pre_ln" and self.norm != "pre":
            raise ValueError(f"block {self.block!r} normalises before its sublayers: norm 'pre'")
        if self.activation not in FFN_ACTIVATIONS:
            known = ", ".join(FFN_ACTIVATIONS)
            raise ValueError(f"activation must be one of {known}, got {self.activation!r}")
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_enc", "n_dec", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def pre_norm(self) -> bool:
        """LayerNorm before each sublayer (``norm`` "pre") rather than after the residual sum."""
        return self.norm == "pre"

    @property
    def layout(self) -> str:
        """The layer layout (one of ``LAYOUTS``): the block, or "post_ln" for the standard block
        with norm "post". Which sites a teacher has depends on it (``distill.model.SITES``)."""
        return self.block if self.pre_norm else "post_ln"

    @property
    def residual_sites(self) -> bool:
        """Whether the attention sublayers and layers return their input plus a change: pre-LN
        standard blocks only (post-LN normalises the sum; SAS and SAS-P have no attention skip)."""
        return self.layout == "pre_ln"

    def family_deltas(self) -> dict:
        """The fields as a dict, less the structure its family's row gives: what a teacher run
        stores as its settings (runs from before ``FAMILY_FIELDS`` existed stored none)."""
        row = FAMILIES[self.family]
        fields = dataclasses.asdict(self)
        return {k: v for k, v in fields.items() if k not in FAMILY_FIELDS or v != getattr(row, k)}


# Layer layouts (distill.layers; SAS and SAS-P: "Simplifying Transformer Blocks", He & Hofmann,
# ICLR 2024):
#   pre_ln  x + Attn(LN x), then x + MLP(LN x)       (the standard block; norm "post": post_ln)
#   sas     A·LN(x): shaped self-attention, no skip, no W_V / W_O; then x + g·MLP(LN x)
#   sas_p   A·LN(x) + g·MLP(LN x): both read one normalised input, no skip but A's alpha·I
# Cross-attention stays the standard sublayer (W_Q, W_K, W_V, W_O) in both: see ShapedAttention.
BLOCKS = ("pre_ln", "sas", "sas_p")
LAYOUTS = (*BLOCKS, "post_ln")  # ModelConfig.layout: the blocks, and the standard block post-LN
NORMS = ("pre", "post")
# sin and cos interleaved (Vaswani et al.), or all sines then all cosines (Marian's, fairseq's)
POSITIONS = ("sin_cos_interleaved", "sin_cos_halves")


@dataclass(frozen=True)
class Family:
    """A teacher family: where its teachers come from and the structure that gives them.

    norm, positions, final_norm   the ``ModelConfig`` fields it fills (``FAMILY_FIELDS``)
    blocks                        the layer layouts (``ModelConfig.block``) its teachers may have
    converted                     its teachers are converted checkpoints of exactly this
                                  structure: its values replace a config's (a recipe's model
                                  section starts from the distill family's values)
    card                          the model card's first words on the architecture
    """

    norm: str
    positions: str
    final_norm: bool
    blocks: tuple[str, ...]
    converted: bool
    card: str


# The teacher families: a new one is a row here, a converter of its checkpoints (as
# distill/marian.py) and a tokenizer class (distill/tokenizer.py); docs/DESIGN.md, "Teacher
# families".
FAMILIES = {
    "distill": Family(
        norm="pre",
        positions="sin_cos_interleaved",
        final_norm=True,
        blocks=BLOCKS,
        converted=False,
        card="A {norm}-LN encoder-decoder Transformer",
    ),
    "marian": Family(  # transformers' MarianMTModel (opus-mt), converted by distill.marian
        norm="post",
        positions="sin_cos_halves",
        final_norm=False,
        blocks=("pre_ln",),
        converted=True,
        card="A MarianMTModel (post-LN encoder-decoder) converted to distill's modules",
    ),
}
FAMILY_FIELDS = ("norm", "positions", "final_norm")  # the ModelConfig fields a family fills
FFN_ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU}


class _Dropout(torch.autograd.Function):
    """Inverted dropout from a quarter of the random draws: each 64-bit draw gives the keep/drop
    decisions of four elements (16 bits each), where ``F.dropout``'s Bernoulli sampling makes
    one draw per element. On CPU that sampling was a quarter of a training step at dropout 0.1
    (bench/teacher_speed.py). The drop probability is ``p`` rounded to a multiple of 2^-16."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        draws = bits.random_(-(2**63), 2**63 - 1).view(torch.int16)[:n].view(x.shape)
        dropped = round(p * 65536)
        mask = (draws >= dropped - 32768).to(x.dtype).mul_(65536 / (65536 - dropped))
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` with fewer random draws (``_Dropout``); the identity when not training."""
    return _Dropout.apply(x, p) if training and p > 0 else x


class Dropout(nn.Module):
    """``nn.Dropout`` through ``dropout``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, K)."""
    b, n, d = x.shape
    return x.view(b, n, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, K) -> (B, L, D): the heads concatenated."""
    b, _, n, _ = x.shape
    return x.transpose(1, 2).reshape(b, n, -1)


def allowed_keys(mask: torch.Tensor, causal: bool, n: int) -> torch.Tensor:
    """(B, 1, n or 1, keys) bool: the keys the last ``n`` query positions may attend to, of the
    ``keys`` positions in ``mask`` (B, keys): the real ones, and with ``causal`` those at or
    before the query's own position (query i is position keys - n + i)."""
    allowed = mask[:, None, None, :]  # (B, 1, 1, keys)
    if causal:
        keys = mask.size(1)
        pos = torch.arange(keys, device=mask.device)
        allowed = allowed & (pos[None, :] <= pos[keys - n :, None])
    return allowed


class AttentionCore(nn.Module):
    """Q/K/V projections + scaled dot-product softmax attention of all heads, without W_O.

    Self-attention when ``memory`` is None (causal if ``causal``), cross-attention otherwise.
    ``mask`` (B, L) is True at real tokens; padded query rows are computed but ignored downstream.
    With ``cache`` (``distill.cache``) it attends from the new positions ``x`` (B, n, D) over the
    cached K/V of earlier positions (self-attention) or of the memory (cross-attention, computed
    once per sentence).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool = False):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(x, self.n_heads)  # (B, H, L, K)

    def _keys_values(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(self.k_proj(h)), self._heads(self.v_proj(h))

    def _attend(self, q, k, v, allowed) -> torch.Tensor:
        if self.training and self.dropout > 0:  # SDPA's own dropout is the slow sampling
            scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, H, L, keys)
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            out = dropout(weights, self.dropout, True) @ v  # (B, H, L, K)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, L, K)
        return merge_heads(out)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: dict | None = None,
    ) -> torch.Tensor:
        q = self._heads(self.q_proj(x))
        if memory is not None:
            k, v = once(cache, "memory", self._keys_values, memory)
            return self._attend(q, k, v, memory_mask[:, None, None, :])  # (B, 1, 1, S)
        k, v, mask = extend_self_cache(cache, *self._keys_values(x), mask)
        return self._attend(q, k, v, allowed_keys(mask, self.causal, x.size(1)))

    def probabilities(self, x, memory, memory_mask) -> torch.Tensor:
        """Cross-attention weights (B, H, T, S) of queries ``x`` over ``memory``: what the
        pair-gate students learn to imitate in the layer-wise stage (never read at inference)."""
        q, k = self._heads(self.q_proj(x)), self._heads(self.k_proj(memory))
        scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, H, T, S)
        return torch.softmax(scores.masked_fill(~memory_mask[:, None, None, :], float("-inf")), -1)


class AttentionSublayer(nn.Module):
    """x + dropout(W_O(core(LN(x)))) (pre-LN) or LN(x + dropout(W_O(core(x)))) (post-LN)."""

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.norm = nn.LayerNorm(cfg.d_model)
        self.attn = AttentionCore(cfg.d_model, cfg.n_heads, cfg.dropout, causal)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None) -> torch.Tensor:
        h = self.norm(x) if self.pre_norm else x
        h = self.attn(h, mask, memory, memory_mask, cache=cache)
        out = x + self.drop(self.out_proj(h))
        return out if self.pre_norm else self.norm(out)


def feed_forward(cfg: ModelConfig) -> nn.Sequential:
    """fc2(act(fc1(x))) with dropout after the activation."""
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(cfg.d_model, cfg.d_ff),
            act=FFN_ACTIVATIONS[cfg.activation](),
            drop=Dropout(cfg.dropout),
            fc2=nn.Linear(cfg.d_ff, cfg.d_model),
        )
    )


class FeedForwardSublayer(nn.Module):
    """x + dropout(W2 act(W1 LN(x))) (pre-LN) or LN(x + dropout(W2 act(W1 x))) (post-LN)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.norm = nn.LayerNorm(cfg.d_model)
        self.ff = feed_forward(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(self.ff(self.norm(x)))
        return self.norm(x + self.drop(self.ff(x)))
