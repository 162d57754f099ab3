"""Every stage on the device it is given (issue 26), checked on a CPU-only machine.

``tests/pretend_device.py`` makes accelerate's device ``meta`` while every tensor still computes
on the CPU: a stage that leaves its teacher, students or batches on the CPU, or computes its
matrix products there, fails with ``DeviceMismatch``. Each stage runs there on what a CPU run
wrote and must give what the CPU run gave; what it writes is read back on the CPU.
"""

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from distill_recipes import evaluate
from safetensors.torch import load_file

import distill
from distill import lstsq, train
from distill.cli import main
from distill.data import collate
from distill.device import resolve_device
from distill.errors import ConfigError
from distill.runs import load_teacher
from distill.train import TrainConfig, fit, resolve_precision
from tests.helpers import random_src, tiny_teacher
from tests.pretend_device import DEVICE, DeviceMismatch, OnDevice, pretend_device
from tests.reliability.helpers import fails

REPO = Path(__file__).resolve().parent.parent
# Every kind of student
TRAINED = ("alr", "aslr", "elr", "dec_self", "dec_self_pp", "cross", "cross_pw", "cross_gate")
MODES = f"modes=[{','.join(TRAINED)}]"
STAGES = {  # the tiny configs at a few steps each: the device checks run every op in Python
    "teacher": [
        "data.max_train_pairs=120",
        "train.max_steps=3",
        "train.eval_every=2",
        "eval.max_sentences=4",
    ],
    "record": ["max_sentences=24", "valid_sentences=8"],
    "students": [MODES, "train.max_steps=2"],
    "finetune": [
        "max_sentences=16",
        "valid_sentences=8",
        "train.max_steps=2",
        "hidden_weight=1",
        "variants=[attentionless,attentionless_gate]",  # the paper's students, the demo's headline
    ],
}
VARIANTS = [
    "teacher",
    "aslr",
    "elr",
    "dec_self_pp",
    "cross_pw",
    "attentionless",
    "attentionless_gate",
]


def run_stage(stage: str, run: Path, *extra: str) -> int:
    return main(["-q", "run", stage, "--config", "tiny", f"run_dir={run}", *STAGES[stage], *extra])


@pytest.fixture(scope="module", autouse=True)
def few_local_steps():
    """ELR's position-local units take 3000 Adam steps of their own; a few show the device."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lstsq, "LOCAL_STEPS", 20)
        yield


@pytest.fixture(scope="module", autouse=True)
def one_adam():
    """Both sides of every comparison here step torch's plain Adam. The CPU would take the fused
    kernel and the pretend device the plain loop: their updates differ by float rounding, which
    Adam turns into whole steps where a gradient is rounding noise, by how much depends on the
    CPU's kernels. The tests are about where each stage runs, not about Adam's two kernels."""
    plain = functools.partial(train.adam, fused=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "adam", plain)
        yield


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """The tiny pipeline on the CPU, stage by stage, at the budgets of ``STAGES``."""
    run = tmp_path_factory.mktemp("device") / "cpu"
    for stage in STAGES:
        assert run_stage(stage, run) == 0
    return run


def copy_of(run: Path, out: Path, *stages: str) -> Path:
    """A new run dir at ``out`` holding ``stages`` of ``run``."""
    for stage in stages:
        shutil.copytree(run / stage, out / stage)
    return out


def scores(run: Path, device: str = "auto") -> list[dict]:
    """The rows of ``distill run evaluate`` for a few variants, beam 2, 4 sentences."""
    cfg = evaluate.Config(run_dir=str(run), variants=VARIANTS, beam=2, max_sentences=4)
    return evaluate.evaluate_run(dataclasses.replace(cfg, device=device))["rows"]


def same_tensors(a: Path, b: Path, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Two safetensors files hold the same names and the same values (to ``rtol``/``atol``)."""
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys() and x
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=rtol, atol=atol, msg=k)


def test_the_check_catches_a_model_left_on_the_cpu():
    model = tiny_teacher()
    src, tgt = random_src(), random_src(seed=2)
    with pretend_device() as device, pytest.raises(DeviceMismatch, match="on cpu meets"):
        model(src.to(device), tgt.to(device))
    with pretend_device(), pytest.raises(DeviceMismatch, match="computed on the CPU"):
        model(src, tgt)
    with pretend_device() as device:  # moved together, it runs and computes the CPU's numbers
        logits = tiny_teacher().to(device)(src.to(device), tgt.to(device))
    assert isinstance(logits, OnDevice) and logits.device == DEVICE
    # To rounding: torch picks its attention kernel by device (the CPU's fused one here).
    torch.testing.assert_close(logits.cpu(), model(src, tgt))


def test_teacher_trains_and_scores_on_the_device(cpu_run, tmp_path):
    with pretend_device():
        assert run_stage("teacher", tmp_path) == 0
    # Outputs, not weights: Adam turns the rounding noise of a gradient that is zero in exact
    # arithmetic (the attention keys' bias) into whole steps of either sign.
    (cpu, _), (dev, _) = load_teacher(cpu_run), load_teacher(tmp_path)
    src, tgt = random_src(), random_src(seed=2)
    torch.testing.assert_close(dev(src, tgt), cpu(src, tgt), rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "teacher/bleu.json").read_text())["n"] == 4


def test_record_on_the_device_writes_the_cpu_recording(cpu_run, tmp_path):
    run = copy_of(cpu_run, tmp_path, "teacher")
    with pretend_device():
        assert run_stage("record", run) == 0
    for split in ("train", "valid"):
        shards = sorted((cpu_run / "record" / split).glob("shard-*.safetensors"))
        assert shards
        for shard in shards:
            # To rounding: torch picks its attention kernel by device (no optimizer here).
            same_tensors(shard, run / "record" / split / shard.name, rtol=1e-4, atol=1e-5)


def test_students_train_on_the_device_from_a_cpu_recording(cpu_run, tmp_path):
    run = copy_of(cpu_run, tmp_path / "disk", "teacher", "record")
    online = copy_of(cpu_run, tmp_path / "online", "teacher")
    with pretend_device():
        assert run_stage("students", run) == 0
        # Online: the teacher's passes and its greedy decodes (targets=teacher) are there too.
        argv = ["source=online", "modes=[cross_pw]", "max_sentences=16", "targets=teacher"]
        assert run_stage("students", online, *argv) == 0
    for mode in TRAINED:
        name = f"students/{mode}/students.safetensors"
        same_tensors(cpu_run / name, run / name)  # same data, same kernels, same Adam
    assert (online / "students/cross_pw/spec.json").is_file()


def test_finetune_keeps_its_frozen_teacher_on_the_device(cpu_run, tmp_path):
    # The bug of issue 26: fit moved the spliced model and the batches to the device while the
    # frozen teacher stayed on the CPU.
    run = copy_of(cpu_run, tmp_path, "teacher", "students")
    with pretend_device():
        assert run_stage("finetune", run) == 0
    for variant in ("attentionless", "attentionless_gate"):
        spec = json.loads((run / f"finetune/{variant}/spec.json").read_text())
        assert spec["settings"]["steps"] == 2, variant
    # Written on the device, evaluated on the CPU: the tuned row beside the layer-wise one.
    rows = scores(run, device="cpu")
    for variant in ("attentionless", "attentionless_gate"):
        assert [r["stage"] for r in rows if r["variant"] == variant] == ["layer-wise", "tuned"]


def test_evaluate_and_translate_decode_on_the_device(cpu_run, tmp_path, capsys):
    export = tmp_path / "export"
    argv = ["-q", "export", str(cpu_run), "--variant", "attentionless", "--out", str(export)]
    assert main(argv) == 0
    lines = tmp_path / "de.txt"
    lines.write_text("Der Hund sieht den Ball.\n\nDie Katze mag das Haus!\n", encoding="utf-8")
    translate = ["-q", "translate", str(export), str(lines), "--beam", "2"]
    cpu_rows = scores(cpu_run, device="cpu")
    capsys.readouterr()
    assert main([*translate, "--device", "cpu"]) == 0
    on_cpu = capsys.readouterr().out
    with pretend_device():
        assert main([*translate, "--device", "auto"]) == 0
        assert capsys.readouterr().out == on_cpu and on_cpu.count("\n") == 3
        model, _ = distill.from_pretrained(export)  # auto: the stage's device
        assert model.generator.weight.device == DEVICE
        rows = scores(cpu_run)  # auto: the stage's device
    assert [r["variant"] for r in rows] == [r["variant"] for r in cpu_rows]
    for row, cpu in zip(rows, cpu_rows):
        assert (row["bleu"], row["chrf"]) == (cpu["bleu"], cpu["chrf"]), row["variant"]


@pytest.mark.parametrize("first_on_device", [True, False])
def test_a_checkpoint_resumes_on_the_other_device(tmp_path, first_on_device):
    """Killed after step 3 on one device, resumed on the other: the weights of one whole run."""
    cfg = TrainConfig(epochs=1, max_steps=6, schedule="constant", lr=1e-3, ckpt_every=2)
    batches = [collate([([5 + i, 6, 3], [7, 8 + i])] * 4, list(range(4))) for i in range(8)]
    batch = (random_src(), random_src(seed=2))

    class Killed(Exception):
        pass

    def train(out: Path, kill_at: int = 0) -> torch.Tensor:
        """The logits of the trained model on a fixed batch (weights would not do: Adam steps
        the keys' bias, whose gradient is only rounding noise, by whole steps either way)."""
        calls = []
        model = tiny_teacher()

        def loss(m, b):
            calls.append(1)
            if len(calls) == kill_at:
                raise Killed
            return m(b.src, b.tgt_in).float().square().mean()

        fit(model, lambda e: batches, loss, cfg, out, d_model=16, desc="t")
        return model.eval()(*(t.to(next(model.parameters()).device) for t in batch)).cpu()

    whole = train(tmp_path / "whole")
    first, then = (pretend_device, contextlib.nullcontext)[:: 1 if first_on_device else -1]
    with first(), pytest.raises(Killed):
        train(tmp_path / "split", kill_at=4)  # its last checkpoint: step 2
    with then():
        resumed = train(tmp_path / "split")
    torch.testing.assert_close(resumed, whole)


def test_auto_precision_follows_the_stage_device(monkeypatch):
    """``mixed_precision=auto``: bf16 on a GPU that computes it natively, not on one that only
    emulates it; the stage's device decides, not whether torch sees a GPU at all."""
    with pretend_device():
        assert resolve_precision("auto") == "no"  # neither a GPU nor the CPU
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setattr(train, "process_state", lambda: gpu)
    for native in (True, False):

        def supported(including_emulation: bool = True, native: bool = native) -> bool:
            return including_emulation or native  # an emulating GPU: yes if emulation counts

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
        assert resolve_precision("auto") == ("bf16" if native else "no")


def test_device_names_are_checked(cpu_run, capsys):
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "cpu:1"):
        with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    fails(["translate", str(cpu_run), "--device", "tpu"], capsys, "device must be auto")
    fails(["evaluate", str(cpu_run), "--device", "tpu"], capsys, "device must be auto")
    if not torch.cuda.is_available():
        fails(["evaluate", str(cpu_run), "--device", "cuda"], capsys, "torch sees no CUDA GPU")


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_part(tmp_path):
    """``bench/gpu_check.sh --cpu``: the tiny pipeline, the export and the cross-device
    evaluation through the script's own code, the CPU as the device; and its one-line failure."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    check = ["bash", str(REPO / "bench" / "gpu_check.sh")]
    # The script's own code path with fewer modes: the tests above train every kind on the device.
    fewer = ["students.modes=[alr,dec_self,cross]", "finetune.variants=[attentionless]"]
    done = subprocess.run(
        [*check, "--cpu", "--tiny", *fewer, "evaluate.splits=[test]"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert found["tiny"]["bleu_gap_vs_cpu"] == found["tiny"]["bleu_gap_evaluated_on_cpu"] == 0
    assert found["tiny"]["export_vs_in_memory_max_abs_logit_diff"] == 0
    if not torch.cuda.is_available():
        done = subprocess.run(check, env=env, capture_output=True, text=True)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("gpu_check: FAILED (exit 1): no CUDA GPU")
