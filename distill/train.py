"""One training loop for the teacher and every student, on ``accelerate``.

``fit`` owns what every run needs: device placement and mixed precision (``accelerate``; the same
code runs under ``accelerate launch`` on several GPUs, each process taking every n-th batch),
the learning-rate schedule, checkpoints with exact resume (the batch order of an epoch is a pure
function of (seed, epoch), so a resumed run skips the batches it already took), a stop on
non-finite loss that keeps the last good checkpoint, a ``tqdm`` bar and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from distill.errors import CheckpointError, DistillError
from distill.progress import progress_bar

log = logging.getLogger(__name__)


class TrainingDiverged(DistillError):
    """Loss or weights became NaN/inf; the message names the run, the step and the kept checkpoint.

    A ``loss_fn`` may raise it itself to say more (e.g. which student's loss); ``fit`` adds the
    run, the step and the checkpoint.
    """


SCHEDULES = ("noam", "constant", "cosine")
PRECISIONS = ("no", "fp16", "bf16", "auto")


@dataclass
class TrainConfig:
    """Optimisation settings shared by teacher and student training."""

    epochs: int = 20
    max_steps: int = 0  # 0 = no cap; otherwise stop (with a checkpoint) after this many steps
    # "noam" (lr is the Noam factor), "constant" (lr is the rate) or "cosine" (linear warm-up
    # to lr over `warmup` steps, then cosine decay to 0 at the last step)
    schedule: str = "noam"
    lr: float = 1.0
    warmup: int = 4000
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    grad_clip: float = 0.0  # 0 = off
    seed: int = 0
    eval_every: int = 0  # steps between validations; 0 = at the end of each epoch
    ckpt_every: int = 200  # steps between checkpoints (and at each epoch end)
    log_every: int = 20
    # accelerate's "no" | "fp16" | "bf16", or "auto": bf16 where the device computes it natively
    # (a CUDA GPU with bf16, a CPU with AMX or AVX512_BF16: distill.hardware), else "no"
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.schedule not in SCHEDULES:
            known = "|".join(SCHEDULES)
            raise ValueError(f"schedule must be one of {known}, got '{self.schedule}'")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be > 0 and finite, got {self.lr}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {self.warmup}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.mixed_precision not in PRECISIONS:
            known = "|".join(PRECISIONS)
            raise ValueError(f"mixed_precision must be {known}, got '{self.mixed_precision}'")
        for name in ("ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def learning_rate(cfg: TrainConfig, step: int, d_model: int, total: int = 0) -> float:
    """Rate for 1-based ``step`` of ``total``: Noam (warm-up then inverse square root), constant,
    or cosine (warm-up then cosine decay to 0 at ``total``)."""
    if cfg.schedule == "constant":
        return cfg.lr
    step = max(step, 1)
    if cfg.schedule == "cosine":
        warm = min(1.0, step / cfg.warmup)
        return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    return cfg.lr * d_model**-0.5 * min(step**-0.5, step * cfg.warmup**-1.5)


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, records past the checkpoint's step are dropped.
    Only the main process writes (``enabled``): several processes log one run."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            atomic_write_text(path, "")
        elif path.exists():
            kept = [
                line
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                if _step_of(line) <= resume_step
            ]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def _step_of(line: str) -> float:
    """Step of a metrics record; a line torn by a kill mid-append counts as past any step."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


def process_state():
    """accelerate's ``PartialState`` of this process (index, main or not), built as
    ``make_accelerator`` builds it: with ``ACCELERATE_USE_CPU=1`` several CPU processes form one
    gloo group. Create it before anything asks which process this is."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def make_accelerator(cfg: TrainConfig):
    """An ``accelerate.Accelerator`` for this config: one process, or one per process that
    ``accelerate launch`` / ``torchrun`` started (on CPUs with ``ACCELERATE_USE_CPU=1``: gloo)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = resolve_precision(cfg.mixed_precision)
    # accelerate keeps one precision per process and refuses another; one process may run
    # several stages with their own (the pipeline: fp32 students, then bf16 finetune). Only the
    # precision state is redone: the process group (PartialState) stays as it is.
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision)


def resolve_precision(name: str) -> str:
    """accelerate's precision for a config's ``mixed_precision`` ("auto" decided here)."""
    if name != "auto":
        return name
    device = process_state().device  # the stage's (distill.device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    if device.type != "cpu":
        return "no"
    from distill.hardware import native_bf16

    return "bf16" if native_bf16() else "no"


def adam(
    params, cfg: TrainConfig, lr: float, device: torch.device, fused: bool | None = None
) -> torch.optim.Adam:
    """The training loops' Adam: torch's fused kernel where it has one (CPU, CUDA; ``fused=None``)
    or torch's plain loop (``fused=False``). On CPU the plain loop is up to 1.5x slower per
    student step (1.05-1.58x by mode, bench/train_speed.py); the update is the same up to float
    rounding, which Adam can turn into whole steps where a gradient is only rounding noise."""
    if fused is None:
        fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def fit(
    model: torch.nn.Module,
    batches_for_epoch: Callable[[int], Sequence[Any]],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    d_model: int,
    desc: str,
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    params: Sequence[torch.nn.Parameter] | Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place, resuming from ``out_dir/checkpoint`` if one exists.

    ``batches_for_epoch(e)`` must return the same batches in the same order for the same ``e``;
    ``loss_fn(model, batch)`` returns a scalar loss, or ``(loss, {term: scalar})`` to log the
    terms it is made of beside it. ``params`` (default: every parameter of ``model``) may be
    optimizer parameter groups; a group's ``lr_scale`` multiplies the schedule's rate for it.
    Returns the final loop state.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    optimizer = adam(
        list(params) if params is not None else list(model.parameters()),
        cfg,
        learning_rate(cfg, 1, d_model),
        acc.device,
    )
    loop = _Loop(cfg, acc, model, optimizer, out_dir, desc, d_model, validate)
    # DDP syncs gradients only for what runs inside its forward: the loss is that forward, so a
    # loss_fn may call any part of the model (a student of a ModuleDict, a method of it).
    loop.step_module, loop.optimizer = acc.prepare(_LossStep(model, loss_fn), optimizer)
    first = batches_for_epoch(0)
    loop.open_bar(len(first))
    state, world, rank = loop.state, acc.num_processes, acc.process_index
    model.train()
    while not state["done"] and state["epoch"] < cfg.epochs:
        batches = first if state["epoch"] == 0 else batches_for_epoch(state["epoch"])
        # state["batch"] counts the epoch's batches taken by all processes together, so a run
        # resumes under any number of processes: step k takes the next `world` batches, one
        # each (indices: batches load lazily); a remainder smaller than `world` is dropped.
        start = state["batch"]
        for g in range(start, start + (len(batches) - start) // world * world, world):
            loop.train_step(batches[g + rank])
            state["batch"] = g + world
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                loop.validation()
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                state["done"] = True
                break
            if state["step"] % cfg.ckpt_every == 0:
                loop.checkpoint()
        else:
            state["epoch"] += 1
            state["batch"] = 0
            if not cfg.eval_every:
                loop.validation()
        loop.checkpoint()
    if not state["done"]:
        state["done"] = True
        loop.checkpoint()
    loop.bar.close()
    return state


class _Loop:
    """The moving parts of one ``fit`` call, each step of the loop a method: resuming, one
    optimizer step, its log line, validation, checkpoints."""

    def __init__(self, cfg, acc, model, optimizer, out_dir: Path, desc: str, d_model, validate):
        self.cfg, self.acc, self.plain, self.optimizer = cfg, acc, model, optimizer
        self.desc, self.d_model, self.validate = desc, d_model, validate
        self.ckpt_dir = out_dir / "checkpoint"
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "done": False}
        found = resolve_checkpoint(self.ckpt_dir)
        if found is not None:
            try:
                self.state = load_checkpoint(found, model, optimizer)
            except CheckpointError as err:
                raise CheckpointError(
                    f"{err}; the checkpoint is from a run with other settings: delete {found} "
                    "(or use another run_dir) to start over"
                ) from None
            log.info("%s: resuming from %s at step %d", desc, found, self.state["step"])
        resumed_at = self.state["step"] if found else None
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", resumed_at, acc.is_main_process)
        self.step_module: torch.nn.Module = model
        self.total, self.bar = 0, None
        self.started, self.seen = time.perf_counter(), 0

    def open_bar(self, first_epoch_batches: int) -> None:
        """The schedule's length and the progress bar. Resumed under another process count,
        the schedule's length is that count's."""
        self.total = self.cfg.epochs * (first_epoch_batches // self.acc.num_processes)
        if self.cfg.max_steps:
            self.total = min(self.total, self.cfg.max_steps)
        self.bar = progress_bar(
            total=self.total,
            initial=min(self.state["step"], self.total),
            desc=self.desc,
            unit="step",
            show=self.acc.is_local_main_process,
            dynamic_ncols=True,
        )
        self.started, self.seen = time.perf_counter(), 0

    def diverged(self, what: str) -> TrainingDiverged:
        self.bar.close()
        return TrainingDiverged(
            f"{self.desc}: {what}; stopped, last good checkpoint kept at {self.ckpt_dir}"
        )

    def train_step(self, batch) -> None:
        """One optimizer step on ``batch`` at the schedule's rate, then its log line."""
        acc, state = self.acc, self.state
        batch = batch.to(acc.device) if hasattr(batch, "to") else batch
        lr = learning_rate(self.cfg, state["step"] + 1, self.d_model, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        try:
            with acc.autocast():
                loss = self.step_module(batch)
            loss, terms = loss if isinstance(loss, tuple) else (loss, {})
        except TrainingDiverged as err:
            raise self.diverged(f"{err} at step {state['step'] + 1}") from None
        if not torch.isfinite(loss.detach()):
            raise self.diverged(f"loss is {loss.item()} at step {state['step'] + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if self.cfg.grad_clip:
            acc.clip_grad_norm_(self.plain.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        state["step"] += 1
        self.seen += 1
        self.bar.update(1)
        if state["step"] % self.cfg.log_every == 0:
            self.log_step(loss, terms, lr)

    def log_step(self, loss: torch.Tensor, terms: dict, lr: float) -> None:
        acc = self.acc
        # With several processes: the mean of their losses (each saw its own batch).
        logged = acc.reduce(loss.detach(), "mean") if acc.num_processes > 1 else loss
        self.metrics.write(
            step=self.state["step"],
            epoch=self.state["epoch"],
            loss=logged.item(),
            **{name: float(value) for name, value in terms.items()},
            lr=lr,
            steps_per_s=self.seen / (time.perf_counter() - self.started),
        )
        self.bar.set_postfix(loss=f"{logged.item():.4f}", epoch=self.state["epoch"])

    def validation(self) -> None:
        if self.validate is None:
            return
        self.plain.eval()
        with torch.no_grad():
            scores = self.validate(self.plain)
        self.plain.train()
        self.metrics.write(step=self.state["step"], epoch=self.state["epoch"], **scores)
        log.info("%s step %d: %s", self.desc, self.state["step"], scores)

    def checkpoint(self) -> None:
        # A finite loss can still come with inf gradients; never save the weights they broke.
        if not torch.stack([p.detach().isfinite().all() for p in self.plain.parameters()]).all():
            raise self.diverged(f"weights became non-finite by step {self.state['step']}")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_checkpoint(self.ckpt_dir, self.plain, self.optimizer, self.state)
        # No process steps on before the checkpoint is on disk: one that dies in the next step
        # would otherwise end the main one's write half way and lose this checkpoint.
        self.acc.wait_for_everyone()


class _LossStep(torch.nn.Module):
    """``loss_fn(model, batch)`` as a module: what ``fit`` hands accelerate to wrap."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any):
        return self.loss_fn(self.model, batch)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is True (broadcast over trailing dims)."""
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    denom = mask.sum() * (values.numel() // mask.numel())
    return (values * mask).sum() / denom.clamp(min=1)
