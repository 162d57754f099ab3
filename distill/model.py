"""The teacher: a compact encoder-decoder Transformer with named replacement sites.

Two *families* share the code: ``distill`` (ours: pre-LN, a final norm after each stack,
interleaved sinusoidal positions) and ``marian`` (transformers' MarianMTModel, which
``distill.marian`` converts into this class: post-LN, no final norms, sin/cos halves).
Read top to bottom: config and presets, attention core, sublayers, layers, the model.
Attention is split into a *core* (per-head Q/K/V projections and softmax, output = concatenated
heads before W_O) and the output projection W_O, so ALR/ASLR students can replace the core and keep
W_O. Every module a student may replace is a *site* with a stable name (see ``list_sites``).

Call signatures shared by a site and any student that replaces it:
    encoder.{i}.self_attn   core(x, mask)                          x = LN(h) (pre-LN), h (post-LN)
    encoder.{i}.sublayer0   sublayer(x, mask)                      x + W_O(core(LN(x))) (pre-LN),
                                                                   LN(x + W_O(core(x))) (post-LN)
    encoder.{i}             layer(x, mask)                         whole encoder layer
    decoder.{i}.self_attn   core(y, mask)                          causal in target positions
    decoder.{i}.cross_attn  core(y, mask, memory, memory_mask)     keys/values from the encoder
Only the teacher's own ``AttentionCore`` also accepts ``cache=`` (incremental decoding).

Dimension letters: B batch, S source length, T target length, L either, D d_model, H heads,
K head dim (D / H), V vocabulary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: F401 (re-exported)


@dataclass
class ModelConfig:
    """Teacher dimensions; defaults are the paper's (6+6 layers, d 128, 8 heads, FFN 512)."""

    vocab_size: int = 8000
    d_model: int = 128
    n_heads: int = 8
    d_ff: int = 512
    n_enc: int = 6
    n_dec: int = 6
    dropout: float = 0.1
    max_len: int = 50
    family: str = "distill"  # "distill" (pre-LN) or "marian" (post-LN, see the module docstring)
    activation: str = "relu"  # of the feed-forward sublayers: relu, swish (Marian's) or gelu

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
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
        """LayerNorm before each sublayer (ours) rather than after the residual (Marian)."""
        return self.family == "distill"


FAMILIES = ("distill", "marian")
FFN_ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU}


# Presets as data; recipe YAMLs repeat the values they use so a run dir is self-describing.
PRESETS: dict[str, dict] = {
    # The unit tests' in-memory model (no corpus); the `tiny` recipe configs train another one.
    "unit": dict(vocab_size=96, d_model=16, n_heads=2, d_ff=32, n_enc=2, n_dec=2, max_len=8),
    "demo": dict(d_model=128, n_heads=8, d_ff=512, n_enc=3, n_dec=3, max_len=32, dropout=0.0),
    "paper": dict(d_model=128, n_heads=8, d_ff=512, n_enc=6, n_dec=6, max_len=50),
}


def sinusoidal_positions(n: int, d: int, halves: bool = False) -> torch.Tensor:
    """(n, d) fixed sinusoidal position table (Vaswani et al.): sin and cos interleaved, or
    with ``halves`` all sines first and then all cosines (Marian's layout)."""
    if halves:  # computed as MarianSinusoidalPositionalEmbedding does (float64, then float32)
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        angle = pos / torch.pow(10000.0, 2 * (torch.arange(d, dtype=torch.float64) // 2) / d)
        return torch.cat([angle[:, 0::2].sin(), angle[:, 1::2].cos()], dim=1).float()
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


def recompute_step(module: nn.Module, x, mask, cache: dict, memory=None, memory_mask=None):
    """Incremental step of a site that cannot step exactly: keep its inputs in ``cache`` and
    re-run it over the whole prefix (only this site recomputes). Returns the new positions."""
    if "x" in cache:
        x, mask = torch.cat([cache["x"], x], dim=1), torch.cat([cache["mask"], mask], dim=1)
    n = x.size(1) - (cache["x"].size(1) if "x" in cache else 0)
    cache["x"], cache["mask"] = x, mask
    out = module(x, mask) if memory is None else module(x, mask, memory, memory_mask)
    return out[:, -n:]


def site_step(module: nn.Module, x, mask, cache: dict, memory=None, memory_mask=None):
    """One incremental step of a decoder site: ``x`` (B, n, D) and ``mask`` (B, n) hold only the
    new positions, ``cache`` the site's own state from earlier steps. A module with a ``step``
    method (the teacher's attention core, the decoder students) updates its state itself, any
    other falls back to ``recompute_step``. ``memory`` is passed to cross-attention sites only."""
    step = getattr(module, "step", None)
    if step is None:
        return recompute_step(module, x, mask, cache, memory, memory_mask)
    return step(x, mask, cache) if memory is None else step(x, mask, cache, memory, memory_mask)


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


class AttentionCore(nn.Module):
    """Q/K/V projections + scaled dot-product softmax attention of all heads, without W_O.

    Self-attention when ``memory`` is None (causal if ``causal``), cross-attention otherwise.
    ``mask`` (B, L) is True at real tokens; padded query rows are computed but ignored downstream.
    ``step`` is the incremental form: cached K/V of earlier positions (self-attention) or of the
    memory (cross-attention, computed once per sentence).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool = False):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, L, K)

    def _attend(self, q, k, v, allowed) -> torch.Tensor:
        if self.training and self.dropout > 0:  # SDPA's own dropout is the slow sampling
            scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, H, L, keys)
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            out = dropout(weights, self.dropout, True) @ v  # (B, H, L, K)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, L, K)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self._heads(self.q_proj(x))
        if memory is not None:
            k, v = self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
            return self._attend(q, k, v, memory_mask[:, None, None, :])  # (B, 1, 1, S)
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        allowed = mask[:, None, None, :]  # (B, 1, 1, L)
        if self.causal:
            n = x.size(1)
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        return self._attend(q, k, v, allowed)

    def step(self, x, mask, cache: dict, memory=None, memory_mask=None) -> torch.Tensor:
        """``forward`` on the new positions ``x`` (B, n, D) after those already in ``cache``."""
        q = self._heads(self.q_proj(x))
        if memory is not None:
            if "k" not in cache:
                cache["k"] = self._heads(self.k_proj(memory))
                cache["v"] = self._heads(self.v_proj(memory))
            return self._attend(q, cache["k"], cache["v"], memory_mask[:, None, None, :])
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            mask = torch.cat([cache["mask"], mask], dim=1)
        cache["k"], cache["v"], cache["mask"] = k, v, mask
        keys, n = k.size(2), x.size(1)
        allowed = mask[:, None, None, :]  # (B, 1, 1, keys)
        if self.causal:  # query i is position keys - n + i
            pos = torch.arange(keys, device=x.device)
            allowed = allowed & (pos[None, :] <= pos[keys - n :, None])
        return self._attend(q, k, v, allowed)


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
        """With ``cache`` (decoder sites), ``x`` holds only the new positions (``site_step``)."""
        h = self.norm(x) if self.pre_norm else x
        if cache is not None:
            h = site_step(self.attn, h, mask, cache, memory, memory_mask)
        elif memory is not None:
            h = self.attn(h, mask, memory, memory_mask)
        else:
            h = self.attn(h, mask)
        out = x + self.drop(self.out_proj(h))
        return out if self.pre_norm else self.norm(out)


class FeedForwardSublayer(nn.Module):
    """x + dropout(W2 act(W1 LN(x))) (pre-LN) or LN(x + dropout(W2 act(W1 x))) (post-LN)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.norm = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff),
            FFN_ACTIVATIONS[cfg.activation](),
            Dropout(cfg.dropout),
            nn.Linear(cfg.d_ff, cfg.d_model),
        )
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(self.ff(self.norm(x)))
        return self.norm(x + self.drop(self.ff(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.sublayer0 = AttentionSublayer(cfg)
        self.sublayer1 = FeedForwardSublayer(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.sublayer1(self.sublayer0(x, mask))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.sublayer0 = AttentionSublayer(cfg, causal=True)  # self-attention
        self.sublayer1 = AttentionSublayer(cfg)  # cross-attention
        self.sublayer2 = FeedForwardSublayer(cfg)

    def forward(self, y, mask, memory, memory_mask, cache: dict | None = None) -> torch.Tensor:
        if cache is None:
            y = self.sublayer0(y, mask)
            y = self.sublayer1(y, mask, memory, memory_mask)
        else:
            y = self.sublayer0(y, mask, cache=cache.setdefault("self", {}))
            y = self.sublayer1(y, mask, memory, memory_mask, cache=cache.setdefault("cross", {}))
        return self.sublayer2(y)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder with separate source/target embeddings and sinusoidal positions; the
    stacks end in a LayerNorm in the pre-LN family (post-LN layers already end in one)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        positions = sinusoidal_positions(cfg.max_len, cfg.d_model, halves=not cfg.pre_norm)
        self.register_buffer("positions", positions, False)
        self.embed_drop = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_enc))
        final_norm = nn.LayerNorm if cfg.pre_norm else (lambda d: nn.Identity())
        self.encoder_norm = final_norm(cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_dec))
        self.decoder_norm = final_norm(cfg.d_model)
        self.generator = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.apply(_init_weights)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        n = ids.size(1)
        if start + n > self.cfg.max_len:
            raise ValueError(f"sequence of {start + n} tokens exceeds max_len {self.cfg.max_len}")
        x = table(ids) * math.sqrt(self.cfg.d_model) + self.positions[start : start + n]
        return self.embed_drop(x)  # (B, L, D)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> memory (B, S, D) after the final encoder norm, and mask (B, S)."""
        mask = src != PAD_ID
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        cache: list[dict] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """tgt_in (B, T) -> logits (B, T, V). With ``cache`` (one dict per layer, empty at the first
        step) tgt_in holds only the positions from ``start`` on: every decoder site, teacher or
        student, keeps its own incremental state there (``site_step``)."""
        return self.generator(self.decoder_states(tgt_in, memory, memory_mask, cache, start))

    def decoder_states(self, tgt_in, memory, memory_mask, cache=None, start=0) -> torch.Tensor:
        """``decode`` without the output layer: the final decoder states (B, T, D)."""
        mask = tgt_in != PAD_ID
        y = self._embed(self.tgt_embed, tgt_in, start)
        for i, layer in enumerate(self.decoder):
            y = layer(y, mask, memory, memory_mask, None if cache is None else cache[i])
        return self.decoder_norm(y)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V)."""
        memory, memory_mask = self.encode(src)
        return self.decode(tgt_in, memory, memory_mask)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
        with torch.no_grad():
            module.weight[PAD_ID].zero_()


# --- sites ---------------------------------------------------------------------------------------

# The one table of replaceable sites: (stack, part) -> the module under layer i that a student
# replaces ("" part: the whole layer; "" path: the layer itself). Site names are
# "<stack>.<i>[.<part>]"; list_sites, site_path and the name check all read this table.
SITES = {
    ("encoder", "self_attn"): "sublayer0.attn",
    ("encoder", "sublayer0"): "sublayer0",
    ("encoder", ""): "",
    ("decoder", "self_attn"): "sublayer0.attn",
    ("decoder", "cross_attn"): "sublayer1.attn",
}
STACKS = ("encoder", "decoder")
_SITE_RE = re.compile(
    rf"^({'|'.join(STACKS)})\.(\d+)(?:\.({'|'.join(sorted({p for _, p in SITES if p}))}))?$"
)


def site_stack(site: str) -> str:
    """The stack of a site name: "encoder" or "decoder" (whose padding mask applies)."""
    return site.split(".", 1)[0]


def list_sites(cfg: ModelConfig) -> list[str]:
    """Every replaceable site name, encoder first, in layer order."""
    sites = []
    for stack in STACKS:
        for i in range(cfg.n_enc if stack == "encoder" else cfg.n_dec):
            sites += [f"{stack}.{i}" + (f".{p}" if p else "") for st, p in SITES if st == stack]
    return sites


def site_path(site: str, cfg: ModelConfig | None = None) -> str:
    """Site name -> module path for ``get_submodule``; ValueError names an unknown site."""
    m = _SITE_RE.match(site)
    ok = m is not None and (m.group(1), m.group(3) or "") in SITES
    if ok and cfg is not None:
        ok = int(m.group(2)) < (cfg.n_enc if m.group(1) == "encoder" else cfg.n_dec)
    if not ok:
        known = ", ".join(list_sites(cfg)) if cfg else "encoder.I.self_attn, ..."
        raise ValueError(f"unknown site '{site}' (known: {known})")
    stack, idx, part = m.group(1), m.group(2), m.group(3) or ""
    inner = SITES[(stack, part)]
    return f"{stack}.{idx}" + (f".{inner}" if inner else "")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_count(n: int) -> str:
    """A parameter count as the tables print it: 19.70M, 148.6k."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"
