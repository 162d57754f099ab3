"""Configs: every shipped config loads; typos and wrong types fail naming the key."""

import pytest

from distill.cli import load_recipe_config, main
from distill.config import CONFIG_ROOT, available
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


def test_unknown_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        load_recipe_config("teacher", "tiny", ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_recipe_config("teacher", "tiny", ["modle.d_model=3"])


def test_wrong_type_and_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="config key 'train.epochs': expected int"):
        load_recipe_config("teacher", "tiny", ["train.epochs=three"])
    with pytest.raises(ConfigError, match="max_len must be >= 2"):
        load_recipe_config("teacher", "tiny", ["data.max_len=0"])
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_recipe_config("teacher", "tiny", ["train.lr=-1"])
    with pytest.raises(ConfigError, match="unknown mode 'alx'"):
        load_recipe_config("students", "tiny", ["modes=[alx]"])
    with pytest.raises(ConfigError, match="unknown size 'xxl'"):
        load_recipe_config("students", "tiny", ["size=xxl"])


def test_pipeline_sections_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="pipeline section 'students'.*unknown config key 'sise'"):
        load_recipe_config("pipeline", "tiny", ["students.sise=m"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_recipe_config("teacher", str(bad), [])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "nosuch", "--config", "tiny"], "unknown recipe 'nosuch'"),
        (["run", "teacher", "--config", "nosuch"], "unknown config 'nosuch' for recipe 'teacher'"),
        (["run", "teacher", "--config", "tiny", "train.epochs=x"], "train.epochs"),
    ],
)
def test_cli_misuse_is_one_line_and_exit_code_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_config_root_exists():
    assert CONFIG_ROOT.is_dir()


def test_a_section_delta_keeps_the_fields_own_defaults():
    # The students' `train` section defaults to a constant rate, not TrainConfig's Noam factor:
    # a YAML or override that sets only `train.epochs` must not bring the class defaults back.
    from recipes.students import Config, _student_train_defaults

    own = _student_train_defaults()
    _, cfg = load_recipe_config("students", "tiny", ["train.epochs=3"])
    assert cfg.train.epochs == 3
    assert (cfg.train.schedule, cfg.train.lr, cfg.train.eps) == (own.schedule, own.lr, own.eps)
    assert Config().train == own


def test_exponent_floats_without_a_dot_are_floats():
    # PyYAML (YAML 1.1) reads `1e-3` as a string; as a float-typed key it must be the number.
    _, cfg = load_recipe_config("students", "tiny", ["train.lr=2e-3", "lrs={alr: 5e-4}"])
    assert cfg.train.lr == 2e-3 and cfg.lrs == {"alr": 5e-4}
    with pytest.raises(ConfigError, match="config key 'train.lr': expected float"):
        load_recipe_config("students", "tiny", ["train.lr=fast"])
    with pytest.raises(ConfigError, match="config key 'lrs.alr'"):
        load_recipe_config("students", "tiny", ["lrs={alr: fast}"])


def test_per_mode_schedules_and_init_are_checked_before_anything_runs():
    _, cfg = load_recipe_config("students", "tiny", ["schedules={cross: constant}", "init=random"])
    assert cfg.schedules == {"cross": "constant"} and cfg.init == "random"
    with pytest.raises(ConfigError, match="schedules"):
        load_recipe_config("students", "tiny", ["schedules={cross: steep}"])
    with pytest.raises(ConfigError, match="schedules"):
        load_recipe_config("students", "tiny", ["schedules={crosss: constant}"])
    with pytest.raises(ConfigError, match="init"):
        load_recipe_config("students", "tiny", ["init=zeros"])
    with pytest.raises(ConfigError, match="init=random"):
        load_recipe_config("students", "tiny", ["activation=swiglu"])
    load_recipe_config("students", "tiny", ["activation=swiglu", "init=random"])


def test_local_units_are_checked_before_anything_runs():
    from distill.model import PRESETS, ModelConfig
    from recipes.students import check_widths

    _, cfg = load_recipe_config("students", "tiny", ["local_units={elr: 2}", "sizes={elr: l}"])
    assert cfg.local_units == {"elr": 2}
    for bad, match in [
        ("local_units={dec_self: 2}", "no least-squares init"),
        ("local_units={elrr: 2}", "unknown mode"),
        ("local_units={elr: -1}", "whole numbers"),
        ("local_units={elr: 1.5}", "local_units"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_recipe_config("students", "tiny", [bad])
    model_cfg = ModelConfig(**PRESETS["tiny"])
    check_widths(cfg, model_cfg)  # 2 x max_len 8 is well below L's 3200 units
    _, narrow = load_recipe_config("students", "tiny", ["local_units={elr: 7}", "sizes={elr: s}"])
    with pytest.raises(ConfigError, match="below the hidden width 50"):
        check_widths(narrow, model_cfg)
