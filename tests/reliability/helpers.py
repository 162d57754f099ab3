"""What the reliability tests share: the commands they run, the one-line-error check, the
subprocess that a test SIGKILLs at a known point, NaN injection."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from distill.cli import main
from distill.formats import model_fields
from distill.model import ModelConfig

REPO = Path(__file__).resolve().parent.parent.parent
TEACHER = ["run", "teacher", "--config", "tiny"]
STUDENTS = ["run", "students", "--config", "tiny", "modes=[alr]", "train.ckpt_every=2"]
BIG = "1" + "0" * 400  # an integer no config field can hold
RECORD = ["run", "record", "--config", "tiny", "modes=[alr]", "shard_size=16"]


def fails(argv: list[str], capsys, *needles: str, progress: bool = False) -> str:
    """Run the CLI in-process: exit code 2 and one error line holding every needle; before it,
    nothing, or with ``progress`` only the progress bar of the step that failed."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("distill: error: ") == 1, err
    if progress:
        err = err.rstrip("\n").rsplit("\n", 1)[-1] + "\n"
    assert err.startswith("distill: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert re.search(needle, err), (needle, err)
    return err


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` and its bytes (to show a failed command wrote nothing)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def json_model_cfg(run: Path) -> ModelConfig:
    """The teacher's dimensions, as saved in its run dir."""
    return ModelConfig(**model_fields(json.loads((run / "teacher" / "model.json").read_text())))


# Runs the CLI after wrapping MODULE.NAME so that its N-th call, once it has returned, touches
# MARKER and sleeps: the test then SIGKILLs the process at a known point.
PAUSE = """
import importlib, pathlib, sys, time
module, name, n, marker = sys.argv[1:5]
module = importlib.import_module(module)
original, calls = getattr(module, name), [0]
def paused(*args, **kwargs):
    out = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == int(n):
        pathlib.Path(marker).touch()
        time.sleep(600)
    return out
setattr(module, name, paused)
from distill.cli import main
sys.exit(main(sys.argv[5:]))
"""


def run_and_kill(target: str, n: int, argv: list[str], marker: Path) -> None:
    """Start the CLI in a subprocess, wait until ``target``'s n-th call returned, SIGKILL it."""
    module, name = target.rsplit(".", 1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", PAUSE, module, name, str(n), str(marker), "-q", *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "slow"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def shard_hashes(record_dir: Path) -> dict[str, list[str]]:
    return {
        split: [
            s["sha256"]
            for s in json.loads((record_dir / split / "manifest.json").read_text())["shards"]
        ]
        for split in ("train", "valid")
    }


def nan_at(original, step: int, only=lambda *a: True):
    """``original`` with a NaN result at its ``step``-th training call (validation excluded)."""
    calls = [0]

    def wrapped(*args):
        out = original(*args)
        if torch.is_grad_enabled() and only(*args):
            calls[0] += 1
            if calls[0] == step:
                return out * math.nan
        return out

    return wrapped
