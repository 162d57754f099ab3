"""Reliability: a catalogue of bad inputs through the real command line, kills, NaN stops, fuzzing.

Every bad input exits with code 2 and ONE stderr line naming the file (and line), key or site,
and leaves nothing half-written. See docs/RELIABILITY.md for the guarantees these tests show.
"""

import gzip
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.cli import load_recipe_config, main
from distill.data import DataConfig, Tokenizer, encode_pairs, load_pairs
from distill.errors import ConfigError, DataError
from distill.model import ModelConfig
from distill.modes import mode_sites
from distill.students import build_student
from distill.train import TrainConfig, TrainingDiverged, fit

REPO = Path(__file__).resolve().parent.parent
TEACHER = ["run", "teacher", "--config", "tiny"]
STUDENTS = ["run", "students", "--config", "tiny", "modes=[alr]", "train.ckpt_every=2"]
RECORD = ["run", "record", "--config", "tiny", "modes=[alr]", "shard_size=16"]


def fails(argv: list[str], capsys, *needles: str, progress: bool = False) -> str:
    """Run the CLI in-process: exit code 2 and one error line holding every needle; before it,
    nothing, or with ``progress`` only the progress bar of the step that failed."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("distill: error: ") == 1, err
    if progress:
        err = err.rstrip("\n").rsplit("\n", 1)[-1] + "\n"
    assert err.startswith("distill: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert re.search(needle, err), (needle, err)
    return err


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` and its bytes (to show a failed command wrote nothing)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny run dir with a trained teacher and a recording for ALR (5 train shards)."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    argv = [f"run_dir={run}", "train.epochs=1", "eval.max_sentences=4"]
    assert main(["-q", *TEACHER, *argv]) == 0
    assert main(["-q", *RECORD, f"run_dir={run}"]) == 0
    return run


def json_model_cfg(run: Path) -> ModelConfig:
    """The teacher's dimensions, as saved in its run dir."""
    return ModelConfig(**json.loads((run / "teacher" / "model.json").read_text()))


@pytest.fixture
def run_copy(prepared, tmp_path) -> Path:
    """A private copy of ``prepared`` to break."""
    return Path(shutil.copytree(prepared, tmp_path / "run"))


# --- corpora ---------------------------------------------------------------------------------

LATIN1 = "Hallo\tHello\nMädchen\tgirl\n".encode("latin-1")
CORPUS_ERRORS = {
    # name: (file name, bytes, what the message must say)
    "missing_column": (
        "c.tsv",
        b"Hallo\tHello\nWelt\nJa\tYes\n",
        r"c\.tsv:2: expected 2 .*found 1",
    ),
    "blank_line_inside": ("c.tsv", b"a\tb\n\nc\td\n", r"c\.tsv:2: expected 2 .*found 1"),
    "tab_inside_text": (
        "c.tsv",
        b"Hallo\tHello\nGuten Tag\tGood\tday\n",
        r"c\.tsv:2: expected 2 tab-separated columns, found 3 \(a tab inside the text\?\)",
    ),
    "tab_inside_first_line": (
        "c.tsv",
        b"Guten Tag\tGood\tday\nJa\tYes\n",
        r"c\.tsv:2: expected 3 tab-separated columns, found 2 \(line 1 has 3\)",
    ),
    "invalid_utf8": ("c.tsv", LATIN1, r"c\.tsv:2: invalid UTF-8"),
    "invalid_utf8_gz": ("c.tsv.gz", gzip.compress(LATIN1), r"c\.tsv\.gz:2: invalid UTF-8"),
    "not_gzip": ("c.tsv.gz", b"Hallo\tHello\n", r"c\.tsv\.gz: cannot read \(Not a gzipped"),
    "truncated_gzip": (
        "c.tsv.gz",
        gzip.compress(b"Hallo\tHello\n" * 50)[:30],
        r"c\.tsv\.gz: cannot read \(Compressed file ended",
    ),
    "corrupt_gzip": (
        "c.tsv.gz",
        b"\x1f\x8b\x08\x00" + b"garbage" * 5,
        r"c\.tsv\.gz: cannot read \(Error -3 while decompressing",
    ),
    "empty_file": ("c.tsv", b"", r"c\.tsv: empty file"),
    "blank_lines_only": ("c.tsv", b"\n\r\n\n", r"c\.tsv: empty file"),
    "header_only": ("c.tsv", b"de\ten\n", r"c\.tsv: no sentence pairs"),
    "every_pair_has_an_empty_side": (
        "c.tsv",
        b"Hallo\t\n\tHello\n\t\n",
        r"c\.tsv: every train pair has an empty side",
    ),
}


@pytest.mark.parametrize("case", CORPUS_ERRORS)
def test_bad_corpus_file_fails_naming_file_and_line(case, tmp_path, capsys):
    name, raw, needle = CORPUS_ERRORS[case]
    (tmp_path / name).write_bytes(raw)
    run = tmp_path / "run"
    fails(
        [*TEACHER, f"run_dir={run}", "data.source=tsv", f"data.path={tmp_path / name}"],
        capsys,
        needle,
    )
    assert not run.exists()


def _splits_but_test(d: Path) -> None:
    (d / "nope.tsv").mkdir()
    for split in ("train", "valid"):
        (d / "nope.tsv" / f"{split}.tsv").write_text("Hallo\tHello\n")


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: None, r"nope\.tsv: file not found"),
        (lambda d: (d / "nope.tsv").mkdir(), "neither of train.tsv and train.tsv.gz"),
        (_splits_but_test, "neither of test.tsv and test.tsv.gz"),  # found before training
    ],
    ids=["missing_file", "directory_without_split_files", "directory_without_test_split"],
)
def test_missing_corpus_path_is_named(make, needle, tmp_path, capsys):
    make(tmp_path)
    run = tmp_path / "run"
    argv = [*TEACHER, f"run_dir={run}", "data.source=tsv", f"data.path={tmp_path / 'nope.tsv'}"]
    fails(argv, capsys, needle)
    assert not run.exists()


@pytest.mark.parametrize(
    "de,en,needle",
    [
        ("a\nb\nc\n", "a\nb\n", r"c\.train\.de has 3 lines but .*c\.train\.en has 2"),
        ("a\n", None, r"c\.train\.en: file not found"),
    ],
    ids=["unequal_line_counts", "missing_side"],
)
def test_bad_parallel_text_files_are_named(de, en, needle, tmp_path, capsys):
    (tmp_path / "c.train.de").write_text(de)
    if en is not None:
        (tmp_path / "c.train.en").write_text(en)
    run = tmp_path / "run"
    argv = [*TEACHER, f"run_dir={run}", "data.source=text", f"data.path={tmp_path / 'c'}"]
    fails(argv, capsys, needle)
    assert not run.exists()


def test_a_corpus_the_length_filter_empties_fails_before_training(tmp_path, capsys):
    path = tmp_path / "c.tsv"
    path.write_text("Der Hund sieht den Ball.\tThe dog sees the ball.\n" * 20)
    run = tmp_path / "run"
    argv = [*TEACHER, f"run_dir={run}", "data.source=tsv", f"data.path={path}", "data.max_len=2"]
    fails(argv, capsys, rf"{re.escape(str(path))}: no train pair is left .*max_len 2")
    # The tokenizer was needed to measure lengths; no checkpoint or model was made.
    assert set(tree(run)) == {"teacher/config.yaml", "teacher/spm.model"}


ACCEPTED = {
    # name: (bytes of c.tsv, the pairs it holds)
    "bom_and_header": ("\ufeffde\ten\nHallo\tHello\n", [("Hallo", "Hello")]),
    "bom_no_header": ("\ufeffHallo\tHello\n", [("Hallo", "Hello")]),
    "crlf": ("Hallo\tHello\r\nJa\tYes\r\n", [("Hallo", "Hello"), ("Ja", "Yes")]),
    "mixed_line_ends_no_final_newline": (
        "a\tb\r\nc\td\ne\tf",
        [("a", "b"), ("c", "d"), ("e", "f")],
    ),
    "lone_cr_inside_text": ("a\rx\tb\n", [("a\rx", "b")]),
    "unicode_line_separator_inside_text": ("a\u2028b\tc\u0085d\n", [("a\u2028b", "c\u0085d")]),
    "empty_side_kept_by_the_reader": ("Hallo\t\n\tHello\n", [("Hallo", ""), ("", "Hello")]),
    "header_in_reverse_order": ("en\tde\nHello\tHallo\n", [("Hallo", "Hello")]),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted_corpus_quirks_parse_correctly(case, tmp_path):
    raw, want = ACCEPTED[case]
    (tmp_path / "c.tsv").write_bytes(raw.encode("utf-8"))
    assert load_pairs(DataConfig(source="tsv", path=str(tmp_path / "c.tsv")), "train") == want


def test_tab_inside_text_is_kept_in_parallel_text_files(tmp_path):
    (tmp_path / "c.train.de").write_text("Guten\tTag\nJa\n")
    (tmp_path / "c.train.en").write_text("Good\tday\r\nYes\n")
    cfg = DataConfig(source="text", path=str(tmp_path / "c"))
    assert load_pairs(cfg, "train") == [("Guten\tTag", "Good\tday"), ("Ja", "Yes")]


def test_a_one_megabyte_line_is_read_tokenized_and_dropped_as_too_long(tmp_path, tiny_pairs):
    huge = "Hund " * 200_000  # 1 MB
    lines = [f"{de}\t{en}" for de, en in tiny_pairs[:20]] + [f"{huge}\tdog"]
    (tmp_path / "c.tsv").write_text("\n".join(lines) + "\n")
    pairs = load_pairs(DataConfig(source="tsv", path=str(tmp_path / "c.tsv")), "train")
    assert len(pairs) == 21 and pairs[-1] == (huge, "dog")
    tok = Tokenizer.train([t for p in pairs for t in p], 64, tmp_path / "spm.model")
    examples, report = encode_pairs(pairs, tok, max_len=24)
    assert report.src_too_long >= 1 and report.kept_indices[-1] < 20 and len(examples) > 0


def test_empty_sides_are_counted_not_silently_lost(tiny_tokenizer):
    _, report = encode_pairs([("Hallo", ""), ("", "Hello"), ("Ja.", "Yes.")], tiny_tokenizer, 24)
    assert (report.empty, report.kept) == (2, 1)


# --- configs ---------------------------------------------------------------------------------

BIG = "1" + "0" * 400
CONFIG_ERRORS = [
    (TEACHER, ["train.epoch=3"], "unknown config key 'train.epoch'"),
    (TEACHER, ["modle.d_model=3"], "unknown config key 'modle'"),
    (TEACHER, ["train.epochs=three"], "config key 'train.epochs': expected int"),
    (TEACHER, ["train.epochs=true"], "config key 'train.epochs': expected int"),
    (TEACHER, ["data=5"], "config key 'data': expected a mapping"),
    (TEACHER, ["data.max_len=0"], "max_len must be >= 2, got 0"),
    (TEACHER, ["data.max_len=-3"], "max_len must be >= 2, got -3"),
    (TEACHER, ["train.lr=-1"], "lr must be > 0"),
    (TEACHER, ["train.lr=.inf"], "lr must be > 0 and finite"),
    (TEACHER, [f"train.lr={BIG}"], "config key 'train.lr': integer too large for a float"),
    (TEACHER, ["data.source=tsv"], "path is required for source 'tsv'"),
    (TEACHER, ["data.source=csv"], "source must be one of"),
    (TEACHER, ["model.n_heads=3"], "d_model 16 is not divisible by n_heads 3"),
    (TEACHER, ["=3"], "override '=3' has an empty key"),
    (TEACHER, ["train.epo\nch=3"], r"unknown config key 'train\.epo\\nch'"),
    (STUDENTS, ["modes=[alx]"], "unknown mode 'alx'"),
    (STUDENTS, ["size=xxl"], "unknown size 'xxl'"),
    (STUDENTS, ["sizes={alr: xxl}"], "unknown size 'xxl'"),
    (STUDENTS, ["sizes={alx: s}"], "unknown mode 'alx' in sizes/lrs"),
    (STUDENTS, ["lrs={alr: -1}"], "learning rates must be finite numbers > 0"),
    (STUDENTS, ["lrs={alr: .inf}"], "learning rates must be finite numbers > 0"),
    (STUDENTS, ["source=tape"], "source must be 'disk' or 'online'"),
    (RECORD, ["dtype=fp8"], "dtype must be fp16 or fp32"),
    (RECORD, ["shard_size=0"], "shard_size must be >= 1"),
    (["run", "pipeline", "--config", "tiny"], ["students.sise=m"], "section 'students'.*'sise'"),
]


@pytest.mark.parametrize(
    "base,overrides,needle", CONFIG_ERRORS, ids=[f"{b[1]}:{o[0][:24]}" for b, o, _ in CONFIG_ERRORS]
)
def test_bad_config_fails_naming_the_key_and_writes_nothing(
    base, overrides, needle, tmp_path, capsys
):
    run = tmp_path / "run"
    fails([*base, f"run_dir={run}", *overrides], capsys, needle)
    assert not run.exists()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("train:\n  epochs: [1\n", r"bad\.yaml:\d+: invalid YAML"),
        ("- a\n- b\n", r"bad\.yaml: expected a mapping"),
    ],
    ids=["yaml_syntax", "yaml_not_a_mapping"],
)
def test_bad_config_file_is_named(text, needle, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(text)
    fails(["run", "teacher", "--config", str(tmp_path / "bad.yaml")], capsys, needle)


# --- recordings ------------------------------------------------------------------------------


def _rewrite_shard(run: Path, change) -> None:
    """Apply ``change`` to train shard 0's tensors and fix its checksum in the manifest."""
    shard = run / "record" / "train" / "shard-00000.safetensors"
    save_file(change(load_file(shard)), shard)
    manifest_path = run / "record" / "train" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def _edit_manifest(run: Path, **changes) -> None:
    path = run / "record" / "train" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))


TRAIN = Path("record") / "train"
RECORDING_ERRORS = {
    # name: (how to break the run dir, extra overrides, what the message must say)
    "truncated_shard": (
        lambda r: _truncate(r / TRAIN / "shard-00001.safetensors"),
        [],
        r"train/shard-00001\.safetensors: checksum mismatch",
    ),
    "checksum_mismatch": (
        lambda r: _flip_a_byte(r / TRAIN / "shard-00002.safetensors"),
        [],
        r"train/shard-00002\.safetensors: checksum mismatch",
    ),
    "missing_shard": (
        lambda r: (r / TRAIN / "shard-00003.safetensors").unlink(),
        [],
        r"train/shard-00003\.safetensors: shard file missing",
    ),
    "missing_manifest": (
        lambda r: (r / TRAIN / "manifest.json").unlink(),
        [],
        r"train/manifest\.json: recording manifest not found$",
    ),
    "unfinished_recording": (
        lambda r: (r / TRAIN / "manifest.json").rename(r / TRAIN / "manifest.partial.json"),
        [],
        r"train/manifest\.json: recording manifest not found \(recording unfinished",
    ),
    "no_recording": (
        lambda r: shutil.rmtree(r / "record"),
        [],
        r"record/train/manifest\.json: recording manifest not found",
    ),
    "manifest_not_json": (
        lambda r: (r / TRAIN / "manifest.json").write_text("{"),
        [],
        r"train/manifest\.json: invalid JSON",
    ),
    "manifest_unknown_dtype": (
        lambda r: _edit_manifest(r, dtype="fp8"),
        [],
        r"train/manifest\.json: unknown dtype 'fp8'",
    ),
    "site_not_recorded": (
        lambda r: None,
        ["modes=[dec_self]"],
        r"record/train: site 'decoder\.0\.self_attn' was not recorded \(recorded: encoder\.0",
    ),
    "dimension_mismatch": (
        lambda r: _edit_manifest(r, d_model=32),
        [],
        r"record/train: recorded with d_model 32, .* the teacher has 16",
    ),
    "fp16_shard_in_fp32_recording": (
        lambda r: _rewrite_shard(
            r, lambda t: {k: v.half() if v.is_floating_point() else v for k, v in t.items()}
        ),
        [],
        r"shard-00000\.safetensors: tensor 'encoder\.0\.self_attn\.x' is F16, the manifest "
        "says fp32",
    ),
}


@pytest.mark.parametrize("case", RECORDING_ERRORS)
def test_bad_recording_fails_before_students_write_anything(case, run_copy, capsys):
    breaks, extra, needle = RECORDING_ERRORS[case]
    breaks(run_copy)
    before = tree(run_copy)
    fails([*STUDENTS, f"run_dir={run_copy}", *extra], capsys, needle)
    assert tree(run_copy) == before


def test_a_teacher_that_overflows_fp16_names_the_site(run_copy, capsys):
    weights = run_copy / "teacher" / "model.safetensors"
    tensors = load_file(weights)
    for part in ("weight", "bias"):  # V of encoder layer 0: the attention core's output explodes
        tensors[f"encoder.0.sublayer0.attn.v_proj.{part}"] *= 1e6
    save_file(tensors, weights)
    shutil.rmtree(run_copy / "record")
    fails(
        [*RECORD, f"run_dir={run_copy}", "dtype=fp16"],
        capsys,
        r"site 'encoder\.0\.self_attn': the teacher's output \(up to [\d.e+]+\) overflows fp16; "
        "record with dtype=fp32",
        progress=True,
    )
    assert not list((run_copy / "record").rglob("*.safetensors"))
    assert not list((run_copy / "record").rglob("manifest*.json"))


# --- checkpoints -----------------------------------------------------------------------------


def _other_tokenizer(r: Path, pairs) -> None:
    Tokenizer.train([t for p in pairs for t in p], 64, r / "teacher" / "spm.model")


def _edit_model_json(r: Path, **changes) -> None:
    path = r / "teacher" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


CHECKPOINT_ERRORS = {
    # name: (how to break the run dir, recipe argv, what the message must say)
    "no_teacher_for_students": (
        lambda r, p: shutil.rmtree(r / "teacher"),
        STUDENTS,
        r"run: no trained teacher here \(model\.json missing\)",
    ),
    "no_teacher_for_record": (
        lambda r, p: shutil.rmtree(r / "teacher"),
        RECORD,
        r"run: no trained teacher here \(model\.json missing\)",
    ),
    "teacher_weights_of_other_shape": (
        lambda r, p: _edit_model_json(r, d_ff=64),
        STUDENTS,
        r"teacher/model\.safetensors: 'decoder\.0\.sublayer2\.ff\.0\.bias' has shape \(32,\), "
        r"the model expects \(64,\)",
    ),
    "teacher_weights_truncated": (
        lambda r, p: (r / "teacher" / "model.safetensors").write_bytes(b"\x00" * 12),
        STUDENTS,
        r"teacher/model\.safetensors: not a readable safetensors file",
    ),
    "model_json_unknown_key": (
        lambda r, p: _edit_model_json(r, d_modle=16),
        STUDENTS,
        r"teacher/model\.json: unknown config key 'd_modle'",
    ),
    "tokenizer_of_another_model": (
        _other_tokenizer,
        STUDENTS,
        r"teacher/spm\.model: tokenizer has \d+ pieces, the model expects 300",
    ),
    "tokenizer_not_sentencepiece": (
        lambda r, p: (r / "teacher" / "spm.model").write_bytes(b"not a model"),
        RECORD,
        r"teacher/spm\.model: not a SentencePiece model",
    ),
    "teacher_config_missing": (
        lambda r, p: (r / "teacher" / "config.yaml").unlink(),
        RECORD,
        r"teacher/config\.yaml: not found; run `distill run teacher` first",
    ),
    "teacher_config_corrupt": (
        lambda r, p: (r / "teacher" / "config.yaml").write_text("data: [\n"),
        RECORD,
        r"teacher/config\.yaml:\d+: invalid YAML",
    ),
}


@pytest.mark.parametrize("case", CHECKPOINT_ERRORS)
def test_bad_teacher_checkpoint_fails_naming_the_file(case, run_copy, tiny_pairs, capsys):
    breaks, argv, needle = CHECKPOINT_ERRORS[case]
    shutil.rmtree(run_copy / "record")  # or `run record` would skip: its recording is complete
    breaks(run_copy, tiny_pairs)
    before = tree(run_copy)
    fails([*argv, f"run_dir={run_copy}"], capsys, needle)
    assert tree(run_copy) == before


def test_a_student_checkpoint_from_other_settings_is_named_and_kept(run_copy, capsys):
    sites = mode_sites("alr", json_model_cfg(run_copy))
    other = torch.nn.ModuleDict(
        {s.replace(".", "/"): build_student("alr", json_model_cfg(run_copy), "s") for s in sites}
    )
    ckpt = run_copy / "students" / "alr" / "checkpoint"
    save_checkpoint(ckpt, other, None, {"step": 2, "epoch": 0, "batch": 2, "done": False})
    before = tree(ckpt)
    fails(
        [*STUDENTS, f"run_dir={run_copy}", "size=xs"],
        capsys,
        r"checkpoint/model\.safetensors: '.*' has shape .*; the checkpoint is from a run with "
        r"other settings: delete .*checkpoint",
    )
    assert tree(ckpt) == before


# --- command-line misuse ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "nosuch", "--config", "tiny"], r"unknown recipe 'nosuch' \(known: teacher"),
        (["run", "teacher", "--config", "nosuch"], r"unknown config 'nosuch' for recipe 'teacher'"),
        (["run", "students", "--config", "demo2"], r"unknown config 'demo2' .*known: demo, paper"),
        (["run", "teacher", "--config", "/nonexistent/x.yaml"], r"unknown config '/nonexistent/"),
    ],
    ids=["unknown_recipe", "unknown_config", "unknown_config_lists_known", "missing_yaml_path"],
)
def test_cli_misuse_is_one_line_and_exit_code_2(argv, needle, capsys):
    fails(argv, capsys, needle)


def test_a_stray_positional_is_refused_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "teacher", "--config", "tiny", "train.epochs"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: train.epochs" in err and "Traceback" not in err


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["run", "teacher", "--config", "tiny", "train.epochs"])
    assert capsys.readouterr().err.count("\n") == 1


def test_an_unwritable_run_dir_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    fails([*TEACHER, f"run_dir={tmp_path / 'file' / 'run'}"], capsys, r"file/run")


# --- interruption ----------------------------------------------------------------------------

# Runs the CLI after wrapping MODULE.NAME so that its N-th call, once it has returned, touches
# MARKER and sleeps: the test then SIGKILLs the process at a known point.
PAUSE = """
import importlib, pathlib, sys, time
module, name, n, marker = sys.argv[1:5]
module = importlib.import_module(module)
original, calls = getattr(module, name), [0]
def paused(*args, **kwargs):
    out = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == int(n):
        pathlib.Path(marker).touch()
        time.sleep(600)
    return out
setattr(module, name, paused)
from distill.cli import main
sys.exit(main(sys.argv[5:]))
"""


def run_and_kill(target: str, n: int, argv: list[str], marker: Path) -> None:
    """Start the CLI in a subprocess, wait until ``target``'s n-th call returned, SIGKILL it."""
    module, name = target.rsplit(".", 1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", PAUSE, module, name, str(n), str(marker), "-q", *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "slow"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def shard_hashes(record_dir: Path) -> dict[str, list[str]]:
    return {
        split: [
            s["sha256"]
            for s in json.loads((record_dir / split / "manifest.json").read_text())["shards"]
        ]
        for split in ("train", "valid")
    }


def test_killed_recording_resumes_and_matches_an_uninterrupted_one(prepared, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(prepared / "teacher", run / "teacher")
    out = run / "record" / "train"
    run_and_kill("distill.record.save_tensors", 2, [*RECORD, f"run_dir={run}"], tmp_path / "m")
    # Killed after shard 1 was written but before the partial manifest listed it.
    assert (out / "shard-00001.safetensors").exists() and not (out / "manifest.json").exists()
    assert len(json.loads((out / "manifest.partial.json").read_text())["shards"]) == 1
    (out / ".shard-00002.safetensors.x1y2.tmp").write_bytes(b"torn write")  # as a kill leaves
    assert main(["-q", *RECORD, f"run_dir={run}"]) == 0
    assert shard_hashes(run / "record") == shard_hashes(prepared / "record")
    assert not list(out.glob(".*.tmp")) and not (out / "manifest.partial.json").exists()


def test_killed_student_training_resumes_and_matches_an_uninterrupted_run(prepared, tmp_path):
    argv = [*STUDENTS, "train.ckpt_every=3"]
    whole = Path(shutil.copytree(prepared, tmp_path / "whole"))
    assert main(["-q", *argv, f"run_dir={whole}"]) == 0
    broken = Path(shutil.copytree(prepared, tmp_path / "broken"))
    # learning_rate runs once when the optimizer is made, then once before each step: its 9th
    # call returns before step 8, so 7 steps are done (5 per epoch; checkpoints at 3, 5, 6).
    run_and_kill("distill.train.learning_rate", 9, [*argv, f"run_dir={broken}"], tmp_path / "m")
    out = broken / "students" / "alr"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6
    assert not (out / "students.safetensors").exists()
    assert main(["-q", *argv, f"run_dir={broken}"]) == 0
    a = load_file(whole / "students" / "alr" / "students.safetensors")
    b = load_file(out / "students.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    whole_steps = [
        json.loads(x)["step"]
        for x in (whole / "students" / "alr" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == whole_steps


def test_recording_again_with_other_settings_first_retires_the_old_manifest(
    prepared, tmp_path, monkeypatch
):
    import distill.record
    from distill.runs import load_teacher

    out = Path(shutil.copytree(prepared / "record" / "train", tmp_path / "train"))
    model, _ = load_teacher(prepared)
    examples = [([5, 6, 3], [7, 8])] * 20

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(distill.record, "save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):  # the first new shard is never written
        distill.record.record(model, examples, ["encoder.0.self_attn"], out, progress=False)
    assert not (out / "manifest.json").exists()


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    from distill.train import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n{"step": 6, "lo')
    MetricsLog(path, resume_step=4)
    assert path.read_text() == '{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n'


# --- numerical faults ------------------------------------------------------------------------


def nan_at(original, step: int, only=lambda *a: True):
    """``original`` with a NaN result at its ``step``-th training call (validation excluded)."""
    calls = [0]

    def wrapped(*args):
        out = original(*args)
        if torch.is_grad_enabled() and only(*args):
            calls[0] += 1
            if calls[0] == step:
                return out * math.nan
        return out

    return wrapped


def test_student_nan_names_site_and_step_and_keeps_the_last_checkpoint(
    run_copy, capsys, monkeypatch
):
    import distill.losses

    site = "encoder.1.self_attn"
    monkeypatch.setattr(
        distill.losses,
        "site_loss",
        nan_at(distill.losses.site_loss, 5, only=lambda student, s, batch: s == site),
    )
    assert main(["-q", *STUDENTS, f"run_dir={run_copy}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"distill: error: students:alr: site '{site}': loss is nan at step 5; stopped, last good "
        r"checkpoint kept at .*students/alr/checkpoint",
        last,
    ), last
    out = run_copy / "students" / "alr"
    assert not (out / "students.safetensors").exists() and not (out / "spec.json").exists()
    cfg = json_model_cfg(run_copy)
    students = torch.nn.ModuleDict(
        {s.replace(".", "/"): build_student("alr", cfg, "xs") for s in mode_sites("alr", cfg)}
    )
    assert load_checkpoint(out / "checkpoint", students)["step"] == 4
    assert all(p.isfinite().all() for p in students.parameters())


def test_teacher_nan_names_the_step_exits_2_and_keeps_the_last_checkpoint(
    tmp_path, capsys, monkeypatch
):
    import recipes.teacher

    monkeypatch.setattr(
        recipes.teacher, "label_smoothed_loss", nan_at(recipes.teacher.label_smoothed_loss, 4)
    )
    run = tmp_path / "run"
    argv = [*TEACHER, f"run_dir={run}", "train.epochs=1", "train.ckpt_every=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(
        r"distill: error: teacher: loss is nan at step 4; stopped, last good "
        r"checkpoint kept at .*teacher/checkpoint$",
        err.strip(),
    ), err
    assert json.loads((run / "teacher" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (run / "teacher" / "model.safetensors").exists()


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss that still breaks weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_weights_broken_by_a_finite_loss_are_never_checkpointed(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batches = [torch.randn(4, 3) for _ in range(6)]
    step = [0]

    def loss_fn(m, x):
        step[0] += 1
        y = m(x)
        return (_InfGrad.apply(y) if step[0] == 4 else y).pow(2).mean()

    cfg = TrainConfig(epochs=1, schedule="constant", lr=1e-2, ckpt_every=1, log_every=1)
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 4"):
        fit(model, lambda e: batches, loss_fn, cfg, tmp_path, d_model=3, desc="t")
    fresh = torch.nn.Linear(3, 1)
    assert load_checkpoint(tmp_path / "checkpoint", fresh)["step"] == 3
    assert all(p.isfinite().all() for p in fresh.parameters())


# --- fuzzing ---------------------------------------------------------------------------------

LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\ufeff"))
CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\ufeff"))
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(pairs=st.lists(st.tuples(LINE, LINE), min_size=1, max_size=6))
def test_parallel_text_files_round_trip_any_text_without_newlines(tmp_path, pairs):
    for lang, side in (("de", 0), ("en", 1)):
        text = "".join(p[side] + "\n" for p in pairs)
        (tmp_path / f"f.train.{lang}").write_bytes(text.encode("utf-8"))
    assert load_pairs(DataConfig(source="text", path=str(tmp_path / "f")), "train") == pairs


@FUZZ
@given(
    pairs=st.lists(st.tuples(CELL, CELL), min_size=1, max_size=6),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_tsv_round_trips_any_text_without_tabs_or_newlines(tmp_path, pairs, crlf, bom):
    assume(not {"de", "en"} <= set(pairs[0]))  # such a first line is a header by design
    end = "\r\n" if crlf else "\n"
    text = ("\ufeff" if bom else "") + "".join(f"{s}\t{t}{end}" for s, t in pairs)
    (tmp_path / "f.tsv").write_bytes(text.encode("utf-8"))
    assert load_pairs(DataConfig(source="tsv", path=str(tmp_path / "f.tsv")), "train") == pairs


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from([b"a", b"\t", b"\n", b"\r", b"\xef\xbb\xbf", b"\xff", b"de"])).map(
            b"".join
        ),
    ),
    gz=st.sampled_from(["", "gz", "corrupt"]),
    source=st.sampled_from(["tsv", "text"]),
)
def test_arbitrary_bytes_parse_or_raise_data_error(tmp_path, raw, gz, source):
    if gz == "gz":
        raw = gzip.compress(raw)
    elif gz == "corrupt":
        raw = gzip.compress(raw)[:12] + raw
    if source == "tsv":
        path = tmp_path / ("f.tsv.gz" if gz else "f.tsv")
        path.write_bytes(raw)
        cfg = DataConfig(source="tsv", path=str(path))
    else:
        (tmp_path / "f.train.de").write_bytes(raw)
        (tmp_path / "f.train.en").write_bytes(raw)
        cfg = DataConfig(source="text", path=str(tmp_path / "f"))
    try:
        pairs = load_pairs(cfg, "train")
    except DataError as err:
        assert "\n" not in str(err) and str(tmp_path) in str(err)
    else:
        assert pairs and all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)


KEYS = st.sampled_from(
    [
        "run_dir",
        "threads",
        "label_smoothing",
        "data",
        "data.source",
        "data.path",
        "data.max_len",
        "data.vocab_size",
        "model.d_model",
        "model.n_heads",
        "model.dropout",
        "train.lr",
        "train.betas",
        "train.epochs",
        "train.schedule",
        "eval.beam",
        "modes",
        "size",
        "sizes",
        "sizes.alr",
        "lrs",
        "lrs.alr",
        "dtype",
        "shard_size",
        "source",
        "stages",
        "online",
        "teacher",
        "teacher.data.max_len",
        "students.size",
        "record",
        "train",
        "nosuch.key",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1",
            "3",
            "1e-3",
            ".inf",
            "-.inf",
            ".nan",
            "null",
            "true",
            "[",
            "{",
            ":",
            "[alr]",
            "[0.9, 0.98]",
            "{alr: s}",
            "{alr: 1e-4}",
            "[[1]]",
            "2001-12-14",
            "!!binary aGk=",
            "!!set {a}",
            "!!python/object:os.system",
            "tsv",
            "demo",
            "xs",
            "fp16",
            BIG,
            "-" + BIG,
        ]
    ),
    st.text(max_size=12),
    st.integers().map(str),
    st.floats().map(repr),
)
OVERRIDES = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES), st.text(max_size=20)),
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(recipe=st.sampled_from(["teacher", "record", "students", "pipeline"]), overrides=OVERRIDES)
def test_arbitrary_overrides_build_a_config_or_raise_config_error(recipe, overrides):
    try:
        load_recipe_config(recipe, "tiny", overrides)
    except ConfigError as err:
        assert "\n" not in str(err).strip()
