"""Interruption: a run SIGKILLed at a known point resumes to the result of an uninterrupted one."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main
from tests.reliability.helpers import RECORD, STUDENTS, run_and_kill, shard_hashes

# --- interruption ----------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_recording_resumes_and_matches_an_uninterrupted_one(prepared, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(prepared / "teacher", run / "teacher")
    out = run / "record" / "train"
    run_and_kill("distill.record.save_tensors", 2, [*RECORD, f"run_dir={run}"], tmp_path / "m")
    # Killed after shard 1 was written but before the partial manifest listed it.
    assert (out / "shard-00001.safetensors").exists() and not (out / "manifest.json").exists()
    assert len(json.loads((out / "manifest.partial.json").read_text())["shards"]) == 1
    (out / ".shard-00002.safetensors.x1y2.tmp").write_bytes(b"torn write")  # as a kill leaves
    assert main(["-q", *RECORD, f"run_dir={run}"]) == 0
    assert shard_hashes(run / "record") == shard_hashes(prepared / "record")
    assert not list(out.glob(".*.tmp")) and not (out / "manifest.partial.json").exists()


@pytest.mark.slow
def test_killed_student_training_resumes_and_matches_an_uninterrupted_run(prepared, tmp_path):
    argv = [*STUDENTS, "train.ckpt_every=3"]
    whole = Path(shutil.copytree(prepared, tmp_path / "whole"))
    assert main(["-q", *argv, f"run_dir={whole}"]) == 0
    broken = Path(shutil.copytree(prepared, tmp_path / "broken"))
    # learning_rate runs once when the optimizer is made, then once before each step: its 9th
    # call returns before step 8, so 7 steps are done (5 per epoch; checkpoints at 3, 5, 6).
    run_and_kill("distill.train.learning_rate", 9, [*argv, f"run_dir={broken}"], tmp_path / "m")
    out = broken / "students" / "alr"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6
    assert not (out / "students.safetensors").exists()
    assert main(["-q", *argv, f"run_dir={broken}"]) == 0
    a = load_file(whole / "students" / "alr" / "students.safetensors")
    b = load_file(out / "students.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    whole_steps = [
        json.loads(x)["step"]
        for x in (whole / "students" / "alr" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == whole_steps


def test_recording_again_with_other_settings_first_retires_the_old_manifest(
    prepared, tmp_path, monkeypatch
):
    import distill.record
    from distill.runs import load_teacher

    out = Path(shutil.copytree(prepared / "record" / "train", tmp_path / "train"))
    model, _ = load_teacher(prepared)
    examples = [([5, 6, 3], [7, 8])] * 20

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(distill.record, "save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):  # the first new shard is never written
        distill.record.record(model, examples, ["encoder.0.self_attn"], out, progress=False)
    assert not (out / "manifest.json").exists()


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    from distill.train import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n{"step": 6, "lo')
    MetricsLog(path, resume_step=4)
    assert path.read_text() == '{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n'
