"""Hybrid variants: the teacher's cross-attention kept at some decoder layers, named, spliced,
labelled and exported (end to end on a trained tiny run: tests/test_finetune.py)."""

import json
import re

import pytest
import torch
from huggingface_hub import ModelCard

import distill
from distill.cli import main
from distill.export import export
from distill.model import AttentionCore, site_path, teacher_attention
from distill.modes import CROSS_SITE, MIXING, MODES, VARIANTS, Mode, mode_sites, resolve_variant
from distill.runs import load_teacher, load_variant, splice_spec, variant_spec
from distill.students import build_student, splice
from tests.helpers import UNIT, tiny_teacher
from tests.test_export import sources, write_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_tokenizer):
    """A 2+2-layer run dir with random students of every mode (no training)."""
    return write_run(tmp_path_factory.mktemp("hybrid") / "run", tiny_tokenizer)


def test_keeping_every_cross_site_gives_the_logits_of_the_bases_other_modes(run_dir):
    hybrid = resolve_variant("attentionless_pw+keep0_1", UNIT)
    assert hybrid.modes == ("alr", "dec_self", "cross_pw")
    assert hybrid.kept == ("decoder.0.cross_attn", "decoder.1.cross_attn")
    kept_all, _, info = load_variant(run_dir, hybrid.modes, kept=hybrid.kept)
    others, _, _ = load_variant(run_dir, ["alr", "dec_self"])
    base, _, _ = load_variant(run_dir, hybrid.modes)
    src, tgt = sources(), sources(seed=1)
    with torch.no_grad():
        want = others(src, tgt)
        assert torch.equal(kept_all(src, tgt), want)
        assert not torch.allclose(base(src, tgt), want)  # the cross students do change them
    assert set(info["replacements"]) == set(variant_spec(run_dir, ["alr", "dec_self"]))


def test_a_kept_site_holds_the_teachers_own_attention_module(run_dir):
    hybrid = resolve_variant("attentionless_pw+keep1", UNIT)
    model, _ = load_teacher(run_dir)
    teacher, _ = load_teacher(run_dir)
    kept, replaced = (site_path(f"decoder.{i}.cross_attn", model.cfg) for i in (1, 0))
    own = model.get_submodule(kept)
    info = splice_spec(model, run_dir, variant_spec(run_dir, hybrid.modes, hybrid.kept))
    assert model.get_submodule(kept) is own and isinstance(own, AttentionCore)
    weights, want = own.state_dict(), teacher.get_submodule(kept).state_dict()
    assert weights and all(torch.equal(weights[k], want[k]) for k in want)
    assert not isinstance(model.get_submodule(replaced), AttentionCore)
    assert len(info["replacements"]) == 5 and "decoder.1.cross_attn" not in info["replacements"]
    assert teacher_attention(model) == ["decoder.1.cross_attn"]


def test_teacher_attention_lists_the_sites_no_student_covers():
    model = tiny_teacher()
    every = ["encoder.0.self_attn", "encoder.1.self_attn"]
    every += [f"decoder.{i}.{part}" for i in (0, 1) for part in ("self_attn", "cross_attn")]
    assert teacher_attention(model) == every
    assert teacher_attention(tiny_teacher(block="sas")) == every  # shaped attention is attention
    # A whole-layer student covers the attention inside that layer.
    elr = {s: build_student("elr", model.cfg, "xs", residual=True) for s in mode_sites("elr", UNIT)}
    splice(model, elr)
    assert teacher_attention(model) == every[2:]
    for mode in ("dec_self", "cross_pw"):
        splice(model, {s: build_student(mode, model.cfg, "xs") for s in mode_sites(mode, UNIT)})
    assert teacher_attention(model) == []


@pytest.mark.parametrize(
    "name, needle",
    [
        ("nope", "unknown variant 'nope'"),
        ("nope+keep1", "variant 'nope+keep1': unknown base 'nope'"),
        ("alr+keep0", "base 'alr' replaces no decoder cross-attention"),
        ("teacher+keep0", "base 'teacher' replaces no decoder cross-attention"),
        ("attentionless+keep1_0", "each kept decoder layer once, in increasing order"),
        ("attentionless+keep1_1", "each kept decoder layer once, in increasing order"),
        ("attentionless+keep01", "expected <base>+keep<i>[_<j>...]"),
        ("attentionless+keep", "expected <base>+keep<i>[_<j>...]"),
        ("attentionless+keep1+keep0", "expected <base>+keep<i>[_<j>...]"),
        ("attentionless+keep2", "the teacher has no decoder layer 2 (2 decoder layers: 0..1)"),
    ],
)
def test_bad_variant_names_say_what_is_wrong(name, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        resolve_variant(name, UNIT)


def test_layer_indices_are_checked_once_the_teacher_is_known(run_dir, capsys):
    assert resolve_variant("attentionless+keep5").kept == ("decoder.5.cross_attn",)
    argv = ["run", "evaluate", "--config", "tiny", f"run_dir={run_dir}"]
    assert main(["-q", *argv, "variants=[teacher,attentionless+keep5]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "variants: variant 'attentionless+keep5': the teacher has no decoder layer 5" in err
    assert "\n" not in err and not (run_dir / "eval" / "results.md").exists()


def test_a_new_mode_at_the_cross_site_makes_its_variants_hybrid_bases(monkeypatch):
    new = Mode("cross_new", CROSS_SITE, "decoder", True, True, kind=MIXING)
    monkeypatch.setitem(MODES, "cross_new", new)
    monkeypatch.setitem(VARIANTS, "mix", ["alr", "cross_new"])
    assert resolve_variant("mix+keep0", UNIT).kept == ("decoder.0.cross_attn",)
    with pytest.raises(ValueError, match=r"bases that do: .*\bmix\b"):
        resolve_variant("alr+keep0")


def test_a_hybrid_exports_labelled_as_a_hybrid_with_the_in_memory_logits(run_dir, tmp_path):
    hybrid = resolve_variant("attentionless_pw+keep1", UNIT)
    out = export(run_dir, hybrid.name, tmp_path / "hybrid")
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == hybrid.name and config["attentionless"] is False
    assert config["hybrid"] == {"base": "attentionless_pw", "kept": ["decoder.1.cross_attn"]}
    assert config["teacher_attention"] == ["decoder.1.cross_attn"]
    assert len(config["replacements"]) == 5 and "decoder.1.cross_attn" not in config["replacements"]
    card = (out / "README.md").read_text()
    assert "**Hybrid, not attentionless**" in card and "`decoder.1.cross_attn`" in card
    tags = ModelCard(card).data.tags
    assert "hybrid" in tags and "attentionless" not in tags
    model, _ = distill.from_pretrained(out)
    expected, _, _ = load_variant(run_dir, hybrid.modes, kept=hybrid.kept)
    src, tgt = sources(), sources(seed=1)
    with torch.no_grad():
        assert torch.equal(model(src, tgt), expected(src, tgt))
    assert isinstance(
        model.get_submodule(site_path("decoder.1.cross_attn", model.cfg)), AttentionCore
    )
    # The base itself is labelled attentionless.
    plain = json.loads(
        (export(run_dir, "attentionless_pw", tmp_path / "pw") / "config.json").read_text()
    )
    assert plain["attentionless"] is True and plain["teacher_attention"] == []
    assert plain["hybrid"] is None
