"""Position-mixing self-attention students (enc_mix, dec_mix): causal in the decoder, blind to
padding, the teacher's W_V and the mean as the start, a cached step equal to the full pass."""

import pytest
import torch

from distill.mix_students import MixStudent
from distill.model import site_path
from distill.modes import MODES, mode_sites
from distill.students import build_student, init_from_teacher, splice
from tests.helpers import (
    UNIT,
    assert_the_cache_changes_no_decode,
    decode_in_steps,
    fit_losses,
    tiny_teacher,
)

MODES_MIX = ["enc_mix", "dec_mix"]


def inputs(seed: int = 0, b: int = 3, t: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, UNIT.d_model, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t - 2 :] = False
    mask[2, t - 1 :] = False
    return x, mask


def student(mode: str) -> MixStudent:
    """A student of ``mode`` with random mixing weights (the all-ones start hides position bugs)."""
    torch.manual_seed(0)
    s = build_student(mode, UNIT)
    torch.nn.init.normal_(s.mix)
    return s.eval()


def test_output_t_of_the_decoder_student_ignores_later_positions():
    s = student("dec_mix")
    x, mask = inputs()
    before = s(x, mask)
    later = x.clone()
    later[:, 3:] = torch.randn_like(later[:, 3:]) * 5
    after = s(later, mask)
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert not torch.allclose(after[:, 3:], before[:, 3:])  # later positions did change
    # the encoder student reads every position: earlier outputs change too
    enc = student("enc_mix")
    assert not torch.allclose(enc(later, mask)[:, :3], enc(x, mask)[:, :3])


@pytest.mark.parametrize("mode", MODES_MIX)
def test_padded_inputs_do_not_leak_and_padded_outputs_are_zero(mode):
    s = student(mode)
    x, mask = inputs()
    out = s(x, mask)
    noisy = x.clone()
    noisy[~mask] = torch.randn_like(noisy[~mask]) * 100
    torch.testing.assert_close(s(noisy, mask), out)
    assert out[~mask].abs().sum() == 0 and out[mask].abs().sum() > 0
    shorter = s(x[:, :4], mask[:, :4])  # row 0's real part only: no trace of the padding
    torch.testing.assert_close(shorter[0], out[0, :4], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES_MIX)
def test_it_starts_from_the_teachers_values_as_their_mean_over_allowed_positions(mode):
    teacher = tiny_teacher()
    site = mode_sites(mode, UNIT)[1]
    core = teacher.get_submodule(site_path(site, UNIT))
    torch.manual_seed(0)
    s = build_student(mode, UNIT)
    assert init_from_teacher(s, core)
    assert torch.equal(s.value.weight, core.v_proj.weight)
    assert torch.equal(s.value.bias, core.v_proj.bias)
    x, mask = inputs()
    v = core.v_proj(x) * mask[..., None]
    allowed = mask[:, None, :].expand(-1, x.size(1), -1).float()  # (B, T, L)
    if MODES[mode].causal:
        allowed = allowed.tril()
    mean = allowed @ v / allowed.sum(-1, keepdim=True).clamp(min=1)
    with torch.no_grad():
        torch.testing.assert_close(s(x, mask), mean * mask[..., None])


def test_without_a_teachers_w_v_the_values_start_as_the_identity():
    teacher = tiny_teacher(block="sas")
    core = teacher.get_submodule(site_path("encoder.0.self_attn", teacher.cfg))
    s = build_student("enc_mix", teacher.cfg)
    assert init_from_teacher(s, core)
    assert torch.equal(s.value.weight, torch.eye(UNIT.d_model))
    assert not s.value.bias.any()


@pytest.mark.parametrize("mode", MODES_MIX)
def test_a_site_costs_d_squared_plus_heads_times_max_len_squared(mode):
    d, h, m = UNIT.d_model, UNIT.n_heads, UNIT.max_len
    s = build_student(mode, UNIT)
    assert sum(p.numel() for p in s.parameters()) == d * d + d + h * m * m
    assert not MODES[mode].lstsq  # the least-squares init fits flat MLPs only


def test_it_learns_a_teacher_site():
    teacher = tiny_teacher()
    site = "decoder.0.self_attn"
    core = teacher.get_submodule(site_path(site, UNIT))
    torch.manual_seed(0)
    s = build_student("dec_mix", UNIT)
    init_from_teacher(s, core)
    x, mask = inputs(t=8)
    with torch.no_grad():
        target = core(x, mask)
    losses = fit_losses(s, target, x, mask)
    assert losses[-1] < 0.5 * losses[0]


def spliced():
    """The tiny teacher with dec_mix students (random mixing weights) at every decoder
    self-attention site."""
    model = tiny_teacher()
    torch.manual_seed(1)
    students = {}
    for site in mode_sites("dec_mix", UNIT):
        s = build_student("dec_mix", UNIT)
        torch.nn.init.normal_(s.mix)
        students[site] = s.eval()
    splice(model, students)
    return model


@torch.no_grad()
def test_cached_steps_keep_the_values_and_equal_the_full_pass():
    stepped, full, rows, cache, src = decode_in_steps(spliced())  # 3 positions, then 1 by 1
    torch.testing.assert_close(stepped[rows], full[rows], atol=1e-5, rtol=1e-5)
    own = cache[0]["self"]
    assert own["v"].shape[1] == UNIT.max_len and "x" not in own  # its values, not a recompute


def test_greedy_and_beam_are_identical_with_and_without_the_cache():
    assert_the_cache_changes_no_decode(spliced())
