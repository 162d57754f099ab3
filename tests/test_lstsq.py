"""Least-squares init: a student that can hold a linear map starts (nearly) on it."""

import pytest
import torch
import torch.nn.functional as F

from distill.lstsq import least_squares_init, normal_equations
from distill.modes import MODES
from distill.record import ActBatch
from distill.students import FlatMLP, PerHeadStudent, build_student, least_squares_units

M, D = 6, 8  # max_len, width: a flat input of 48 values
SITE = "encoder.0.self_attn"


def linear_batches(w: torch.Tensor, n_batches: int, residual: bool, seed: int, pad: bool = False):
    """Batches whose target is linear in the LayerNormed flat input (the student's view); with
    ``pad``, sentences of random length whose padded outputs are zero, as a recording's are."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        b = 200
        lengths = torch.randint(2, M + 1, (b,), generator=g) if pad else torch.full((b,), M)
        mask = torch.arange(M)[None] < lengths[:, None]  # (B, M)
        x = torch.randn(b, M, D, generator=g) * mask[..., None]
        flat = F.layer_norm(x.flatten(1), (M * D,))
        y = (flat @ w).view(b, M, D) * mask[..., None]
        if residual:
            y = y + x
        out.append(ActBatch({f"{SITE}.x": x, f"{SITE}.y": y, "src_mask": mask}))
    return out


def masked_mse(student, batches) -> float:
    err = n = 0.0
    for b in batches:
        x, y, mask = b[f"{SITE}.x"], b[f"{SITE}.y"], b["src_mask"]
        with torch.no_grad():
            pred = student(x, mask)
        err += ((pred - y) ** 2 * mask[..., None]).sum().item()
        n += mask.sum().item() * D
    return err / n


def init(student, residual: bool, w: torch.Tensor, pad: bool = False):
    """(validation MSE before, after, mean square of what the MLP must predict)."""
    train, valid = linear_batches(w, 6, residual, 0, pad), linear_batches(w, 1, residual, 1, pad)
    before = masked_mse(student, valid)
    students = {SITE: student}
    normal = normal_equations(students, train, residual=residual, d_model=D, progress=False)
    least_squares_init(students, normal, train, valid, residual=residual, d_model=D, progress=False)
    scale = sum(((b[f"{SITE}.y"] - (b[f"{SITE}.x"] if residual else 0)) ** 2).mean() for b in valid)
    return before, masked_mse(student, valid), float(scale)


@pytest.mark.parametrize("residual", [False, True])
def test_a_student_wide_enough_starts_on_a_linear_target(residual):
    torch.manual_seed(0)
    w = torch.randn(M * D, M * D) / (M * D) ** 0.5
    student = FlatMLP(M, D, D, hidden=64, residual=residual)  # 64 units >= rank 48
    before, after, var = init(student, residual, w)
    assert after < 0.02 * var, (before, after, var)
    assert after < before / 20


def test_each_head_of_a_per_head_student_gets_its_own_slice_of_the_map():
    torch.manual_seed(0)
    w = torch.randn(M * D, M * D) / (M * D) ** 0.5
    student = PerHeadStudent(FlatMLP(M, D, D // 2, hidden=32) for _ in range(2))
    before, after, var = init(student, False, w)
    # A wrong slice would miss by about the target's variance.
    assert after < 0.05 * var, (before, after, var)


def test_a_narrow_student_keeps_the_strongest_directions():
    """Fewer units than the map's rank: a map with four strong directions and weak noise is
    mostly recovered by eight units (and their magnitude survives the hidden LayerNorm)."""
    torch.manual_seed(0)
    w = torch.randn(M * D, 4) @ torch.randn(4, M * D) + 0.01 * torch.randn(M * D, M * D)
    before, after, var = init(FlatMLP(M, D, D, hidden=8), False, w)
    assert after < 0.05 * var, (before, after, var)


def test_with_padding_the_init_still_starts_far_below_a_random_student():
    """Zero targets at padded positions are not a linear function of the padded input, so the
    map is a compromise there; the student must still start well below a random one."""
    torch.manual_seed(0)
    w = torch.randn(M * D, M * D) / (M * D) ** 0.5
    before, after, var = init(FlatMLP(M, D, D, hidden=64), False, w, pad=True)
    assert after < before / 5 and after < 0.5 * var, (before, after, var)


def test_swiglu_students_are_refused_with_a_clear_error():
    student = FlatMLP(M, D, D, hidden=16, activation="swiglu")
    batches = linear_batches(torch.eye(M * D), 1, False, 0)
    with pytest.raises(ValueError, match="least-squares init supports"):
        normal_equations({SITE: student}, batches, residual=False, d_model=D, progress=False)


@pytest.mark.parametrize("mode", list(MODES))
def test_the_mode_table_offers_lstsq_exactly_where_the_init_can_fit_the_student(mode):
    """``Mode.lstsq`` (what the students stage reads) agrees with what the init accepts: a
    causal or per-position student would have its causal masks broken by a dense least-squares
    map, so the init refuses it."""
    student = build_student(mode, _tiny_cfg(), "m")
    if MODES[mode].lstsq:
        assert least_squares_units(student, _tiny_cfg().d_model)
    else:
        with pytest.raises(ValueError, match="needs a non-causal student"):
            least_squares_units(student, _tiny_cfg().d_model)


def _tiny_cfg():
    from distill.model import PRESETS, ModelConfig

    return ModelConfig(**PRESETS["unit"])


def local_batches(w: torch.Tensor, a: torch.Tensor, n_batches: int, seed: int):
    """Targets = a linear map of the flat input + the same nonlinear function of each position's
    own (normalised) input, |x_p U| C with two directions U: what a position-wise FFN adds."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(200, M, D, generator=g)
        flat = F.layer_norm(x.flatten(1), (M * D,))
        local = (flat.view(200, M, D) @ a[0]).abs() @ a[1]  # (B, M, D)
        y = (flat @ w).view(200, M, D) + local
        mask = torch.ones(200, M, dtype=torch.bool)
        out.append(ActBatch({f"{SITE}.x": x, f"{SITE}.y": y, "src_mask": mask}))
    return out


def test_local_units_start_on_a_position_wise_nonlinearity_a_linear_start_misses():
    torch.manual_seed(0)
    w = torch.randn(M * D, 8) @ torch.randn(8, M * D) / M / D
    a = torch.randn(D, 2), torch.randn(2, D)
    train, valid = local_batches(w, a, 20, 0), local_batches(w, a, 1, 1)
    scores = {}
    for local in (0, 6):
        student = FlatMLP(M, D, D, hidden=16 + M * 6)  # 16 linear units >= the map's rank 8
        students = {SITE: student}
        normal = normal_equations(students, train, residual=False, d_model=D, progress=False)
        least_squares_init(
            students, normal, train, valid, residual=False, d_model=D, local=local, progress=False
        )
        scores[local] = masked_mse(student, valid)
        if local:  # position p's local units read position p only
            w1 = student.fc1.weight[16:].view(M, local, M, D).detach()
            off_block = w1 * (1 - torch.eye(M))[:, None, :, None]
            assert off_block.abs().max() == 0 and w1.abs().sum() > 0
    assert scores[6] < scores[0] / 10, scores


def test_local_units_that_fill_the_hidden_layer_are_refused():
    student = FlatMLP(M, D, D, hidden=2 * M)
    batches = linear_batches(torch.eye(M * D), 1, False, 0)
    normal = normal_equations({SITE: student}, batches, residual=False, d_model=D, progress=False)
    with pytest.raises(ValueError, match="must stay below the hidden width"):
        least_squares_init(
            {SITE: student}, normal, batches, batches, residual=False, d_model=D, local=2
        )
