"""Names of older formats read as today's (distill.formats): weights files and site names written
before format 3 load into the identical model; a file of a newer format is refused in one line.
Real files of the old format: tests/test_old_formats.py."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import distill
from distill.checkpoint import load_state_dict
from distill.errors import CheckpointError
from distill.export_config import make_config, parse_config
from distill.formats import FORMAT_VERSION, current_keys, current_site
from distill.model import list_sites
from distill.runs import load_teacher, save_model
from tests.helpers import LAYOUTS, tiny_teacher

# How formats 1 and 2 named each of today's modules (written out here, not derived from the code
# under test): sublayers by their position in the layer, a feed-forward's maps by their index.
FORMAT_2 = {
    ("encoder", "self_attn_sublayer"): "sublayer0",
    ("encoder", "ff_sublayer"): "sublayer1",
    ("decoder", "self_attn_sublayer"): "sublayer0",
    ("decoder", "cross_attn_sublayer"): "sublayer1",
    ("decoder", "ff_sublayer"): "sublayer2",
}


def format_2(name: str) -> str:
    """Today's parameter or site name as formats 1 and 2 wrote it."""
    m = re.match(r"^(encoder|decoder)\.(\d+)\.(\w+)(.*)$", name)
    if m and (m.group(1), m.group(3)) in FORMAT_2:
        name = f"{m.group(1)}.{m.group(2)}.{FORMAT_2[m.group(1), m.group(3)]}{m.group(4)}"
    return name.replace(".ff.fc1.", ".ff.0.").replace(".ff.fc2.", ".ff.3.")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weights_with_the_old_names_load_into_the_identical_model(layout):
    teacher = tiny_teacher(seed=0, **LAYOUTS[layout])
    old = {format_2(k): v for k, v in teacher.state_dict().items()}
    assert set(old) != set(teacher.state_dict())  # some names did change
    fresh = tiny_teacher(seed=1, **LAYOUTS[layout])
    load_state_dict(fresh, old, "old.safetensors")
    for key, value in teacher.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_site_name_of_the_old_format_reads_as_todays(layout):
    sites = list_sites(tiny_teacher(**LAYOUTS[layout]).cfg)
    # only ALRR's site, the attention sublayer with its skip, had another name
    renamed = [s for s in sites if format_2(s) != s]
    assert len(renamed) == (2 if layout in ("pre_ln", "post_ln") else 0)
    for site in sites:
        assert current_site(format_2(site)) == site
        assert current_site(format_2(site) + ".x") == site + ".x"  # a recording's tensor
        key = format_2(site).replace(".", "/") + ".fc1.weight"  # a students.safetensors name
        assert current_site(key) == site.replace(".", "/") + ".fc1.weight"


def test_a_students_own_names_are_never_renamed():
    class Student(nn.Module):  # a student that happens to hold an nn.Sequential called ff
        def __init__(self):
            super().__init__()
            self.ff = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 2))

    model = nn.ModuleDict({"decoder/0/self_attn": Student()})
    tensors = model.state_dict()
    assert "decoder/0/self_attn.ff.0.weight" in tensors
    assert current_keys(tensors, model.state_dict()).keys() == tensors.keys()
    load_state_dict(model, tensors, "students.safetensors")


def test_model_json_says_its_format_and_a_newer_one_is_refused(tmp_path):
    save_model(tmp_path, tiny_teacher())
    found = json.loads((tmp_path / "model.json").read_text())
    assert found["format_version"] == FORMAT_VERSION
    found["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "model.json").write_text(json.dumps(found))
    with pytest.raises(
        CheckpointError, match=r"model\.json: format_version \d+: written by a newer"
    ):
        load_teacher(tmp_path)


def test_a_model_json_that_is_no_mapping_is_one_error_naming_it(tmp_path):
    save_model(tmp_path, tiny_teacher())
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"model\.json: expected a mapping"):
        load_teacher(tmp_path)


def test_an_export_config_of_a_newer_format_is_refused():
    config = make_config(tiny_teacher().cfg, {}, {})
    assert config["format_version"] == FORMAT_VERSION
    parse_config(config, "config.json")
    with pytest.raises(
        CheckpointError, match=r"config\.json: format_version \d+: written by a new"
    ):
        parse_config({**config, "format_version": FORMAT_VERSION + 1}, "config.json")


def test_the_package_version_moved_with_the_format():
    # 0.1.0 wrote formats 1 and 2 alike, so an export's distill_version could not tell them apart.
    major, minor = (int(part) for part in distill.__version__.split(".")[:2])
    assert (major, minor) >= (0, FORMAT_VERSION)
