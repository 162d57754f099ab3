"""Training budgets in tokens: the replay is what ``fit`` does, the plans spend what they say."""

import json
import random

import pytest
import torch

from distill.budget import horizon, plan_budget, replay, training_tokens
from distill.data import spread, token_batches
from distill.train import TrainConfig, fit

BATCH_TOKENS, SEED = 40, 3


def _examples(n: int = 120, seed: int = 0):
    """Ragged (source + EOS, target) id lists: no tokenizer needed to count tokens."""
    rng = random.Random(seed)
    return [([5] * rng.randint(1, 11) + [2], [6] * rng.randint(1, 11)) for _ in range(n)]


def test_replay_is_the_batches_fit_steps_on_and_its_cosine_ends_at_the_last_one(tmp_path):
    examples = _examples()
    epochs = 3
    max_steps = horizon(examples, BATCH_TOKENS, SEED, epochs) - 4  # cut inside the last epoch
    seen = []

    def loss(model, batch):
        seen.append(batch.ntokens)
        return model(torch.ones(1, 1)).pow(2).sum()

    cfg = TrainConfig(
        epochs=epochs,
        max_steps=max_steps,
        schedule="cosine",
        lr=1e-3,
        warmup=2,
        seed=SEED,
        log_every=1,
    )
    state = fit(
        torch.nn.Linear(1, 1),
        lambda e: token_batches(examples, BATCH_TOKENS, shuffle=True, seed=SEED, epoch=e),
        loss,
        cfg,
        tmp_path,
        d_model=1,
        desc="replay",
    )
    assert len(seen) == state["step"] == max_steps > 0
    assert replay(examples, BATCH_TOKENS, SEED, epochs, max_steps) == (max_steps, sum(seen))
    assert horizon(examples, BATCH_TOKENS, SEED, epochs, max_steps) == max_steps
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").open() if '"lr"' in x]
    assert len(lrs) == max_steps and lrs[-1] == 0.0 < min(lrs[:-1])


def test_every_epoch_holds_every_training_token_once():
    examples = _examples()
    steps, tokens = replay(examples, BATCH_TOKENS, SEED, 4)
    assert tokens == 4 * training_tokens(examples)
    assert steps == horizon(examples, BATCH_TOKENS, SEED, 4)


@pytest.mark.parametrize("fraction", [0.0, 0.13, 0.5, 0.9])
def test_below_one_pass_the_fewest_spread_sentences_that_reach_the_budget(fraction):
    examples = _examples()
    total = training_tokens(examples)
    budget = max(1, int(fraction * total))
    p = plan_budget(examples, budget, BATCH_TOKENS, SEED)
    assert (p.epochs, p.max_steps) == (1, 0) and p.sentences < len(examples)
    chosen = spread(examples, p.sentences)
    assert p.tokens == training_tokens(chosen) >= budget
    if p.sentences > 1:
        assert training_tokens(spread(examples, p.sentences - 1)) < budget
    assert replay(chosen, BATCH_TOKENS, SEED, 1) == (p.steps, p.tokens)


@pytest.mark.parametrize("passes", [1.0, 1.5, 3.0, 3.7])
def test_above_one_pass_every_sentence_cut_at_the_batch_that_reaches_the_budget(passes):
    examples = _examples()
    budget = int(passes * training_tokens(examples))
    p = plan_budget(examples, budget, BATCH_TOKENS, SEED)
    assert p.sentences == len(examples) and p.tokens >= budget
    assert replay(examples, BATCH_TOKENS, SEED, p.epochs, p.max_steps) == (p.steps, p.tokens)
    assert replay(examples, BATCH_TOKENS, SEED, p.epochs, p.steps - 1)[1] < budget
    assert horizon(examples, BATCH_TOKENS, SEED, p.epochs, p.max_steps) == p.steps
    if passes == int(passes):  # whole passes: whole epochs, nothing to cut
        assert (p.epochs, p.max_steps) == (int(passes), 0)


def test_a_budget_below_one_token_is_refused():
    with pytest.raises(ValueError, match="budget"):
        plan_budget(_examples(), 0, BATCH_TOKENS, SEED)


def test_a_budget_met_exactly_takes_no_sentence_or_batch_more():
    same = [([5, 2], [6] * 4)] * 100  # every sentence 5 tokens: n sentences, 5n tokens
    p = plan_budget(same, 5 * 40, BATCH_TOKENS, SEED)
    assert (p.sentences, p.tokens) == (40, 5 * 40)
    examples = _examples()
    steps = horizon(examples, BATCH_TOKENS, SEED, 1) + 3  # three batches into the second epoch
    budget = replay(examples, BATCH_TOKENS, SEED, 2, steps)[1]
    p = plan_budget(examples, budget, BATCH_TOKENS, SEED)
    assert (p.epochs, p.max_steps, p.steps, p.tokens) == (2, steps, steps, budget)
