"""A MarianMTModel checkpoint as the teacher: exact conversion, sites, tokenizer, pipeline, errors.

No checkpoint can be downloaded here, so the tests make one the way opus-mt ships it: a randomly
initialised transformers ``MarianMTModel`` (post-LN, swish, tied embeddings) saved with
``save_pretrained`` beside a ``MarianTokenizer`` (source.spm, target.spm, vocab.json) whose
SentencePiece model the fixture trains.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import MarianMTModel, MarianTokenizer

from distill.cli import main
from distill.data import collate, encode_pairs
from distill.marian import CONFIG_KEYS, load_checkpoint, write_tokenizer
from distill.marian_train import opus_mt_config, save_opus_mt_tokenizer
from distill.model import BOS_ID, PAD_ID, ModelConfig, list_sites, site_path
from distill.record import capture
from distill.students import splice
from distill.tokenizer import EXPORT_MAX_PIECES, MarianVocab, load_tokenizer, marian_tokenizer
from tests.conftest import make_tiny_pairs
from tests.helpers import PassThrough

MAX_LEN = 24
SHAPE = dict(d_model=16, n_heads=2, d_ff=32, n_enc=2, n_dec=2, dropout=0.1)  # the checkpoint's


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random tiny MarianMTModel + MarianTokenizer directory in the opus-mt layout."""
    path = tmp_path_factory.mktemp("opus-mt") / "ckpt"
    vocab = save_opus_mt_tokenizer(tiny_tokenizer.path, path, "de", "en")
    shape = ModelConfig(vocab_size=len(vocab), **SHAPE)
    torch.manual_seed(0)
    MarianMTModel(opus_mt_config(vocab, shape, max_positions=64)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def imported(checkpoint, tmp_path_factory):
    """(converted teacher, the MarianMTModel, order, renumbered tokenizer, a batch)."""
    teacher, marian, order, vocab = load_checkpoint(checkpoint, MAX_LEN)
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    write_tokenizer(checkpoint, order, vocab, out, MAX_LEN)
    tok = MarianVocab(out)
    examples, _ = encode_pairs(make_tiny_pairs(12, seed=3), tok, MAX_LEN)
    batch = collate(examples, list(range(len(examples))))
    return teacher, marian, torch.tensor(order), tok, batch


def marian_logits(marian, order, batch) -> torch.Tensor:
    """The MarianMTModel's own logits for a distill batch, columns in distill's id order."""
    with torch.no_grad():
        out = marian(
            input_ids=order[batch.src],
            attention_mask=batch.src != PAD_ID,
            decoder_input_ids=order[batch.tgt_in],  # BOS -> Marian's decoder start
            decoder_attention_mask=batch.tgt_in != PAD_ID,
        ).logits
    return out[..., order]


def real(logits, batch) -> torch.Tensor:
    """Logits at real target positions, without distill's extra BOS column."""
    keep = torch.arange(logits.size(-1)) != BOS_ID
    return logits[batch.tgt_in != PAD_ID][:, keep]


def test_the_converted_teacher_gives_marians_logits_exactly(imported):
    teacher, marian, order, _, batch = imported
    assert teacher.cfg.family == "marian" and teacher.cfg.activation == "swish"
    with torch.no_grad():
        ours = teacher(batch.src, batch.tgt_in)
    assert torch.equal(real(ours, batch), real(marian_logits(marian, order, batch), batch))
    table = marian.model.encoder.embed_positions.weight[:MAX_LEN]
    assert torch.equal(teacher.positions, table)
    assert (ours[..., BOS_ID] < ours.max(-1).values - 1e3).all()  # BOS is never predicted


def test_one_field_mapping_carries_the_dimensions_to_marian_and_back(imported):
    """The fixture's MarianConfig came from ``SHAPE`` through ``opus_mt_config``, the teacher's
    config from that MarianConfig through ``convert``: both read ``CONFIG_KEYS``."""
    teacher, marian, *_ = imported
    assert set(CONFIG_KEYS) == set(SHAPE)
    for ours, keys in CONFIG_KEYS.items():
        assert getattr(teacher.cfg, ours) == SHAPE[ours], ours
        assert all(getattr(marian.config, key) == SHAPE[ours] for key in keys), ours


def test_an_identity_splice_at_every_site_reproduces_marians_logits_exactly(imported):
    teacher, marian, order, _, batch = imported
    sites = [s for s in list_sites(teacher.cfg) if s.endswith("attn")]
    wraps = {s: PassThrough(teacher.get_submodule(site_path(s, teacher.cfg))) for s in sites}
    previous = splice(teacher, wraps)
    try:
        with torch.no_grad():
            ours = teacher(batch.src, batch.tgt_in)
    finally:
        splice(teacher, previous)
    assert torch.equal(real(ours, batch), real(marian_logits(marian, order, batch), batch))


def test_sites_record_what_marians_own_attention_modules_see_and_return(imported):
    """Hooks on Marian's modules (called with keyword arguments) against distill's capture:
    a site's input is what Marian's attention got, W_O(site output) what it returned."""
    teacher, marian, order, _, batch = imported
    sites = {
        "encoder.1.self_attn": "model.encoder.layers.1.self_attn",
        "decoder.0.self_attn": "model.decoder.layers.0.self_attn",
        "decoder.1.cross_attn": "model.decoder.layers.1.encoder_attn",
    }
    seen = {}

    def hook(name):
        def fn(module, args, kwargs, output):
            seen[name] = (kwargs.get("hidden_states", args[0] if args else None), output[0])

        return fn

    handles = [
        marian.get_submodule(path).register_forward_hook(hook(site), with_kwargs=True)
        for site, path in sites.items()
    ]
    try:
        marian_logits(marian, order, batch)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        got = capture(teacher, list(sites), batch.src, batch.tgt_in)
    for site in sites:
        mask = got["src_mask"] if site.startswith("encoder") else got["tgt_mask"]
        x, y = seen[site]
        out_proj = teacher.get_submodule(site_path(site, teacher.cfg).rsplit(".", 1)[0]).out_proj
        assert torch.equal(got[f"{site}.x"][mask], x[mask]), site
        with torch.no_grad():
            assert torch.equal(out_proj(got[f"{site}.y"])[mask], y[mask]), site


def test_the_renumbered_tokenizer_segments_like_the_users_marian_tokenizer(imported, checkpoint):
    _, _, order, tok, _ = imported
    users = MarianTokenizer.from_pretrained(str(checkpoint))
    texts = [s for s, _ in make_tiny_pairs(8, seed=5)]
    theirs = users(texts, add_special_tokens=False)["input_ids"]
    ours = tok.encode_batch(texts)
    assert [[int(order[i]) for i in ids] for ids in ours] == theirs
    targets = [t for _, t in make_tiny_pairs(8, seed=5)]
    ids = tok.encode_target_batch(targets)
    assert tok.decode_batch([i + [3, 0, 0] for i in ids]) == users.batch_decode(
        [[int(order[i]) for i in x] for x in ids], skip_special_tokens=True
    )


def test_the_renumbered_tokenizer_writes_itself_into_an_export(imported, tmp_path):
    tok = imported[3]
    tok.export_files(tmp_path)
    info = tok.export_info()
    assert info == {"file": "vocab.json", "type": "marian", "vocab_size": tok.vocab_size}
    again = load_tokenizer(tmp_path)
    texts = [s for s, _ in make_tiny_pairs(4, seed=7)]
    assert isinstance(again, MarianVocab) and again.encode_batch(texts) == tok.encode_batch(texts)
    # transformers' copy cuts only beyond EXPORT_MAX_PIECES: the model splits what it cannot take
    assert tok.hf.model_max_length == MAX_LEN
    assert marian_tokenizer(tmp_path).model_max_length == EXPORT_MAX_PIECES


@pytest.fixture(scope="module")
def marian_run(tmp_path_factory, checkpoint):
    """The tiny pipeline on the checkpoint above (teacher imported with pretrained=PATH)."""
    run = tmp_path_factory.mktemp("marian") / "run"
    args = ["-q", "run", "pipeline", "--config", "tiny", f"run_dir={run}"]
    args += [f"teacher.pretrained={checkpoint}", "students.modes=[alr,dec_self,cross_pw]"]
    args += ["finetune.variants=[attentionless_pw]", "record.modes=[alr,dec_self,cross_pw]"]
    assert main(args) == 0
    return run


def test_a_marian_teacher_runs_the_pipeline_and_its_export_works_through_transformers(
    marian_run, tmp_path
):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from distill.pretrained import from_pretrained

    results = json.loads((marian_run / "eval" / "results.json").read_text())
    rows = {(r["variant"], r["stage"]) for r in results["rows"]}
    assert {("teacher", ""), ("attentionless_pw", "tuned")} <= rows
    out = tmp_path / "export"
    args = ["-q", "export", str(marian_run), "--variant", "attentionless_pw", "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["family"], config["norm"], config["final_norm"]) == ("marian", "post", False)
    texts = [s for s, _ in make_tiny_pairs(6, seed=9)] + ["Guten Morgen!"]
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(out), trust_remote_code=True).eval()
    ours, _ = from_pretrained(out)
    for beam in (1, 4):
        batch = tok(texts, return_tensors="pt", padding=True, truncation=True)
        hf = tok.batch_decode(model.generate(**batch, num_beams=beam), skip_special_tokens=True)
        assert hf == ours.translate(texts, beam=beam)


def test_residual_students_are_refused_on_a_post_ln_teacher(marian_run, capsys):
    args = ["-q", "run", "students", "--config", "tiny", f"run_dir={marian_run}"]
    assert main(args + ["modes=[alrr]", "modes.alrr.residual=true"]) == 2
    assert "post-LN" in capsys.readouterr().err


def _broken(checkpoint: Path, tmp_path: Path, tag: str, change) -> Path:
    path = tmp_path / tag
    shutil.copytree(checkpoint, path)
    change(path)
    return path


def _config(path: Path, **edits) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **edits}))


def _vocab_of_other_size(path: Path) -> None:
    vocab = json.loads((path / "vocab.json").read_text())
    del vocab[next(p for p in vocab if p not in ("</s>", "<unk>", "<pad>"))]
    (path / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocab)}))


@pytest.mark.parametrize(
    "tag, change, named",
    [
        ("no-config", lambda p: (p / "config.json").unlink(), "config.json"),
        ("no-weights", lambda p: (p / "model.safetensors").unlink(), "model.safetensors"),
        ("no-spm", lambda p: (p / "source.spm").unlink(), "source.spm"),
        ("bart", lambda p: _config(p, model_type="bart"), "config.json"),
        ("vocab", _vocab_of_other_size, "vocab.json"),
    ],
)
def test_a_directory_that_is_no_marian_checkpoint_is_one_line_exit_2_nothing_written(
    checkpoint, tmp_path, capsys, tag, change, named
):
    bad = _broken(checkpoint, tmp_path, tag, change)
    run = tmp_path / "run"
    args = ["-q", "run", "teacher", "--config", "tiny", f"run_dir={run}", f"pretrained={bad}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad / named) in err, err
    assert not (run / "teacher").exists()


def test_the_marian_family_trains_a_marian_mt_model_saves_it_opus_mt_style_and_imports_it(
    tmp_path,
):
    run = tmp_path / "run"
    args = ["-q", "run", "teacher", "--config", "tiny", f"run_dir={run}"]
    assert main(args + ["model.family=marian", "model.activation=swish"]) == 0
    saved = run / "marian"
    for name in ("config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json"):
        assert (saved / name).is_file(), name
    config = yaml.safe_load((run / "teacher" / "config.yaml").read_text())
    assert config["pretrained"] == str(saved)  # the teacher is the saved checkpoint, imported
    metrics = [json.loads(line) for line in (run / "marian-train" / "metrics.jsonl").open()]
    valid = [m["valid_loss"] for m in metrics if "valid_loss" in m]
    vocab = len(json.loads((saved / "vocab.json").read_text()))
    assert valid and valid[-1] < math.log(vocab) - 0.5  # it learned: well below uniform
    teacher, marian, order, _ = load_checkpoint(saved, MAX_LEN)
    assert type(marian).__name__ == "MarianMTModel" and teacher.cfg.family == "marian"
    assert (run / "teacher" / "bleu.json").is_file()
