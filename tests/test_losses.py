"""The fast training steps: the fused label-smoothed cross-entropy and the fused distillation KL
equal torch's, value and gradient; the losses at real tokens only equal the ones over every
(padded) position; the cheaper dropout drops what it should and attention's training path is
SDPA's."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distill.losses import distill_kl, output_at_real_tokens, smoothed_cross_entropy, teacher_loss
from distill.model import BOS_ID, PAD_ID, AttentionCore, dropout
from tests.helpers import random_src, tiny_teacher


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_the_fused_cross_entropy_equals_torchs_value_and_gradient(smoothing):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(37, 50, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 50, (37,), generator=g)
    want = F.cross_entropy(logits, target, label_smoothing=smoothing)
    (want_grad,) = torch.autograd.grad(2 * want, logits)
    got = smoothed_cross_entropy(logits, target, smoothing)
    (got_grad,) = torch.autograd.grad(2 * got, logits)
    assert got.dtype == torch.float32  # the loss is computed in float32, whatever comes in
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-5, atol=1e-7)


def test_the_teacher_loss_at_real_tokens_equals_the_loss_over_padded_logits():
    model = tiny_teacher(dropout=0.0).train()
    tgt_out = random_src(4, 7, seed=3)
    tgt_in = torch.cat([torch.full((4, 1), BOS_ID), tgt_out[:, :-1]], 1)
    tgt_in[tgt_out == PAD_ID] = PAD_ID
    batch = SimpleNamespace(src=random_src(4, 6), tgt_in=tgt_in, tgt_out=tgt_out)
    assert (tgt_out == PAD_ID).any()  # some positions are padding, and are left out
    want = F.cross_entropy(
        model(batch.src, batch.tgt_in).flatten(0, 1),
        tgt_out.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=0.1,
    )
    want_grads = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    got = teacher_loss(model, batch, 0.1)
    got_grads = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for w, g in zip(want_grads, got_grads):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_fused_distillation_kl_equals_torchs_value_and_gradient(temperature):
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(29, 40, generator=g, dtype=torch.float64)).requires_grad_()
    target = 3 * torch.randn(29, 40, generator=g, dtype=torch.float64)
    logq = F.log_softmax(logits / temperature, -1)
    logp = F.log_softmax(target / temperature, -1)
    want = temperature**2 * F.kl_div(logq, logp, log_target=True, reduction="batchmean")
    (want_grad,) = torch.autograd.grad(3 * want, logits)
    got = distill_kl(logits, target, temperature)
    (got_grad,) = torch.autograd.grad(3 * got, logits)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-7)
    assert distill_kl(target, target, temperature).item() == 0.0  # equal logits: exactly 0


def test_the_output_at_real_tokens_is_the_full_passs_logits_there():
    model = tiny_teacher(dropout=0.0).eval()
    tgt_out = random_src(4, 7, seed=5)
    tgt_in = torch.cat([torch.full((4, 1), BOS_ID), tgt_out[:, :-1]], 1)
    batch = SimpleNamespace(src=random_src(4, 6), tgt_in=tgt_in, tgt_out=tgt_out)
    logits, real = output_at_real_tokens(model, batch)
    assert torch.equal(real, tgt_out != PAD_ID) and 0 < logits.size(0) < real.numel()
    torch.testing.assert_close(logits, model(batch.src, batch.tgt_in)[real])


def test_fast_dropout_drops_p_of_the_elements_keeps_the_mean_and_backpropagates_its_mask():
    torch.manual_seed(0)
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.003  # 200k elements: ~0.0007 std
    assert abs(y.mean().item() - 1.0) < 0.005  # inverted dropout: the mean is kept
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad != 0, kept) and torch.allclose(grad[kept], y[kept])
    rows = y.view(-1, 4)  # four elements share a 64-bit draw: their decisions are independent
    both = (rows[:, 0] == 0) & (rows[:, 1] == 0)
    assert abs(both.float().mean().item() - 0.01) < 0.002
    assert torch.equal(dropout(x, 0.1, training=False), x)


def test_attention_with_dropout_in_training_is_sdpa_when_nothing_is_dropped():
    """The training path (explicit softmax, then dropout) computes what SDPA computes."""
    torch.manual_seed(0)
    core = AttentionCore(16, 2, dropout=1e-9, causal=True)  # rounds to no element dropped
    x, mask = torch.randn(3, 5, 16), torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0]])
    mask = mask.bool()
    train = core.train()(x, mask)
    evaluated = core.eval()(x, mask)
    torch.testing.assert_close(train[mask], evaluated[mask], rtol=1e-5, atol=1e-6)
    memory = torch.randn(3, 4, 16)
    memory_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    train = core.train()(x, mask, memory, memory_mask)
    evaluated = core.eval()(x, mask, memory, memory_mask)
    torch.testing.assert_close(train, evaluated, rtol=1e-5, atol=1e-6)
