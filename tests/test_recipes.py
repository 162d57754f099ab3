"""Every recipe's tiny config end to end, and resumption after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from distill.checkpoint import resolve_checkpoint
from distill.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["-q", "run", "pipeline", "--config", "tiny", f"run_dir={run_dir}"]) == 0
    return run_dir


def test_teacher_stage_writes_model_tokenizer_metrics_and_bleu(tiny_run):
    t = tiny_run / "teacher"
    for name in ("config.yaml", "spm.model", "model.safetensors", "model.json", "metrics.jsonl"):
        assert (t / name).is_file(), name
    bleu = json.loads((t / "bleu.json").read_text())
    assert bleu["bleu_signature"].startswith("nrefs:1|case:mixed") and bleu["n"] > 0
    data = json.loads((t / "data.json").read_text())
    assert (
        data["train"]["kept"]
        + data["train"]["src_too_long"]
        + data["train"]["tgt_too_long"]
        + data["train"]["empty"]
        == data["train"]["total"]
    )
    losses = [json.loads(x) for x in (t / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_loss" in r for r in losses)


def test_record_and_student_stages_cover_every_mode(tiny_run):
    manifest = json.loads((tiny_run / "record" / "train" / "manifest.json").read_text())
    assert manifest["dtype"] == "fp32" and manifest["sentences"] > 0
    modes = {p.parent.name for p in (tiny_run / "students").glob("*/spec.json")}
    assert modes == {"alr", "alrr", "aslr", "elr", "dec_self", "dec_self_pp", "cross", "cross_pw"}
    assert not list((tiny_run / "students").glob("*/checkpoint*"))  # finished: no resume state
    elr = tiny_run / "students" / "elr"
    spec, init = (json.loads((elr / f).read_text()) for f in ("spec.json", "init.json"))
    assert spec["local_units"] == init["local_units"] == 1 and spec["init"] == "lstsq"


def test_local_units_that_fill_a_students_hidden_layer_fail_before_training(tiny_run, capsys):
    before = sorted(p.stat().st_mtime_ns for p in (tiny_run / "students").rglob("*"))
    argv = ["run", "students", "--config", "tiny", f"run_dir={tiny_run}", "modes=[elr]"]
    assert main(["-q", *argv, "local_units={elr: 7}", "sizes={elr: s}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error: local_units: elr") and "\n" not in err
    assert sorted(p.stat().st_mtime_ns for p in (tiny_run / "students").rglob("*")) == before


def test_evaluate_stage_writes_a_row_per_variant(tiny_run):
    results = json.loads((tiny_run / "eval" / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"] if r["stage"] != "tuned"}
    tuned = [r["variant"] for r in results["rows"] if r["stage"] == "tuned"]
    assert tuned == ["attentionless"]  # the tiny finetune stage tunes that one
    assert set(rows) == {
        "teacher",
        "alr",
        "alrr",
        "aslr",
        "elr",
        "dec_self",
        "dec_self_pp",
        "cross",
        "cross_pw",
        "attentionless",
        "attentionless_pw",
    }
    assert rows["attentionless"]["sites"] and rows["teacher"]["params_replaced"] == 0
    assert rows["alr"]["params_student"] > 0
    assert (tiny_run / "eval" / "results.md").read_text().startswith("| variant |")
    assert (tiny_run / "eval" / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_a_finished_pipeline_is_skipped(tiny_run, caplog):
    import logging

    caplog.set_level(logging.INFO)
    before = (tiny_run / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert main(["run", "teacher", "--config", "tiny", f"run_dir={tiny_run}"]) == 0
    assert (tiny_run / "teacher" / "model.safetensors").stat().st_mtime_ns == before
    assert "already trained" in caplog.text


def _teacher_cmd(run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill.cli",
        "-q",
        "run",
        "teacher",
        "--config",
        "tiny",
        f"run_dir={run_dir}",
        "train.epochs=4",
        "train.ckpt_every=4",
        "eval.max_sentences=4",
    ]


def _checkpoint_step(ckpt: Path) -> int:
    """Step of the checkpoint the run would resume from, -1 if none (yet): while the running
    process swaps checkpoints, ``checkpoint/`` is briefly absent and ``.old`` holds the last one."""
    found = resolve_checkpoint(ckpt)
    try:
        return json.loads((found / "state.json").read_text())["step"] if found else -1
    except FileNotFoundError:  # swapped away between the lookup and the read
        return -1


def test_killed_teacher_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    whole = tmp_path / "whole"
    subprocess.run(_teacher_cmd(whole), check=True, env=env, capture_output=True)

    broken = tmp_path / "broken"
    proc = subprocess.Popen(
        _teacher_cmd(broken), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = broken / "teacher" / "checkpoint"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _checkpoint_step(ckpt) >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_step(ckpt)  # the kill may fall inside a checkpoint swap
    assert killed_at >= 8
    assert not (broken / "teacher" / "bleu.json").exists()

    done = subprocess.run(_teacher_cmd(broken), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = [
        json.loads(x) for x in (broken / "teacher" / "metrics.jsonl").read_text().splitlines()
    ]
    keys = [(r["step"], "valid_loss" in r) for r in records]
    assert len(keys) == len(set(keys)), "metrics.jsonl repeats records after the resume"
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)
    assert killed_at < max(k[0] for k in keys)
    whole_keys = [
        (json.loads(x)["step"], "valid_loss" in json.loads(x))
        for x in (whole / "teacher" / "metrics.jsonl").read_text().splitlines()
    ]
    assert keys == whole_keys
    a = load_file(whole / "teacher" / "model.safetensors")
    b = load_file(broken / "teacher" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
