"""A site's decoding cache: the helpers with which every site module's ``forward`` reads and
extends its own state.

Every site module, the teacher's and every student, is called one way:
``forward(x, mask, memory=None, memory_mask=None, cache=None)``. Without a cache it is the
full pass over all positions. With one (a dict, empty at the first step, owned by that site
alone) ``x`` (B, n, D) and ``mask`` (B, n) hold only the positions after those the cache has
seen, and the module returns theirs. Each helper here is the identity without a cache, so a
forward reads the same for both (the same operations in the same order on a full pass).
A module that has no incremental form re-runs over the prefix (``recompute``).

Dimension letters: B batch, n new positions, D d_model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def part(cache: dict | None, key: str) -> dict | None:
    """The cache of one part of a layer (its self- or cross-attention), made at the first step."""
    return None if cache is None else cache.setdefault(key, {})


def append(cache: dict | None, key: str, new: torch.Tensor, dim: int) -> torch.Tensor:
    """``new`` after what earlier steps kept under ``key`` (concatenated along ``dim``), kept
    there for the next step."""
    if cache is None:
        return new
    if key in cache:
        new = torch.cat([cache[key], new], dim=dim)
    cache[key] = new
    return new


def extend_self_cache(cache: dict | None, k, v, mask) -> tuple[torch.Tensor, ...]:
    """A self-attention's keys (B, H, keys, K), values and key mask (B, keys): the cached ones
    of earlier positions followed by the new ones, kept in ``cache`` for the next step."""
    return append(cache, "k", k, 2), append(cache, "v", v, 2), append(cache, "mask", mask, 1)


def extend_prefix(cache: dict | None, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole prefix so far: inputs (B, t, D) and mask (B, t), the new positions last."""
    return append(cache, "x", x, 1), append(cache, "mask", mask, 1)


def running_sum(cache: dict | None, key: str, cumsum: torch.Tensor) -> torch.Tensor:
    """Cumulative sums over the new positions (dim 2) continued from the earlier steps' total."""
    if cache is None:
        return cumsum
    total = cumsum + cache.get(key, 0.0)
    cache[key] = total[:, :, -1:]
    return total


def once(cache: dict | None, key: str, compute: Callable, *args):
    """``compute(*args)``; with a cache only at the first step (a cross site's memory terms:
    the memory does not change while a sentence decodes)."""
    if cache is None:
        return compute(*args)
    if key not in cache:
        cache[key] = compute(*args)
    return cache[key]


def advance(cache: dict | None, n: int) -> int:
    """The position of the first of ``n`` new positions (0 on a full pass), counted on."""
    if cache is None:
        return 0
    start = cache.get("t", 0)
    cache["t"] = start + n
    return start


def recompute(module, x, mask, memory, memory_mask, cache: dict) -> torch.Tensor:
    """The cached forward of a site module that has no incremental form: keep its inputs in
    ``cache`` and re-run it (a full pass) over the whole prefix; only this site recomputes.
    Returns the new positions (B, n, D)."""
    n = x.size(1)
    x, mask = extend_prefix(cache, x, mask)
    return module(x, mask, memory, memory_mask)[:, -n:]
