"""The teacher: a compact encoder-decoder Transformer with named replacement sites.

Every teacher *family* is this class: ``distill`` (ours: pre-LN, a final norm after each stack,
interleaved sinusoidal positions) and ``marian`` (transformers' MarianMTModel, which
``distill.marian`` converts into this class: post-LN, no final norms, sin/cos halves) differ only
in ``ModelConfig`` fields, which the family's row of ``FAMILIES`` fills. The config, families,
attention core and sublayers are in ``distill.blocks``, the layer layouts (pre-LN, post-LN, SAS,
SAS-P) in ``distill.layers``; here: presets, positions, the model, the sites.
Attention is split into a *core* (per-head Q/K/V projections and softmax, output = concatenated
heads before W_O) and the output projection W_O, so ALR/ASLR students can replace the core and keep
W_O. Every module a student may replace is a *site* with a stable name, a row of ``SITES`` (its
module, its positions' mask, whether it reads the memory, the layouts that have it).

A site and any student that replaces it have one call path,
``forward(x, mask, memory=None, memory_mask=None, cache=None)`` (a whole teacher encoder layer
takes ``(x, mask)``: no cache reaches the encoder):
    encoder.{i}.self_attn   core(x, mask)                          x = LN(h) (pre-LN, SAS, SAS-P),
                                                                   h (post-LN)
    encoder.{i}.self_attn_sublayer                                 x + W_O(core(LN(x))) (pre-LN),
                            sublayer(x, mask)                      LN(x + W_O(core(x))) (post-LN):
                                                                   ALRR's; SAS and SAS-P lack it
    encoder.{i}             layer(x, mask)                         whole encoder layer
    decoder.{i}.self_attn   core(y, mask, cache=)                  causal in target positions
    decoder.{i}.cross_attn  core(y, mask, memory, memory_mask,     keys/values from the encoder
                                 cache=)
Decoder sites are passed their own ``cache`` when decoding incrementally (``distill.cache``).

Dimension letters: B batch, S source length, T target length, L either, D d_model, H heads,
K head dim (D / H), V vocabulary.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from distill.blocks import (  # noqa: F401 (ModelConfig and the blocks are re-exported)
    BLOCKS,
    FAMILIES,
    FFN_ACTIVATIONS,
    LAYOUTS,
    POSITIONS,
    AttentionCore,
    Dropout,
    ModelConfig,
    dropout,
)
from distill.ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: F401 (re-exported)
from distill.layers import (
    DecoderLayer,
    EncoderLayer,
    ParallelDecoderLayer,
    ParallelEncoderLayer,
    ShapedAttention,
)

# Presets as data; recipe YAMLs repeat the values they use so a run dir is self-describing.
PRESETS: dict[str, dict] = {
    # The unit tests' in-memory model (no corpus); the `tiny` recipe configs train another one.
    "unit": dict(vocab_size=96, d_model=16, n_heads=2, d_ff=32, n_enc=2, n_dec=2, max_len=8),
    "demo": dict(d_model=128, n_heads=8, d_ff=512, n_enc=3, n_dec=3, max_len=32, dropout=0.0),
    "paper": dict(d_model=128, n_heads=8, d_ff=512, n_enc=6, n_dec=6, max_len=50),
}


def sinusoidal_positions(n: int, d: int, kind: str = "sin_cos_interleaved") -> torch.Tensor:
    """(n, d) fixed sinusoidal position table (Vaswani et al.) of a ``POSITIONS`` kind: sin and
    cos interleaved, or all sines first and then all cosines (``sin_cos_halves``, Marian's)."""
    if kind not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {kind!r}")
    if kind == "sin_cos_halves":  # as MarianSinusoidalPositionalEmbedding (float64, then float32)
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        angle = pos / torch.pow(10000.0, 2 * (torch.arange(d, dtype=torch.float64) // 2) / d)
        return torch.cat([angle[:, 0::2].sin(), angle[:, 1::2].cos()], dim=1).float()
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder with separate source/target embeddings and sinusoidal positions; with
    ``final_norm`` each stack ends in a LayerNorm (pre-LN needs one; post-LN layers end in one)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        positions = sinusoidal_positions(cfg.max_len, cfg.d_model, cfg.positions)
        self.register_buffer("positions", positions, False)
        self.embed_drop = Dropout(cfg.dropout)
        parallel = cfg.block == "sas_p"
        encoder_layer = ParallelEncoderLayer if parallel else EncoderLayer
        self.encoder = nn.ModuleList(encoder_layer(cfg) for _ in range(cfg.n_enc))
        final_norm = nn.LayerNorm if cfg.final_norm else (lambda d: nn.Identity())
        self.encoder_norm = final_norm(cfg.d_model)
        decoder_layer = ParallelDecoderLayer if parallel else DecoderLayer
        self.decoder = nn.ModuleList(decoder_layer(cfg) for _ in range(cfg.n_dec))
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
        student, keeps its own incremental state there (``distill.cache``)."""
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
    # ``apply`` visits children first: a shaped attention's W_Q is zeroed after its xavier init.
    if isinstance(module, ShapedAttention):
        module.reset_query()
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
        with torch.no_grad():
            module.weight[PAD_ID].zero_()


def reorder_cache(cache, index: torch.Tensor):
    """Every tensor in a (nested) decoding cache (``Seq2SeqTransformer.decode``'s: one dict per
    decoder layer, each site's own state in it) with its rows picked by ``index`` (beam search
    reshuffles rows every step), in place for dicts and lists."""
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, index)
    if isinstance(cache, int):  # a position count: the same for every row
        return cache
    if isinstance(cache, tuple):  # terms computed together (a cross site's keys and values)
        return tuple(reorder_cache(value, index) for value in cache)
    if isinstance(cache, dict):
        for key, value in cache.items():
            cache[key] = reorder_cache(value, index)
        return cache
    if isinstance(cache, list):
        cache[:] = [reorder_cache(value, index) for value in cache]
        return cache
    raise TypeError(f"cannot reorder a cache entry of type {type(cache).__name__}")


# --- sites ---------------------------------------------------------------------------------------

MASKS = ("source", "target")


@dataclass(frozen=True)
class Site:
    """One row of the site table: which module a student replaces and what that module reads.

    path     the module under layer i ("" for the layer itself)
    mask     "source" or "target": the padding mask of its positions (input and output alike)
    memory   it also reads the encoder memory and its mask: called as (x, mask, memory,
             memory_mask), so its recordings and batches carry the memory
    layouts  the teacher layouts (``ModelConfig.layout``) that have it
    what     what it is, in words (error messages)
    """

    path: str
    mask: str
    memory: bool = False
    layouts: tuple[str, ...] = LAYOUTS
    what: str = ""

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"site mask must be one of {', '.join(MASKS)}, got {self.mask!r}")


# The one table of replaceable sites: (stack, part) -> its row. Site names are
# "<stack>.<i>[.<part>]" ("" part: the whole layer i); list_sites, site_path, the name check, the
# recorder and every reader of a site's tensors (distill.activations.site_io) read this table.
SITES = {
    ("encoder", "self_attn"): Site(
        "self_attn_sublayer.attn", "source", what="the self-attention core"
    ),
    # SAS's self_attn_sublayer is A·LN(x), with no skip; SAS-P's layer calls the norm and the
    # attention itself, so no module there is the sublayer.
    ("encoder", "self_attn_sublayer"): Site(
        "self_attn_sublayer",
        "source",
        layouts=("pre_ln", "post_ln"),
        what="the attention sublayer with its skip",
    ),
    ("encoder", ""): Site("", "source", what="the whole encoder layer"),
    ("decoder", "self_attn"): Site(
        "self_attn_sublayer.attn", "target", what="the causal self-attention core"
    ),
    ("decoder", "cross_attn"): Site(
        "cross_attn_sublayer.attn", "target", memory=True, what="the cross-attention core"
    ),
}
STACKS = ("encoder", "decoder")
_SITE_RE = re.compile(rf"^({'|'.join(STACKS)})\.(\d+)(?:\.(\w+))?$")


def site_stack(site: str) -> str:
    """The stack of a site name: "encoder" or "decoder"."""
    return site.split(".", 1)[0]


def site_info(site: str) -> Site:
    """The table row of a site name (any layer index); ValueError names an unknown site."""
    m = _SITE_RE.match(site)
    row = m and SITES.get((m.group(1), m.group(3) or ""))
    if not row:
        raise ValueError(f"unknown site '{site}' (known: encoder.I.self_attn, ...)")
    return row


def list_sites(cfg: ModelConfig) -> list[str]:
    """Every site a teacher of ``cfg`` has (its layout's), encoder first, in layer order."""
    sites = []
    for stack in STACKS:
        for i in range(cfg.n_enc if stack == "encoder" else cfg.n_dec):
            sites += [
                f"{stack}.{i}" + (f".{part}" if part else "")
                for (st, part), row in SITES.items()
                if st == stack and cfg.layout in row.layouts
            ]
    return sites


def site_path(site: str, cfg: ModelConfig | None = None) -> str:
    """Site name -> module path for ``get_submodule``; ValueError names an unknown site, and with
    ``cfg`` one the teacher lacks (a layer it has not, a site its layout has not)."""
    if cfg is not None and site not in list_sites(cfg):
        why = ""
        with contextlib.suppress(ValueError):
            row = site_info(site)
            if cfg.layout not in row.layouts:
                only = " and ".join(row.layouts)
                why = f" for a '{cfg.layout}' teacher ({row.what}: {only} teachers only)"
        raise ValueError(f"unknown site '{site}'{why} (known: {', '.join(list_sites(cfg))})")
    path = site_info(site).path
    layer = ".".join(site.split(".")[:2])
    return f"{layer}.{path}" if path else layer


def teacher_attention(model: Seq2SeqTransformer) -> list[str]:
    """The sites that still hold the teacher's attention (scores normalised over positions), in
    model order; empty exactly when the model is attentionless. Read off the modules, so a
    student spliced at an enclosing site (a whole encoder layer) counts too."""
    names = {site_path(s, model.cfg): s for s in list_sites(model.cfg)}
    kinds = (AttentionCore, ShapedAttention)
    return [names.get(path, path) for path, m in model.named_modules() if isinstance(m, kinds)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_count(n: int) -> str:
    """A parameter count as the tables print it: 19.70M, 148.6k."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"
