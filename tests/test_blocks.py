"""The simplified blocks (SAS, SAS-P): shaped attention is the identity at initialisation, the
value and output projections are gone from the parameter count, padding does not leak, the
decoder stays causal and decodes incrementally, splicing and the tiny pipeline work unchanged
(ALRR, which needs an attention skip, is refused in one line)."""

import json

import pytest
import torch

import distill
from distill.cli import main
from distill.decode import beam_search, greedy, strip_ids
from distill.export import export
from distill.layers import ShapedAttention
from distill.model import PAD_ID, count_parameters, list_sites, site_path
from distill.students import splice
from tests.helpers import UNIT, PassThrough, random_src, tiny_teacher

SIMPLIFIED = ("sas", "sas_p")


def shaped(model) -> list[ShapedAttention]:
    return [m for m in model.modules() if isinstance(m, ShapedAttention)]


def trained_like(block: str, seed: int = 0):
    """A SAS(-P) teacher whose shaped attention is no longer the identity (as after training)."""
    model = tiny_teacher(seed, block=block)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for core in shaped(model):
            core.q_proj.weight.copy_(torch.randn(core.q_proj.weight.shape, generator=g))
            core.beta.mul_(1.5)
    return model


@pytest.mark.parametrize("block", SIMPLIFIED)
def test_shaped_attention_is_the_identity_at_initialisation(block):
    model = tiny_teacher(block=block)
    cores = shaped(model)
    assert len(cores) == UNIT.n_enc + UNIT.n_dec  # every self-attention is shaped, no other
    x = torch.randn(4, 6, UNIT.d_model)
    mask = random_src() != PAD_ID  # ragged: padding in the keys
    for core in cores:
        assert torch.equal(core.q_proj.weight, torch.zeros_like(core.q_proj.weight))
        torch.testing.assert_close(core(x, mask), x, atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # and it is the shaping, not the layer, that makes it so
        cores[0].q_proj.weight.normal_()
    assert not torch.allclose(cores[0](x, mask), x, atol=1e-3)


def test_parameter_counts_drop_by_the_value_and_output_projections():
    d, h, layers = UNIT.d_model, UNIT.n_heads, UNIT.n_enc + UNIT.n_dec
    pre_ln = count_parameters(tiny_teacher())
    projection = d * d + d  # one Linear(d, d)
    gains = 3 * h + 1  # alpha, beta, gamma per head, and the MLP branch's gain, per layer
    sas = pre_ln - layers * (2 * projection - gains)  # W_V and W_O of each self-attention
    assert count_parameters(tiny_teacher(block="sas")) == sas
    # SAS-P: one LayerNorm per layer (2d parameters) instead of two (encoder) or three (decoder)
    sas_p = sas - UNIT.n_enc * 2 * d - UNIT.n_dec * 2 * 2 * d
    assert count_parameters(tiny_teacher(block="sas_p")) == sas_p


@pytest.mark.parametrize("block", SIMPLIFIED)
def test_padding_does_not_leak_into_real_positions(block):
    model = trained_like(block)
    src, tgt = random_src(), random_src(seed=2)
    full = model(src, tgt)
    for i in range(src.size(0)):
        n_src, n_tgt = int((src[i] != PAD_ID).sum()), int((tgt[i] != PAD_ID).sum())
        alone = model(src[i : i + 1, :n_src], tgt[i : i + 1, :n_tgt])
        torch.testing.assert_close(alone[0], full[i, :n_tgt], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", SIMPLIFIED)
def test_the_decoder_is_causal(block):
    model = trained_like(block)
    src, tgt = random_src(), random_src(seed=3)
    tgt[:, :] = torch.randint(4, 96, tgt.shape)
    changed = tgt.clone()
    changed[:, 3:] = torch.randint(4, 96, changed[:, 3:].shape)
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])  # the change did reach later positions


@pytest.mark.parametrize("block", SIMPLIFIED)
def test_cached_decoding_matches_full_recompute(block):
    model = trained_like(block)
    src, tgt = random_src(), random_src(seed=4)
    tgt[:, :] = torch.randint(4, 96, tgt.shape)
    tgt[0, 4:] = PAD_ID  # a finished hypothesis: padded steps keep the running means right
    memory, mask = model.encode(src)
    full = model.decode(tgt, memory, mask)
    cache = [{} for _ in model.decoder]
    steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache, start=t) for t in range(6)]
    assert all("sum" in layer["self"] for layer in cache)  # the shaped cores kept their state
    real = tgt != PAD_ID
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", SIMPLIFIED)
def test_an_identity_adapter_at_every_site_reproduces_the_logits_exactly(block):
    model = trained_like(block)
    src, tgt = random_src(), random_src(seed=5)
    want = model(src, tgt)
    cores = [s for s in list_sites(model.cfg) if s.endswith("_attn")]
    layers = [s for s in list_sites(model.cfg) if s.count(".") == 1]  # ELR's: whole layers
    for sites in (cores, layers):
        splice(model, {s: PassThrough(model.get_submodule(site_path(s, model.cfg))) for s in sites})
        assert all(isinstance(model.get_submodule(site_path(s)), PassThrough) for s in sites)
        assert torch.equal(model(src, tgt), want)


@pytest.fixture(scope="module", params=SIMPLIFIED)
def simplified_run(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    modes = "[alr,aslr,elr,dec_self,cross_pw]"
    argv = [
        f"run_dir={run_dir}",
        f"teacher.model.block={request.param}",
        f"record.modes={modes}",
        f"students.modes={modes}",
        "finetune.variants=[attentionless_pw]",
        "evaluate.variants=[teacher,alr,aslr,elr,dec_self,cross_pw,attentionless_pw]",
        # one epoch per stage: the test is that every stage runs, not what they learn
        "teacher.train.epochs=1",
        "students.train.epochs=1",
        "finetune.train.epochs=1",
    ]
    assert main(["-q", "run", "pipeline", "--config", "tiny", *argv]) == 0
    return request.param, run_dir


def test_the_tiny_pipeline_runs_on_a_simplified_teacher(simplified_run):
    block, run_dir = simplified_run
    model = json.loads((run_dir / "teacher" / "model.json").read_text())
    assert model["block"] == block
    rows = json.loads((run_dir / "eval" / "results.json").read_text())["rows"]
    got = {(r["variant"], r["stage"]) for r in rows}
    assert ("attentionless_pw", "tuned") in got and ("elr", "layer-wise") in got
    assert all(r["bleu"] >= 0 for r in rows) and len(rows) == 8


def test_alrr_and_residual_students_on_a_simplified_teacher_are_one_line_errors(
    simplified_run, capsys
):
    block, run_dir = simplified_run
    before = sorted(p.name for p in (run_dir / "students").iterdir())
    argv = ["run", "students", "--config", "tiny", f"run_dir={run_dir}", "modes=[alrr]"]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "mode 'alrr'" in err and f"'{block}' teacher" in err
    # residual students (output - input) need a skip to learn the change of
    argv = ["run", "students", "--config", "tiny", f"run_dir={run_dir}", "modes=[elr]"]
    assert main(["-q", *argv, "modes.elr.residual=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"the {block} teacher has no skip" in err
    assert sorted(p.name for p in (run_dir / "students").iterdir()) == before


def test_an_exported_simplified_model_generates_through_transformers_as_distill_does(
    simplified_run, tmp_path
):
    from transformers import AutoModelForSeq2SeqLM

    block, run_dir = simplified_run
    out = export(run_dir, "cross_pw", tmp_path / "export")  # shaped self-attention stays
    hf = AutoModelForSeq2SeqLM.from_pretrained(str(out), trust_remote_code=True).eval()
    model, _ = distill.from_pretrained(out)
    assert model.cfg.block == block and len(shaped(model)) == model.cfg.n_enc + model.cfg.n_dec
    src = random_src(6, 8, seed=7)
    mask = (src != PAD_ID).long()
    with torch.no_grad():
        for k in (1, 3):
            got = hf.generate(src, attention_mask=mask, num_beams=k, max_new_tokens=10)
            want = (
                greedy(model, src, max_len=10) if k == 1 else beam_search(model, src, k, max_len=10)
            )
            assert [strip_ids(r[1:]) for r in got.tolist()] == want, k
