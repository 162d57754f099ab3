"""Corpora, length filtering and batching: every source gives the same batches for one corpus."""

import gzip
import json
import logging
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from distill import data
from distill.config import from_dict
from distill.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    Batch,
    DataConfig,
    collate,
    encode_pairs,
    load_pairs,
    sentence_batches,
    token_batches,
    unsort,
)
from distill.errors import ConfigError, DataError

SPLITS = {"train": slice(0, 60), "valid": slice(60, 80), "test": slice(80, 100)}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' Arrow cache of local files inside the test's tmp dir."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_tsv(path, rows, header=None, gz=False):
    text = "".join("\t".join(row) + "\n" for row in ([header] if header else []) + rows)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def write_sources(root, pairs):
    """The same pairs as every source kind; returns {name: DataConfig}."""
    for d in ("demo", "tsv", "text", "parquet", "jsonl"):
        (root / d).mkdir()
    hf_names = {"train": "train", "valid": "validation", "test": "test"}
    for split, part in SPLITS.items():
        rows = pairs[part]
        write_tsv(
            root / "demo" / f"{split}.tsv.gz",
            [[de, en, "toy"] for de, en in rows],
            header=["de", "en", "origin"],
            gz=True,
        )
        write_tsv(root / "tsv" / f"{split}.tsv", [list(r) for r in rows])
        for lang, col in (("de", 0), ("en", 1)):
            (root / "text" / f"corpus.{split}.{lang}").write_text(
                "".join(r[col] + "\n" for r in rows), encoding="utf-8"
            )
        records = [{"translation": {"de": de, "en": en}} for de, en in rows]
        pq.write_table(
            pa.Table.from_pylist(records),
            root / "parquet" / f"{hf_names[split]}-00000-of-00001.parquet",
        )
        (root / "jsonl" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
    return {
        "demo": DataConfig(source="demo"),
        "tsv": DataConfig(source="tsv", path=str(root / "tsv")),
        "text": DataConfig(source="text", path=str(root / "text" / "corpus")),
        "parquet": DataConfig(source="iwslt2017", path=str(root / "parquet")),
        "jsonl": DataConfig(source="iwslt2017", path=str(root / "jsonl")),
    }


def check_batch_layout(batch: Batch, examples):
    """BOS opens tgt_in, EOS closes every src/tgt_out row, PAD after; rows match the examples."""
    for t in (batch.src, batch.tgt_in, batch.tgt_out, batch.index):
        assert t.dtype == torch.long
    assert batch.tgt_in.shape == batch.tgt_out.shape and batch.src.size(0) == len(batch.index)
    assert (batch.tgt_in[:, 0] == BOS_ID).all()
    for row, i in enumerate(batch.index.tolist()):
        src, tgt = examples[i]
        s, t = len(src), len(tgt)
        assert batch.src[row, :s].tolist() == src and src[-1] == EOS_ID
        assert batch.tgt_in[row, 1 : t + 1].tolist() == tgt
        assert batch.tgt_out[row, : t + 1].tolist() == tgt + [EOS_ID]
        assert (batch.src[row, s:] == PAD_ID).all()
        assert (batch.tgt_in[row, t + 1 :] == PAD_ID).all()
        assert (batch.tgt_out[row, t + 1 :] == PAD_ID).all()


def test_all_sources_give_identical_batches(
    tmp_path, monkeypatch, hf_cache, tiny_pairs, tiny_tokenizer
):
    pairs = tiny_pairs[:100]
    configs = write_sources(tmp_path, pairs)
    monkeypatch.setattr(data, "DEMO_DIR", tmp_path / "demo")
    reference = None
    for name, cfg in configs.items():
        for split, part in SPLITS.items():
            assert load_pairs(cfg, split) == pairs[part], (name, split)
        examples, report = encode_pairs(load_pairs(cfg, "train"), tiny_tokenizer, 50)
        assert report.kept == 60
        batches = token_batches(examples, 200, shuffle=True, seed=3)
        for batch in batches:
            check_batch_layout(batch, examples)
        flat = [(b.src, b.tgt_in, b.tgt_out, b.index) for b in batches]
        if reference is None:
            reference = flat
        assert len(flat) == len(reference)
        for got, want in zip(flat, reference):
            assert all(torch.equal(g, w) for g, w in zip(got, want)), name


def test_reverse_direction_reads_columns_by_language(tmp_path, monkeypatch, hf_cache, tiny_pairs):
    pairs = tiny_pairs[:100]
    configs = write_sources(tmp_path, pairs)
    monkeypatch.setattr(data, "DEMO_DIR", tmp_path / "demo")
    flipped = [(en, de) for de, en in pairs[SPLITS["valid"]]]
    for name in ("demo", "text", "parquet"):
        cfg = DataConfig(source=configs[name].source, path=configs[name].path, pair="en-de")
        assert load_pairs(cfg, "valid") == flipped, name


def test_hub_export_layout_and_hub_call(tmp_path, monkeypatch, hf_cache):
    import datasets

    for config in ("iwslt2017-de-en", "iwslt2017-fr-en"):  # a copy of the whole export
        for split in ("train", "validation", "test"):
            (tmp_path / config / split).mkdir(parents=True)
            record = {"translation": {"de": f"{config} {split}", "en": "x", "fr": "y"}}
            pq.write_table(
                pa.Table.from_pylist([record]), tmp_path / config / split / "0000.parquet"
            )
    cfg = DataConfig(source="iwslt2017", path=str(tmp_path))
    assert load_pairs(cfg, "valid") == [("iwslt2017-de-en validation", "x")]

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([{"translation": {"de": "Hallo", "en": "Hello"}}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_pairs(DataConfig(source="iwslt2017"), "valid") == [("Hallo", "Hello")]
    assert calls == [
        (
            ("IWSLT/iwslt2017",),
            {
                "revision": "refs/convert/parquet",
                "data_dir": "iwslt2017-de-en",
                "split": "validation",
            },
        )
    ]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'IWSLT/iwslt2017' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"iwslt2017-de-en \(test\): cannot load .* set data\.path"):
        load_pairs(DataConfig(source="iwslt2017"), "test")


def test_tsv_bom_crlf_header_and_extra_columns(tmp_path):
    raw = "\ufeffde\ten\tnote\r\nHallo Welt\tHello world\tx\r\nJa\tYes\ty\r\n\r\n"
    path = tmp_path / "c.tsv"
    path.write_bytes(raw.encode())
    want = [("Hallo Welt", "Hello world"), ("Ja", "Yes")]
    assert load_pairs(DataConfig(source="tsv", path=str(path)), "test") == want
    reverse = load_pairs(DataConfig(source="tsv", path=str(path), pair="en-de"), "test")
    assert reverse == [(b, a) for a, b in want]


def test_max_train_pairs_keeps_train_pairs_spread_over_the_split_only(tmp_path, tiny_pairs):
    configs = write_sources(tmp_path, tiny_pairs[:100])
    cfg = DataConfig(source="tsv", path=configs["tsv"].path, max_train_pairs=7)
    train = load_pairs(DataConfig(source="tsv", path=configs["tsv"].path), "train")
    assert load_pairs(cfg, "train") == data.spread(train, 7) != train[:7]
    assert len(load_pairs(cfg, "valid")) == 20


def test_real_demo_corpus_loads():
    if not (data.DEMO_DIR / "valid.tsv.gz").exists():
        pytest.skip("demo corpus not built yet")
    for pair in ("de-en", "en-de"):
        pairs = load_pairs(DataConfig(pair=pair), "valid")
        assert pairs and all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)


def test_length_filter_counts_are_exact(tiny_tokenizer, caplog):
    short, base = "Ja.", "Der Hund sieht den Ball."
    n = len(tiny_tokenizer.encode(base))
    long = f"{base} {base}"
    pairs = [
        (base, base),  # exactly max_len with EOS / BOS: kept
        (short, short),  # kept
        (long, base),  # source too long
        (base, long),  # target too long
        (long, long),  # both too long: counted once, as source too long
        ("", base),  # empty
        (base, "   "),  # whitespace only tokenizes to nothing: empty
    ]
    with caplog.at_level(logging.INFO, logger="distill.data"):
        examples, report = encode_pairs(pairs, tiny_tokenizer, max_len=n + 1)
    assert (report.total, report.kept, report.src_too_long, report.tgt_too_long, report.empty) == (
        7,
        2,
        2,
        1,
        2,
    )
    assert str(report) in caplog.text
    assert len(examples[0][0]) == n + 1 and examples[0][0][-1] == EOS_ID
    assert examples[0][1] == tiny_tokenizer.encode(base)
    assert examples[1] == (tiny_tokenizer.encode(short) + [EOS_ID], tiny_tokenizer.encode(short))


def random_examples(n, seed=0, max_len=40):
    rng = random.Random(seed)
    return [
        (
            [rng.randrange(4, 90) for _ in range(rng.randint(0, max_len))] + [EOS_ID],
            [rng.randrange(4, 90) for _ in range(rng.randint(1, max_len))],
        )
        for _ in range(n)
    ]


def index_lists(batches):
    return [b.index.tolist() for b in batches]


def test_token_batches_respect_budget_and_cover_everything():
    examples = random_examples(300) + [([5] * 99 + [EOS_ID], [6] * 10)]  # longer than the budget
    budget = 160
    batches = token_batches(examples, budget, shuffle=True, seed=1, epoch=0)
    seen = sorted(i for b in batches for i in b.index.tolist())
    assert seen == list(range(len(examples)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(b.src.size(1), b.tgt_in.size(1)) <= budget
        check_batch_layout(b, examples)
    assert any(len(b) == 1 and b.src.size(1) == 100 for b in batches)
    assert sum(b.ntokens for b in batches) == sum(len(t) + 1 for _, t in examples)


def test_token_batches_are_deterministic_per_seed_and_epoch():
    examples = random_examples(300)
    again = index_lists(token_batches(examples, 160, shuffle=True, seed=1, epoch=2))
    assert index_lists(token_batches(examples, 160, shuffle=True, seed=1, epoch=2)) == again
    assert index_lists(token_batches(examples, 160, shuffle=True, seed=1, epoch=3)) != again
    assert index_lists(token_batches(examples, 160, shuffle=True, seed=2, epoch=2)) != again


def test_unshuffled_batches_come_in_length_order():
    examples = random_examples(200)
    batches = token_batches(examples, 160, shuffle=False)
    lengths = [len(examples[i][0]) for b in batches for i in b.index.tolist()]
    assert lengths == sorted(lengths)
    assert index_lists(token_batches(examples, 160, shuffle=False, epoch=5)) == index_lists(batches)


def test_batch_to_and_ntokens():
    batch = collate([([7, 8, EOS_ID], [9]), ([7, EOS_ID], [9, 10, 11])], [4, 2])
    assert batch.ntokens == 2 + 4 and batch.index.tolist() == [4, 2]
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tgt_out, batch.tgt_out)
    assert batch.tgt_in.tolist() == [[BOS_ID, 9, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]


def test_sentence_batches_round_trip():
    sources = [ids for ids, _ in random_examples(23, seed=4)]
    batches, order = sentence_batches(sources, 5)
    assert [b.size(0) for b in batches] == [5, 5, 5, 5, 3]
    rows = [row for b in batches for row in b.tolist()]
    lengths = [len(sources[i]) for i in order]
    assert lengths == sorted(lengths, reverse=True)
    restored = unsort(rows, order)
    for src, row in zip(sources, restored):
        assert row[: len(src)] == src and all(x == PAD_ID for x in row[len(src) :])


# --- bad input -------------------------------------------------------------------------------


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="max_len must be >= 2, got 0"):
        DataConfig(max_len=0)
    with pytest.raises(ConfigError, match="max_len"):
        from_dict(DataConfig, {"max_len": 0})
    for bad in (
        {"source": "csv"},
        {"pair": "de"},
        {"pair": "en-en"},
        {"pair": "fr-en"},
        {"source": "tsv"},
        {"vocab_size": 4},
        {"batch_tokens": 0},
    ):
        with pytest.raises(ValueError):
            DataConfig(**bad)
    cfg = DataConfig(source="iwslt2017", pair="en-fr")
    assert (cfg.src_lang, cfg.tgt_lang) == ("en", "fr")


def test_missing_hub_files_are_named(tmp_path):
    # (TSV and parallel-text files: tests/reliability/test_bad_input.py, through the CLI)
    cases = [
        (DataConfig(source="iwslt2017", path=str(tmp_path / "x")), "x: file not found"),
        (DataConfig(source="iwslt2017", path=str(tmp_path)), "no .parquet/.jsonl/.json file"),
    ]
    for cfg, message in cases:
        with pytest.raises(DataError, match=message):
            load_pairs(cfg, "train")


def test_bad_hf_files_are_named(tmp_path, hf_cache):
    wrong = tmp_path / "train.jsonl"
    wrong.write_text(json.dumps({"translation": {"fr": "Bonjour", "en": "Hello"}}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl: 'translation' has languages"):
        load_pairs(DataConfig(source="iwslt2017", path=str(wrong)), "train")
    broken = tmp_path / "broken" / "train.jsonl"
    broken.parent.mkdir()
    broken.write_text('{"translation": {"de": "Hallo", "en": "Hi"}}\n{"translation": \n')
    with pytest.raises(DataError, match=r"broken/train\.jsonl: cannot read"):
        load_pairs(DataConfig(source="iwslt2017", path=str(broken.parent)), "train")


# --- property --------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\ufeff"))


@given(total=st.integers(0, 300), n=st.integers(0, 400))
def test_spread_keeps_order_and_covers_the_whole_split(total, n):
    items = list(range(total))
    picked = data.spread(items, n)
    if n == 0 or n >= total:
        assert picked == items
        return
    assert len(picked) == n and picked == sorted(set(picked))  # n distinct items, in order
    assert picked[0] == 0 and picked[-1] >= total - total // n - 1  # from start to end
    gaps = [b - a for a, b in zip(picked, picked[1:])] or [0]
    assert max(gaps) - min(gaps) <= 1  # evenly spaced


def test_a_subset_of_a_split_grouped_by_origin_has_every_origin_in_proportion():
    split = ["ddtp"] * 330 + ["mo"] * 1200 + ["po"] * 90  # the demo's train split, in 1/100
    picked = data.spread(split, 200)
    assert {o: picked.count(o) for o in set(split)} == pytest.approx(
        {"ddtp": 200 * 330 / 1620, "mo": 200 * 1200 / 1620, "po": 200 * 90 / 1620}, abs=1
    )
