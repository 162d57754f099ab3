"""Stored stage settings (distill/stages.py): what counts, what is compared, what redo removes."""

from __future__ import annotations

import pytest

from distill.errors import ConfigError
from distill.stages import REPORT, begin, digest, redo, result_settings


def test_result_settings_flatten_and_drop_the_keys_that_change_no_result():
    tree = {"run_dir": "r", "size": "m", "train": {"lr": 1.0, "log_every": 5, "ckpt_every": 9}}
    assert result_settings(tree) == {"size": "m", "train.lr": 1.0}
    assert result_settings(tree, free=("size",)) == {"train.lr": 1.0}


def test_an_unfinished_output_resumes_only_under_the_settings_it_started_with(tmp_path):
    out = tmp_path / "students" / "alr"
    claim = begin(out, tmp_path, {"size": "m"}, finished=False)
    assert claim.status == "start" and not out.exists()  # begin writes nothing
    claim.store()
    (out / "checkpoint").mkdir()  # killed while training
    assert begin(out, tmp_path, {"size": "m"}, finished=False).status == "resume"
    with pytest.raises(ConfigError, match=r"alr: size was \"m\", now \"s\"; .*--redo students/alr"):
        begin(out, tmp_path, {"size": "s"}, finished=False)
    with pytest.raises(ConfigError, match=r"lr was \(unset\), now 0.1"):
        begin(out, tmp_path, {"size": "m", "lr": 0.1}, finished=True)
    assert begin(out, tmp_path, {"size": "m"}, finished=True).status == "skip"


def test_an_output_built_on_a_changed_one_is_refused(tmp_path):
    teacher, students = tmp_path / "teacher", tmp_path / "students" / "alr"
    begin(teacher, tmp_path, {"lr": 1}, finished=False).store()
    begin(students, tmp_path, {"size": "m"}, finished=False, after=[teacher]).store()
    assert (
        digest(teacher)
        and begin(students, tmp_path, {"size": "m"}, finished=True, after=[teacher]).status
        == "skip"
    )
    (teacher / "settings.json").write_text('{"lr": 2}')
    with pytest.raises(ConfigError, match="alr: was built on other teacher settings"):
        begin(students, tmp_path, {"size": "m"}, finished=True, after=[teacher])


def test_an_output_from_before_stored_settings_is_reported_trusted_not_compared(tmp_path):
    REPORT.clear()
    old, killed = tmp_path / "students" / "alr", tmp_path / "students" / "cross"
    old.mkdir(parents=True)
    (old / "spec.json").write_text("{}")  # finished by a version that stored no settings
    (killed / "checkpoint").mkdir(parents=True)
    assert begin(old, tmp_path, {"size": "m"}, finished=True).status == "skip"
    assert begin(killed, tmp_path, {"size": "m"}, finished=False).status == "resume"
    new = tmp_path / "teacher"
    begin(new, tmp_path, {"lr": 1}, finished=False).store()
    begin(new, tmp_path, {"lr": 1}, finished=True)
    assert REPORT == [
        "students/alr: skipped: trusted (written before settings were recorded)",
        "students/cross: resumed from its checkpoint, trusted (written before settings were "
        "recorded)",
        "teacher: started",
        "teacher: skipped: finished with the same settings",  # only what was compared says so
    ]
    REPORT.clear()


def test_redo_of_a_stage_removes_it_and_every_later_output_only(tmp_path):
    for d in ("teacher", "record/train", "students/alr", "finetune/x", "eval", "budget/y"):
        (tmp_path / d).mkdir(parents=True)
    removed = redo(tmp_path, "students")
    assert [p.name for p in removed] == ["students", "finetune", "budget", "eval"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record", "teacher"]
    with pytest.raises(ConfigError, match="--redo decoder: expected one of teacher, record"):
        redo(tmp_path, "decoder")
