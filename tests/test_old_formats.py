"""Run dirs and exports written by distill 0.1.0 (commit bd181d5, before the StudentSpec and
site-table refactor) still score, export, load, translate and resume with the current code, and
give what the old code gave; so does an export of format 2 (commit d05e4c7, sublayers still
numbered). The fixtures and how they were made: tests/fixtures/v0_1/README.md, v0_2/README.md."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.model import teacher_attention
from distill.pretrained import from_pretrained

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "v0_1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
SOURCES = EXPECTED["sources"]
# format of each old export -> (its fixture dir, how many of the 6 attention sites it replaced)
OLD_EXPORTS = {1: ("v0_1", 6), 2: ("v0_2", 2)}
OLD_ROWS = json.loads((FIXTURE / "run" / "eval" / "results.json").read_text())["rows"]
# export arguments of run-dir rows whose old translations (expected.json) the test compares: the
# teacher, the residual mode at encoder.{i}.sublayer0 (format 3: self_attn_sublayer), and the
# three other modes together
EXPORTS = {
    "teacher": ["--variant", "teacher"],
    "alrr": ["--variant", "alrr"],
    "attentionless_gate": ["--variant", "attentionless_gate", "--layer-wise"],
    "attentionless_gate tuned": ["--variant", "attentionless_gate"],
}
SITES = {"teacher": 0, "attentionless_gate": 6, "attentionless_gate tuned": 6}  # else 2
STUDENT_MODES = ("alr", "alrr", "dec_self", "cross_gate")
MODES = f"[{','.join(STUDENT_MODES)}]"
# the overrides the fixture's run was made with (README.md), on the current tiny configs
PIPELINE = [
    "teacher.data.max_len=12",
    "teacher.data.max_train_pairs=20000",
    "teacher.train.epochs=10",
    f"record.modes={MODES}",
    "record.dtype=fp16",
    "record.max_sentences=16",
    "record.valid_sentences=8",
    f"students.modes={MODES}",
    "finetune.variants=[attentionless_gate]",
    "evaluate.variants=[teacher,alr,alrr,dec_self,cross_gate,attentionless_gate]",
]


@pytest.fixture
def old(tmp_path) -> Path:
    """A copy of the fixture: the code under test may write into run dirs."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "v0_1"))


def scores(rows: list[dict]) -> dict[tuple[str, str], tuple]:
    """(variant, stage) -> (BLEU, chrF, number of sites replaced, sentences) of a results table."""
    return {
        (r["variant"], r["stage"]): (r["bleu"], r["chrf"], len(r["sites"]), r["n"]) for r in rows
    }


def file_bytes(run: Path) -> dict[str, bytes]:
    """Every file of the run outside eval/ (what only evaluation rewrites)."""
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.relative_to(run).parts[0] != "eval"
    }


def test_the_old_run_dir_scores_every_variant_as_the_old_code_did(old, capsys):
    from distill_recipes.evaluate import evaluate_path

    # the sentences the old evaluate stage scored (its tiny config), so the scores must match
    results = evaluate_path(str(old / "run"), max_sentences=30)
    capsys.readouterr()
    got, want = scores(results["rows"]), scores(OLD_ROWS)
    assert ("teacher", "") in got and ("attentionless_gate", "tuned") in got
    assert len(want) == 7 and got == want
    # rows the old code wrote without kinds or trainable have them now
    kinds = {r["variant"]: r["kinds"] for r in results["rows"]}
    assert kinds == {
        "teacher": "",
        "alr": "mixing",
        "alrr": "mixing",
        "dec_self": "mixing",
        "cross_gate": "gated pairs",
        "attentionless_gate": "mixing + gated pairs",
    }
    tuned = [r["trainable"] for r in results["rows"] if r["stage"] == "tuned"]
    assert tuned == ["students"]


@pytest.mark.parametrize("row", list(EXPORTS))
def test_a_variant_exported_from_the_old_run_dir_translates_as_the_old_code_did(old, row):
    out = old / "new-export"
    assert main(["-q", "export", str(old / "run"), *EXPORTS[row], "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert len(config["replacements"]) == SITES.get(row, 2)
    model, _ = from_pretrained(out, device="cpu")
    assert len(teacher_attention(model)) == 6 - SITES.get(row, 2)  # 6 attention sites in all
    assert model.translate(SOURCES) == EXPECTED["run_translations"][row]


@pytest.fixture(params=list(OLD_EXPORTS), ids=lambda v: f"format{v}")
def old_export(request, tmp_path) -> tuple[Path, int, dict]:
    """(a copy of an old export, the sites it replaced, what the old code made of it)."""
    name, replaced = OLD_EXPORTS[request.param]
    export = Path(shutil.copytree(FIXTURES / name / "export", tmp_path / name))
    for code in export.glob("*.py.fixture"):  # stored so, not to count as this repo's code
        code.rename(code.with_suffix(""))
    config = json.loads((export / "config.json").read_text())
    assert config["format_version"] == request.param
    assert "student_kinds" not in config  # written since 0.3.0, for people: not needed to load
    expected = json.loads((FIXTURES / name / "expected.json").read_text(encoding="utf-8"))
    assert expected["sources"] == SOURCES
    return export, replaced, expected


def test_the_old_export_loads_and_translates_as_the_old_code_did(old_export):
    export, replaced, expected = old_export
    model, tok = from_pretrained(export, device="cpu")
    assert len(teacher_attention(model)) == 6 - replaced  # its students sit where they did
    assert tok.vocab_size == 300
    assert model.translate(SOURCES) == expected["export_greedy"]
    assert model.translate(SOURCES, beam=2) == expected["export_beam2"]


def test_transformers_generates_the_old_tokens_from_the_old_export(old_export):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    export, _, expected = old_export
    model = AutoModelForSeq2SeqLM.from_pretrained(export, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(export, trust_remote_code=True)
    ids = []
    for line in SOURCES:
        with torch.no_grad():
            out = model.generate(**tok([line], return_tensors="pt"), num_beams=1, do_sample=False)
        ids.append(out[0].tolist())
    assert len(ids) == 3 and ids == expected["export_generate_ids"]
    assert tok.batch_decode(ids, skip_special_tokens=True) == expected["export_greedy"]


def test_the_pipeline_on_the_old_run_dir_trusts_and_skips_every_finished_output(old, caplog):
    run = old / "run"
    before = file_bytes(run)
    argv = ["run", "pipeline", "--config", "tiny", f"run_dir={run}", *PIPELINE]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    report = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline: ")]
    outputs = ["teacher", "record", *(f"students/{m}" for m in STUDENT_MODES)]
    outputs.append("finetune/attentionless_gate")
    trusted = "skipped: trusted (written before settings were recorded)"
    for out in outputs:
        assert f"pipeline: {out}: {trusted}" in report, out
        assert any(
            r.levelno == logging.WARNING and "no stored settings" in r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(str(run / out))
        ), out
    after = file_bytes(run)
    assert not [line for line in report if "same settings" in line]  # none were compared
    assert {k: after.get(k) for k in before} == before  # nothing retrained or rewritten
    assert all(k.endswith("settings.json") for k in after.keys() - before.keys())
    rescored = json.loads((run / "eval" / "results.json").read_text())["rows"]
    assert scores(rescored) == scores(OLD_ROWS)
