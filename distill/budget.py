"""Training budgets in tokens: what a ``train.fit`` loop over ``data.token_batches`` consumes.

The unit is the training token: a real target token (target ids + EOS, ``Batch.ntokens``: the
positions a teacher-forced loss is taken at) of a batch the optimizer stepped on. Padding is not
counted, so budgets compare across batch sizes, corpora and stages (the teacher's own training,
a finetune run). Everything here replays ``fit`` on one process: its batches are a pure function
of (examples, batch_tokens, seed, epoch), so their tokens are known before training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from distill.data import Example, spread, token_batches


def training_tokens(examples: Sequence[Example]) -> int:
    """Training tokens of one pass over ``examples`` (each example's target + EOS)."""
    return sum(len(t) + 1 for _, t in examples)


def replay(
    examples: Sequence[Example], batch_tokens: int, seed: int, epochs: int, max_steps: int = 0
) -> tuple[int, int]:
    """(steps, training tokens) of ``fit`` over ``token_batches`` of ``examples``: the batches it
    steps on, in its order, ``max_steps`` (0 = none) included."""
    steps = tokens = 0
    for epoch in range(epochs):
        for b in token_batches(examples, batch_tokens, shuffle=True, seed=seed, epoch=epoch):
            if max_steps and steps >= max_steps:
                return steps, tokens
            steps, tokens = steps + 1, tokens + b.ntokens
    return steps, tokens


def horizon(
    examples: Sequence[Example], batch_tokens: int, seed: int, epochs: int, max_steps: int = 0
) -> int:
    """``fit``'s schedule length (a cosine decays to 0 there): epochs x the first epoch's batches,
    capped by ``max_steps``. Every epoch has as many batches: they are cut from the same sorted
    lengths, only the order and equal-length ties are shuffled."""
    total = epochs * len(token_batches(examples, batch_tokens, shuffle=True, seed=seed))
    return min(total, max_steps) if max_steps else total


@dataclass(frozen=True)
class BudgetPlan:
    """Settings that spend a budget (``sentences`` spread over the split, ``epochs``,
    ``max_steps``: 0 = every batch) and the steps and training tokens they give."""

    sentences: int
    epochs: int
    max_steps: int
    steps: int
    tokens: int


def plan_budget(
    examples: Sequence[Example], budget: int, batch_tokens: int, seed: int
) -> BudgetPlan:
    """How ``fit`` spends ``budget`` training tokens on ``examples`` (a whole split).

    Below one pass: one epoch of n sentences evenly spread over the split (``spread``, as the
    finetune recipe's ``max_sentences`` takes them) whose tokens reach the budget while n - 1's do
    not: the budget rounded up to a sentence (found by bisection; spread subsets are not nested,
    so their tokens grow with n only nearly monotonically). At or above one pass: every sentence,
    as many epochs as it takes, the last one cut at the first batch that reaches the budget.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1 training token, got {budget}")
    total = training_tokens(examples)
    if budget < total:
        lo, hi = 0, len(examples)  # hi sentences reach the budget, lo do not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if training_tokens(spread(examples, mid)) >= budget:
                hi = mid
            else:
                lo = mid
        chosen = spread(examples, hi)
        steps = horizon(chosen, batch_tokens, seed, 1)
        return BudgetPlan(hi, 1, 0, steps, training_tokens(chosen))
    epochs = math.ceil(budget / total)
    last = token_batches(examples, batch_tokens, shuffle=True, seed=seed, epoch=epochs - 1)
    steps, tokens = (epochs - 1) * len(last), (epochs - 1) * total
    for b in last:
        if tokens >= budget:
            break
        steps, tokens = steps + 1, tokens + b.ntokens
    max_steps = 0 if steps == epochs * len(last) else steps
    return BudgetPlan(len(examples), epochs, max_steps, steps, tokens)
