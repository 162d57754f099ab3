"""Fuzzing: any text round-trips through the corpus readers, any bytes parse or raise DataError,
any override builds a config or raises ConfigError."""

import gzip

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from distill.cli import load_recipe_config
from distill.data import DataConfig, load_pairs
from distill.errors import ConfigError, DataError
from tests.reliability.helpers import BIG

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
        "modes.alr",
        "modes.alr.size",
        "modes.alr.lr",
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
