"""Cross students that read source positions (cross_gate, cross_slot): causal in the target,
blind to padding, gates that can match the teacher's attention, the teacher's own W_V as init."""

import pytest
import torch

from distill.cross_students import slot_weights
from distill.losses import site_loss
from distill.model import site_path
from distill.students import build_student, init_from_teacher, training_pass
from tests.helpers import UNIT, tiny_teacher

MODES = ["cross_gate", "cross_slot"]


def inputs(seed: int = 0, b: int = 3, t: int = 6, s: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, UNIT.d_model, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t - 2 :] = False
    memory = torch.randn(b, s, UNIT.d_model, generator=g)
    memory_mask = torch.ones(b, s, dtype=torch.bool)
    memory_mask[1, 3:] = False
    return x, mask, memory, memory_mask


@pytest.mark.parametrize("mode", MODES)
def test_output_t_ignores_later_target_positions(mode):
    torch.manual_seed(0)
    student = build_student(mode, UNIT, "xs").eval()
    x, mask, memory, memory_mask = inputs()
    before = student(x, mask, memory, memory_mask)
    later = x.clone()
    later[:, 3:] = torch.randn_like(later[:, 3:]) * 5
    after = student(later, mask, memory, memory_mask)
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert not torch.allclose(after[:, 3:], before[:, 3:])  # later positions did change


@pytest.mark.parametrize("mode", MODES)
def test_padded_source_positions_and_padded_targets_do_not_leak(mode):
    torch.manual_seed(0)
    student = build_student(mode, UNIT, "xs").eval()
    x, mask, memory, memory_mask = inputs()
    out = student(x, mask, memory, memory_mask)
    noisy = memory.clone()
    noisy[~memory_mask] = torch.randn_like(noisy[~memory_mask]) * 100
    torch.testing.assert_close(student(x, mask, noisy, memory_mask), out)
    assert out[~mask].abs().sum() == 0
    shorter = student(x, mask, memory[:, :3], memory_mask[:, :3])  # row 1's real part only
    torch.testing.assert_close(shorter[1], out[1], atol=1e-6, rtol=1e-5)


def test_slot_weights_depend_on_positions_and_length_only_and_sum_to_one():
    lengths = torch.tensor([5, 2, 8])
    w = slot_weights(6, lengths, 8, (-1, 0, 1), 2.0)  # (B, T, K, M)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 6, 3))
    assert (w[1, :, :, 2:] == 0).all() and (w[0, :, :, 5:] == 0).all()  # padding gets nothing
    torch.testing.assert_close(slot_weights(3, lengths, 8, (-1, 0, 1), 2.0, start=3), w[:, 3:])


def test_pair_gates_learn_the_teachers_attention_weights_and_start_from_its_values():
    teacher = tiny_teacher()
    site = "decoder.1.cross_attn"
    core = teacher.get_submodule(site_path(site, UNIT))
    torch.manual_seed(0)
    student = build_student("cross_gate", UNIT, "s")
    assert init_from_teacher(student, core)
    assert torch.equal(student.value.weight, core.v_proj.weight)
    assert not init_from_teacher(build_student("cross_pw", UNIT, "xs"), core)
    x, mask, memory, memory_mask = inputs(t=8, s=8)
    with torch.no_grad():
        probs = core.probabilities(x, memory, memory_mask)  # (B, H, T, S)
        # gates equal to the teacher's weights reproduce the site exactly: V is the teacher's
        term, v = student.memory_side(memory, memory_mask)
        exact = torch.einsum("bhts,bshk->bthk", probs, v).flatten(2) * mask[..., None]
        torch.testing.assert_close(exact, core(x, mask, memory, memory_mask) * mask[..., None])
    opt = torch.optim.Adam(student.parameters(), 1e-2)
    losses = []
    for _ in range(60):
        _, _, aligned = training_pass(student, x, mask, memory, memory_mask, probs)
        opt.zero_grad()
        aligned.backward()
        opt.step()
        losses.append(aligned.item())
    assert losses[-1] < 0.8 * losses[0]
    _, _, none = training_pass(student, x, mask, memory, memory_mask)
    assert none is None  # no alignment loss without the teacher's weights


def test_site_loss_adds_the_alignment_term_only_with_align():
    from distill.record import ActBatch

    teacher = tiny_teacher()
    site = "decoder.0.cross_attn"
    x, mask, memory, memory_mask = inputs(t=8, s=8)
    batch = ActBatch(
        {
            f"{site}.x": x,
            f"{site}.y": torch.randn_like(x),
            "tgt_mask": mask,
            "src_mask": memory_mask,
            "memory": memory,
        }
    )
    torch.manual_seed(0)
    student = build_student("cross_gate", UNIT, "xs")
    plain = site_loss(student, site, batch)
    assert torch.equal(site_loss(student, site, batch, teacher, 0.0), plain)
    assert site_loss(student, site, batch, teacher, 1.0) > plain
