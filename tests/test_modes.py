"""The mode table against the site table: a mode fits a teacher exactly when the teacher has its
sites, a refusal says why in the table's words, and a mode reads only what its site is given."""

import pytest

from distill.errors import ConfigError
from distill.model import ModelConfig, list_sites
from distill.modes import MODES, Mode, check_modes, mode_sites, unsupported
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
        Mode("x", "decoder.{i}.self_attn", "decoder", causal=True, memory=True)
    with pytest.raises(ValueError, match=r"mode 'x': decoder.\{i\}.cross_attn is a decoder site"):
        Mode("x", "decoder.{i}.cross_attn", "encoder")
    with pytest.raises(ValueError, match=r"unknown site 'decoder.0.ffn'"):
        Mode("x", "decoder.{i}.ffn", "decoder")
    assert Mode("x", "decoder.{i}.cross_attn", "decoder").memory is False  # may ignore it
