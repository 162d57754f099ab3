"""The mode table against the site table: a mode fits a teacher exactly when the teacher has its
sites, a refusal says why in the table's words, and a mode reads only what its site is given."""

import pytest

from distill.errors import ConfigError
from distill.model import ModelConfig, list_sites
from distill.modes import (
    GATED_PAIRS,
    KINDS,
    MIXING,
    MODES,
    VARIANTS,
    Mode,
    check_modes,
    kinds_label,
    mode_sites,
    site_kinds,
    unsupported,
)
from tests.helpers import LAYOUTS, UNIT


def layout_config(layout: str) -> ModelConfig:
    return ModelConfig(**{**vars(UNIT), **LAYOUTS[layout]})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_mode_fits_a_teacher_exactly_when_the_teacher_has_its_sites(layout):
    cfg = layout_config(layout)
    refused = [name for name in MODES if unsupported(name, cfg)]
    assert refused == ([] if layout in ("pre_ln", "post_ln") else ["alrr"])
    for name in MODES:
        has = set(MODES[name].sites(cfg)) <= set(list_sites(cfg))
        assert has == (name not in refused), name
        if has:
            assert mode_sites(name, cfg) == MODES[name].sites(cfg)


@pytest.mark.parametrize("layout", ["sas", "sas_p"])
def test_alrr_on_a_teacher_without_its_site_is_refused_with_the_reason(layout):
    cfg = layout_config(layout)
    with pytest.raises(ConfigError) as err:
        check_modes(["alr", "alrr"], cfg, key="students.modes")
    why = str(err.value)
    assert why.startswith(
        "students.modes: mode 'alrr' replaces encoder.I.self_attn_sublayer, the attention "
        f"sublayer with its skip, which a '{layout}' teacher does not have (only pre_ln and "
        "post_ln teachers do; "
    )
    fit = why.split(f"modes for {layout}: ")[1].rstrip(")").split(", ")
    assert fit == [name for name in MODES if name != "alrr"]
    with pytest.raises(ValueError, match="mode 'alrr' replaces encoder.I.self_attn_sublayer"):
        mode_sites("alrr", cfg)


def test_a_mode_reads_the_memory_only_where_its_site_is_given_it():
    with pytest.raises(ValueError, match=r"mode 'x': decoder.\{i\}.self_attn is given no encoder"):
        Mode("x", "decoder.{i}.self_attn", "decoder", causal=True, memory=True, kind=MIXING)
    with pytest.raises(ValueError, match=r"mode 'x': decoder.\{i\}.cross_attn is a decoder site"):
        Mode("x", "decoder.{i}.cross_attn", "encoder", kind=MIXING)
    with pytest.raises(ValueError, match=r"unknown site 'decoder.0.ffn'"):
        Mode("x", "decoder.{i}.ffn", "decoder", kind=MIXING)
    assert Mode("x", "decoder.{i}.cross_attn", "decoder", kind=MIXING).memory is False


def test_every_mode_has_a_kind_and_only_the_pair_gates_compare_two_positions():
    assert all(m.kind in KINDS for m in MODES.values())
    # cross_gate scores each (target, source) pair from both states' content; every other
    # student's weights are fixed per position or made from one position's content and the mask.
    assert {name for name, m in MODES.items() if m.kind == GATED_PAIRS} == {"cross_gate"}
    assert {name for name, m in MODES.items() if m.kind == MIXING} == set(MODES) - {"cross_gate"}


@pytest.mark.parametrize("kind", [None, "", "attention", "mixing "])
def test_a_mode_that_does_not_say_its_kind_is_refused(kind):
    extra = {} if kind is None else {"kind": kind}
    with pytest.raises(ValueError, match=r"^mode 'x': kind must be one of 'mixing', 'gated pairs'"):
        Mode("x", "decoder.{i}.cross_attn", "decoder", True, True, **extra)


def test_the_kinds_of_a_variant_name_each_site_and_label_the_whole():
    spec = {s: m for m in VARIANTS["attentionless_gate"] for s in MODES[m].sites(UNIT)}
    kinds = site_kinds(spec)
    assert kinds == {s: GATED_PAIRS if m == "cross_gate" else MIXING for s, m in spec.items()}
    assert kinds_label(kinds.values()) == "mixing + gated pairs"
    assert kinds_label([GATED_PAIRS, MIXING, MIXING]) == "mixing + gated pairs"  # KINDS order
    assert kinds_label([GATED_PAIRS]) == "gated pairs"
    assert kinds_label([]) == ""  # the teacher
    # The paper's row: its flat MLPs everywhere, attention-free in the field's sense too.
    assert VARIANTS["attentionless"] == ["alr", "dec_self", "cross"]
    assert {MODES[m].kind for m in VARIANTS["attentionless"]} == {MIXING}
