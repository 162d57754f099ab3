"""Where a stage computes: one rule for every stage, and the ``--device`` of the command line.

A stage's device is accelerate's: under ``accelerate launch`` the local GPU of each process,
otherwise a GPU when torch sees one, else the CPU (``ACCELERATE_USE_CPU=1`` keeps a GPU machine
on the CPU; ``ACCELERATE_TORCH_DEVICE`` names any device). The teacher a stage reads, the model
it trains and its batches live there; what a stage writes goes through
``distill.checkpoint.save_tensors``, which moves tensors to the CPU first, so nothing on disk
names a device: a run dir written on a GPU resumes and evaluates on a CPU and the other way round.
"""

from __future__ import annotations

import torch

from distill.errors import ConfigError

CHOICES = "auto, cpu, cuda or cuda:N"


def stage_device() -> torch.device:
    """The device of this process's stages: accelerate's (see the module docstring)."""
    from distill.train import process_state

    return process_state().device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A ``--device`` value as a ``torch.device``: ``auto`` is the stage's device (a GPU when
    torch sees one); ``cpu``, ``cuda`` and ``cuda:N`` are checked against what torch sees, a
    one-line ``ConfigError`` otherwise. A ``torch.device`` passes unchecked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return stage_device()
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        found = None
    if found is None or found.type not in ("cpu", "cuda") or (found.type == "cpu" and found.index):
        raise ConfigError(f"device must be {CHOICES}, got '{device}'")
    if found.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"device '{device}': torch sees no CUDA GPU here (use auto or cpu)")
        if (found.index or 0) >= count:
            last = f"cuda:{count - 1}"
            raise ConfigError(f"device '{device}': torch sees {count} GPU(s), cuda:0 to {last}")
    return found
