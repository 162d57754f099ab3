"""StudentSpec is the one record of a student's settings: every place that writes or reads one
(spec.json, an export's config.json, the model card, the results table) follows its fields."""

from __future__ import annotations

import dataclasses
import json

import pytest
from distill_recipes import evaluate

from distill import export_config, modelcard, students
from distill.errors import CheckpointError
from distill.model import PRESETS, ModelConfig
from distill.runs import trained_student
from distill.students import StudentSpec, build_student


@dataclasses.dataclass(frozen=True)
class GainSpec(StudentSpec):
    """A throwaway student setting: one more field, nothing else."""

    gain: float = 1.0


@pytest.fixture
def with_gain(monkeypatch):
    """StudentSpec with the throwaway field, wherever a module holds the class."""
    for module in (students, export_config, modelcard, evaluate):
        monkeypatch.setattr(module, "StudentSpec", GainSpec)
    return GainSpec("alr", "xs", gain=2.0)


def test_a_new_student_setting_is_one_field_and_reaches_every_record(with_gain, tmp_path):
    spec, site = with_gain, "encoder.0.self_attn"
    # spec.json of a students stage, read back as trained students are
    folder = tmp_path / "students" / "alr"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({**spec.to_dict(), "sites": [site]}))
    assert trained_student(tmp_path, "alr") == spec
    # an export's config.json, checked field by field
    cfg = ModelConfig(**PRESETS["unit"])
    tok = {"file": "spm.model", "type": "sentencepiece", "vocab_size": cfg.vocab_size}
    config = export_config.make_config(cfg, {site: spec.to_dict()}, tok)
    assert export_config.parse_config(config, "config.json")[1][site]["gain"] == 2.0
    config["replacements"][site]["gian"] = 3.0
    with pytest.raises(CheckpointError, match=r"unknown config key 'replacements\..*\.gian'"):
        export_config.parse_config(config, "config.json")
    # the model card's table and the results table's name for the students
    table = modelcard.student_table({site: spec.to_dict()})
    assert table.splitlines()[0] == "| site | mode | size | activation | residual | gain | kind |"
    assert table.splitlines()[2] == f"| `{site}` | alr | xs | leaky_relu | False | 2.0 | mixing |"
    assert evaluate.student_label(spec.to_dict()) == "alr xs 2.0"


def test_a_spec_is_checked_where_it_is_made():
    with pytest.raises(ValueError, match="unknown size 'xxl'"):
        StudentSpec("alr", "xxl")
    with pytest.raises(ValueError, match="mode 'dec_self' has no residual variant"):
        StudentSpec("dec_self", residual=True)
    cfg = ModelConfig(**PRESETS["unit"])
    by_name = build_student("alrr", cfg, "xs", "relu", True)
    by_spec = build_student(StudentSpec("alrr", "xs", "relu", True), cfg)
    assert [p.shape for p in by_name.parameters()] == [p.shape for p in by_spec.parameters()]


@pytest.mark.parametrize(
    "data",
    [
        {"mode": "alr", "size": "xs", "residual": True},
        {"mode": "alr", "residual": "yes"},
        {"mode": "alr", "size": "huge"},
        {"size": "xs"},
        {"mode": "alr", "sizes": "xs"},
        {"mode": 3},
    ],
)
def test_a_spec_is_read_back_as_the_config_loader_reads_a_dataclass(data):
    """StudentSpec.from_dict checks without distill.config (remote code needs no YAML), in its
    words."""
    from distill.config import from_dict
    from distill.errors import ConfigError

    def outcome(read):
        try:
            return read()
        except ConfigError as err:
            return str(err)

    ours = outcome(lambda: StudentSpec.from_dict(data, "replacements.s", strict=True))
    assert ours == outcome(lambda: from_dict(StudentSpec, data, "replacements.s."))
