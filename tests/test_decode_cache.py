"""A decoding cache per site: cached steps equal full recomputation, for teacher and students."""

import inspect

import pytest
import torch
from torch import nn

from distill.cache import recompute
from distill.decode import beam_search, greedy
from distill.model import (
    PAD_ID,
    PRESETS,
    ModelConfig,
    Seq2SeqTransformer,
    list_sites,
    site_info,
    site_path,
)
from distill.modes import GATED, MODES, mode_sites
from distill.students import build_student, splice
from tests.helpers import LAYOUTS, PassThrough, random_src, tiny_teacher

CFG = ModelConfig(**PRESETS["unit"])


class NoStep(nn.Module):
    """A site module without an incremental form: only its own site may recompute."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None):
        if cache is not None:
            return recompute(self, x, mask, memory, memory_mask, cache)
        return self.inner(x, mask, memory, memory_mask)


def spliced(kind: str) -> Seq2SeqTransformer:
    """The tiny teacher with the decoder sites of ``kind`` replaced (or a mix of both)."""
    model = tiny_teacher()
    torch.manual_seed(1)
    if kind == "teacher":
        return model
    if kind == "mix":  # layer 0: teacher self-attn, student cross; layer 1 the other way round
        students = {
            "decoder.0.cross_attn": build_student("cross", CFG, "xs", "swiglu"),
            "decoder.1.self_attn": build_student("dec_self", CFG, "xs"),
        }
    elif kind == "no-step":
        inner = model.get_submodule(site_path("decoder.1.self_attn", CFG))
        students = {"decoder.0.cross_attn": build_student("cross", CFG, "xs")}
        students["decoder.1.self_attn"] = NoStep(inner)
    elif kind == "identity":
        students = {
            s: PassThrough(model.get_submodule(site_path(s, CFG)))
            for s in ("decoder.0.self_attn", "decoder.1.cross_attn")
        }
    else:
        mode, _, activation = kind.partition(":")
        students = {
            s: build_student(mode, CFG, "xs", activation or "leaky_relu")
            for s in mode_sites(mode, CFG)
        }
    splice(model, {s: m.eval() for s, m in students.items()})
    return model


KINDS = [
    "teacher",
    "dec_self",
    *[f"dec_self:{a}" for a in GATED],
    "dec_self_pp",
    "cross",
    *[f"cross:{a}" for a in GATED],
    "cross_pw",
    *[f"cross_pw:{a}" for a in GATED],
    "cross_gate",
    "cross_gate:relu",
    "cross_slot",
    "dec_mix",
    "cross_dense",
    "mix",
    "no-step",
    "identity",
]


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_every_cached_step_gives_the_logits_of_full_recomputation(kind):
    model = spliced(kind)
    src = random_src()
    tgt = torch.randint(4, CFG.vocab_size, (src.size(0), CFG.max_len))  # every position real
    tgt[1, 5:] = PAD_ID  # one finished row: its PAD inputs are masked both ways
    memory, mask = model.encode(src)
    cache = [{} for _ in model.decoder]
    for t in range(tgt.size(1)):
        step = model.decode(tgt[:, t : t + 1], memory, mask, cache, start=t)[:, 0]
        full = model.decode(tgt[:, : t + 1], memory, mask)[:, t]
        rows = tgt[:, t] != PAD_ID
        torch.testing.assert_close(step[rows], full[rows], atol=1e-5, rtol=1e-5)


AT_ONCE = [
    *["teacher", "dec_self", "cross:swiglu", "dec_self_pp", "cross_gate", "cross_slot", "dec_mix"],
    *["cross_dense", "mix"],
]


@pytest.mark.parametrize("kind", AT_ONCE)
def test_several_new_positions_at_once_equal_one_at_a_time(kind):
    model = spliced(kind)
    src, tgt = random_src(), torch.randint(4, CFG.vocab_size, (4, 6))
    memory, mask = model.encode(src)
    with torch.no_grad():
        cache = [{} for _ in model.decoder]
        first = model.decode(tgt[:, :2], memory, mask, cache, start=0)
        rest = model.decode(tgt[:, 2:], memory, mask, cache, start=2)
        full = model.decode(tgt, memory, mask)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_and_beam_are_identical_with_and_without_the_cache(kind):
    model = spliced(kind)
    src = random_src(b=3, seed=7)
    assert greedy(model, src) == greedy(model, src, use_cache=False)
    cached = beam_search(model, src, beam=3)
    assert cached == beam_search(model, src, beam=3, use_cache=False)
    assert any(cached)  # something was decoded


def test_students_cache_their_own_state_and_the_memory_term_once():
    model = spliced("mix")
    src, tgt = random_src(), torch.randint(4, CFG.vocab_size, (4, 4))
    memory, mask = model.encode(src)
    cache = [{} for _ in model.decoder]
    with torch.no_grad():
        model.decode(tgt[:, :1], memory, mask, cache, start=0)
        term = cache[0]["cross"]["memory"]
        model.decode(tgt[:, 1:2], memory, mask, cache, start=1)
    assert cache[0]["cross"]["memory"] is term  # computed once per sentence
    assert cache[1]["self"]["xn"].shape[1] == 2 and "x" not in cache[1]["self"]  # exact step
    assert cache[0]["self"]["k"].shape[2] == 2  # the teacher's K/V cache beside it


def test_a_site_without_a_step_recomputes_only_itself():
    model = spliced("no-step")
    calls = []
    site = model.get_submodule(site_path("decoder.1.self_attn", CFG))
    site.inner.register_forward_hook(lambda m, args, out: calls.append(args[0].size(1)))
    src, tgt = random_src(), torch.randint(4, CFG.vocab_size, (4, 4))
    memory, mask = model.encode(src)
    cache = [{} for _ in model.decoder]
    with torch.no_grad():
        for t in range(4):
            model.decode(tgt[:, t : t + 1], memory, mask, cache, start=t)
    assert calls == [1, 2, 3, 4]  # it sees the prefix; every other site saw one position
    assert "memory" in cache[0]["cross"]


def test_every_site_module_is_called_one_way():
    """``forward(..., cache=None)`` is the one call path of every teacher site module (each layout,
    whole layers aside: the model calls them, never a cache) and of every student: none has a
    ``step`` twin, inner modules included."""
    sites = []
    for overrides in LAYOUTS.values():
        model = tiny_teacher(**overrides)
        sites += [
            model.get_submodule(site_path(s, model.cfg))
            for s in list_sites(model.cfg)
            if site_info(s).path
        ]
    students = [build_student(m, CFG, "xs", a) for m in MODES for a in ("leaky_relu", *GATED)]
    kinds = {type(m) for m in sites + students}
    assert len(kinds) >= 9  # teacher cores and sublayers, shaped attention, every student class
    for module in sites + students:
        assert "cache" in inspect.signature(module.forward).parameters, type(module).__name__
        for inner in module.modules():
            assert not hasattr(inner, "step"), type(inner).__name__
