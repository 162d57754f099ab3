"""Several processes (torch.distributed on CPU, gloo, started by torchrun) run the same training
code: each takes its share of the batches, gradients are averaged, every copy stays equal, one
process writes. On GPUs the same code runs under `accelerate launch --multi_gpu`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.runs import load_teacher

REPO = Path(__file__).resolve().parent.parent
FIT = """
import json, sys, torch
from pathlib import Path
from accelerate import PartialState
from distill.train import TrainConfig, fit
out = Path(sys.argv[1])
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
g = torch.Generator().manual_seed(1)
data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(6)]
cfg = TrainConfig(epochs=2, schedule="constant", lr=0.1, ckpt_every=100, log_every=1)
fit(model, lambda e: data, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), cfg, out, d_model=4,
    desc="ddp")
rank = PartialState().process_index
weights = [p.detach().flatten().tolist() for p in model.parameters()]
(out / f"weights-{rank}.json").write_text(json.dumps(weights))
"""


def torchrun(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*cmd, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_average_their_gradients_and_stay_equal(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    torchrun([str(script), str(tmp_path / "out")], tmp_path)
    ranks = [json.loads((tmp_path / "out" / f"weights-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # one model, kept equal by the all-reduce
    # The same steps in one process: rank r takes batches r, r + 2, ... so step k averages the
    # gradients of batches 2k and 2k + 1 (the mean of their losses).
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(6)]
    opt = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.9, 0.98), eps=1e-9)
    for _ in range(2):
        for k in range(3):
            pair = data[2 * k : 2 * k + 2]
            loss = sum(((model(x) - y) ** 2).mean() for x, y in pair) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    expected = [p.detach().flatten().tolist() for p in model.parameters()]
    for got, want in zip(ranks[0], expected):
        assert got == pytest.approx(want, abs=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "out" / "metrics.jsonl").open()]
    assert steps == list(range(1, 7))  # one writer: 3 steps per epoch, each logged once


@pytest.mark.slow
def test_the_tiny_teacher_trains_under_two_processes(tmp_path):
    run = tmp_path / "run"
    argv = ["-m", "distill.cli", "-q", "run", "teacher", "--config", "tiny", f"run_dir={run}"]
    torchrun([*argv, "train.epochs=1", "eval.max_sentences=4"], tmp_path)
    records = [json.loads(x) for x in (run / "teacher" / "metrics.jsonl").open()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and steps  # written once per step, by one process
    assert records[-1]["valid_loss"] > 0 and (run / "teacher" / "bleu.json").is_file()
    model, tok = load_teacher(run)
    assert tok.vocab_size == model.cfg.vocab_size
