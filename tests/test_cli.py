"""The command line's conveniences: --version, --help, --print-config, cp, the override rule."""

import dataclasses
import importlib
import importlib.metadata

import pytest
import yaml

import distill
from distill import cli
from distill.cli import load_recipe_config, main
from distill.config import CONFIG_ROOT, STAGES, available


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``distill ARGV``, in this process."""
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's --help and --version
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version_is_the_installed_packages(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out == f"distill {importlib.metadata.version('distill')}\n"
    assert out == f"distill {distill.__version__}\n"


def test_help_shows_the_usage_block_and_run_help_the_override_rule(capsys):
    code, out, _ = run_cli(capsys, "--help")
    usage = [line.strip() for line in cli.__doc__.splitlines() if line.startswith("    distill ")]
    assert code == 0 and len(usage) >= 7
    for line in usage + ["distill cp RECIPE/CONFIG", "[--redo STAGE]", "--print-config"]:
        assert line in out
    assert "The distill command" not in out and "``" not in out
    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0
    assert "on distill run pipeline it starts with its stage (teacher.train.epochs=3" in out


def forbid_running(monkeypatch, recipe: str) -> None:
    def run(cfg):
        raise AssertionError(f"--print-config ran {recipe}")

    for name in {recipe, *STAGES} if recipe == "pipeline" else {recipe}:
        monkeypatch.setattr(importlib.import_module(f"distill_recipes.{name}"), "main", run)


def print_config(capsys, recipe: str, config: str, *overrides: str) -> str:
    argv = ["run", recipe, "--config", config, "--print-config", *overrides]
    code, out, err = run_cli(capsys, *argv)
    assert (code, err) == (0, ""), err
    return out


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("recipe,name", [(r, c) for r, cs in available().items() for c in cs])
def test_print_config_prints_every_key_and_reloads_as_the_same_config(
    recipe, name, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    forbid_running(monkeypatch, recipe)
    text = print_config(capsys, recipe, name)
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written
    _, cfg = load_recipe_config(recipe, name, [])
    printed = yaml.safe_load(text)
    assert printed["run_dir"] == cfg.run_dir == f"runs/{name}"
    saved = tmp_path / "saved.yaml"
    saved.write_text(text)
    _, again = load_recipe_config(recipe, str(saved), [])
    if recipe == "pipeline":  # every stage's whole config, on no base config
        assert printed["stages"] == ""
        stages = cfg.resolved()
        for stage in STAGES:
            assert set(printed[stage]) == field_names(type(stages[stage]))
        assert again.resolved() == stages and again.online == cfg.online
    else:
        assert set(printed) == field_names(type(cfg))
        assert again == cfg
    assert print_config(capsys, recipe, str(saved)) == text


def test_print_config_shows_overrides_and_the_pipelines_online_students(capsys, tmp_path):
    printed = yaml.safe_load(print_config(capsys, "students", "tiny", "train.epochs=7"))
    assert printed["train"]["epochs"] == 7
    text = print_config(capsys, "pipeline", "tiny", "online=true", "students.size=s")
    printed = yaml.safe_load(text)
    assert printed["online"] is True
    assert (printed["students"]["source"], printed["students"]["size"]) == ("online", "s")
    saved = tmp_path / "p.yaml"
    saved.write_text(text)
    assert load_recipe_config("pipeline", str(saved), [])[1].resolved()["students"].size == "s"


def test_a_stage_prefix_on_a_single_recipe_names_the_pipeline(capsys):
    code, out, err = run_cli(capsys, "run", "students", "--config", "tiny", "students.size=s")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("distill: error: unknown config key 'students.size': ")
    assert "`distill run pipeline`" in err and err.endswith("(here: size=s)\n")
    code, _, err = run_cli(capsys, "run", "teacher", "--config", "tiny", "record.modes=[alr]")
    assert code == 2 and err.endswith("(here: modes=[alr])\n")
    _, cfg = load_recipe_config("pipeline", "tiny", ["students.size=s"])  # where it belongs
    assert cfg.resolved()["students"].size == "s"


def test_cp_copies_a_shipped_config_and_keeps_an_existing_file(capsys, tmp_path):
    shipped = CONFIG_ROOT / "teacher" / "demo.yaml"
    dest = tmp_path / "mine.yaml"
    assert run_cli(capsys, "cp", "teacher/demo", str(dest))[0] == 0
    assert dest.read_bytes() == shipped.read_bytes()
    dest.write_text("edited: true\n")
    code, _, err = run_cli(capsys, "cp", "teacher/demo", str(dest))
    assert code == 2 and err == f"distill: error: {dest} exists; --force overwrites it\n"
    assert dest.read_text() == "edited: true\n"
    assert run_cli(capsys, "cp", "teacher/demo", str(dest), "--force")[0] == 0
    assert dest.read_bytes() == shipped.read_bytes()
    assert run_cli(capsys, "cp", "students/tiny", str(tmp_path))[0] == 0  # into a folder
    shipped = CONFIG_ROOT / "students" / "tiny.yaml"
    assert (tmp_path / "tiny.yaml").read_bytes() == shipped.read_bytes()


@pytest.mark.parametrize(
    "arg,message",
    [
        ("teacher/nosuch", "unknown config 'nosuch' for recipe 'teacher' (known: demo, paper"),
        ("nosuch/demo", "unknown recipe 'nosuch' (known: teacher, record, students"),
        ("teacher/../students/demo", "unknown config '../students/demo' for recipe 'teacher'"),
        ("teacher", "cp: expected RECIPE/CONFIG (e.g. teacher/demo), got 'teacher'"),
    ],
)
def test_cp_of_an_unknown_config_lists_the_known_ones(arg, message, capsys, tmp_path):
    code, _, err = run_cli(capsys, "cp", arg, str(tmp_path / "x.yaml"))
    assert code == 2 and err.startswith(f"distill: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
