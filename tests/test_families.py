"""Teacher families: a row of FAMILIES fills ModelConfig's structure fields, the model reads only
the fields, and files written before the fields existed load the identical teacher.

A new family copies these tests with its row (and tests/test_marian.py for its converter)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from distill.blocks import FAMILY_FIELDS
from distill.cli import main
from distill.model import FAMILIES, PRESETS, ModelConfig, Seq2SeqTransformer
from distill.runs import load_teacher, save_model
from tests.helpers import random_src, tiny_teacher


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_row_fills_the_structure_fields_a_config_leaves_unset(family):
    cfg = ModelConfig(**PRESETS["unit"], family=family)
    row = FAMILIES[family]
    for name in FAMILY_FIELDS:
        assert getattr(cfg, name) == getattr(row, name), name
    assert cfg.family_deltas() == {
        k: v for k, v in dataclasses.asdict(cfg).items() if k not in FAMILY_FIELDS
    }
    # A converted family's teachers have its structure whatever a config says (a recipe's model
    # section starts from the distill family's values); the distill family's are defaults.
    explicit = {"norm": "pre" if row.norm == "post" else "post", "final_norm": not row.final_norm}
    other = ModelConfig(**PRESETS["unit"], family=family, **explicit)
    want = {k: getattr(row, k) for k in explicit} if row.converted else explicit
    assert {k: getattr(other, k) for k in explicit} == want


def test_the_model_reads_the_fields_not_the_family_name():
    """A distill-family config with the marian structure builds the marian teacher's modules,
    and with the same weights gives the same logits."""
    marian = tiny_teacher(family="marian")
    fields = {k: getattr(marian.cfg, k) for k in FAMILY_FIELDS}
    ours = Seq2SeqTransformer(ModelConfig(**PRESETS["unit"], **fields)).eval()
    assert ours.cfg.family == "distill" and ours.cfg.layout == marian.cfg.layout == "post_ln"
    ours.load_state_dict(marian.state_dict())  # strict: the same modules
    assert torch.equal(ours.positions, marian.positions)
    src, tgt = random_src(), random_src(seed=2)
    with torch.no_grad():
        assert torch.equal(ours(src, tgt), marian(src, tgt))
    plain = tiny_teacher()
    assert not torch.equal(plain.positions, marian.positions)
    assert isinstance(plain.encoder_norm, torch.nn.LayerNorm)
    assert isinstance(marian.encoder_norm, torch.nn.Identity)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"norm": "mid"}, "norm must be one of pre, post, got 'mid'"),
        ({"positions": "learned"}, "positions must be one of sin_cos_interleaved"),
        ({"final_norm": "yes"}, "final_norm must be true or false"),
        ({"block": "sas", "norm": "post"}, "block 'sas' normalises before its sublayers"),
        ({"family": "marian", "block": "sas_p"}, "block 'sas_p' is not one of the marian"),
        ({"family": "bart"}, "family must be one of distill, marian"),
    ],
)
def test_a_structure_the_code_cannot_build_is_an_error_naming_the_field(fields, says):
    with pytest.raises(ValueError, match=says):
        ModelConfig(**PRESETS["unit"], **fields)


def _without_family_fields(path) -> None:
    """Rewrite a JSON config as written before ModelConfig had the structure fields."""
    found = json.loads(path.read_text())
    old = set(FAMILY_FIELDS) | {"format_version"}  # format_version came later still
    path.write_text(json.dumps({k: v for k, v in found.items() if k not in old}))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_json_from_before_the_structure_fields_loads_the_identical_teacher(
    family, tmp_path, tiny_tokenizer
):
    unit = {**PRESETS["unit"], "vocab_size": tiny_tokenizer.vocab_size}
    torch.manual_seed(0)
    teacher = Seq2SeqTransformer(ModelConfig(**unit, family=family)).eval()
    save_model(tmp_path, teacher)
    shutil.copyfile(tiny_tokenizer.path, tmp_path / "spm.model")
    _without_family_fields(tmp_path / "model.json")
    loaded, _ = load_teacher(tmp_path)
    assert loaded.cfg == teacher.cfg
    src, tgt = random_src(), random_src(seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(src, tgt), teacher(src, tgt))


def test_a_teacher_run_from_before_the_structure_fields_is_still_finished(
    layerwise, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(layerwise, run)
    settings = json.loads((run / "teacher" / "settings.json").read_text())
    assert not [k for k in settings if k.removeprefix("model.") in FAMILY_FIELDS]
    _without_family_fields(run / "teacher" / "model.json")
    before = (run / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert main(["-q", "run", "teacher", "--config", "tiny", f"run_dir={run}"]) == 0
    assert (run / "teacher" / "model.safetensors").stat().st_mtime_ns == before  # skipped
    changed = ["-q", "run", "teacher", "--config", "tiny", f"run_dir={run}", "model.norm=post"]
    assert main(changed) == 2  # a structure other than the family's is a setting
    assert 'model.norm was (unset), now "post"' in capsys.readouterr().err


def test_a_new_checkpoint_family_is_one_converter_row_and_its_module(
    tmp_path, tiny_tokenizer, capsys, monkeypatch
):
    import sys
    import types

    from distill import importers

    # A converter for a made-up model_type: it "converts" by building a tiny teacher whose
    # vocabulary is the tokenizer's, which it saves in distill's own format.
    teacher = tiny_teacher(vocab_size=tiny_tokenizer.vocab_size, max_len=24)

    def write(out):
        out.mkdir(parents=True)
        shutil.copy(tiny_tokenizer.path, out / "spm.model")

    toy = types.ModuleType("toy_converter")
    toy.import_checkpoint = lambda path, max_len: importers.Imported(teacher, write)
    monkeypatch.setitem(sys.modules, "toy_converter", toy)
    checkpoint = tmp_path / "toy-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "toy"}))
    run = tmp_path / "run"
    argv = ["-q", "run", "teacher", "--config", "tiny", f"run_dir={run}"]
    argv.append(f"pretrained={checkpoint}")
    assert main(argv) == 2  # not registered: one line naming the file and what is importable
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{checkpoint / 'config.json'}: model_type is 'toy'" in err
    assert "'marian'" in err and not (run / "teacher").exists()

    monkeypatch.setitem(importers.CONVERTERS, "toy", "toy_converter")
    assert main(argv) == 0
    loaded, tok = load_teacher(run)
    assert tok.vocab_size == tiny_tokenizer.vocab_size
    for key, value in teacher.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert json.loads((run / "teacher" / "bleu.json").read_text())["n"] > 0  # scored
