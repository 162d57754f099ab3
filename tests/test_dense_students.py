"""The dense-synthesizer cross student (cross_dense): weights from the decoder state alone,
blind to padding, position-wise, the teacher's W_V, learns a site, cached steps equal the full
pass."""

import torch

from distill.dense_students import DenseStudent
from distill.model import site_path
from distill.modes import MIXING, MODES, PAIR_SIZES, VARIANTS, mode_sites
from distill.students import build_student, init_from_teacher, splice
from tests.helpers import (
    UNIT,
    assert_the_cache_changes_no_decode,
    decode_in_steps,
    fit_losses,
    tiny_teacher,
)


def inputs(seed: int = 0, b: int = 3, t: int = 6, s: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, UNIT.d_model, generator=g)
    memory = torch.randn(b, s, UNIT.d_model, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t - 2 :] = False
    mask[2, t - 1 :] = False
    memory_mask = torch.ones(b, s, dtype=torch.bool)
    memory_mask[1, s - 3 :] = False
    memory_mask[2, s - 1 :] = False
    return x, mask, memory, memory_mask


def student(size: str = "xs") -> DenseStudent:
    """A cross_dense student with random score biases (the zero start hides position bugs)."""
    torch.manual_seed(0)
    s = build_student("cross_dense", UNIT, size)
    torch.nn.init.normal_(s.fc2.bias)
    return s.eval()


def test_the_mode_is_a_mixing_cross_student_and_its_variant_mixes_everywhere():
    spec = MODES["cross_dense"]
    assert spec.kind == MIXING and spec.memory and spec.stack == "decoder" and not spec.lstsq
    assert mode_sites("cross_dense", UNIT) == [f"decoder.{i}.cross_attn" for i in range(UNIT.n_dec)]
    assert VARIANTS["attentionless_dense"] == ["enc_mix", "dec_mix", "cross_dense"]
    assert all(MODES[m].kind == MIXING for m in VARIANTS["attentionless_dense"])


def test_padded_source_positions_do_not_leak_and_padded_outputs_are_zero():
    s = student()
    x, mask, memory, memory_mask = inputs()
    out = s(x, mask, memory, memory_mask)
    noisy = memory.clone()
    noisy[~memory_mask] = torch.randn_like(noisy[~memory_mask]) * 100
    torch.testing.assert_close(s(x, mask, noisy, memory_mask), out)
    assert out[~mask].abs().sum() == 0 and out[mask].abs().sum() > 0
    # row 1's real source part only: no trace of the padding, n_src the real count
    shorter = s(x[1:2], mask[1:2], memory[1:2, :4], memory_mask[1:2, :4])
    torch.testing.assert_close(shorter[0], out[1], atol=1e-6, rtol=1e-5)


def test_output_t_reads_decoder_position_t_alone():
    s = student()
    x, mask, memory, memory_mask = inputs()
    before = s(x, mask, memory, memory_mask)
    other = x.clone()
    other[:, [0, 1, 2, 4, 5]] = torch.randn_like(other[:, [0, 1, 2, 4, 5]]) * 5
    after = s(other, mask, memory, memory_mask)
    torch.testing.assert_close(after[:, 3], before[:, 3])
    assert not torch.allclose(after[:, 2], before[:, 2])  # the changed positions did change


def test_it_starts_from_the_teachers_values_and_half_their_mean():
    teacher = tiny_teacher()
    core = teacher.get_submodule(site_path("decoder.1.cross_attn", UNIT))
    torch.manual_seed(0)
    s = build_student("cross_dense", UNIT, "xs")
    assert init_from_teacher(s, core)
    assert torch.equal(s.value.weight, core.v_proj.weight)
    assert torch.equal(s.value.bias, core.v_proj.bias)
    with torch.no_grad():  # a zero first layer: every weight sigmoid(0) = 1/2 at the zero bias
        s.fc2.weight.zero_()
        x, mask, memory, memory_mask = inputs()
        v = core.v_proj(memory) * memory_mask[..., None]
        mean = v.sum(1) / memory_mask.sum(1, keepdim=True)
        expected = 0.5 * mean[:, None].expand(-1, x.size(1), -1) * mask[..., None]
        torch.testing.assert_close(s(x, mask, memory, memory_mask), expected)


def test_a_site_costs_two_linear_maps_of_the_state_and_the_values():
    d, h, m, p = UNIT.d_model, UNIT.n_heads, UNIT.max_len, PAIR_SIZES["m"]
    s = build_student("cross_dense", UNIT)
    assert s.fc1.out_features == p  # the size table of the pair students
    total = sum(q.numel() for q in s.parameters())
    assert total == (d * p + p) + (p * h * m + h * m) + (d * d + d)


def test_it_learns_a_teacher_cross_site():
    teacher = tiny_teacher()
    core = teacher.get_submodule(site_path("decoder.0.cross_attn", UNIT))
    torch.manual_seed(0)
    s = build_student("cross_dense", UNIT, "s")
    init_from_teacher(s, core)
    x, mask, memory, memory_mask = inputs(t=8, s=8)
    with torch.no_grad():
        target = core(x, mask, memory, memory_mask)
    losses = fit_losses(s, target, x, mask, memory, memory_mask)
    assert losses[-1] < 0.5 * losses[0]


def spliced():
    """The tiny teacher with attentionless_dense's students (random score biases and mixing
    weights) at every encoder self-, decoder self- and cross-attention site."""
    model = tiny_teacher()
    torch.manual_seed(1)
    students = {}
    for name in VARIANTS["attentionless_dense"]:
        for site in mode_sites(name, UNIT):
            s = build_student(name, UNIT, "xs")
            torch.nn.init.normal_(s.fc2.bias if name == "cross_dense" else s.mix)
            students[site] = s.eval()
    splice(model, students)
    return model


@torch.no_grad()
def test_cached_steps_keep_the_memory_values_and_equal_the_full_pass():
    stepped, full, rows, cache, src = decode_in_steps(spliced())  # 3 positions, then 1 by 1
    torch.testing.assert_close(stepped[rows], full[rows], atol=1e-5, rtol=1e-5)
    own = cache[0]["cross"]
    assert set(own) == {"memory"} and own["memory"][0].shape[1] == src.size(1)


def test_greedy_and_beam_are_identical_with_and_without_the_cache():
    assert_the_cache_changes_no_decode(spliced())
