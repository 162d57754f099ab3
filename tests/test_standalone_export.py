"""An export stands alone: transformers loads it and generates where distill cannot be imported,
from modelling code the export wrote from the package's own modules (``distill.remote_code``)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import distill
from distill import remote_code
from distill.export import export
from tests.test_export import write_run

REPO = Path(__file__).resolve().parent.parent
# The first four fit max_len 8, the last two are split into parts (distill_chunks.py).
LINES = ["Die Katze!", "Hallo", "Ja.", "Der Hund.", "Ja. Die Katze!", "Der Hund sieht den Ball."]

# A Hub user's Python: no distill, no distill_recipes, no distill_eval, however it is installed.
PRELUDE = """
import json, os, sys
repo = sys.argv[1]  # the checkout (its .venv stays: torch, transformers)
sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
sys.path[:] = [p for p in sys.path if os.path.realpath(p) != repo and "__editable__" not in p]
for name in ("distill", "distill_recipes", "distill_eval", "sentencepiece"):
    sys.modules[name] = None  # sentencepiece too: an export's tokenizer is tokenizer.json
try:
    import distill
    raise SystemExit("distill is importable")
except ImportError:
    pass
"""
# The three lines a newcomer runs, for each export dir given.
HUB_USAGE = """
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
lines, out = json.loads(sys.argv[2]), {}
for d in sys.argv[3:]:
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForSeq2SeqLM.from_pretrained(d, trust_remote_code=True)
    ids = model.generate(**tok(lines, return_tensors="pt", padding=True))
    out[d] = tok.batch_decode(ids, skip_special_tokens=True)
with open("generated.json", "w") as f:  # stdout also holds transformers' remote-code prompt
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("standalone")
    run = write_run(root / "run", tiny_tokenizer)
    variants = ("teacher", "attentionless_gate", "attentionless_mix", "attentionless_dense")
    return {v: export(run, v, root / v) for v in variants}


def test_transformers_loads_and_generates_an_export_without_distill(exports, tmp_path):
    expected = {}
    for variant, path in exports.items():
        model, _ = distill.from_pretrained(path)
        assert model.too_long(LINES) == [4, 5]
        expected[variant] = model.translate(LINES)  # what `distill translate` writes
        assert any(expected[variant]), variant
    elsewhere = {v: shutil.copytree(path, tmp_path / "hub" / v) for v, path in exports.items()}
    for path in elsewhere.values():
        code = sorted(p.name for p in path.glob("*.py"))
        assert "distill_hf.py" in code and all(name.startswith("distill_") for name in code)
        assert "distill_chunks.py" in code
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-c", PRELUDE + HUB_USAGE, str(REPO), json.dumps(LINES)]
    proc = subprocess.run(
        argv + [str(p) for p in elsewhere.values()],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    generated = json.loads((tmp_path / "generated.json").read_text())
    assert {v: generated[str(path)] for v, path in elsewhere.items()} == expected


@pytest.mark.parametrize(
    "added, message",
    [
        ("def later():\n    from distill.progress import progress_bar\n", r"imports 'tqdm'"),
        ("import distill.errors\n", r"imports distill\.errors in a form that is not rewritten"),
    ],
)
def test_an_export_whose_model_would_need_more_fails_before_writing(
    exports, tmp_path, monkeypatch, added, message
):
    package = shutil.copytree(REPO / "distill", tmp_path / "distill")
    with (package / "model.py").open("a") as f:
        f.write(added)
    monkeypatch.setattr(remote_code, "PACKAGE", package)
    run, out = exports["teacher"].parent / "run", tmp_path / "out"
    with pytest.raises(RuntimeError, match=message) as err:
        export(run, "teacher", out)
    assert "(distill.hf -> distill.model" in str(err.value)
    assert not out.exists()
