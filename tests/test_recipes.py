"""Every recipe's tiny config end to end, and resumption after SIGKILL."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.checkpoint import resolve_checkpoint
from distill.cli import main

REPO = Path(__file__).resolve().parent.parent
# The modes recipes/configs/students/tiny.yaml trains.
TINY_MODES = (
    "alr",
    "alrr",
    "aslr",
    "elr",
    "dec_self",
    "dec_self_pp",
    "cross",
    "cross_pw",
    "cross_gate",
)


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
    assert modes == set(TINY_MODES)
    assert not list((tiny_run / "students").glob("*/checkpoint*"))  # finished: no resume state
    elr = tiny_run / "students" / "elr"
    spec, init = (json.loads((elr / f).read_text()) for f in ("spec.json", "init.json"))
    assert spec["local_units"] == init["local_units"] == 1 and spec["init"] == "lstsq"


def test_local_units_that_fill_a_students_hidden_layer_fail_before_training(tiny_run, capsys):
    before = sorted(p.stat().st_mtime_ns for p in (tiny_run / "students").rglob("*"))
    argv = ["run", "students", "--config", "tiny", f"run_dir={tiny_run}", "modes=[elr]"]
    assert main(["-q", *argv, "modes.elr.local_units=7", "modes.elr.size=s"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error: local_units: elr") and "\n" not in err
    assert sorted(p.stat().st_mtime_ns for p in (tiny_run / "students").rglob("*")) == before


def test_evaluate_stage_writes_a_row_per_variant(tiny_run):
    results = json.loads((tiny_run / "eval" / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"] if r["stage"] != "tuned"}
    tuned = [r["variant"] for r in results["rows"] if r["stage"] == "tuned"]
    # The tiny pipeline tunes the paper's students and the demo's headline variant.
    assert tuned == ["attentionless", "attentionless_gate"]
    assert set(rows) == {
        "teacher",
        *TINY_MODES,
        "attentionless",
        "attentionless_pw",
        "attentionless_gate",
    }
    assert rows["attentionless"]["sites"] and rows["teacher"]["params_replaced"] == 0
    assert rows["alr"]["params_student"] > 0
    for stem in ("results", "results-valid"):  # both splits, as the demo scores them
        assert (tiny_run / "eval" / f"{stem}.md").read_text().startswith("| variant |")
        assert (tiny_run / "eval" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    valid = json.loads((tiny_run / "eval" / "results-valid.json").read_text())
    assert valid["split"] == "valid" and len(valid["rows"]) == len(results["rows"])


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
    whole = tmp_path / "whole"  # in this process: only the killed run needs one of its own
    assert main(_teacher_cmd(whole)[3:]) == 0

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

    assert main(_teacher_cmd(broken)[3:]) == 0
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


PROGRESSIVE = [
    "modes=[alr,dec_self,cross_pw]",
    "source=online",
    "progressive=[alr,dec_self,cross_pw]",
]
CHAIN = [  # the tiny teacher's sites of those modes, in the order they train
    "encoder.0.self_attn",
    "encoder.1.self_attn",
    "decoder.0.self_attn",
    "decoder.0.cross_attn",
    "decoder.1.self_attn",
    "decoder.1.cross_attn",
]
# Nothing is spliced upstream of these (the encoder reaches the decoder through the memory only).
UNSHIFTED = {"encoder.0.self_attn", "decoder.0.self_attn"}


def _progressive_students(run: Path, monkeypatch, fail_at: int | None = None) -> dict:
    """Run the students stage with PROGRESSIVE on ``run``; {site: (sentences, first batch)} of
    every site that trained; ``fail_at``: raise when the site of that index would start."""
    from distill_recipes import students

    from distill.train import fit

    trained = {}

    def spy(model, batches_for_epoch, *args, desc, **kwargs):
        site = desc.rsplit(":", 1)[1]
        if fail_at is not None and site == CHAIN[fail_at]:
            raise RuntimeError("killed")
        batches = batches_for_epoch(0)
        s, a, b = batches.plan[0]
        start = s * batches.shard_size
        idx = batches.order[start + a : start + b]
        trained[site] = ([batches.examples[i] for i in idx], batches[0])
        return fit(model, batches_for_epoch, *args, desc=desc, **kwargs)

    monkeypatch.setattr(students, "fit", spy)
    argv = ["-q", "run", "students", "--config", "tiny", f"run_dir={run}", *PROGRESSIVE]
    assert main(argv) == 0
    return trained


def _teacher_copy(tiny_run: Path, tmp: Path) -> Path:
    shutil.copytree(tiny_run / "teacher", tmp / "run" / "teacher")
    return tmp / "run"


@pytest.fixture(scope="module")
def progressive_run(tiny_run, tmp_path_factory):
    """A teacher with the progressive students of attentionless_pw, and what each site saw."""
    run = _teacher_copy(tiny_run, tmp_path_factory.mktemp("progressive"))
    with pytest.MonkeyPatch.context() as mp:
        trained = _progressive_students(run, mp)
    return run, trained


def _site_io(model, site: str, examples) -> tuple:
    """(input, output) of ``site`` in a teacher-forced pass of ``model`` over ``examples``."""
    from distill.data import collate
    from distill.model import site_path

    batch, got = collate(examples, list(range(len(examples)))), []
    module = model.get_submodule(site_path(site, model.cfg))
    handle = module.register_forward_hook(lambda m, args, out: got.append((args[0], out)))
    with torch.no_grad():
        model.decode(batch.tgt_in, *model.encode(batch.src))
    handle.remove()
    return got[0]


def test_each_progressive_site_trains_on_what_it_sees_behind_the_earlier_students(
    progressive_run,
):
    from distill.runs import load_students, load_teacher
    from distill.students import splice

    run, trained = progressive_run
    assert list(trained) == CHAIN
    teacher, _ = load_teacher(run)
    students = {}
    for mode in ("alr", "dec_self", "cross_pw"):
        students.update(load_students(run, mode, teacher.cfg))
    for i, site in enumerate(CHAIN):
        examples, batch = trained[site]
        model, _ = load_teacher(run)
        splice(model, {s: students[s] for s in CHAIN[:i]})
        x, y = _site_io(model, site, examples)
        assert torch.equal(batch[f"{site}.x"], x) and torch.equal(batch[f"{site}.y"], y)
        own, _ = _site_io(teacher, site, examples)
        assert torch.equal(batch[f"{site}.x"], own) == (site in UNSHIFTED)


def test_progressive_students_keep_the_stage_files_and_their_variant_evaluates(
    progressive_run, tmp_path
):
    run, _ = progressive_run
    root = run / "students"
    for mode in ("alr", "dec_self", "cross_pw"):
        spec = json.loads((root / mode / "spec.json").read_text())
        assert spec["progressive"] == ["alr", "dec_self", "cross_pw"]
        assert not (root / mode / "sites").exists()  # the per-site parts are merged, then gone
        lines = (root / mode / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        assert {r["site"] for r in records} == set(spec["sites"])
        for site in spec["sites"] if mode != "alr" else []:  # from random init (alr: lstsq)
            mine = [r for r in records if r["site"] == site]
            assert [r for r in mine if "valid_mse" in r][-1]["valid_mse"] < mine[0]["loss"]
    assert "valid_mse/encoder.1.self_attn" in json.loads((root / "alr" / "init.json").read_text())
    argv = ["run", "evaluate", "--config", "tiny", f"run_dir={run}", "variants=[attentionless_pw]"]
    assert main(["-q", *argv]) == 0
    rows = json.loads((run / "eval" / "results.json").read_text())["rows"]
    row = next(r for r in rows if r["variant"] == "attentionless_pw")
    assert sorted(row["sites"]) == sorted(CHAIN) and row["stage"] == "layer-wise"
    assert row["params_student"] > 0 and "bleu" in row


def test_a_progressive_run_stopped_after_a_site_resumes_without_retraining_it(
    tiny_run, progressive_run, tmp_path, monkeypatch
):
    whole, _ = progressive_run
    run = _teacher_copy(tiny_run, tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        _progressive_students(run, monkeypatch, fail_at=1)
    parts = run / "students" / "alr" / "sites"
    assert (parts / CHAIN[0] / "student.safetensors").is_file()
    assert not (parts / CHAIN[1] / "student.safetensors").exists()
    assert not (run / "students" / "alr" / "spec.json").exists()
    assert list(_progressive_students(run, monkeypatch)) == CHAIN[1:]
    for mode in ("alr", "dec_self", "cross_pw"):  # resumed == uninterrupted, bit for bit
        a = load_file(whole / "students" / mode / "students.safetensors")
        b = load_file(run / "students" / mode / "students.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_progressive_site_finished_under_its_older_name_is_not_trained_again(
    tiny_run, tmp_path, monkeypatch
):
    from distill_recipes import students

    run, calls, real = _teacher_copy(tiny_run, tmp_path), [], students.fit
    argv = ["-q", "run", "students", "--config", "tiny", f"run_dir={run}", "source=online"]
    argv += ["modes=[alrr]", "progressive=[alrr]"]

    def spy(model, *args, desc, **kwargs):
        calls.append(desc.rsplit(":", 1)[1])
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(model, *args, desc=desc, **kwargs)

    monkeypatch.setattr(students, "fit", spy)
    with pytest.raises(RuntimeError, match="killed"):
        main(argv)
    parts = run / "students" / "alrr" / "sites"
    assert calls == ["encoder.0.self_attn_sublayer", "encoder.1.self_attn_sublayer"]
    # the finished site's work as distill wrote it before format 3 (distill.formats)
    (parts / "encoder.0.self_attn_sublayer").rename(parts / "encoder.0.sublayer0")
    calls.clear()
    assert main(argv) == 0
    assert calls == ["encoder.1.self_attn_sublayer"]  # the first site was not trained again
    spec = json.loads((run / "students" / "alrr" / "spec.json").read_text())
    assert spec["sites"] == ["encoder.0.self_attn_sublayer", "encoder.1.self_attn_sublayer"]


@pytest.mark.parametrize(
    "override, says",
    [
        ("source=disk", "needs source=online"),
        ("progressive=[alr,aslr]", "alr and aslr replace the same site"),
        ("progressive=[alr,elr]", "alr and elr replace the same site"),
        ("progressive=[alrr]", "mode 'alrr' is not one of modes"),
    ],
)
def test_bad_progressive_settings_fail_in_one_line(tmp_path, capsys, override, says):
    argv = ["run", "students", "--config", "tiny", f"run_dir={tmp_path}", *PROGRESSIVE]
    assert main(["-q", *argv, "modes=[alr,aslr,elr,dec_self,cross_pw]", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error: progressive: ") and says in err and "\n" not in err


# --- stored settings: a finished output is reused only under the settings that made it ---------


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def _stamps(run: Path, under: str = "") -> dict[str, int]:
    """{file: mtime} of every file under RUN_DIR/``under``."""
    return {
        p.relative_to(run).as_posix(): p.stat().st_mtime_ns
        for p in (run / under).rglob("*")
        if p.is_file()
    }


def _outside_eval(stamps: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stamps.items() if not k.startswith("eval/")}


def test_a_finished_stage_rerun_with_a_changed_setting_fails_naming_the_key(
    tiny_run, tmp_path, capsys
):
    run = _copy_run(tiny_run, tmp_path)
    before = _stamps(run)
    argv = ["-q", "run", "pipeline", "--config", "tiny", f"run_dir={run}"]
    assert main([*argv, "students.modes.dec_self.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"distill: error: {run}/students/dec_self: modes.dec_self.epochs was 0,")
    assert "new run_dir=" in err and err.endswith("--redo students/dec_self")
    assert _stamps(run) == before  # nothing ran, nothing was written


def test_a_changed_logging_key_reuses_every_finished_stage(tiny_run, tmp_path, caplog):
    run = _copy_run(tiny_run, tmp_path)
    before = _stamps(run)
    free = ["teacher.train.log_every=7", "students.train.ckpt_every=3"]
    free += ["finetune.train.log_every=1"]
    with caplog.at_level(logging.INFO):
        assert main(["run", "pipeline", "--config", "tiny", f"run_dir={run}", *free]) == 0
    assert _outside_eval(_stamps(run)) == _outside_eval(before)
    report = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline: ")]
    assert "pipeline: teacher: skipped: finished with the same settings" in report
    assert "pipeline: students/dec_self: skipped: finished with the same settings" in report
    assert "pipeline: finetune/attentionless: skipped: finished with the same settings" in report


def test_redo_removes_and_retrains_that_output_and_what_was_built_on_it(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    before = _stamps(run)
    argv = ["-q", "run", "students", "--config", "tiny", f"run_dir={run}", "modes=[dec_self, alr]"]
    assert main([*argv, "--redo", "students/dec_self"]) == 0
    after = _stamps(run)
    # the mode and the variant tuned from it (attentionless) were removed; the mode trained again
    assert not (run / "finetune" / "attentionless").exists() and not (run / "eval").exists()
    assert after["students/dec_self/spec.json"] != before["students/dec_self/spec.json"]
    kept = [k for k in before if not k.startswith(("students/dec_self/", "finetune/", "eval/"))]
    assert {k: after.get(k) for k in kept} == {k: before[k] for k in kept}
    # a whole stage and every later one: the students recipe may only redo its own stage
    assert main([*argv, "redo=finetune"]) == 2
    assert main([*argv, "--redo", "students"]) == 0
    assert not (run / "finetune").exists()
    assert sorted(p.name for p in (run / "students").iterdir() if p.is_dir()) == ["alr", "dec_self"]


def test_a_run_dir_from_before_stored_settings_is_trusted_and_still_exports(
    tiny_run, tmp_path, caplog, capsys
):
    run = _copy_run(tiny_run, tmp_path)
    for old in run.rglob("settings.json"):
        old.unlink()
    before = _stamps(run)
    argv = ["run", "pipeline", "--config", "tiny", f"run_dir={run}", "students.train.lr=0.5"]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0  # a changed key cannot be noticed: the old output is trusted
    assert _outside_eval(_stamps(run)) == _outside_eval(before)
    assert any("no stored settings" in r.getMessage() for r in caplog.records)
    out = tmp_path / "export"
    assert main(["-q", "export", str(run), "--variant", "attentionless", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert main(["-q", "export", str(run), "--variant", "teacher", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["-q", "evaluate", str(out), "--source", "demo", "--max-sentences", "3"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith("| teacher |  |")  # no stage: nothing was replaced
