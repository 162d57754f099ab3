"""Bad input through the real command line: corpora, configs, arguments. Each exits with code 2
and ONE stderr line naming the file (and line) or key, and writes nothing (docs/RELIABILITY.md)."""

import gzip
import re
from pathlib import Path

import pytest

from distill.cli import main
from distill.data import DataConfig, Tokenizer, encode_pairs, load_pairs
from tests.reliability.helpers import BIG, RECORD, STUDENTS, TEACHER, fails, tree

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
    (STUDENTS, ["sizes={alr: s}"], r"config key 'sizes' was removed: use modes: \{MODE: \{size"),
    (STUDENTS, ["residual=[alrr]"], "config key 'residual' was removed: use modes"),
    (STUDENTS, ["modes.alr.size=xxl"], r"config 'modes\.alr': unknown size 'xxl'"),
    (STUDENTS, ["modes.alr.lr=-1"], "lr must be a finite number > 0"),
    (STUDENTS, ["modes.alr.lr=.inf"], "lr must be a finite number > 0"),
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
    assert err.count("\n") == 1, err  # one line: no usage block before it


def test_an_unwritable_run_dir_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    fails([*TEACHER, f"run_dir={tmp_path / 'file' / 'run'}"], capsys, r"file/run")
