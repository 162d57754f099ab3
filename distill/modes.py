"""What each mode can do: the one table every stage asks (sites, shape, options that apply).

A *mode* names which attention site a student replaces and how that student is shaped; a
*variant* is a set of modes spliced in together (one row of the results table). Code that needs
to know whether a mode is causal, reads the encoder memory, can learn a residual, start from
the least-squares init or what kind of student it is (``KINDS``: mixing or gated pairs) reads it
from ``MODES`` here and nowhere else. A *hybrid*
(``<base>+keep<i>[_<j>...]``) is a variant that leaves the teacher's cross-attention at some
decoder layers: every stage turns a variant name into modes and kept sites with
``resolve_variant``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from distill.errors import ConfigError
from distill.model import ModelConfig, list_sites, site_info, site_stack

SIZES = {"xs": 25, "s": 50, "m": 800, "l": 3200}  # hidden width h per replaced layer
HEAD_SIZES = {"xs": 200, "s": 400, "m": 800, "l": 800}  # per-head students: h per head
ACTIVATIONS = ("leaky_relu", "relu", "gelu", "swiglu", "geglu")
# GLU-family units: fc1 makes a gate and a value per hidden unit and the unit is their product
# (act(gate) * value). With a memory term both halves read the decoder states AND the encoder
# memory, so the product carries decoder x memory interactions: multiplicative, input-conditioned
# mixing, still one MLP with no scores between positions.
GATED = ("swiglu", "geglu")
PAIR_SIZES = {"xs": 16, "s": 32, "m": 128, "l": 256}  # pair students: hidden width per pair
# The two kinds of student (docs/pipeline.md, "Two kinds of student"), named in every table, card
# and config because "attentionless" (every attention site holds a student) is this project's
# word, not the field's: a MIXING student has no weight that compares the content of two
# positions; a GATED_PAIRS student makes an unnormalised weight from a learned compatibility of two
# positions' content, what the field calls additive attention without a softmax.
MIXING, GATED_PAIRS = "mixing", "gated pairs"
KINDS = (MIXING, GATED_PAIRS)


def apply_activation(name: str, h: torch.Tensor) -> torch.Tensor:
    """One of ``ACTIVATIONS`` on pre-activations (..., width); gated ones halve the width."""
    if name in GATED:
        gate, value = h.chunk(2, dim=-1)
        return (F.silu(gate) if name == "swiglu" else F.gelu(gate)) * value
    if name == "leaky_relu":
        return F.leaky_relu(h)
    if name == "relu":
        return F.relu(h)
    return F.gelu(h)


@dataclass(frozen=True)
class Mode:
    """One mode's abilities.

    site           template of the sites it replaces ({i}: layer index): a row of the site table
                   (``distill.model.SITES``), which says the mask of its positions, whether it
                   reads the encoder memory and which teacher layouts have it. The mode fits a
                   teacher exactly when its sites are among the teacher's (``unsupported``):
                   ALRR's site, the attention sublayer with its skip, is pre-LN's and post-LN's
                   only (SAS's sublayer is A·LN(x), SAS-P's is no module of its own)
    stack          "encoder" or "decoder": the site's stack (checked), how many layers
    causal         output t may read inputs <= t only (decoder students)
    memory         the student also reads the encoder memory: only where its site does (checked)
    per_head       one student per attention head (ASLR); widths from HEAD_SIZES
    per_position   the paper's decoder student: one non-causal MLP run once per position
    position_wise  one MLP shared by every decoder position (reads position t and the memory)
    pair           reads individual source positions: one MLP shared by every (target, source)
                   pair makes per-head gates (``cross_gate``; widths from PAIR_SIZES, and the
                   layer-wise stage can teach the gates the teacher's attention: ``align``)
    slots          reads K source slots gathered with fixed, mask-only weights (``cross_slot``)
    position_mix   a self-attention site's values mixed by one learned weight per (head, query
                   position, key position), mask-only normalised (``enc_mix``, ``dec_mix``:
                   distill/mix_students.py); no least-squares init
    dense          a cross-attention site's values mixed by per-head weights over source position
                   indices from an MLP of the decoder state alone (``cross_dense``, the dense
                   synthesizer: distill/dense_students.py); widths from PAIR_SIZES
    residual       the site returns input + change, so the student may learn only the change;
                   true of pre-LN teachers (``ModelConfig.residual_sites``) only: a post-LN site
                   (Marian's) normalises after adding its input. Every other ability holds for
                   every teacher family (``ModelConfig.family``).
    kind           one of ``KINDS``, by keyword: whether a weight of the student compares the
                   content of two positions (``GATED_PAIRS``) or none does (``MIXING``). A mode
                   that does not say is refused; the results table, the model card and an
                   export's config.json name it per site.
    """

    name: str
    site: str
    stack: str
    causal: bool = False
    memory: bool = False
    per_head: bool = False
    per_position: bool = False
    position_wise: bool = False
    pair: bool = False
    slots: bool = False
    residual: bool = False
    position_mix: bool = False
    dense: bool = False
    kind: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"mode '{self.name}': kind must be one of {', '.join(map(repr, KINDS))} (does a "
                f"weight compare two positions' content?), got {self.kind!r}"
            )
        row, stack = site_info(self.site.format(i=0)), site_stack(self.site)
        if stack != self.stack:
            raise ValueError(f"mode '{self.name}': {self.site} is a {stack} site, not {self.stack}")
        if self.memory and not row.memory:
            raise ValueError(f"mode '{self.name}': {self.site} is given no encoder memory")

    @property
    def lstsq(self) -> bool:
        """Whether ``init: lstsq`` reaches it (causal, per-position and position-mixing students
        start random; a mixing student's V starts from the teacher's W_V)."""
        return not self.causal and not self.per_position and not self.position_mix

    def width(self, size: str) -> int:
        """Hidden width of one student (one head's, for per-head modes) at ``size``."""
        table = HEAD_SIZES if self.per_head else PAIR_SIZES if self.pair or self.dense else SIZES
        if size not in table:
            raise ValueError(f"unknown size '{size}' (known: {', '.join(table)})")
        return table[size]

    def sites(self, cfg: ModelConfig) -> list[str]:
        """Every site it replaces: one per layer of its stack."""
        n = cfg.n_enc if self.stack == "encoder" else cfg.n_dec
        return [self.site.format(i=i) for i in range(n)]


def _table(*modes: Mode) -> dict[str, Mode]:
    return {m.name: m for m in modes}


MODES = _table(
    # The paper's flat MLPs: each output is one MLP of the whole (flattened) sentence, whose
    # weights are fixed per position, never made from two positions' content.
    Mode("alr", "encoder.{i}.self_attn", "encoder", kind=MIXING),
    Mode("alrr", "encoder.{i}.self_attn_sublayer", "encoder", residual=True, kind=MIXING),
    Mode("aslr", "encoder.{i}.self_attn", "encoder", per_head=True, kind=MIXING),
    Mode("elr", "encoder.{i}", "encoder", residual=True, kind=MIXING),
    Mode("dec_self", "decoder.{i}.self_attn", "decoder", causal=True, kind=MIXING),
    Mode("dec_self_pp", "decoder.{i}.self_attn", "decoder", per_position=True, kind=MIXING),
    Mode("cross", "decoder.{i}.cross_attn", "decoder", causal=True, memory=True, kind=MIXING),
    # Ours: one MLP shared by every decoder position, reading that position and the whole memory
    # (cross-attention's output at t depends on the decoder only through position t's query).
    Mode(
        "cross_pw", "decoder.{i}.cross_attn", "decoder", True, True, position_wise=True, kind=MIXING
    ),
    # Ours: students that read individual source positions (distill/cross_students.py). The pair
    # gates score each (target, source) pair from both states' content: additive attention
    # without a softmax. The slots are fixed, mask-only averages read by an ordinary MLP.
    Mode(
        "cross_gate", "decoder.{i}.cross_attn", "decoder", True, True, pair=True, kind=GATED_PAIRS
    ),
    Mode("cross_slot", "decoder.{i}.cross_attn", "decoder", True, True, slots=True, kind=MIXING),
    # Ours: self-attention's weighted sum of values kept, its q.k softmax weights replaced by one
    # learned weight per (head, query position, key position): D*D + H*M*M parameters a site,
    # where the flat MLPs take millions.
    Mode("enc_mix", "encoder.{i}.self_attn", "encoder", position_mix=True, kind=MIXING),
    Mode("dec_mix", "decoder.{i}.self_attn", "decoder", True, position_mix=True, kind=MIXING),
    # Ours: the dense synthesizer (Tay et al. 2020) at cross-attention: the teacher's values mixed
    # by weights over source position indices made from the decoder state alone, never from a
    # source position's content (distill/dense_students.py).
    Mode("cross_dense", "decoder.{i}.cross_attn", "decoder", True, True, dense=True, kind=MIXING),
)
RESIDUAL_MODES = tuple(name for name, m in MODES.items() if m.residual)
# The modes record and students take when a config names none: the paper's.
DEFAULT_MODES = ["alr", "alrr", "aslr", "elr", "dec_self", "cross"]

# variant -> the student modes spliced in together (the rows of the results table)
VARIANTS = {
    "teacher": [],
    **{name: [name] for name in MODES},
    # The paper's flat MLPs at every site: mixing students only, so attention-free in the
    # field's sense too (the tables keep this row beside the better variants of ours).
    "attentionless": ["alr", "dec_self", "cross"],
    "attentionless_pw": ["alr", "dec_self", "cross_pw"],
    "attentionless_gate": ["alr", "dec_self", "cross_gate"],
    "attentionless_slot": ["alr", "dec_self", "cross_slot"],
    # Small position-mixing self-attention students with the pair-gate cross student.
    "attentionless_mix": ["enc_mix", "dec_mix", "cross_gate"],
    # Every student mixing (no weight compares two positions' content): attention-free in the
    # field's sense too, with the dense-synthesizer cross student.
    "attentionless_dense": ["enc_mix", "dec_mix", "cross_dense"],
}


def site_kinds(spec: Mapping[str, str]) -> dict[str, str]:
    """{site: kind} of a {site: mode} spec: which kind of student replaced each site."""
    return {site: mode(name).kind for site, name in spec.items()}


def kinds_label(kinds: Iterable[str]) -> str:
    """``"mixing"``, ``"mixing + gated pairs"``: the kinds present, in ``KINDS`` order ("" for
    none, the teacher), as the results table and the model card name a model's students."""
    present = set(kinds)
    return " + ".join(k for k in KINDS if k in present)


def mode(name: str) -> Mode:
    """The table row of ``name``; ``ValueError`` lists the known modes."""
    if name not in MODES:
        raise ValueError(f"unknown mode '{name}' (known: {', '.join(MODES)})")
    return MODES[name]


def _fits(name: str, cfg: ModelConfig) -> bool:
    """Whether a teacher of ``cfg`` has every site mode ``name`` replaces."""
    have = set(list_sites(cfg))
    return all(s in have for s in mode(name).sites(cfg))


def unsupported(name: str, cfg: ModelConfig) -> str:
    """Why mode ``name`` cannot replace sites of a teacher of ``cfg`` ("" when it can), in the
    site table's words."""
    if _fits(name, cfg):
        return ""
    site = mode(name).site
    row, layout = site_info(site.format(i=0)), cfg.layout
    return (
        f"mode '{name}' replaces {site.format(i='I')}, {row.what}, which a '{layout}' teacher "
        f"does not have (only {' and '.join(row.layouts)} teachers do; modes for {layout}: "
        f"{', '.join(n for n in MODES if _fits(n, cfg))})"
    )


def check_modes(names, cfg: ModelConfig, key: str = "modes") -> None:
    """ConfigError (config key ``key``) for the first of ``names`` a teacher of ``cfg`` cannot
    take: what the recipes check before any data loads."""
    for name in names:
        why = unsupported(name, cfg)
        if why:
            raise ConfigError(f"{key}: {why}")


def mode_sites(name: str, cfg: ModelConfig) -> list[str]:
    """All sites a mode replaces (every layer of its stack); ValueError if the teacher's layout
    has no such sites (``unsupported``)."""
    why = unsupported(name, cfg)
    if why:
        raise ValueError(why)
    return mode(name).sites(cfg)


def recorded_sites(names: list[str], cfg: ModelConfig) -> list[str]:
    """The union of the sites the modes replace, in model order (ALR and ASLR share a site)."""
    sites: list[str] = []
    for name in names:
        sites += [s for s in mode_sites(name, cfg) if s not in sites]
    return sites


# --- hybrids: a variant that keeps the teacher's cross-attention at some decoder layers -------

CROSS_SITE = "decoder.{i}.cross_attn"  # the site a hybrid may leave to the teacher
_KEEP = re.compile(r"keep((?:0|[1-9]\d*)(?:_(?:0|[1-9]\d*))*)")  # keep1, keep0_2: no leading 0s
HYBRID_FORM = "<base>+keep<i>[_<j>...]"


@dataclass(frozen=True)
class Variant:
    """A variant name resolved: the modes spliced in together and, for a hybrid, the decoder
    cross-attention sites that keep the teacher's own attention instead of a student."""

    name: str
    base: str  # the VARIANTS entry (the name itself for a plain variant)
    modes: tuple[str, ...]
    kept: tuple[str, ...] = ()

    @property
    def hybrid(self) -> bool:
        return bool(self.kept)


def cross_modes(names: Iterable[str]) -> list[str]:
    """Those of ``names`` whose students replace decoder cross-attention (what a hybrid keeps)."""
    return [n for n in names if mode(n).site == CROSS_SITE]


def hybrid_name(base: str, layers: Iterable[int]) -> str:
    """``attentionless_pw+keep0_2``: the hybrid of ``base`` keeping the decoder ``layers``."""
    return f"{base}+keep{'_'.join(str(i) for i in sorted(layers))}"


def resolve_variant(name: str, cfg: ModelConfig | None = None) -> Variant:
    """The modes and kept sites of a variant name: a ``VARIANTS`` entry or a hybrid
    ``<base>+keep<i>[_<j>...]`` whose base replaces decoder cross-attention. ValueError says what
    is wrong; the layer indices are checked against the teacher when ``cfg`` is given (the
    number of decoder layers is known only then)."""
    if "+" not in name:
        if name not in VARIANTS:
            known = ", ".join(VARIANTS)
            raise ValueError(f"unknown variant '{name}' (known: {known}, or {HYBRID_FORM})")
        return Variant(name, name, tuple(VARIANTS[name]))
    base, _, keep = name.partition("+")
    found = _KEEP.fullmatch(keep)
    if found is None:
        raise ValueError(f"variant '{name}': expected {HYBRID_FORM}, e.g. attentionless_pw+keep1")
    if base not in VARIANTS:
        raise ValueError(f"variant '{name}': unknown base '{base}' (known: {', '.join(VARIANTS)})")
    if not cross_modes(VARIANTS[base]):
        bases = ", ".join(v for v, modes in VARIANTS.items() if cross_modes(modes))
        raise ValueError(
            f"variant '{name}': base '{base}' replaces no decoder cross-attention, so there is "
            f"none to keep (bases that do: {bases})"
        )
    layers = [int(i) for i in found.group(1).split("_")]
    if layers != sorted(set(layers)):
        raise ValueError(
            f"variant '{name}': list each kept decoder layer once, in increasing order "
            f"(e.g. {hybrid_name(base, set(layers))})"
        )
    if cfg is not None and layers[-1] >= cfg.n_dec:
        raise ValueError(
            f"variant '{name}': the teacher has no decoder layer {layers[-1]} "
            f"({cfg.n_dec} decoder layers: 0..{cfg.n_dec - 1})"
        )
    kept = tuple(CROSS_SITE.format(i=i) for i in layers)
    return Variant(name, base, tuple(VARIANTS[base]), kept)


def resolve_variants(
    names: Iterable[str], cfg: ModelConfig, key: str = "variants"
) -> list[Variant]:
    """``resolve_variant`` of each name for a teacher of ``cfg``; ConfigError (config key
    ``key``) for the first bad one: what the recipes check before any data loads."""
    try:
        return [resolve_variant(name, cfg) for name in names]
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None
