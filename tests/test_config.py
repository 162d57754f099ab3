"""Configs: every shipped config loads; typos and wrong types fail naming the key."""

import pytest

from distill.cli import load_recipe_config
from distill.config import CONFIG_ROOT, RECIPES, available
from distill.errors import ConfigError


def all_configs():
    return [(r, c) for r, names in available().items() for c in names]


def test_every_recipe_has_tiny_demo_and_paper_configs():
    for recipe, names in available().items():
        assert {"tiny", "demo", "paper"} <= set(names), recipe


@pytest.mark.parametrize("recipe,name", all_configs())
def test_every_config_loads(recipe, name):
    _, cfg = load_recipe_config(recipe, name, [])
    assert cfg.run_dir == f"runs/{name}"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_recipe_config("teacher", str(bad), [])


def test_config_folders_and_runnable_recipes_are_the_same_set():
    folders = {p.name for p in CONFIG_ROOT.iterdir() if p.is_dir()}
    assert folders == set(RECIPES) == set(available())  # no orphan folder, no recipe without one


def test_a_section_delta_keeps_the_fields_own_defaults():
    # The students' `train` section defaults to a constant rate, not TrainConfig's Noam factor:
    # a YAML or override that sets only `train.epochs` must not bring the class defaults back.
    from distill_recipes.students import Config, _student_train_defaults

    own = _student_train_defaults()
    _, cfg = load_recipe_config("students", "tiny", ["train.epochs=3"])
    assert cfg.train.epochs == 3
    assert (cfg.train.schedule, cfg.train.lr, cfg.train.eps) == (own.schedule, own.lr, own.eps)
    assert Config().train == own


def test_exponent_floats_without_a_dot_are_floats():
    # PyYAML (YAML 1.1) reads `1e-3` as a string; as a float-typed key it must be the number.
    _, cfg = load_recipe_config("students", "tiny", ["train.lr=2e-3", "modes.alr.lr=5e-4"])
    assert cfg.train.lr == 2e-3 and cfg.modes["alr"].lr == 5e-4
    with pytest.raises(ConfigError, match="config key 'train.lr': expected float"):
        load_recipe_config("students", "tiny", ["train.lr=fast"])
    with pytest.raises(ConfigError, match="config key 'modes.alr.lr'"):
        load_recipe_config("students", "tiny", ["modes.alr.lr=fast"])


def test_per_mode_settings_are_checked_before_anything_runs():
    _, cfg = load_recipe_config("students", "tiny", ["modes.cross.schedule=constant"])
    assert cfg.train_of("cross").schedule == "constant" and cfg.train_of("alr").schedule != ""
    for bad, match in [
        ("modes.cross.schedule=steep", r"config 'modes\.cross': schedule must be one of"),
        ("modes.crosss.schedule=constant", "unknown mode 'crosss'"),
        ("modes.cross.sise=m", "unknown config key 'modes.cross.sise'"),
        ("modes.cross.residual=true", "modes: cross: residual: the mode has no residual variant"),
        ("init=zeros", "init"),
        ("activation=swiglu", "init=random"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_recipe_config("students", "tiny", [bad])
    load_recipe_config("students", "tiny", ["activation=swiglu", "init=random"])


def test_a_list_of_modes_selects_from_the_mapping_and_old_flat_keys_name_the_new_one():
    _, cfg = load_recipe_config("students", "tiny", ["modes=[elr, alr]"])
    assert list(cfg.modes) == ["elr", "alr"]  # order kept: the training order
    assert cfg.size_of("elr") == "s" and cfg.modes["elr"].local_units == 1  # the YAML's settings
    for old, new in [("schedules={cross: constant}", "schedule"), ("lrs={elr: 3}", "lr")]:
        key = old.partition("=")[0]
        with pytest.raises(ConfigError, match=rf"'{key}' was removed: .*modes\.elr\.{new}="):
            load_recipe_config("students", "tiny", [old])


def test_local_units_are_checked_before_anything_runs():
    from distill_recipes.students import check_widths

    from distill.model import PRESETS, ModelConfig

    over = ["modes.elr.local_units=2", "modes.elr.size=l"]
    _, cfg = load_recipe_config("students", "tiny", over)
    assert cfg.modes["elr"].local_units == 2
    for bad, match in [
        ("modes.dec_self.local_units=2", "no least-squares init"),
        ("modes.elrr.local_units=2", "unknown mode 'elrr'"),
        ("modes.elr.local_units=-1", "whole number"),
        ("modes.elr.local_units=1.5", "modes.elr.local_units"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_recipe_config("students", "tiny", [bad])
    model_cfg = ModelConfig(**PRESETS["unit"])
    check_widths(cfg, model_cfg)  # 2 x max_len 8 is well below L's 3200 units
    _, narrow = load_recipe_config("students", "tiny", ["modes.elr.local_units=7"])  # size s
    with pytest.raises(ConfigError, match="below the hidden width 50"):
        check_widths(narrow, model_cfg)


def test_a_list_that_selects_modes_may_set_one_of_them():
    _, cfg = load_recipe_config("students", "tiny", ["modes=[elr, {cross: {epochs: 8}}]"])
    assert list(cfg.modes) == ["elr", "cross"] and cfg.modes["cross"].epochs == 8
    assert cfg.size_of("elr") == "s"  # elr keeps the YAML's settings


def test_evaluate_scores_a_list_of_splits_and_the_old_split_key_names_the_new_one():
    _, cfg = load_recipe_config("evaluate", "demo", [])
    assert cfg.splits == ["valid", "test"]  # the demo scores where settings are chosen too
    assert load_recipe_config("evaluate", "demo", ["splits=[test]"])[1].splits == ["test"]
    with pytest.raises(ConfigError, match=r"'split' was removed: use splits=\[valid\]"):
        load_recipe_config("evaluate", "demo", ["split=valid"])
    with pytest.raises(ConfigError, match="splits must be a list of test and valid"):
        load_recipe_config("evaluate", "demo", ["splits=[train]"])


@pytest.mark.parametrize("name", available()["evaluate"])
def test_every_evaluate_config_scores_the_papers_attention_free_row(name):
    # `attentionless` (the paper's flat MLPs at every site, mixing students only) is the row the
    # field would call attention-free: it stays beside ours, e.g. attentionless_gate.
    _, cfg = load_recipe_config("evaluate", name, [])
    assert "attentionless" in cfg.variants and "attentionless_gate" in cfg.variants


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_the_pipeline_trains_and_scores_the_papers_attention_free_row(name):
    from distill.modes import VARIANTS

    _, cfg = load_recipe_config("pipeline", name, [])
    stages = cfg.resolved()
    assert "attentionless" in stages["evaluate"].variants
    assert set(VARIANTS["attentionless"]) <= set(stages["students"].modes)  # else skipped
