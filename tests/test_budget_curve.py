"""bench/budget_curve.py on the tiny run: plans, one trained arm per side of one pass, skipping,
refusals; its chart and extrapolation (eval/budget.py)."""

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from distill_eval.budget import extrapolate, write_curve_chart
from distill_recipes import finetune

from distill.budget import training_tokens
from distill.data import encode_pairs, load_pairs
from distill.runs import load_teacher, teacher_data

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "budget_curve.py"
TINY = ["--variant", "attentionless", "--config", "tiny", "--valid-sentences", "4"]


def _load_script():
    spec = importlib.util.spec_from_file_location("budget_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["budget_curve"] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


budget_curve = _load_script()


@pytest.fixture(scope="module")
def run(layerwise, tmp_path_factory) -> Path:
    return Path(shutil.copytree(layerwise, tmp_path_factory.mktemp("budget") / "run"))


@pytest.fixture(scope="module")
def one_pass(run) -> int:
    """Training tokens of one pass over the tiny run's filtered train split."""
    teacher, tok = load_teacher(run)
    train, _ = encode_pairs(load_pairs(teacher_data(run), "train"), tok, teacher.cfg.max_len)
    return training_tokens(train)


def _records(arm: Path) -> list[dict]:
    lines = (arm / "finetune" / "attentionless" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_dry_run_prints_each_plan_and_the_teachers_budget_and_writes_nothing(run, capsys):
    assert budget_curve.main([str(run), *TINY, "--tokens", "300,2k", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "attentionless-reference-300:" in out and "attentionless-reference-2k:" in out
    assert "the teacher's own training: " in out
    assert not (run / "budget").exists()


def test_the_teachers_budget_replays_the_steps_its_training_took(run, one_pass):
    teacher, tok = load_teacher(run)
    train, _ = encode_pairs(load_pairs(teacher_data(run), "train"), tok, teacher.cfg.max_len)
    budget = budget_curve.teacher_budget(run, train)
    state = json.loads((run / "teacher" / "checkpoint" / "state.json").read_text())
    assert state["done"] and budget["steps"] == state["step"] > 0
    assert budget["tokens"] == pytest.approx(budget["passes"] * one_pass)


def test_arms_train_their_planned_steps_to_a_zero_rate_and_a_second_call_skips_them(
    run, one_pass, monkeypatch, capsys
):
    below, above = one_pass // 3, one_pass * 3 // 2
    argv = [str(run), *TINY, "--tokens", f"{below},{above}", "--extra", "train.log_every=1"]
    assert budget_curve.main(argv) == 0
    curve = json.loads((run / "budget" / "curve.json").read_text())
    rows = {r["budget"]: r for r in curve["arms"]}
    assert sorted(rows) == [below, above]
    assert rows[below]["epochs"] == 1 and rows[below]["max_steps"] == 0
    assert rows[above]["epochs"] == 2 and rows[above]["max_steps"] > 0
    for budget, r in rows.items():
        arm = run / "budget" / r["arm"]
        assert (arm / "teacher").is_symlink() and (arm / "students").is_symlink()
        spec = json.loads((arm / "finetune" / "attentionless" / "spec.json").read_text())
        # the recipe trained the plan's steps on the plan's sentences, and saw its tokens
        assert spec["settings"]["steps"] == r["steps"] == r["planned_steps"]
        assert spec["settings"]["sentences"] == r["sentences"]
        assert r["tokens"] == r["planned_tokens"] >= budget
        lrs = [x["lr"] for x in _records(arm) if "lr" in x]
        assert len(lrs) == r["steps"] and lrs[-1] == 0.0 < min(lrs[:-1])
        assert max(range(len(lrs)), key=lrs.__getitem__) == r["warmup"] - 1
        assert r["cpu"] and r["bleu"] >= 0 and r["valid_kd"] > 0
    assert (run / "budget" / "curve.png").read_bytes()[:4] == b"\x89PNG"

    def no_training(cfg):
        raise AssertionError(f"{cfg.run_dir} trained again")

    monkeypatch.setattr(finetune, "main", no_training)
    capsys.readouterr()
    assert budget_curve.main(argv) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 2
    again = json.loads((run / "budget" / "curve.json").read_text())
    assert again["arms"] == curve["arms"]


def test_an_arm_trained_with_other_settings_is_refused(run, one_pass, capsys):
    argv = [str(run), *TINY, "--tokens", str(one_pass // 3), "--extra", "temperature=2"]
    if not (run / "budget").exists():  # alone: train the arm first
        assert budget_curve.main([*argv[:-2], "--extra", "train.log_every=1"]) == 0
    capsys.readouterr()
    assert budget_curve.main(argv) == 2
    err = capsys.readouterr().err
    assert "config.yaml: the arm was trained with other temperature" in err


@pytest.mark.parametrize(
    "extra, says", [("train.epochs=3", "the budget plan sets"), ("tempreature=2", "tempreature")]
)
def test_extra_keys_the_plan_sets_or_the_config_lacks_are_one_line_errors(run, capsys, extra, says):
    assert budget_curve.main([str(run), *TINY, "--tokens", "1k", "--extra", extra]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def _line(a: float, b: float, tokens: list[float]) -> list[dict]:
    return [{"tokens": t, "retention": a + b * math.log10(t)} for t in tokens]


def test_the_extrapolation_solves_the_line_it_was_drawn_from_for_the_target():
    ex = extrapolate(_line(-0.5, 0.15, [3e5, 1e6, 3e6, 1e7]))
    assert ex["what"].startswith("EXTRAPOLATION") and ex["arms"] == 4
    assert -0.5 + 0.15 * math.log10(ex["tokens"]) == pytest.approx(ex["target"])


def test_no_extrapolation_when_the_last_arm_stops_rising_or_reached_the_target():
    flat = _line(-0.5, 0.15, [3e5, 1e6, 3e6]) + [{"tokens": 1e7, "retention": 0.4}]
    assert extrapolate(flat) is None
    assert extrapolate(_line(0.3, 0.1, [1e5, 1e6, 1e7])) is None  # 1.0 at 1e7 already
    assert extrapolate(_line(-0.5, 0.15, [1e6])) is None


def test_the_chart_draws_arms_layerwise_teacher_and_extrapolation(tmp_path):
    arms = [{"variant": "v", "targets": "reference", **r} for r in _line(-0.5, 0.15, [1e5, 1e6])]
    curve = {
        "unit": "tokens",
        "valid": "4 pairs",
        "arms": arms,
        "layerwise": {"v": {"retention": 0.2}},
        "teacher": {"budget": {"tokens": 4e6}},
        "extrapolation": {"v-reference": extrapolate(arms)},
    }
    write_curve_chart(curve, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
