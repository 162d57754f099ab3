"""Teacher model and decoding: invariants and equivalences on a tiny seeded model."""

import pytest
import torch

from distill.activations import site_hooks
from distill.decode import beam_search, greedy
from distill.model import (
    EOS_ID,
    PAD_ID,
    PRESETS,
    AttentionCore,
    ModelConfig,
    Seq2SeqTransformer,
    count_parameters,
    list_sites,
    site_path,
)
from tests.helpers import LAYOUTS, random_src, tiny_teacher


def test_attention_parameter_count_matches_paper_formula():
    model = Seq2SeqTransformer(ModelConfig(**PRESETS["paper"]))
    sub = model.encoder[0].self_attn_sublayer
    d = model.cfg.d_model
    assert count_parameters(sub.attn) + count_parameters(sub.out_proj) == 4 * (d * d + d)


def test_every_site_resolves_to_a_module():
    model = tiny_teacher()
    for site in list_sites(model.cfg):
        assert isinstance(model.get_submodule(site_path(site, model.cfg)), torch.nn.Module)
    assert isinstance(model.get_submodule(site_path("decoder.1.cross_attn")), AttentionCore)
    with pytest.raises(ValueError, match="unknown site 'encoder.9.self_attn'"):
        site_path("encoder.9.self_attn", model.cfg)
    with pytest.raises(ValueError, match="unknown site"):
        site_path("decoder.0.self_attn_sublayer", model.cfg)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_lists_the_sites_it_has_and_a_forward_pass_calls_every_one(layout):
    model = tiny_teacher(**LAYOUTS[layout])
    assert model.cfg.layout == layout
    sites = list_sites(model.cfg)
    # ALRR's site, the attention sublayer with its skip: SAS's has no skip, SAS-P's is no module
    assert ("encoder.1.self_attn_sublayer" in sites) == (layout in ("pre_ln", "post_ln"))
    assert len(sites) == 4 * 2 + (2 if "encoder.1.self_attn_sublayer" in sites else 0)
    with site_hooks(model, sites) as got:
        model(random_src(), random_src(seed=2))
    assert sorted(got) == sorted(f"{s}.{part}" for s in sites for part in "xy")
    if "encoder.1.self_attn_sublayer" not in sites:
        why = f"'encoder.1.self_attn_sublayer' for a '{layout}' teacher"
        with pytest.raises(ValueError, match=why):
            site_path("encoder.1.self_attn_sublayer", model.cfg)


def test_padding_does_not_leak_into_real_positions():
    model = tiny_teacher()
    src = random_src()
    tgt = random_src(seed=2)
    full = model(src, tgt)
    for i in range(src.size(0)):
        n_src, n_tgt = int((src[i] != PAD_ID).sum()), int((tgt[i] != PAD_ID).sum())
        alone = model(src[i : i + 1, :n_src], tgt[i : i + 1, :n_tgt])
        torch.testing.assert_close(alone[0], full[i, :n_tgt], atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    model = tiny_teacher()
    src, tgt = random_src(), random_src(seed=3)
    changed = tgt.clone()
    changed[:, 3:] = torch.randint(4, 96, changed[:, 3:].shape)
    torch.testing.assert_close(model(src, tgt)[:, :3], model(src, changed)[:, :3])


def test_cached_decoding_matches_full_recompute():
    model = tiny_teacher()
    src, tgt = random_src(), random_src(seed=4)
    tgt[:, :] = torch.randint(4, 96, tgt.shape)  # no padding: every prefix position is real
    memory, mask = model.encode(src)
    full = model.decode(tgt, memory, mask)
    cache = [{} for _ in model.decoder]
    steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache, start=t) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_equals_beam_search_with_beam_one():
    for seed in range(3):
        model = tiny_teacher(seed)
        src = random_src(seed=seed)
        assert greedy(model, src) == beam_search(model, src, beam=1)


def test_beam_search_finds_a_hypothesis_at_least_as_likely_as_greedy():
    model = tiny_teacher(4)
    with torch.no_grad():  # a random model rarely ends a sentence: make EOS likely enough
        model.generator.bias[EOS_ID] += 1.25
    src = random_src(b=4, seed=7)

    @torch.no_grad()
    def logprob(i: int, ids: list[int]) -> float:
        tgt_in = torch.tensor([[2] + ids])
        tgt_out = torch.tensor([ids + [EOS_ID]])
        logp = torch.log_softmax(model(src[i : i + 1], tgt_in), -1)
        return float(logp.gather(-1, tgt_out[..., None]).sum())

    g, b = greedy(model, src), beam_search(model, src, beam=4, length_penalty=0.0)
    # Hypotheses cut at max_len have no EOS to score; the rows compared must exist and differ.
    finished = [i for i in range(4) if g[i] and max(len(g[i]), len(b[i])) < model.cfg.max_len]
    assert len(finished) >= 2 and any(g[i] != b[i] for i in finished), (g, b)
    for i in finished:
        assert logprob(i, b[i]) >= logprob(i, g[i]) - 1e-4


def test_model_overfits_one_batch():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(ModelConfig(**{**PRESETS["unit"], "dropout": 0.0}))
    src, tgt = random_src(), random_src(seed=9)
    tgt_in = torch.cat([torch.full((4, 1), 2), tgt[:, :-1]], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        logits = model(src, tgt_in)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD_ID
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10
