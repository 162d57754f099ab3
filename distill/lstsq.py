"""Least-squares initialisation of (non-causal) students: start Adam from the best linear map.

A ridge regression from the student's normalised, flattened input to the site's output is solved
in closed form from one pass over the recording, and it already beats what Adam reaches with the
demo's budget (on the demo teacher's layer 0: ALR validation MSE 0.459 against 0.587 after six
epochs; BENCHMARKS.md). The paper's MLP cannot hold that map exactly (h < M * Dout), so it starts
from the nearest one it can:

1. ``fc1`` gets the top-h directions of the fitted values (reduced-rank regression), all scaled
   alike and shifted by ``SHIFT`` of their own std (plus ``SPREAD`` on every other unit) so that
   the activation and the hidden LayerNorm pass them on almost linearly;
2. optionally (``local`` > 0), the last ``local * max_len`` units become position-local nonlinear
   features: a small per-position MLP (Din -> local -> Dout, shared by all positions) is fitted by
   Adam to what the linear map leaves unexplained, from each position's own normalised input, and
   its first layer is copied into every position's block of ``fc1``. A layer's position-wise FFN
   (ELR) is such a function; a linear start cannot hold it and a small rate does not grow it
   (demo ELR layer 0: the linear map's validation MSE 2.15, with 64 local units 1.82);
3. ``fc2`` is a second ridge regression from the student's own hidden features (after its
   activation and hidden LayerNorm) to the target, so it fits what the network really computes.

Ridge strengths are picked on the validation batches. Training then goes on from this point as
usual; the architecture, the loss and the splice are unchanged. Causal students are excluded
(their masked weights would need a constrained solve).

Dimension letters: N rows, P = M * Din (+1 for the bias column), Q = M * Dout, h hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.activations import site_io
from distill.progress import progress_bar
from distill.students import FlatMLP, apply_activation, least_squares_units

log = logging.getLogger("distill.lstsq")

RIDGE = (0.003, 0.01, 0.03, 0.1, 0.3)  # ridge strength / mean diagonal of the Gram matrix
# fc1 bias in units of each unit's std: the activation starts linear for 99.9% of inputs (the demo's
# ALR layer 0: MSE 0.54 after init at 3, 0.57 at 1: units that start bent cost more than they buy).
SHIFT = 3.0
# Every other unit gets this much more bias (still linear): the hidden LayerNorm then divides each
# sentence by nearly the same spread, instead of by the size of its own features, which would
# lose their magnitude (a rank-4 map through 8 units: 22% of its variance lost without, 2% with).
SPREAD = 4.0
SUPPORTED_ACTIVATIONS = ("leaky_relu", "relu", "gelu")
LOCAL_ROWS = 400_000  # (sentence, position) rows the per-position MLP is fitted on, at most
LOCAL_STEPS = 3000  # Adam steps for it (the demo's 360k rows: about 8.5 epochs, 12 s)
LOCAL_BATCH = 1024
LOCAL_LR = 1e-3


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(x.size(0), 1)], dim=1)  # (N, P + 1)


def _site_rows(mlp: FlatMLP, batch, site: str, residual: bool):
    """Normalised flat input (N, P+1), flat target (N, M, Dout_all) and mask (N, M) of a batch,
    on the student's device (a recording's batches arrive on the CPU)."""
    device = mlp.fc1.weight.device
    x, y, mask = (t.to(device) for t in site_io(batch, site)[:3])
    target = (y - x) if residual else y
    pad = mlp.max_len - x.size(1)
    xp = mlp._pad(x, mask).flatten(1)
    target = F.pad(target * mask[..., None], (0, 0, 0, pad))  # (N, M, Dout_all)
    return _with_bias(mlp.in_norm(xp)), target, F.pad(mask, (0, pad))


def _ridge(gram: torch.Tensor, cross: torch.Tensor, predict_valid) -> tuple[torch.Tensor, float]:
    """The ridge solution (P+1, Q) whose validation MSE is lowest over ``RIDGE``; the bias
    (last) row is not shrunk. ``predict_valid(W)`` returns that MSE."""
    g = gram.double()
    # Strengths are relative to the features' variance (a feature's constant part is the
    # unshrunk bias's business): the centred diagonal, sum(f^2) - sum(f)^2 / N.
    scale = (torch.diagonal(g)[:-1] - g[:-1, -1] ** 2 / g[-1, -1]).mean()
    eye = torch.eye(g.size(0), dtype=g.dtype, device=g.device)
    eye[-1, -1] = 0
    best = None
    for r in RIDGE:
        chol, info = torch.linalg.cholesky_ex(g + r * scale * eye)
        if info.item():
            continue
        w = torch.cholesky_solve(cross.double(), chol).float()
        mse = predict_valid(w)
        if best is None or mse < best[1]:
            best = (w, mse)
    if best is None:
        raise ValueError("least-squares init: every ridge system was singular")
    return best


def _local_rows(mlp: FlatMLP, w: torch.Tensor, site: str, batches, residual: bool):
    """Each non-pad position's own normalised input (R, Din) and what the linear map ``w`` leaves
    of its target (R, Dout_all), from at most ``LOCAL_ROWS`` rows of ``batches``."""
    xs, es, n = [], [], 0
    for batch in batches:
        f, t, m = _site_rows(mlp, batch, site, residual)
        xs.append(f[:, :-1].view(f.size(0), mlp.max_len, -1)[m])
        es.append((t - (f @ w).view_as(t))[m])
        n += xs[-1].size(0)
        if n >= LOCAL_ROWS:
            break
    return torch.cat(xs)[:LOCAL_ROWS], torch.cat(es)[:LOCAL_ROWS]


def _fit_local(x: torch.Tensor, e: torch.Tensor, local: int, activation: str, seed: int, desc):
    """Fit Din -> local -> Dout (``activation``, shared by all positions) to the rows x -> e by
    Adam; return its first layer, weight (local, Din) and bias (local,), and the last batch's MSE.
    """
    if x.size(0) == 0:
        raise ValueError("least-squares init: no non-pad positions to fit the local units on")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
        torch.manual_seed(seed)
        fc_in, fc_out = nn.Linear(x.size(1), local), nn.Linear(local, e.size(1))
    fc_in, fc_out = fc_in.to(x.device), fc_out.to(x.device)
    opt = torch.optim.Adam([*fc_in.parameters(), *fc_out.parameters()], lr=LOCAL_LR)
    order = torch.empty(0, dtype=torch.long)
    with torch.enable_grad():
        for _ in progress_bar(range(LOCAL_STEPS), desc=desc, show=desc is not None, leave=False):
            if order.numel() < LOCAL_BATCH:  # a new epoch (the last partial batch is dropped)
                order = torch.randperm(x.size(0), generator=gen)
            idx, order = order[:LOCAL_BATCH].to(x.device), order[LOCAL_BATCH:]
            pred = fc_out(apply_activation(activation, fc_in(x[idx])))
            loss = (pred - e[idx]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return fc_in.weight.detach(), fc_in.bias.detach(), loss.item()


def _place_local(mlp: FlatMLP, w1: torch.Tensor, b1: torch.Tensor) -> None:
    """The last ``len(b1) * max_len`` units of fc1: position p's group reads only position p."""
    k, d = w1.shape
    start = mlp.hidden - k * mlp.max_len
    weight = mlp.fc1.weight[start : mlp.hidden].view(mlp.max_len, k, mlp.max_len, d)
    weight.zero_()
    for p in range(mlp.max_len):
        weight[p, :, p] = w1
    mlp.fc1.bias[start : mlp.hidden] = b1.repeat(mlp.max_len)


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error summed over non-pad positions, and the element count (as masked_mean)."""
    m = mask[..., None].to(pred.dtype)
    return torch.stack([((pred - target) ** 2 * m).sum(), m.sum() * pred.size(-1)])


def check_local_units(local: int, max_len: int, width: int, where: str) -> None:
    """``ValueError`` when ``local`` units per position would fill the whole hidden layer."""
    if local and local * max_len >= width:
        raise ValueError(
            f"{where}: {local} local units per position x max_len {max_len} must stay below the "
            f"hidden width {width} (the rest are the linear units; use a larger size or fewer)"
        )


def _check(students: dict[str, nn.Module], d_model: int) -> dict[str, FlatMLP]:
    """The first unit of each site (every unit of a site reads the same input through an
    identical fresh LayerNorm); ``ValueError`` for an activation the init cannot handle."""
    for student in students.values():
        for mlp, _ in least_squares_units(student, d_model):
            if mlp.activation not in SUPPORTED_ACTIVATIONS:
                raise ValueError(
                    f"least-squares init supports {', '.join(SUPPORTED_ACTIVATIONS)}, "
                    f"not '{mlp.activation}' (use init=random)"
                )
    return {s: least_squares_units(st, d_model)[0][0] for s, st in students.items()}


@torch.no_grad()
def normal_equations(
    students: dict[str, nn.Module],
    batches: Iterable,
    *,
    residual: bool,
    d_model: int,
    progress: bool = True,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """{site: (F^T F (P+1, P+1), F^T T (P+1, Q), rows)} over ``batches``, F being the students'
    normalised flat input with a bias column and T the flat target. Only these sums are kept, so
    ``batches`` may be any number of teacher passes; large batches make the products efficient."""
    first = _check(students, d_model)
    sums: dict[str, list] = {}
    for batch in progress_bar(batches, desc="lstsq: normal equations", show=progress, leave=False):
        for site, mlp in first.items():
            f, t, _ = _site_rows(mlp, batch, site, residual)
            t = t.flatten(1)  # (N, M * D)
            if site not in sums:
                sums[site] = [f.T @ f, f.T @ t, 0]
            else:
                sums[site][0] += f.T @ f
                sums[site][1] += f.T @ t
            sums[site][2] += f.size(0)
    return {site: tuple(v) for site, v in sums.items()}


@torch.no_grad()
def least_squares_init(
    students: dict[str, nn.Module],
    normal: dict[str, tuple[torch.Tensor, torch.Tensor, int]],
    batches: Iterable,
    valid: Sequence,
    *,
    residual: bool,
    d_model: int,
    local: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Set every student's weights in place; returns the validation MSE per site.

    ``normal`` holds each site's ``normal_equations`` (for the linear map and fc1); ``batches``
    (a sequence of large training batches, read once more per site with ``local``) fit fc2 to the
    hidden features; the ridge strengths are chosen on ``valid``, a sequence of batches.
    ``local`` hidden units per position start as position-local nonlinear features (module doc).
    """
    first = _check(students, d_model)
    for site, student in students.items():
        for mlp, _ in least_squares_units(student, d_model):
            check_local_units(local, mlp.max_len, mlp.hidden, site)
    valid_rows = {s: [_site_rows(first[s], b, s, residual) for b in valid] for s in students}
    for site, student in students.items():  # step 1: a ridge map per site, fc1 from it
        w = _linear_map(site, normal[site], valid_rows[site])
        gram, _, rows = normal[site]
        for mlp, dims in least_squares_units(student, d_model):
            _fc1_from_map(mlp, w, dims, gram, rows, local)
        if local:
            x, e = _local_rows(first[site], w, site, batches, residual)
            for i, (mlp, dims) in enumerate(least_squares_units(student, d_model)):
                desc = f"lstsq: local units {site}" if progress else None
                w1, b1, mse = _fit_local(x, e[:, dims], local, mlp.activation, seed + i, desc)
                _place_local(mlp, w1, b1)
                log.info("%s: %d local units per position, fit MSE %.4f", site, local, mse)
    feats = _hidden_normal_equations(students, first, batches, residual, d_model, progress)
    scores = {}
    for site, student in students.items():  # step 2: fc2 from each unit's hidden features
        errors = []  # (squared error, count) per unit and validation batch
        for i, (mlp, dims) in enumerate(least_squares_units(student, d_model)):
            errors += _fit_fc2(mlp, feats.pop((site, i)), dims, valid_rows[site])
        total = sum(errors)
        scores[site] = (total[0] / total[1]).item()
        log.info("%s: student after least-squares init, validation MSE %.4f", site, scores[site])
    return scores


def _linear_map(site: str, normal, valid_rows) -> torch.Tensor:
    """The ridge map of one site's inputs to its outputs, its strength chosen on validation."""

    def full_mse(w):
        tot = sum(_masked_mse((f @ w).view_as(t), t, m) for f, t, m in valid_rows)
        return (tot[0] / tot[1]).item()

    gram, cross, rows = normal
    w, mse = _ridge(gram, cross, full_mse)
    log.info("%s: linear ridge map from %d rows, validation MSE %.4f", site, rows, mse)
    return w


def _fc1_from_map(mlp, w: torch.Tensor, dims, gram: torch.Tensor, rows: int, local: int) -> None:
    """fc1's units (all but the ``local`` ones) along the strongest directions of the linear
    map's fitted values for this unit's output dims, standardised and shifted."""
    mean_f = gram[-1] / rows  # (P+1,) mean of each input column (bias row of the Gram)
    w_u = w.view(w.size(0), mlp.max_len, -1)[:, :, dims].flatten(1)  # (P+1, Q_u)
    fitted = w_u.T @ gram @ w_u / rows  # (Q_u, Q_u) second moment of fitted values
    _, vecs = torch.linalg.eigh(fitted)
    r = min(mlp.hidden - local * mlp.max_len, vecs.size(1))
    proj = w_u @ vecs[:, -r:].flip(1)  # (P+1, r) strongest directions first
    mu = mean_f @ proj
    sd = ((proj * (gram @ proj)).sum(0) / rows - mu**2).clamp(min=1e-12).sqrt()
    # One scale for all units keeps the weak (noisy) directions weak, so the hidden
    # LayerNorm and the ridge on fc2 see them as small; each unit is shifted by SHIFT of
    # its own std into the linear part of the activation.
    scale = sd.square().mean().sqrt()
    spread = SPREAD * (torch.arange(r, device=proj.device) % 2)
    mlp.fc1.weight[:r] = (proj[:-1] / scale).T
    mlp.fc1.bias[:r] = (proj[-1] - mu + SHIFT * sd) / scale + spread


def _hidden_normal_equations(students, first, batches, residual: bool, d_model: int, progress):
    """{(site, unit): [H^T H, H^T T]} of every unit's hidden features over ``batches``."""
    feats = {}
    for batch in progress_bar(batches, desc="lstsq: hidden", show=progress, leave=False):
        for site, student in students.items():
            f, t, _ = _site_rows(first[site], batch, site, residual)
            for i, (mlp, dims) in enumerate(least_squares_units(student, d_model)):
                h = _with_bias(mlp.activate(mlp.fc1(f[:, :-1])))
                tu = t[:, :, dims].flatten(1)
                key = (site, i)
                if key not in feats:
                    feats[key] = [h.T @ h, h.T @ tu]
                else:
                    feats[key][0] += h.T @ h
                    feats[key][1] += h.T @ tu
    return feats


def _fit_fc2(mlp, normal, dims, valid_rows) -> list:
    """fc2 of one unit by ridge on its hidden features; the (squared error, count) per
    validation batch."""
    vrows = [
        (_with_bias(mlp.activate(mlp.fc1(f[:, :-1]))), t[:, :, dims], m) for f, t, m in valid_rows
    ]

    def unit_mse(w):
        tot = sum(_masked_mse((h @ w).view_as(t), t, m) for h, t, m in vrows)
        return (tot[0] / tot[1]).item()

    w2, _ = _ridge(*normal, unit_mse)
    mlp.fc2.weight.copy_(w2[:-1].T)
    mlp.fc2.bias.copy_(w2[-1])
    return [_masked_mse((h @ w2).view_as(t), t, m) for h, t, m in vrows]
