"""Fixtures of the reliability tests: one tiny trained run dir (teacher + ALR recording) per
session, and a private copy of it for each test that breaks something."""

import shutil
from pathlib import Path

import pytest

from distill.cli import main
from tests.reliability.helpers import RECORD, TEACHER


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A tiny run dir with a trained teacher and a recording for ALR (5 train shards)."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    argv = [f"run_dir={run}", "train.epochs=1", "eval.max_sentences=4"]
    assert main(["-q", *TEACHER, *argv]) == 0
    assert main(["-q", *RECORD, f"run_dir={run}"]) == 0
    return run


@pytest.fixture
def run_copy(prepared, tmp_path) -> Path:
    """A private copy of ``prepared`` to break."""
    return Path(shutil.copytree(prepared, tmp_path / "run"))
