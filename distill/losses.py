"""The layer-wise objective: each student's masked MSE against the teacher's recorded output."""

from __future__ import annotations

import torch
from torch import nn

from distill.model import site_stack
from distill.students import training_pass
from distill.train import TrainingDiverged, masked_mean


def student_key(site: str) -> str:
    """A site's key in a ``ModuleDict`` of students (keys may not contain dots)."""
    return site.replace(".", "/")


def site_loss(student: nn.Module, site: str, batch) -> torch.Tensor:
    """Masked MSE of one site's student against the teacher's recorded output."""
    x, y = batch[f"{site}.x"], batch[f"{site}.y"]
    mask = batch["src_mask"] if site_stack(site) == "encoder" else batch["tgt_mask"]
    pred, mask = training_pass(student, x, mask, batch.tensors.get("memory"), batch["src_mask"])
    return masked_mean((pred.float() - y) ** 2, mask)


def mode_loss(students: nn.ModuleDict, sites: list[str], batch) -> torch.Tensor:
    """Sum of the sites' losses; ``TrainingDiverged`` names the first site whose loss is NaN/inf."""
    losses = torch.stack([site_loss(students[student_key(s)], s, batch) for s in sites])
    finite = torch.isfinite(losses.detach())
    if not finite.all():  # one check (one device sync) per step, as fit makes anyway
        j = int((~finite).nonzero()[0])
        raise TrainingDiverged(f"site '{sites[j]}': loss is {losses[j].item()}")
    return losses.sum()
