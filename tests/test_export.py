"""Export directories: round trip, transformers generate == distill decoding, CLI, atomicity."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import distill
from distill.bleu import evaluate_model
from distill.checkpoint import atomic_write_json, save_tensors
from distill.cli import main
from distill.data import DataConfig
from distill.decode import beam_search, greedy, strip_ids
from distill.errors import CheckpointError, ConfigError
from distill.export import base_model, best_variant, export, parse_spec
from distill.formats import FORMAT_VERSION
from distill.model import (
    EOS_ID,
    PAD_ID,
    PRESETS,
    AttentionCore,
    ModelConfig,
    Seq2SeqTransformer,
    site_path,
)
from distill.modelcard import attention_text, front_matter, kind_tag
from distill.modes import MODES, RESIDUAL_MODES, mode_sites
from distill.runs import load_students, load_teacher, save_model, write_config
from distill.students import build_student, splice

REPO = Path(__file__).resolve().parent.parent
ATTENTIONLESS = ("alr", "dec_self", "cross")
ATTENTIONLESS_PW = ("alr", "dec_self", "cross_pw")  # the position-wise cross student
ATTENTIONLESS_GATE = ("alr", "dec_self", "cross_gate")  # the pair-gate cross student
ATTENTIONLESS_MIX = ("enc_mix", "dec_mix", "cross_gate")  # position-mixing self-attention students
ATTENTIONLESS_DENSE = ("enc_mix", "dec_mix", "cross_dense")  # every student mixing


TEST_PAIRS = [  # in the tiny tokenizer's pieces: the first source is too long for max_len 8
    ("Die Katze mag nie den Ball.", "The cat never likes the ball."),
    ("Hallo", "Hello"),
    ("Ja.", "Yes."),
    ("Die Katze!", "The cat!"),
]


def write_run(root: Path, tok, seed: int = 0) -> Path:
    """A run dir with a random tiny teacher, random students of every mode and a results table."""
    from distill_recipes.teacher import Config

    torch.manual_seed(seed)
    cfg = ModelConfig(**{**PRESETS["unit"], "vocab_size": tok.vocab_size})
    teacher = root / "teacher"
    teacher.mkdir(parents=True)
    save_model(teacher, Seq2SeqTransformer(cfg))
    shutil.copyfile(tok.path, teacher / "spm.model")
    # A small test split keeps the scoring an export does cheap; its first line is too long.
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "test.tsv").write_text(
        "de\ten\n" + "".join(f"{d}\t{e}\n" for d, e in TEST_PAIRS), encoding="utf-8"
    )
    data = DataConfig(source="tsv", path=str(corpus), max_len=8)
    write_config(teacher, Config(data=data, model=cfg))
    for mode in MODES:
        sites, residual = mode_sites(mode, cfg), mode in RESIDUAL_MODES
        students = torch.nn.ModuleDict(
            {s.replace(".", "/"): build_student(mode, cfg, "xs", residual=residual) for s in sites}
        )
        if MODES[mode].position_mix:  # the all-ones start would hide mixing weights left behind
            for student in students.values():
                torch.nn.init.normal_(student.mix)
        if MODES[mode].dense:  # the zero start of the score bias would hide one left behind
            for student in students.values():
                torch.nn.init.normal_(student.fc2.bias)
        out = root / "students" / mode
        save_tensors(out / "students.safetensors", students.state_dict())
        atomic_write_json(
            out / "spec.json",
            {
                "mode": mode,
                "size": "xs",
                "activation": "leaky_relu",
                "sites": sites,
                "residual": residual,
            },
        )
    score = {"bleu": 1.5, "chrf": 9.0, "bleu_signature": "nrefs:1|tok:13a", "sentences_per_s": 9}
    rows = [
        {"variant": v, "sites": s, "params_replaced": 0, "params_student": 0, "beam": 1, **score}
        for v, s in (
            ("teacher", []),
            ("attentionless", [s for m in ATTENTIONLESS for s in mode_sites(m, cfg)]),
            ("attentionless_pw", [s for m in ATTENTIONLESS_PW for s in mode_sites(m, cfg)]),
            ("attentionless_gate", [s for m in ATTENTIONLESS_GATE for s in mode_sites(m, cfg)]),
            ("attentionless_mix", [s for m in ATTENTIONLESS_MIX for s in mode_sites(m, cfg)]),
            ("attentionless_dense", [s for m in ATTENTIONLESS_DENSE for s in mode_sites(m, cfg)]),
            ("elr", mode_sites("elr", cfg)),
        )
    ]
    atomic_write_json(root / "eval" / "results.json", {"note": "demo test", "rows": rows})
    return root


def reference(run_dir: Path, modes=ATTENTIONLESS) -> Seq2SeqTransformer:
    """The run's teacher with the students of ``modes`` spliced in, in memory."""
    model, _ = load_teacher(run_dir)
    for mode in modes:
        splice(model, load_students(run_dir, mode, model.cfg))
    return model.eval()


def sources(n: int = 6, seed: int = 0) -> torch.Tensor:
    """(n, 7) right-padded source ids ending in EOS, ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 60, (n, 7), generator=g)
    for i in range(n):
        length = 7 - i % 4
        src[i, length - 1], src[i, length:] = EOS_ID, PAD_ID
    return src


VARIANTS = [
    *["teacher", "attentionless", "attentionless_pw", "attentionless_gate", "attentionless_mix"],
    *["attentionless_dense", "elr"],
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_tokenizer):
    return write_run(tmp_path_factory.mktemp("export") / "run", tiny_tokenizer)


@pytest.fixture(scope="module")
def exports(run_dir):
    root = run_dir.parent
    return {v: export(run_dir, v, root / v) for v in VARIANTS}


@pytest.fixture(scope="module")
def hf_models(exports):
    from transformers import AutoModelForSeq2SeqLM

    return {
        v: AutoModelForSeq2SeqLM.from_pretrained(str(path), trust_remote_code=True).eval()
        for v, path in exports.items()
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_model_gives_the_logits_of_the_in_memory_spliced_model(run_dir, exports, variant):
    modes = {
        "teacher": (),
        "attentionless": ATTENTIONLESS,
        "attentionless_pw": ATTENTIONLESS_PW,
        "attentionless_gate": ATTENTIONLESS_GATE,
        "attentionless_mix": ATTENTIONLESS_MIX,
        "attentionless_dense": ATTENTIONLESS_DENSE,
        "elr": ("elr",),
    }[variant]
    expected = reference(run_dir, modes)
    model, tok = distill.from_pretrained(exports[variant])
    src, tgt = sources(), sources(seed=1)
    assert torch.equal(model(src, tgt), expected(src, tgt))
    assert tok.vocab_size == model.cfg.vocab_size
    config = json.loads((exports[variant] / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] and config["max_len"] == 8
    card = (exports[variant] / "README.md").read_text()
    assert "nrefs:1|tok:13a" in card and "trust_remote_code=True" in card


def test_an_export_names_the_distill_version_and_the_format_that_wrote_it(exports):
    for variant, path in exports.items():
        config = json.loads((path / "config.json").read_text())
        assert config["distill_version"] == distill.__version__, variant
        assert config["format_version"] == FORMAT_VERSION, variant


def test_config_and_card_name_each_students_kind_and_call_gated_pairs_attention(exports):
    from huggingface_hub import ModelCard

    for variant, path in exports.items():
        config = json.loads((path / "config.json").read_text())
        card = (path / "README.md").read_text()
        kinds = {s: MODES[r["mode"]].kind for s, r in config["replacements"].items()}
        assert config["student_kinds"] == kinds, variant
        for site, kind in kinds.items():  # the card's student table, its last column
            assert re.search(rf"^\| `{re.escape(site)}` \|.*\| {kind} \|$", card, re.M), site
        assert "no attention is left" not in card, variant
    gate = exports["attentionless_gate"]
    kinds = json.loads((gate / "config.json").read_text())["student_kinds"]
    assert [s for s, k in kinds.items() if k == "gated pairs"] == [
        "decoder.0.cross_attn",
        "decoder.1.cross_attn",
    ]
    card = (gate / "README.md").read_text()
    assert (
        "**Attentionless** (this project's word): every attention site replaced; 2 site(s) hold "
        "gated-pair students (`cross_gate`), which the field calls additive attention without a "
        "softmax (Bahdanau et al. 2015; sigmoid attention, Ramapuram et al. 2024). It is not "
        "attention-free in the field's sense." in card
    )
    tags = ModelCard(card).data.tags
    assert "attentionless" in tags and "gated-pairs" in tags and "attention-free" not in tags
    # The paper's flat MLPs everywhere: mixing only, attention-free in the field's sense too.
    card = (exports["attentionless"] / "README.md").read_text()
    assert "attention-free in the field's sense too" in card
    tags = ModelCard(card).data.tags
    assert "attentionless" in tags and "attention-free" in tags and "gated-pairs" not in tags


def test_a_hybrid_with_gated_pairs_says_so_beside_the_attention_it_keeps():
    config = {
        "attentionless": False,
        "teacher_attention": ["decoder.1.cross_attn"],
        "hybrid": {"base": "attentionless_gate", "kept": ["decoder.1.cross_attn"]},
        "replacements": {"decoder.0.cross_attn": {"mode": "cross_gate"}},
        "student_kinds": {"decoder.0.cross_attn": "gated pairs"},
    }
    text = attention_text(config)
    assert text.startswith("**Hybrid, not attentionless**: the variant `attentionless_gate`")
    assert text.endswith(
        "Of the students, 1 site(s) hold gated-pair students (`cross_gate`), which the field calls "
        "additive attention without a softmax (Bahdanau et al. 2015; sigmoid attention, "
        "Ramapuram et al. 2024)."
    )
    assert kind_tag(config) == ["hybrid", "gated-pairs"]
    config.update(student_kinds={"decoder.0.cross_attn": "mixing"})
    assert "gated" not in attention_text(config) and kind_tag(config) == ["hybrid"]


@pytest.mark.parametrize("variant", ["attentionless", "attentionless_pw"])
def test_attentionless_export_holds_no_attention_at_replaced_sites(exports, variant):
    model, _ = distill.from_pretrained(exports[variant])
    config = json.loads((exports[variant] / "config.json").read_text())
    paths = [site_path(s, model.cfg) for s in config["replacements"]]
    assert len(paths) == 6  # every attention core of the tiny 2+2 model
    for path in paths:
        assert not isinstance(model.get_submodule(path), AttentionCore)
        inner = model.get_submodule(path).modules()
        assert not any(isinstance(m, AttentionCore) for m in inner)
    assert not any(isinstance(m, AttentionCore) for m in model.modules())
    with safe_open(exports[variant] / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if any(p in k for p in ("q_proj", "k_proj", "v_proj"))]
    assert any(k.startswith(paths[0] + ".fc1") for k in keys)


@pytest.mark.parametrize(
    "variant",
    ["teacher", "attentionless", "attentionless_gate", "attentionless_mix", "attentionless_dense"],
)
def test_transformers_generate_equals_distill_greedy_and_beam(exports, hf_models, variant):
    model, _ = distill.from_pretrained(exports[variant])
    hf = hf_models[variant]
    src = sources(8, seed=3)
    mask = (src != PAD_ID).long()
    with torch.no_grad():
        plain = hf.generate(src)  # generation_config.json alone must give distill's greedy
        assert [strip_ids(r[1:]) for r in plain.tolist()] == greedy(model, src)
        for k in (2, 3):
            out = hf.generate(src, attention_mask=mask, num_beams=k, max_new_tokens=8)
            assert [strip_ids(r[1:]) for r in out.tolist()] == beam_search(model, src, beam=k), k
        short = hf.generate(src, attention_mask=mask, max_new_tokens=3)
        assert [strip_ids(r[1:]) for r in short.tolist()] == greedy(model, src, max_len=3)


HUB_TEXTS = [  # three too long for max_len 8 (split as distill translate splits them), one short
    "Der Hund sieht den Ball und die Katze mag ein Buch heute oft.",  # no end inside: cut hard
    "Die Katze! Ja. Der Hund sieht den Ball.",  # cut after the sentence ends
    "Die Katze mag nie den Ball.",
    "Hallo",
]


@pytest.mark.parametrize("variant", ["teacher", "attentionless_pw"])
def test_the_hub_three_line_usage_gives_exactly_distill_translate(exports, hf_models, variant):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(exports[variant]), trust_remote_code=True)
    model, ours = distill.from_pretrained(exports[variant])
    batch = tok(HUB_TEXTS, return_tensors="pt", padding=True, truncation=True)
    ids = [x + [EOS_ID] for x in ours.encode_batch(HUB_TEXTS)]  # truncation=True cuts nothing
    width = max(map(len, ids))
    assert width > model.cfg.max_len and len(model.too_long(HUB_TEXTS)) == 3
    assert batch["input_ids"].tolist() == [x + [PAD_ID] * (width - len(x)) for x in ids]
    assert batch["attention_mask"].tolist() == [[1] * len(x) + [0] * (width - len(x)) for x in ids]
    for beam in (1, 4):
        with torch.no_grad():
            out = hf_models[variant].generate(**batch, num_beams=beam)
        assert tok.batch_decode(out, skip_special_tokens=True) == model.translate(
            HUB_TEXTS, beam=beam
        ), beam


def test_the_model_card_is_hub_metadata_and_its_usage_snippet_runs(exports, hf_models, capsys):
    from huggingface_hub import ModelCard

    path = exports["attentionless_pw"]
    text = (path / "README.md").read_text()
    card = ModelCard(text)  # parses and validates the YAML front matter
    data = card.data.to_dict()
    assert data["language"] == ["de", "en"] and data["library_name"] == "transformers"
    assert "translation" in data["tags"] and data["metrics"] == ["bleu", "chrf"]
    results = {(r.metric_type, r.dataset_split): r for r in card.data.eval_results}
    filtered = "test (sources and targets ≤ 7 pieces)"  # max_len 8: EOS or BOS/EOS added
    assert set(results) == {(m, split) for m in ("bleu", "chrf") for split in ("test", filtered)}
    # the run's score, of the length-filtered pairs, under a name of its own
    row = json.loads((path.parent / "run" / "eval" / "results.json").read_text())
    scored = next(r for r in row["rows"] if r["variant"] == "attentionless_pw")
    assert results["bleu", filtered].metric_value == scored["bleu"]
    assert results["bleu", filtered].metric_config == scored["bleu_signature"]  # sacreBLEU's
    assert results["bleu", filtered].dataset_name == "tsv de-en (length-filtered)"
    # `test` is every pair of the split, the long source split as `distill translate` does
    model, tok = distill.from_pretrained(path)
    whole, _ = evaluate_model(model, tok, TEST_PAIRS)
    assert whole["split_sources"] == 1
    for metric in ("bleu", "chrf"):
        assert results[metric, "test"].metric_value == whole[metric]
    assert results["bleu", "test"].metric_config == whole["bleu_signature"]
    assert f"`test` is the row of all pairs; the first row is `{filtered}`" in text
    # without the whole split (its corpus gone), the filtered score is never called `test`
    config = json.loads((path / "config.json").read_text())
    alone = ModelCard(f"---\n{front_matter(config, scored, path.name)}\n---\n").data
    assert {r.dataset_split for r in alone.eval_results} == {filtered}
    snippet = text.split("## Use with transformers", 1)[1].split("```python\n", 1)[1]
    snippet = snippet.split("```", 1)[0]
    expected = distill.from_pretrained(path)[0].translate(["Guten Morgen!"])
    cwd = os.getcwd()
    os.chdir(path.parent)  # the card names the export by its directory name
    try:
        exec(snippet, {})
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().out.strip() == repr(expected)


def test_the_card_names_an_imported_teachers_hub_id_as_base_model(run_dir, exports, tmp_path):
    from huggingface_hub import ModelCard

    def imported_from(pretrained: str) -> None:  # what the teacher stage records of an import
        recorded = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**recorded, "pretrained": pretrained}))

    assert ModelCard((exports["teacher"] / "README.md").read_text()).data.base_model is None
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    config = run / "teacher" / "config.yaml"
    imported_from(
        "/home/u/.cache/huggingface/hub/models--Helsinki-NLP--opus-mt-de-en/snapshots/0a1"
    )
    out = export(run, "teacher", tmp_path / "imported")
    assert (
        ModelCard((out / "README.md").read_text()).data.base_model == "Helsinki-NLP/opus-mt-de-en"
    )
    assert (
        json.loads((out / "config.json").read_text())["base_model"] == "Helsinki-NLP/opus-mt-de-en"
    )
    for elsewhere in ("/home/u/opus-mt-de-en", str(run / "marian")):  # a saved folder, trained here
        imported_from(elsewhere)
        assert base_model(run) is None


@pytest.mark.parametrize(
    "variant",
    ["teacher", "attentionless", "attentionless_pw", "attentionless_mix", "attentionless_dense"],
)
def test_generate_decodes_incrementally_and_the_cache_changes_no_token(hf_models, variant):
    hf = hf_models[variant]
    src = sources(8, seed=3)
    mask = (src != PAD_ID).long()
    widths = []
    hook = hf.model.decoder[0].register_forward_hook(lambda m, a, o: widths.append(a[0].size(1)))
    with torch.no_grad():
        for k in (1, 3):
            widths.clear()
            cached = hf.generate(src, attention_mask=mask, num_beams=k)
            assert len(widths) > 2 and set(widths) == {1}  # one new position per step
            again = hf.generate(src, attention_mask=mask, num_beams=k, use_cache=False)
            assert torch.equal(cached, again), k
            assert max(widths) > 1  # without the cache the whole prefix goes in
    hook.remove()


def test_translate_keeps_one_line_per_input_line(exports, tmp_path, capsys):
    model, _ = distill.from_pretrained(exports["attentionless"])
    texts = ["Der Hund sieht den Ball.", "", "Die Katze mag ein Buch!", ""]
    out = model.translate(texts, beam=2, batch_size=2)
    assert len(out) == 4 and out[1] == out[3] == ""
    long = "Der Hund sieht den Ball und die Katze mag ein Buch heute oft."
    text = tmp_path / "in.txt"
    text.write_text("\n".join(["Der Hund.", "", long, "Das Kind!", ""]) + "\n")
    assert main(["-q", "translate", str(exports["attentionless"]), str(text)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.split("\n")
    assert len(lines) == 6 and lines[-1] == "" and lines[1] == lines[4] == ""
    assert "1 line(s) exceed max_len 8 tokens" in captured.err and "(line 3)" in captured.err
    assert main(["-q", "translate", str(exports["attentionless"]), str(text), "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "line 3" in captured.err


def test_cli_export_with_a_spec_scores_it_and_evaluate_reads_export_dirs(run_dir, tmp_path, capsys):
    out = tmp_path / "custom"
    spec = "encoder.0.self_attn=alr,decoder.1.cross_attn=cross_gate"
    assert main(["-q", "export", str(run_dir), "--spec", spec, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "custom" and set(config["replacements"]) == set(parse_spec(spec))
    card = (out / "README.md").read_text()
    assert "tsv test split: 3 of 4 pairs" in card  # no results row: scored now
    assert "all 4 pairs of the test split (1 long sources split)" in card
    capsys.readouterr()
    assert main(["-q", "evaluate", str(out), "--source", "demo", "--max-sentences", "3"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| variant |") and "| custom |" in table
    # the kinds are read off the modes (an export older than student_kinds has the same row)
    row = next(line for line in table.splitlines() if line.startswith("| custom |"))
    assert row.split(" | ")[3] == "mixing + gated pairs"


def _valid_results(run: Path, rows: list[tuple[str, str, float]]) -> None:
    """A fabricated RUN_DIR/eval/results-valid.json (the evaluate stage's schema, the keys read
    here) of (variant, stage, BLEU) rows; a variant named attentionless* (no hybrid) replaces
    every attention site."""
    rows = [
        {
            "variant": v,
            "stage": s,
            "bleu": b,
            "chrf": 2 * b,
            "attentionless": v.startswith("attentionless") and "+keep" not in v,
        }
        for v, s, b in rows
    ]
    results = {"note": "tsv valid split", "split": "valid", "beam": 1, "rows": rows}
    atomic_write_json(run / "eval" / "results-valid.json", results)


def test_the_default_variant_is_the_best_on_the_valid_split_that_replaces_every_site(tmp_path):
    run = tmp_path / "run"
    scores = [
        ("teacher", "", 30.0),
        ("alr", "layer-wise", 22.0),  # better, but the decoder keeps its attention
        ("attentionless_gate", "layer-wise", 15.0),
        ("attentionless_gate", "tuned", 21.0),
        ("attentionless_pw+keep1", "tuned", 21.5),  # a hybrid keeps a cross-attention
        ("attentionless", "layer-wise", 16.0),
    ]
    _valid_results(run, scores)
    best = best_variant(run)
    assert (best["variant"], best["stage"], best["bleu"]) == ("attentionless_gate", "tuned", 21.0)
    best = best_variant(run, layer_wise=True)
    assert (best["variant"], best["stage"]) == ("attentionless", "layer-wise")
    _valid_results(run, scores[:2])
    with pytest.raises(ConfigError, match="no variant that replaces every attention site"):
        best_variant(run)
    with pytest.raises(ConfigError, match=r"results-valid\.json: not found; .* or pass --variant"):
        best_variant(tmp_path / "unscored")


def test_cli_export_without_a_variant_exports_the_best_on_the_valid_split(
    run_dir, tmp_path, capsys, monkeypatch
):
    run, out = Path(shutil.copytree(run_dir, tmp_path / "run")), tmp_path / "best"
    assert main(["-q", "export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "splits=[valid]) or pass --variant" in err
    assert not out.exists()
    scores = [
        ("teacher", "", 9.0),
        ("elr", "layer-wise", 5.0),
        ("attentionless", "layer-wise", 3.0),
    ]
    _valid_results(run, scores)
    assert main(["-q", "export", str(run), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "exporting 'attentionless' (layer-wise): of the variants that replace every" in err
    config = json.loads((out / "config.json").read_text())
    assert (config["variant"], config["stage"]) == ("attentionless", "layer-wise")
    # the best row's stage decides: tuned weights for a tuned row, else the layer-wise students
    calls = []
    monkeypatch.setattr("distill.export.export", lambda *args: calls.append(args[1:]))
    for tuned, layer_wise in ((5.0, 4.0), (3.0, 4.0)):
        rows = [("attentionless", "tuned", tuned), ("attentionless", "layer-wise", layer_wise)]
        _valid_results(run, rows)
        assert main(["-q", "export", str(run), "--out", str(out)]) == 0
    assert calls == [("attentionless", str(out), False), ("attentionless", str(out), True)]


def test_export_refuses_bad_specs_and_foreign_out_dirs(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="overlap"):
        export(run_dir, {"encoder.0": "elr", "encoder.0.self_attn": "alr"}, tmp_path / "x")
    with pytest.raises(ConfigError, match="mode 'alr' replaces encoder.I.self_attn"):
        export(run_dir, {"decoder.0.self_attn": "alr"}, tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        export(run_dir, "nope", tmp_path / "x")
    with pytest.raises(ConfigError, match="SITE=MODE"):
        parse_spec("encoder.0.self_attn")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a distill export"):
        export(run_dir, "teacher", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()
    assert not (tmp_path / "x").exists()


def test_an_interrupted_export_leaves_no_directory_and_can_be_rerun(run_dir, tmp_path, monkeypatch):
    import distill.export as export_module

    out = tmp_path / "out"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "model_card", fail)
    with pytest.raises(OSError, match="disk full"):
        export(run_dir, "attentionless", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # A SIGKILL right after the weights are written, inside the temporary directory.
    code = (
        "import os, signal, sys\n"
        "import distill.export as e\n"
        "save = e.save_tensors\n"
        "def killed(*a, **k):\n"
        "    save(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "e.save_tensors = killed\n"
        "e.export(sys.argv[1], 'attentionless', sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir), str(out)], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()][0].startswith(".out.")  # the orphaned temp dir
    export(run_dir, "attentionless", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    distill.from_pretrained(out)


def _broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_broken_export_dirs_raise_checkpoint_errors_naming_the_problem(exports, tmp_path):
    good = exports["attentionless"]
    for name in ("config.json", "model.safetensors", "spm.model"):
        bad = _broken_copy(good, tmp_path / f"no-{name}")
        (bad / name).unlink()
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            distill.from_pretrained(bad)

    def edited(tag: str, change) -> Path:
        bad = _broken_copy(good, tmp_path / tag)
        config = json.loads((bad / "config.json").read_text())
        change(config)
        (bad / "config.json").write_text(json.dumps(config))
        return bad

    cases = {
        "d_model": (lambda c: c.update(d_model=32), r"model\.safetensors.*shape"),
        "heads": (lambda c: c.update(n_heads=3), "not divisible by n_heads"),
        "type": (lambda c: c.update(max_len="8"), "'max_len' must be int"),
        "missing": (lambda c: c.pop("n_dec"), "missing key 'n_dec'"),
        "eos": (lambda c: c.update(eos_token_id=1), "'eos_token_id' is 1"),
        "mode": (
            lambda c: c["replacements"]["encoder.0.self_attn"].update(mode="cross"),
            r"replacements.*encoder\.0\.self_attn",
        ),
        "size": (
            lambda c: c["replacements"]["decoder.1.cross_attn"].update(size="huge"),
            r"replacements\.decoder\.1\.cross_attn.*size",
        ),
        "dropped": (
            lambda c: c["replacements"].pop("decoder.0.self_attn"),
            r"model\.safetensors: does not match",
        ),
    }
    for tag, (change, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            distill.from_pretrained(edited(tag, change))
    assert main(["translate", str(tmp_path / "d_model"), os.devnull]) == 2


def test_an_export_of_format_version_1_loads_the_identical_model(exports, tmp_path):
    """Its config.json lacks the structure fields (norm, positions, final_norm): the family's."""
    from distill.blocks import FAMILY_FIELDS
    from distill.hf import DistillConfig, DistillForConditionalGeneration

    new = exports["attentionless"]
    old = _broken_copy(new, tmp_path / "version-1")
    config = json.loads((old / "config.json").read_text())
    assert all(k in config for k in FAMILY_FIELDS)
    config = {k: v for k, v in config.items() if k not in FAMILY_FIELDS}
    (old / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    (model, _), (ref, _) = distill.from_pretrained(old), distill.from_pretrained(new)
    assert model.cfg == ref.cfg
    src, tgt = sources(), sources(seed=1)
    assert torch.equal(model(src, tgt), ref(src, tgt))
    hf = DistillForConditionalGeneration(DistillConfig.from_pretrained(str(old)))
    assert hf.model.cfg == ref.cfg
