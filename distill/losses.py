"""Training objectives: the layer-wise one (each student's masked MSE against the teacher's
recorded output), the teacher's (label-smoothed cross-entropy, fused, at real tokens only) and
the end-to-end stage's distillation term (KL to the teacher's distributions, fused)."""

from __future__ import annotations

import torch
from torch import nn

from distill.activations import site_io
from distill.model import PAD_ID, site_path
from distill.students import training_pass
from distill.train import TrainingDiverged, masked_mean


def student_key(site: str) -> str:
    """A site's key in a ``ModuleDict`` of students (keys may not contain dots)."""
    return site.replace(".", "/")


def site_loss(
    student: nn.Module, site: str, batch, teacher: nn.Module | None = None, align: float = 0.0
) -> torch.Tensor:
    """Masked MSE of one site's student against the teacher's recorded output; with ``align`` > 0
    and the ``teacher`` a cross-attention student that makes gates (``cross_gate``) adds
    ``align`` x the alignment loss of its gates against the teacher site's attention weights on
    the same inputs (layer-wise training only: inference never reads them)."""
    x, y, mask, memory, memory_mask = site_io(batch, site)
    probs = None
    if align and teacher is not None and memory is not None:
        with torch.no_grad():
            core = teacher.get_submodule(site_path(site, teacher.cfg))
            probs = core.probabilities(x, memory, memory_mask)
    pred, mask, aligned = training_pass(student, x, mask, memory, memory_mask, probs)
    loss = masked_mean((pred.float() - y) ** 2, mask)
    return loss if aligned is None else loss + align * aligned


def mode_loss(
    students: nn.ModuleDict,
    sites: list[str],
    batch,
    teacher: nn.Module | None = None,
    align: float = 0.0,
) -> torch.Tensor:
    """Sum of the sites' losses; ``TrainingDiverged`` names the first site whose loss is NaN/inf."""
    losses = [site_loss(students[student_key(s)], s, batch, teacher, align) for s in sites]
    losses = torch.stack(losses)
    finite = torch.isfinite(losses.detach())
    if not finite.all():  # one check (one device sync) per step, as fit makes anyway
        j = int((~finite).nonzero()[0])
        raise TrainingDiverged(f"site '{sites[j]}': loss is {losses[j].item()}")
    return losses.sum()


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Sum over rows of label-smoothed cross-entropy: one log-softmax pass forward, and backward
    the gradient (softmax minus the smoothed target) built in place in one tensor.
    ``F.cross_entropy`` with ``label_smoothing`` adds a zero-filled gradient, a scatter, a
    broadcast and the log-softmax backward kernel: at d_model 128 and 8,000 pieces the (N, V)
    logits are a large share of a step's memory traffic."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, smoothing: float):
        logp = torch.log_softmax(logits, dim=-1)  # (N, V)
        picked = logp.gather(1, target[:, None]).squeeze(1)  # (N,)
        ctx.save_for_backward(logp, target)
        ctx.smoothing = smoothing
        return -((1 - smoothing) * picked + smoothing * logp.mean(dim=-1)).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logp, target = ctx.saved_tensors
        s = ctx.smoothing
        out = logp.exp().sub_(s / logp.size(-1))  # softmax - s / V
        out.scatter_add_(1, target[:, None], logp.new_full((target.numel(), 1), s - 1))
        return out.mul_(grad), None, None


def smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of ``logits`` (N, V) against ``target`` (N,): the value
    of ``F.cross_entropy(logits, target, label_smoothing=smoothing)``, fused."""
    return _SmoothedCrossEntropy.apply(logits.float(), target, smoothing) / max(target.numel(), 1)


def teacher_loss(model: nn.Module, batch, smoothing: float) -> torch.Tensor:
    """Label-smoothed cross-entropy of a ``Seq2SeqTransformer`` on a batch, per real target
    token: the output layer runs only at real (non-pad) positions, the loss is fused."""
    logits, real = output_at_real_tokens(model, batch)  # (N, V)
    return smoothed_cross_entropy(logits, batch.tgt_out[real], smoothing)


class _DistillKL(torch.autograd.Function):
    """Sum over rows of T^2 * KL(softmax(t/T) || softmax(z/T)): both log-softmaxes once forward,
    and backward the gradient T * (softmax(z/T) - softmax(t/T)) built in place in one tensor
    (autograd's version keeps both log-probabilities, the product and the KL terms alive)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target_logits: torch.Tensor, temperature: float):
        logq = torch.log_softmax(logits / temperature, dim=-1)  # (N, V)
        logp = torch.log_softmax(target_logits / temperature, dim=-1)
        p = logp.exp()
        kl = (p * (logp - logq)).sum()
        ctx.save_for_backward(logq, p)
        ctx.temperature = temperature
        return temperature**2 * kl

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logq, p = ctx.saved_tensors
        out = logq.exp().sub_(p)  # softmax(z/T) - softmax(t/T)
        return out.mul_(grad * ctx.temperature), None, None


def distill_kl(
    logits: torch.Tensor, target_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over rows of T^2 * KL(softmax(target/T) || softmax(logits/T)) for (N, V) logits, fused;
    ``target_logits`` get no gradient (the teacher's)."""
    n = max(logits.size(0), 1)
    return _DistillKL.apply(logits.float(), target_logits.detach().float(), temperature) / n


def output_at_real_tokens(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, V) at the batch's real target positions, their mask (B, T)) of one
    teacher-forced pass of a ``Seq2SeqTransformer``: the output layer skips the padding."""
    memory, memory_mask = model.encode(batch.src)
    states = model.decoder_states(batch.tgt_in, memory, memory_mask)  # (B, T, D)
    real = batch.tgt_out != PAD_ID
    return model.generator(states[real]), real
