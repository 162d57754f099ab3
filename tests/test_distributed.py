"""Several processes (torch.distributed on CPU, gloo, started by `accelerate launch --multi_gpu`
with ACCELERATE_USE_CPU=1) run the same training code: each takes its share of every global
batch, gradients are averaged, every copy stays equal, one process writes, and a run killed
under one process count resumes under another. On GPUs the same command without the variable."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.runs import load_teacher

REPO = Path(__file__).resolve().parent.parent
FIT = """
import json, os, sys, torch
from pathlib import Path
from accelerate import PartialState
from distill.train import TrainConfig, fit
out = Path(sys.argv[1])
state = PartialState(cpu=True)
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
g = torch.Generator().manual_seed(1)
data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(BATCHES)]
cfg = TrainConfig(epochs=2, schedule="constant", lr=0.1, ckpt_every=2, log_every=1)
calls = 0

def loss_fn(m, b):
    global calls
    calls += 1
    if calls == int(os.environ.get("KILL_AT_CALL", 0)):  # a kill before this step's update
        os._exit(9)
    return ((m(b[0]) - b[1]) ** 2).mean()

fit(model, lambda e: data, loss_fn, cfg, out, d_model=4, desc="ddp")
weights = [p.detach().flatten().tolist() for p in model.parameters()]
(out / f"weights-{state.process_index}.json").write_text(json.dumps(weights))
"""
BATCHES = 6


def reference(steps_per_process_count: list[tuple[int, int]]) -> list[list[float]]:
    """FIT's weights computed by hand: for each (processes, steps) in turn, each step averages
    the gradients of the next ``processes`` batches (the mean of their losses), epoch after
    epoch over the BATCHES batches; Adam's state carries over, as a resumed run's does."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(6)]
    opt = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.9, 0.98), eps=1e-9, fused=True)
    at = 0  # batches taken so far, over both epochs
    for world, steps in steps_per_process_count:
        for _ in range(steps):
            if at % BATCHES + world > BATCHES:  # an epoch's remainder is dropped
                at += BATCHES - at % BATCHES
            group = [data[(at + r) % BATCHES] for r in range(world)]
            loss = sum(((model(x) - y) ** 2).mean() for x, y in group) / world
            opt.zero_grad()
            loss.backward()
            opt.step()
            at += world
    return [p.detach().flatten().tolist() for p in model.parameters()]


def launch(argv: list[str], cwd: Path, processes: int = 2, ok: bool = True, **env):
    """``python argv`` under ``accelerate launch`` with ``processes`` CPU processes (gloo), as the
    README gives it; ``processes=1`` runs plain Python."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **env}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable]
    if processes > 1:
        cmd += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
        cmd += ["--num_processes", str(processes), "--mixed_precision", "no"]
        cmd += ["--dynamo_backend", "no", "--main_process_port", "0"]
    done = subprocess.run(
        [*cmd, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_the_tiny_pipeline_runs_under_two_processes(tmp_path):
    """The pipeline (teacher, record, students, finetune, evaluate) under two processes: one
    writer per file, no stage starts before the last one's outputs are written, the recording's
    shards split between the processes and equal to a one-process recording."""
    run, modes = tmp_path / "run", "modes=[alr,dec_self,cross]"
    argv = ["-m", "distill.cli", "run", "pipeline", "--config", "tiny", f"run_dir={run}"]
    argv += ["teacher.train.epochs=1", f"record.{modes}", f"students.{modes}"]
    argv += ["finetune.variants=[attentionless]"]
    done = launch([*argv, "evaluate.variants=[teacher,attentionless]"], tmp_path)
    assert "process 0 of 2" in done.stderr and "process 1 of 2" in done.stderr
    records = [json.loads(x) for x in (run / "teacher" / "metrics.jsonl").open()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and steps  # written once per step, by one process
    assert records[-1]["valid_loss"] > 0 and (run / "teacher" / "bleu.json").is_file()
    model, tok = load_teacher(run)
    assert tok.vocab_size == model.cfg.vocab_size

    alone = tmp_path / "alone"  # the same teacher recorded by this one process, on one thread
    shutil.copytree(run / "teacher", alone / "teacher")  # as each launched process (launch())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["-q", "run", "record", "--config", "tiny", f"run_dir={alone}", modes]) == 0
    finally:
        torch.set_num_threads(threads)
    for split in ("train", "valid"):
        both, one = (
            json.loads((r / "record" / split / "manifest.json").read_text()) for r in (run, alone)
        )
        assert both == one  # the same shards, byte for byte
        assert len(both["shards"]) > 1 or split == "valid"  # train: both processes recorded
        assert not list((run / "record" / split).glob("manifest.partial*"))

    tuned = json.loads((run / "finetune" / "attentionless" / "spec.json").read_text())
    assert tuned["settings"]["steps"] > 0 and (run / "students" / "cross" / "spec.json").is_file()
    rows = json.loads((run / "eval" / "results.json").read_text())["rows"]
    assert [(r["variant"], r["stage"]) for r in rows] == [
        ("teacher", ""),
        ("attentionless", "layer-wise"),
        ("attentionless", "tuned"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_killed_run_resumes_under_another_number_of_processes(tmp_path, before, after):
    """Killed in its third step (checkpoint at step 2), resumed with the other process count:
    the resumed run takes the batches the first one had not, in order, and its weights equal
    that sequence of steps computed by hand. Under two processes rank r takes batches r, r + 2,
    ... so a step averages the gradients of two batches (the mean of their losses), and both
    ranks end with the same model (the all-reduce keeps them equal)."""
    script = tmp_path / "fit.py"
    script.write_text(FIT.replace("BATCHES", str(BATCHES)))
    out = tmp_path / "out"
    launch([str(script), str(out)], tmp_path, before, ok=False, KILL_AT_CALL="3")
    assert (out / "checkpoint").exists() and not list(out.glob("weights-*.json"))
    launch([str(script), str(out)], tmp_path, after)
    # Epoch 0: 2 steps of `before` batches, then the rest of the epoch in steps of `after`;
    # epoch 1: BATCHES // after steps.
    rest = (BATCHES - 2 * before) // after + BATCHES // after
    want = reference([(before, 2), (after, rest)])
    got = json.loads((out / "weights-0.json").read_text())
    if after == 2:
        assert json.loads((out / "weights-1.json").read_text()) == got
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-6)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").open() if "loss" in x]
    assert steps == list(range(1, 3 + rest))  # resumed after step 2, each step logged once
