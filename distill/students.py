"""Student MLPs that replace attention sites, and the surgery that puts them in.

Every student is the paper's one MLP over the whole sentence, zero-padded to ``max_len`` and
flattened:  LN -> Linear(M*Din, h) -> act -> LN(h) -> Linear(h, M*Dout), output x padding mask.
A *mode* says which site a student replaces and how it is shaped; modes and sizes are data.

Causal students (decoder self-attention, cross-attention) are the same MLP made causal in ONE pass
in the spirit of MADE: hidden units are split into M groups, group t sees inputs at positions <= t
and output position t sees groups <= t (block-lower-triangular weight masks). The first LayerNorm
is then per position and the hidden LayerNorm per group, because a norm over the whole flattened
sentence would let later positions leak into earlier ones. Cross-attention students see the whole
encoder memory (it exists before decoding starts) and the decoder states causally.

Dimension letters: B batch, L actual length, M max_len, D d_model, K head dim, H heads, h hidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.cache import append, extend_prefix, once, recompute
from distill.cross_students import PairGateStudent, SlotStudent, alignment_loss
from distill.dense_students import DenseStudent
from distill.errors import ConfigError
from distill.mix_students import MixStudent
from distill.model import ModelConfig, site_path
from distill.modes import ACTIVATIONS, GATED, MODES, RESIDUAL_MODES, SIZES, apply_activation, mode


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (None = dense)."""

    def __init__(self, d_in: int, d_out: int, mask: torch.Tensor | None = None):
        super().__init__(d_in, d_out)
        self.register_buffer("mask", mask, persistent=False)
        if mask is not None:
            with torch.no_grad():  # keep the init scale of a layer with this fan-in
                self.weight.mul_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.mask is None else self.weight * self.mask
        return F.linear(x, w, self.bias)


def block_causal_mask(m: int, rows_per_pos: int, cols_per_pos: int) -> torch.Tensor:
    """(m*rows, m*cols) 0/1 mask: row block t may read column blocks <= t."""
    tri = torch.ones(m, m).tril()
    return tri.repeat_interleave(rows_per_pos, 0).repeat_interleave(cols_per_pos, 1)


class PositionNorm(nn.Module):
    """LayerNorm over the feature dim of each position, with an affine per (position, feature),
    so it has the same parameters as a LayerNorm over the flattened sentence but stays causal."""

    def __init__(self, m: int, d: int):
        super().__init__()
        self.d = d
        self.weight = nn.Parameter(torch.ones(m, d))
        self.bias = nn.Parameter(torch.zeros(m, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, M, d)
        return F.layer_norm(x, (self.d,)) * self.weight + self.bias


def padded_norm_linear(
    norm: nn.LayerNorm, fc: nn.Linear, x: torch.Tensor, mask: torch.Tensor, m: int, memo: dict
) -> torch.Tensor:
    """``fc(norm(x zero-padded to m positions and flattened))`` for x (B, n, d), n <= m, with
    the positions ``mask`` (B, n) marks False zeroed too.

    Training takes the plain path. Without gradients the m - n padded positions are folded in
    instead of multiplied: after a LayerNorm over the flat sentence each padded value is
    ``w_j * (-mean / std) + b_j``, so their share of ``fc`` is ``(-mean / std) * U[n] + V[n]``
    with U[n] = W[:, n*d:] @ w[n*d:] and V[n] = W[:, n*d:] @ b[n*d:], per length n, kept in
    ``memo`` until a weight changes. Only the n real positions' columns of W are read: a short
    sentence no longer pays for max_len positions (the paper's fixed 50-token input).
    """
    x = x * mask[..., None].to(x.dtype)
    _, n, d = x.shape
    if torch.is_grad_enabled() or n == m:
        return fc(norm(F.pad(x, (0, 0, 0, m - n)).flatten(1)))
    w, bias, weight = norm.weight, norm.bias, fc.weight
    key = tuple((t.data_ptr(), t._version) for t in (w, bias, weight))
    if memo.get("key") != key:  # suffix sums over positions: (m + 1, width)
        per_pos = weight.view(weight.size(0), m, d)  # (width, M, d)
        u = torch.einsum("omd,md->mo", per_pos, w.view(m, d))
        v = torch.einsum("omd,md->mo", per_pos, bias.view(m, d))
        zero = u.new_zeros(1, u.size(1))
        memo["u"] = torch.cat([u.flip(0).cumsum(0).flip(0), zero])
        memo["v"] = torch.cat([v.flip(0).cumsum(0).flip(0), zero])
        memo["key"] = key
    z = x.flatten(1)  # (B, n*d)
    total = m * d
    mean = z.sum(1, keepdim=True) / total
    var = ((z - mean) ** 2).sum(1, keepdim=True) + (total - n * d) * mean**2
    rstd = torch.rsqrt(var / total + norm.eps)
    zn = (z - mean) * rstd * w[: n * d] + bias[: n * d]
    out = F.linear(zn, weight[:, : n * d], fc.bias) - (mean * rstd) * memo["u"][n]
    return out + memo["v"][n]


class FlatMLP(nn.Module):
    """The paper's MLP over a sentence padded to ``max_len`` (optionally causal, with memory).

    forward(x (B, L, Din), mask (B, L), memory (B, S, Dm) | None, memory_mask, cache=None)
        -> (B, L, Dout)
    """

    def __init__(
        self,
        max_len: int,
        d_in: int,
        d_out: int,
        hidden: int,
        activation: str = "leaky_relu",
        causal: bool = False,
        d_memory: int = 0,
        residual: bool = False,
    ):
        super().__init__()
        if residual and d_in != d_out:
            raise ValueError(f"a residual student needs d_in == d_out, got {d_in} and {d_out}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
        m = self.max_len = max_len
        self.d_out, self.causal, self.activation = d_out, causal, activation
        self.residual = residual
        if causal:
            group = max(1, -(-hidden // m))  # hidden units per position, rounded up
            hidden = group * m
            self.in_norm = PositionNorm(m, d_in)
            w1_mask = block_causal_mask(m, group, d_in)
            w2_mask = block_causal_mask(m, d_out, group)
        else:
            group = hidden
            self.in_norm = nn.LayerNorm(m * d_in)
            w1_mask = w2_mask = None
        self.hidden, self.group = hidden, group
        width = 2 * hidden if activation in GATED else hidden
        if w1_mask is not None and activation in GATED:
            w1_mask = torch.cat([w1_mask, w1_mask])
        self.fc1 = MaskedLinear(m * d_in, width, w1_mask)
        self.memory_norm = nn.LayerNorm(m * d_memory) if d_memory else None
        self.memory_fc = nn.Linear(m * d_memory, width, bias=False) if d_memory else None
        self.hidden_norm = nn.LayerNorm(group)  # per group when causal, whole layer otherwise
        self.fc2 = MaskedLinear(hidden, m * d_out, w2_mask)
        self._memo, self._memo_in = {}, {}  # padded_norm_linear's tables (not state)

    def train(self, mode: bool = True):
        """Also drops padded_norm_linear's tables: a fused optimizer step changes the weights
        without bumping their version counters, so a mode switch (fit's validation) rebuilds."""
        self._memo.clear()
        self._memo_in.clear()
        return super().train(mode)

    def _pad(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, M, d) with padded and masked positions exactly zero."""
        x = x * mask[..., None].to(x.dtype)
        return F.pad(x, (0, 0, 0, self.max_len - x.size(1)))

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden pre-activations (B, width) -> normalised hidden features (B, hidden)."""
        h = apply_activation(self.activation, h)
        return self.hidden_norm(h.view(h.size(0), -1, self.group)).view(h.size(0), self.hidden)

    def _memory_term(self, memory, memory_mask) -> torch.Tensor:
        """The memory's contribution to every hidden pre-activation (B, width)."""
        norm, fc = self.memory_norm, self.memory_fc
        return padded_norm_linear(norm, fc, memory, memory_mask, self.max_len, self._memo)

    def hidden_features(self, x, mask, memory=None, memory_mask=None) -> torch.Tensor:
        """(B, L, Din) -> normalised hidden features (B, hidden)."""
        if x.size(1) > self.max_len:
            raise ValueError(f"{x.size(1)} positions exceed the student's max_len {self.max_len}")
        if self.causal:
            h = self.fc1(self.in_norm(self._pad(x, mask)).flatten(1))  # (B, width)
        else:
            h = padded_norm_linear(self.in_norm, self.fc1, x, mask, self.max_len, self._memo_in)
        if self.memory_fc is not None:
            h = h + self._memory_term(memory, memory_mask)
        return self.activate(h)

    def _finish(self, out, x, mask) -> torch.Tensor:
        if self.residual:
            out = out + x
        return out * mask[..., None].to(out.dtype)

    def _outputs(self, hid: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """fc2's outputs for positions first..last-1 only (B, (last-first)*Dout), from the rows
        of those positions: nothing is computed for positions that are dropped anyway."""
        rows = slice(first * self.d_out, last * self.d_out)
        w2 = self.fc2.weight[rows]
        if self.fc2.mask is not None:
            w2 = w2 * self.fc2.mask[rows]
        return F.linear(hid, w2, self.fc2.bias[rows])

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None) -> torch.Tensor:
        """With ``cache``, the positions after those already seen: a causal student extends its
        state (``_extend``), a non-causal one re-runs over the prefix."""
        if cache is not None:
            if self.causal:
                return self._extend(x, mask, memory, memory_mask, cache)
            return recompute(self, x, mask, memory, memory_mask, cache)
        b, n, _ = x.shape
        hid = self.hidden_features(x, mask, memory, memory_mask)
        out = self._outputs(hid, 0, n).view(b, n, self.d_out)  # (B, L, Dout)
        return self._finish(out, x, mask)

    def output_at(self, x, mask, t: int, memory=None, memory_mask=None) -> torch.Tensor:
        """``forward(...)[:, t]`` (B, Dout), computing only position t's outputs."""
        hid = self.hidden_features(x, mask, memory, memory_mask)
        out = self._outputs(hid, t, t + 1)[:, None]  # (B, 1, Dout)
        return self._finish(out, x[:, t : t + 1], mask[:, t : t + 1])[:, 0]

    def _extend(self, x, mask, memory, memory_mask, cache: dict) -> torch.Tensor:
        """A causal student's cached ``forward``: the new positions ``x`` (B, n, Din) after the
        ones in ``cache``. Exact: hidden group t reads inputs <= t and output t reads groups
        <= t, so the cache holds the normalised inputs and hidden groups of earlier positions,
        and the memory term (computed once per sentence)."""
        if self.memory_fc is not None:
            once(cache, "memory", self._memory_term, memory, memory_mask)  # (B, width)
        g, d_in, d_out = self.group, x.size(-1), self.d_out
        w1, b1, w2, b2 = self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
        outs = []
        for j in range(x.size(1)):
            t = cache["xn"].size(1) if "xn" in cache else 0
            if t >= self.max_len:
                raise ValueError(f"{t + 1} positions exceed the student's max_len {self.max_len}")
            xt = x[:, j : j + 1] * mask[:, j : j + 1, None].to(x.dtype)  # (B, 1, Din)
            xn = self.in_norm.weight[t] * F.layer_norm(xt, (d_in,)) + self.in_norm.bias[t]
            append(cache, "xn", xn, 1)  # (B, t+1, Din)
            # Slices, not an index tensor: views of the weights, nothing copied per step.
            rows = [slice(t * g, (t + 1) * g)]
            if self.activation in GATED:  # gate rows, then value rows
                rows.append(slice(self.hidden + t * g, self.hidden + (t + 1) * g))
            xn_flat = cache["xn"].flatten(1)
            h = [F.linear(xn_flat, w1[r, : (t + 1) * d_in], b1[r]) for r in rows]
            if "memory" in cache:
                h = [hr + cache["memory"][:, r] for hr, r in zip(h, rows)]
            h = h[0] if len(h) == 1 else torch.cat(h, dim=-1)
            a = self.hidden_norm(apply_activation(self.activation, h))[:, None]  # (B, 1, g)
            append(cache, "acts", a, 1)
            out_rows = slice(t * d_out, (t + 1) * d_out)
            out = F.linear(cache["acts"].flatten(1), w2[out_rows, : (t + 1) * g], b2[out_rows])
            outs.append(out[:, None])
        return self._finish(torch.cat(outs, dim=1), x, mask)


class PositionwiseMemoryMLP(nn.Module):
    """Cross-attention student ``cross_pw``: one MLP shared by all decoder positions. Position t
    reads its own decoder state and the whole encoder memory (zero-padded to max_len, flattened):

        h_t = act(W_m LN(memory) + W_x LN(x_t) + b1)  ->  LN(h_t)  ->  W_2 h_t + b2

    Teacher cross-attention depends on the decoder only through the query of position t, so this
    is causal by construction and loses nothing the site could use; every position gets all
    ``hidden`` units, where the one-pass causal student (``cross``) splits them into max_len
    groups (25 a position at size M and max_len 32). Gated activations make W_m-memory x
    W_x-decoder products (decoder-conditioned selection of memory features). Still one MLP:
    no softmax over positions and no scores between positions.

    forward(x (B, L, D), mask (B, L), memory (B, S, D), memory_mask (B, S), cache=None)
        -> (B, L, D)
    """

    def __init__(self, max_len: int, d: int, hidden: int, activation: str = "leaky_relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
        self.max_len, self.hidden, self.activation = max_len, hidden, activation
        width = 2 * hidden if activation in GATED else hidden
        self.in_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, width)
        self.memory_norm = nn.LayerNorm(max_len * d)
        self.memory_fc = nn.Linear(max_len * d, width, bias=False)
        self.hidden_norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, d)
        self._memo: dict = {}  # padded_norm_linear's tables (not state)

    def train(self, mode: bool = True):
        """Also drops padded_norm_linear's tables (see ``FlatMLP.train``)."""
        self._memo.clear()
        return super().train(mode)

    def memory_term(self, memory, memory_mask) -> torch.Tensor:
        """The memory's contribution to every position's pre-activations (B, 1, width)."""
        if memory.size(1) > self.max_len:
            n = memory.size(1)
            raise ValueError(f"{n} memory positions exceed the student's max_len {self.max_len}")
        norm, fc = self.memory_norm, self.memory_fc
        return padded_norm_linear(norm, fc, memory, memory_mask, self.max_len, self._memo)[:, None]

    def _positions(self, x, mask, mem) -> torch.Tensor:
        h = self.hidden_norm(apply_activation(self.activation, self.fc1(self.in_norm(x)) + mem))
        return self.fc2(h) * mask[..., None].to(x.dtype)  # (B, L, D)

    def forward(self, x, mask, memory, memory_mask, cache=None) -> torch.Tensor:
        """With ``cache``: the memory term once per sentence, then only the new positions (no
        prefix is kept: output t reads position t alone)."""
        if x.size(1) > self.max_len:
            raise ValueError(f"{x.size(1)} positions exceed the student's max_len {self.max_len}")
        mem = once(cache, "memory", self.memory_term, memory, memory_mask)  # (B, 1, width)
        return self._positions(x, mask, mem)


class PerHeadStudent(nn.Module):
    """ASLR: one FlatMLP per head, each predicting that head's output; heads are concatenated."""

    def __init__(self, heads: Iterable[FlatMLP]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None) -> torch.Tensor:
        if cache is not None:  # no incremental form
            return recompute(self, x, mask, memory, memory_mask, cache)
        return torch.cat([head(x, mask) for head in self.heads], dim=-1)  # (B, L, D)


class PerPositionStudent(nn.Module):
    """The paper's decoder self-attention: one non-causal MLP run once per target position on the
    input masked to the prefix (L passes); output t is taken from pass t."""

    def __init__(self, mlp: FlatMLP):
        super().__init__()
        self.mlp = mlp

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None) -> torch.Tensor:
        """With ``cache``, only the new positions, one pass each over the prefix kept there
        (earlier outputs never change)."""
        new = x.size(1)
        x, mask = extend_prefix(cache, x, mask)  # (B, t, D): earlier positions first
        n = x.size(1)
        pos = torch.arange(n, device=x.device)
        outs = [self.mlp.output_at(x, mask & (pos <= t), t) for t in range(n - new, n)]
        return torch.stack(outs, dim=1)  # (B, new, D)


def training_pass(student: nn.Module, x, mask, memory=None, memory_mask=None, probs=None):
    """(prediction, positions to score, alignment loss or None) of one layer-wise training step
    on recorded inputs.

    A per-position student (the paper's decoder self-attention) trains its shared MLP on random
    prefixes: with the input cut after t, the causal teacher's outputs at positions <= t are
    unchanged, so they stay the targets there. A pair-gate student given the teacher's attention
    probabilities ``probs`` (B, H, T, S) also returns its gates' alignment loss against them.
    Every other student runs as spliced."""
    if isinstance(student, PairGateStudent) and probs is not None:
        pred, logits = student.forward_with_gates(x, mask, memory, memory_mask)
        return pred, mask, alignment_loss(logits, probs, mask, memory_mask)
    if isinstance(student, PerPositionStudent):
        pos = torch.arange(x.size(1), device=x.device)
        cut = (torch.rand(x.size(0), 1, device=x.device) * mask.sum(1, keepdim=True)).long()
        mask = mask & (pos <= cut)
        return student.mlp(x, mask), mask, None
    return student(x, mask, memory, memory_mask), mask, None


def init_from_teacher(student: nn.Module, site_module: nn.Module) -> bool:
    """Start a student from the weights of the teacher module it replaces where its shape has a
    teacher counterpart (a pair-gate or mixing student's values: the site's W_V); whether it
    did."""
    start = getattr(student, "init_from_teacher", None)  # the families that have one define it
    if start is None:
        return False
    start(site_module)
    return True


def least_squares_units(student: nn.Module, d_out: int) -> list[tuple[FlatMLP, slice]]:
    """(MLP, output dims it predicts) that the least-squares init fits: a plain non-causal
    student, or each head of a per-head one; ``ValueError`` for any other."""
    if isinstance(student, PerHeadStudent):
        k = student.heads[0].d_out
        return [(head, slice(i * k, (i + 1) * k)) for i, head in enumerate(student.heads)]
    if isinstance(student, FlatMLP) and not student.causal and student.memory_fc is None:
        return [(student, slice(0, d_out))]
    raise ValueError(f"least-squares init needs a non-causal student, got {type(student).__name__}")


# What a JSON value of each field annotation may be (an int is a float too, as in distill.config).
JSON_TYPES = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float)}


@dataclass(frozen=True)
class StudentSpec:
    """What one site's student is: the one record of a student's settings.

    Checked here, built by ``build_student``, written as its dict (``to_dict``) into
    students/<mode>/spec.json, an export's ``replacements``, the model card's rows and the
    results table, and read back, checked, with ``from_dict``. A new student setting is a field
    here, read by the student class it concerns in ``build_student``."""

    mode: str
    size: str = "m"
    activation: str = "leaky_relu"
    residual: bool = False  # learns output - input (modes whose site returns input + change)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode '{self.mode}' (known: {', '.join(MODES)})")
        if self.size not in SIZES:
            raise ValueError(f"unknown size '{self.size}' (known: {', '.join(SIZES)})")
        if self.activation not in ACTIVATIONS:
            known = ", ".join(ACTIVATIONS)
            raise ValueError(f"unknown activation '{self.activation}' (known: {known})")
        if self.residual and not MODES[self.mode].residual:
            only = ", ".join(RESIDUAL_MODES)
            raise ValueError(f"mode '{self.mode}' has no residual variant (only {only})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "", strict: bool = False):
        """The spec in ``data`` (a spec.json, one of an export's ``replacements``); other keys
        are ignored unless ``strict``. Bad keys and values raise ConfigError naming ``where`` and
        the key, worded as distill.config words it (not used here: this module is part of an
        export's remote code, which cannot need the config loader's YAML)."""
        prefix = f"{where}." if where else ""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in types:
                if strict:
                    known = ", ".join(sorted(types))
                    raise ConfigError(f"unknown config key '{prefix}{key}' (known: {known})")
            elif type(value) not in JSON_TYPES[types[key]]:
                raise ConfigError(
                    f"config key '{prefix}{key}': expected {types[key]}, "
                    f"got {type(value).__name__} {value!r}"
                )
            else:
                values[key] = float(value) if types[key] == "float" else value
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:  # TypeError: no mode
            raise ConfigError(f"config '{where or cls.__name__}': {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        """``"alrr m residual"``: the mode, its size (per head for per-head modes) and every
        other setting that is not its default, as tables name a student."""
        parts = [self.mode, f"{self.size}/head" if MODES[self.mode].per_head else self.size]
        for f in dataclasses.fields(self)[2:]:
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if isinstance(value, bool):
                parts.append(f.name if value else f"no {f.name}")
            else:
                parts.append(str(value))
        return " ".join(parts)


def build_student(spec: StudentSpec | str, cfg: ModelConfig, *args, **kwargs) -> nn.Module:
    """A fresh student of ``spec`` (or of ``StudentSpec(spec, *args, **kwargs)``, a mode name)
    for one site of a teacher of ``cfg``, with the paper's width for its size.

    Every student is called as ``student(x, mask, memory, memory_mask, cache=None)``; students
    of modes without memory ignore the memory, and a cache makes it a decoding step
    (``distill.cache``)."""
    if isinstance(spec, str):
        spec = StudentSpec(spec, *args, **kwargs)
    name, size, activation, residual = spec.mode, spec.size, spec.activation, spec.residual
    spec = mode(name)
    width, m, d = spec.width(size), cfg.max_len, cfg.d_model
    if residual and not cfg.residual_sites:
        layout = f"{cfg.family}, post-LN" if not cfg.pre_norm else f"block {cfg.block}"
        raise ValueError(f"mode '{name}': residual students need a pre-LN teacher ({layout})")
    if spec.position_wise:
        return PositionwiseMemoryMLP(m, d, width, activation)
    if spec.pair:
        return PairGateStudent(m, d, cfg.n_heads, width, activation)
    if spec.slots:
        return SlotStudent(m, d, width, activation)
    if spec.dense:
        return DenseStudent(m, d, cfg.n_heads, width, activation)
    if spec.position_mix:  # no hidden layer: size and activation do not apply
        return MixStudent(m, d, cfg.n_heads, causal=spec.causal)
    if spec.per_head:
        return PerHeadStudent(
            FlatMLP(m, d, cfg.head_dim, width, activation) for _ in range(cfg.n_heads)
        )
    mlp = FlatMLP(
        m,
        d,
        d,
        width,
        activation,
        causal=spec.causal,
        d_memory=d if spec.memory else 0,
        residual=residual,
    )
    return PerPositionStudent(mlp) if spec.per_position else mlp


# --- surgery -------------------------------------------------------------------------------------


def splice(model: nn.Module, replacements: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Put ``replacements`` ({site: module}) into ``model`` in place; return what was there."""
    cfg = model.cfg
    previous = {}
    for site, new in replacements.items():
        parent_path, _, attr = site_path(site, cfg).rpartition(".")
        parent = model.get_submodule(parent_path)
        previous[site] = getattr(parent, attr)
        setattr(parent, attr, new)
    return previous


def unsplice(model: nn.Module, previous: dict[str, nn.Module]) -> None:
    """Undo ``splice`` with the dict it returned."""
    splice(model, previous)


def effective_parameters(module: nn.Module) -> int:
    """Trainable parameters, not counting weights a causal mask holds at zero."""
    total = 0
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            mask = getattr(sub, "mask", None)
            total += int(mask.sum()) if name == "weight" and mask is not None else p.numel()
    return total
