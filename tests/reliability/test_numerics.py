"""Numerical faults: NaN/inf losses and weights stop a run naming the step and the site, and the
last good checkpoint is kept."""

import json
import math
import re

import pytest
import torch

from distill.checkpoint import load_checkpoint
from distill.cli import main
from distill.modes import mode_sites
from distill.students import build_student
from distill.train import TrainConfig, TrainingDiverged, fit
from tests.reliability.helpers import STUDENTS, TEACHER, json_model_cfg, nan_at

# --- numerical faults ------------------------------------------------------------------------


def test_student_nan_names_site_and_step_and_keeps_the_last_checkpoint(
    run_copy, capsys, monkeypatch
):
    import distill.losses

    site = "encoder.1.self_attn"
    monkeypatch.setattr(
        distill.losses,
        "site_loss",
        nan_at(distill.losses.site_loss, 5, only=lambda student, s, batch, *rest: s == site),
    )
    assert main(["-q", *STUDENTS, f"run_dir={run_copy}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"distill: error: students:alr: site '{site}': loss is nan at step 5; stopped, last good "
        r"checkpoint kept at .*students/alr/checkpoint",
        last,
    ), last
    out = run_copy / "students" / "alr"
    assert not (out / "students.safetensors").exists() and not (out / "spec.json").exists()
    cfg = json_model_cfg(run_copy)
    students = torch.nn.ModuleDict(
        {s.replace(".", "/"): build_student("alr", cfg, "xs") for s in mode_sites("alr", cfg)}
    )
    assert load_checkpoint(out / "checkpoint", students)["step"] == 4
    assert all(p.isfinite().all() for p in students.parameters())


def test_teacher_nan_names_the_step_exits_2_and_keeps_the_last_checkpoint(
    tmp_path, capsys, monkeypatch
):
    import distill_recipes.teacher

    monkeypatch.setattr(
        distill_recipes.teacher, "teacher_loss", nan_at(distill_recipes.teacher.teacher_loss, 4)
    )
    run = tmp_path / "run"
    argv = [*TEACHER, f"run_dir={run}", "train.epochs=1", "train.ckpt_every=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(
        r"distill: error: teacher: loss is nan at step 4; stopped, last good "
        r"checkpoint kept at .*teacher/checkpoint$",
        err.strip(),
    ), err
    assert json.loads((run / "teacher" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (run / "teacher" / "model.safetensors").exists()


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss that still breaks weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_weights_broken_by_a_finite_loss_are_never_checkpointed(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batches = [torch.randn(4, 3) for _ in range(6)]
    step = [0]

    def loss_fn(m, x):
        step[0] += 1
        y = m(x)
        return (_InfGrad.apply(y) if step[0] == 4 else y).pow(2).mean()

    cfg = TrainConfig(epochs=1, schedule="constant", lr=1e-2, ckpt_every=1, log_every=1)
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 4"):
        fit(model, lambda e: batches, loss_fn, cfg, tmp_path, d_model=3, desc="t")
    fresh = torch.nn.Linear(3, 1)
    assert load_checkpoint(tmp_path / "checkpoint", fresh)["step"] == 3
    assert all(p.isfinite().all() for p in fresh.parameters())
