"""Students and surgery: equivalences, causality and padding invariants, learning."""

import pytest
import torch

from distill.model import PRESETS, ModelConfig, list_sites, site_path
from distill.modes import ACTIVATIONS, MODES, RESIDUAL_MODES, mode_sites
from distill.students import (
    build_student,
    effective_parameters,
    splice,
    unsplice,
)
from tests.helpers import PassThrough, random_src, tiny_teacher

CFG = ModelConfig(**PRESETS["unit"])


def inputs(seed: int = 0, b: int = 3, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, CFG.d_model, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, n - 2 :] = False
    memory = torch.randn(b, 5, CFG.d_model, generator=g)
    memory_mask = torch.ones(b, 5, dtype=torch.bool)
    memory_mask[1, 3:] = False
    return x, mask, memory, memory_mask


def test_identity_adapters_at_every_site_reproduce_the_teacher_exactly():
    model = tiny_teacher()
    src, tgt = random_src(), random_src(seed=2)
    before = model(src, tgt)
    for site in list_sites(CFG):
        inner = model.get_submodule(site_path(site, CFG))
        wrapper = PassThrough(inner)
        previous = splice(model, {site: wrapper})
        assert model.get_submodule(site_path(site, CFG)) is wrapper, site  # really in place
        assert torch.equal(model(src, tgt), before), site
        unsplice(model, previous)
        assert model.get_submodule(site_path(site, CFG)) is inner, site
    assert torch.equal(model(src, tgt), before)


@pytest.mark.parametrize("mode", [m for m in MODES if MODES[m].stack == "decoder"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_decoder_students_are_causal(mode, activation):
    torch.manual_seed(0)
    student = build_student(mode, CFG, "xs", activation)
    x, mask, memory, memory_mask = inputs()
    base = student(x, mask, memory, memory_mask)
    for t in range(x.size(1) - 1):
        changed = x.clone()
        changed[:, t + 1 :] += torch.randn_like(changed[:, t + 1 :])
        out = student(changed, mask, memory, memory_mask)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(out[1, t + 1 :], base[1, t + 1 :])  # later positions do see it


@pytest.mark.parametrize("mode", [m for m in MODES if MODES[m].memory])
def test_cross_student_sees_the_whole_memory_but_not_its_padding(mode):
    torch.manual_seed(0)
    student = build_student(mode, CFG, "xs")
    x, mask, memory, memory_mask = inputs()
    changed = memory.clone()
    # not a uniform shift: a LayerNorm over a slot of positions would erase that
    changed[:, -1] += torch.randn(changed[:, -1].shape, generator=torch.Generator().manual_seed(1))
    a = student(x, mask, memory, memory_mask)
    b = student(x, mask, changed, memory_mask)
    assert not torch.allclose(a[0, 0], b[0, 0])  # position 0 depends on the last source token
    torch.testing.assert_close(a[1], b[1])  # row 1's last source position is padding


@pytest.mark.parametrize("mode", list(MODES))
def test_padded_outputs_are_exactly_zero_and_padding_does_not_leak(mode):
    torch.manual_seed(0)
    student = build_student(mode, CFG, "xs")
    x, mask, memory, memory_mask = inputs()
    out = student(x, mask, memory, memory_mask)
    assert out.shape == x.shape
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    garbage = x.clone()
    garbage[~mask] = 1e3
    again = student(garbage, mask, memory, memory_mask)
    torch.testing.assert_close(again, out)  # what sits in padded positions is ignored


@pytest.mark.parametrize("mode", RESIDUAL_MODES)
def test_a_residual_student_adds_its_mlp_to_its_input(mode):
    torch.manual_seed(0)
    plain = build_student(mode, CFG, "xs")
    residual = build_student(mode, CFG, "xs", residual=True)
    residual.load_state_dict(plain.state_dict())  # the same MLP, only the skip differs
    x, mask, _, _ = inputs()
    out = residual(x, mask)
    torch.testing.assert_close(out, plain(x, mask) + x * mask[..., None])
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    with torch.no_grad():  # a zero MLP is the identity on real positions, exactly
        residual.fc2.weight.zero_()
        residual.fc2.bias.zero_()
    assert torch.equal(residual(x, mask), x * mask[..., None])


def test_only_residual_modes_have_a_residual_variant():
    for mode in set(MODES) - set(RESIDUAL_MODES):
        with pytest.raises(ValueError, match="no residual variant"):
            build_student(mode, CFG, "xs", residual=True)


def test_sizes_match_the_paper_at_paper_dimensions():
    cfg = ModelConfig(**PRESETS["paper"])
    for size, millions in (("xs", 0.34), ("s", 0.66), ("m", 10.3)):
        n = effective_parameters(build_student("alr", cfg, size))
        assert abs(n / 1e6 - millions) / millions < 0.03, (size, n)


def test_one_pass_decoder_student_replaces_every_decoder_site_and_decodes():
    from distill.decode import beam_search, greedy

    model = tiny_teacher()
    students = {}
    for mode in ("alr", "dec_self", "cross"):
        for site in mode_sites(mode, CFG):
            students[site] = build_student(mode, CFG, "xs").eval()
    splice(model, students)
    src = random_src()
    out = greedy(model, src)
    assert out == beam_search(model, src, beam=1)
    assert all(len(o) <= CFG.max_len for o in out)


@pytest.mark.parametrize("mode", ["alr", "cross", "cross_pw"])
def test_folded_padding_equals_the_padded_sentence_and_follows_weight_changes(mode):
    torch.manual_seed(0)
    student = build_student(mode, CFG, "xs")
    with torch.no_grad():  # non-trivial norms, so the padded positions' share is not zero
        for norm in (m for m in student.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.normal_()
            norm.bias.normal_()
    for n in (1, 4, CFG.max_len - 1):
        x, mask, memory, memory_mask = inputs(seed=n, n=n)
        with torch.enable_grad():  # the plain path: the whole padded sentence
            plain = student(x, mask, memory, memory_mask).detach()
        with torch.no_grad():
            folded = student(x, mask, memory, memory_mask)
        torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # an optimizer step changes weights in place: the tables follow
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
        folded = student(x, mask, memory, memory_mask)
    plain = student(x, mask, memory, memory_mask).detach()
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["alr", "cross_pw"])
def test_folded_tables_are_rebuilt_after_a_fused_optimizer_step(mode):
    torch.manual_seed(0)
    student = build_student(mode, CFG, "xs")
    x, mask, memory, memory_mask = inputs(n=4)
    with torch.no_grad():
        student.eval()(x, mask, memory, memory_mask)  # the tables of the first weights
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=0.1, fused=True)
    student(x, mask, memory, memory_mask).square().sum().backward()
    opt.step()  # in place, without bumping the weights' version counters
    student.eval()  # what fit does before validating
    with torch.no_grad():
        folded = student(x, mask, memory, memory_mask)
    with torch.enable_grad():
        plain = student(x, mask, memory, memory_mask).detach()
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
