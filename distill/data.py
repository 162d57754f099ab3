"""Parallel corpora behind one interface, length filtering, and token-bucket batching.

Sources (``DataConfig.source``): ``demo`` (the German-English corpus shipped in the package),
``iwslt2017`` (Hugging Face hub parquet export, or local parquet/JSONL in its schema), ``tsv``
and ``text`` (parallel plain-text files). Every source yields ``(source, target)`` string pairs;
``encode_pairs`` turns them into id lists and counts what it drops; ``token_batches`` packs them
into ``Batch`` tensors.

Dimension letters: B batch, S source length (with EOS), T target length (with BOS or EOS).
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import logging
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from distill.errors import ConfigError, DataError
from distill.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from distill.tokenizer import UNK_ID as UNK_ID  # re-exported: every special id is in distill.data

logger = logging.getLogger(__name__)

SOURCES = ("demo", "iwslt2017", "tsv", "text")
SPLITS = ("train", "valid", "test")
DEMO_DIR = Path(__file__).parent / "demo_corpus"
HUB_REPO = "IWSLT/iwslt2017"
# The repo's main branch holds a loading script, which `datasets` no longer runs; the dataset
# viewer's parquet export lives on this branch as `iwslt2017-{src}-{tgt}/{split}/NNNN.parquet`.
HUB_REVISION = "refs/convert/parquet"
HF_SPLIT = {"train": "train", "valid": "validation", "test": "test"}
# Words that mark a local file as holding a split, e.g. `train-00000-of-00001.parquet`.
SPLIT_WORDS = {"train": {"train"}, "valid": {"validation", "valid", "dev"}, "test": {"test"}}
HF_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}

Example = tuple[list[int], list[int]]  # (source ids + [EOS], target ids)


@dataclass
class DataConfig:
    """Which corpus to read and how to cut it into batches."""

    source: str = "demo"  # "demo" | "iwslt2017" | "tsv" | "text"
    pair: str = "de-en"  # "SRC-TGT" language codes
    # iwslt2017: "" = the Hugging Face hub, else a local parquet/JSONL file or directory;
    # tsv: a file, or a directory holding {train,valid,test}.tsv[.gz];
    # text: a prefix, files PREFIX.{split}.{src|tgt}.
    path: str = ""
    max_len: int = 50  # max tokens per side, including the EOS (source) / BOS or EOS (target)
    vocab_size: int = 8000
    batch_tokens: int = 1500  # batch_size * max(S, T) <= batch_tokens
    max_train_pairs: int = 0  # 0 = all; else N train pairs evenly spread over the split

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        codes = re.fullmatch(r"([A-Za-z_]+)-([A-Za-z_]+)", self.pair)
        if not codes or codes[1] == codes[2]:
            raise ValueError(
                f"pair must be two different language codes like 'de-en', got {self.pair!r}"
            )
        if self.source == "demo" and {self.src_lang, self.tgt_lang} != {"de", "en"}:
            raise ValueError(
                f"the demo corpus is German-English: pair must be de-en or en-de, got {self.pair!r}"
            )
        if self.source in ("tsv", "text") and not self.path:
            raise ValueError(f"path is required for source {self.source!r}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if self.vocab_size < 8:
            raise ValueError(f"vocab_size must be >= 8, got {self.vocab_size}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        if self.max_train_pairs < 0:
            raise ValueError(f"max_train_pairs must be >= 0, got {self.max_train_pairs}")

    @property
    def src_lang(self) -> str:
        return self.pair.split("-")[0]

    @property
    def tgt_lang(self) -> str:
        return self.pair.split("-")[1]


# --- reading corpora -------------------------------------------------------------------------


def spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (in order; all of them when n is 0 or too big).

    A corpus split is often grouped by origin (the demo's train split holds its 33k package
    descriptions first, then 120k message-catalog strings), so its first n items are one domain
    only; an evenly spaced subset has every part of the split in proportion, deterministically.
    """
    total = len(items)
    if not n or n >= total:
        return list(items)
    return [items[i * total // n] for i in range(n)]


def load_pairs(cfg: DataConfig, split: str) -> list[tuple[str, str]]:
    """(source, target) strings of ``split`` ('train' | 'valid' | 'test'), in file order.

    Strings are returned as stored (no stripping); empty sides are kept here and counted by
    ``encode_pairs``. Raises ``DataError`` naming the file (and line) on bad input.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    src, tgt = cfg.src_lang, cfg.tgt_lang
    if cfg.source == "demo":
        where, pairs = _load_tsv(DEMO_DIR, split, src, tgt)
    elif cfg.source == "tsv":
        where, pairs = _load_tsv(Path(cfg.path), split, src, tgt)
    elif cfg.source == "text":
        where, pairs = _load_text(cfg.path, split, src, tgt)
    elif cfg.path:
        where, pairs = _load_hf_local(Path(cfg.path), split, src, tgt)
    else:
        where, pairs = _load_hf_hub(split, src, tgt)
    if not pairs:
        raise DataError(f"{where}: no sentence pairs")
    if split == "train" and 0 < cfg.max_train_pairs < len(pairs):
        logger.info("keeping %d of %d train pairs, evenly spread", cfg.max_train_pairs, len(pairs))
        pairs = spread(pairs, cfg.max_train_pairs)
    logger.info("loaded %d %s pairs (%s) from %s", len(pairs), split, cfg.pair, where)
    return pairs


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 (optionally gzipped) file, without line ends; a BOM is dropped."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: corrupt gzip data
        raise DataError(f"{path}: cannot read ({err})") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 ({err.reason})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _split_file(directory: Path, split: str) -> Path:
    candidates = [directory / f"{split}.tsv", directory / f"{split}.tsv.gz"]
    found = [p for p in candidates if p.is_file()]
    if len(found) != 1:
        problem = "both" if found else "neither of"
        raise DataError(
            f"{directory}: found {problem} {candidates[0].name} and {candidates[1].name}"
        )
    return found[0]


def _load_tsv(path: Path, split: str, src: str, tgt: str) -> tuple[Path, list[tuple[str, str]]]:
    """Pairs of a TSV file (or ``{split}.tsv[.gz]`` in a directory); a header picks the columns."""
    if path.is_dir():
        path = _split_file(path, split)
    elif not path.exists():
        raise DataError(f"{path}: file not found")
    lines = _read_lines(path)
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file")
    cols, start = (0, 1), 0
    header = lines[0].split("\t")
    # A header naming both languages also says which column is which, so a "de\ten" file
    # serves the en-de direction too.
    if src in header and tgt in header:
        cols, start = (header.index(src), header.index(tgt)), 1
    # Every row has as many columns as the first: a stray tab inside a sentence would otherwise
    # silently cut it short.
    need = max(len(header), 2)
    pairs = []
    for number in range(start, len(lines)):
        fields = lines[number].split("\t")
        if len(fields) != need:
            hint = " (a tab inside the text?)" if len(fields) > need else ""
            if len(fields) < need and need > 2:
                hint = f" (line 1 has {need})"
            raise DataError(
                f"{path}:{number + 1}: expected {need} tab-separated columns, "
                f"found {len(fields)}{hint}"
            )
        pairs.append((fields[cols[0]], fields[cols[1]]))
    return path, pairs


def _load_text(prefix: str, split: str, src: str, tgt: str) -> tuple[str, list[tuple[str, str]]]:
    """Pairs of the line-aligned files ``PREFIX.{split}.{src}`` and ``PREFIX.{split}.{tgt}``."""
    src_path, tgt_path = Path(f"{prefix}.{split}.{src}"), Path(f"{prefix}.{split}.{tgt}")
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
            "parallel files must be line-aligned"
        )
    return f"{src_path} + {tgt_path}", list(zip(src_lines, tgt_lines))


def _split_files(directory: Path, split: str) -> list[Path]:
    """Parquet/JSONL files under ``directory`` whose relative path names ``split``."""
    files = []
    for path in sorted(directory.rglob("*")):
        words = set(re.split(r"[^a-z]+", str(path.relative_to(directory)).lower()))
        if path.is_file() and path.suffix in HF_SUFFIXES and words & SPLIT_WORDS[split]:
            files.append(path)
    if not files:
        names = "/".join(sorted(SPLIT_WORDS[split]))
        raise DataError(f"{directory}: no .parquet/.jsonl/.json file with '{names}' in its name")
    return files


def _load_hf_local(path: Path, split: str, src: str, tgt: str) -> tuple[str, list[tuple[str, str]]]:
    """Pairs of local parquet/JSONL files with a ``translation`` column of ``{lang: text}``."""
    if path.is_dir():
        # A copy of the hub's whole parquet export holds one directory per language pair.
        configs = [path / f"iwslt2017-{a}-{b}" for a, b in ((src, tgt), (tgt, src))]
        path = next((c for c in configs if c.is_dir()), path)
        files = _split_files(path, split)
    elif path.is_file():
        logger.info("reading split %s from the single file %s", split, path)
        files = [path]
    else:
        raise DataError(f"{path}: file not found")
    for file in files:
        if file.stat().st_size == 0:  # `datasets` fails on these with a bare StopIteration
            raise DataError(f"{file}: empty file")
    kinds = {HF_SUFFIXES.get(f.suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(f"{path}: expected only .parquet or only .jsonl/.json files for {split}")
    where = ", ".join(map(str, files))
    # Imported here: `datasets` takes seconds to import and only this source needs it.
    import datasets

    try:
        dataset = datasets.load_dataset(
            kinds.pop(), data_files=[str(f) for f in files], split="train"
        )
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as err:
        raise DataError(f"{where}: cannot read ({err.__cause__ or err})") from None
    return where, _translation_pairs(dataset, where, src, tgt)


def _load_hf_hub(split: str, src: str, tgt: str) -> tuple[str, list[tuple[str, str]]]:
    """Pairs of the hub's parquet export of IWSLT 2017 (downloaded once, then cached)."""
    import datasets

    config = f"iwslt2017-{src}-{tgt}"
    where = f"{HUB_REPO}@{HUB_REVISION}/{config} ({HF_SPLIT[split]})"
    try:
        dataset = datasets.load_dataset(
            HUB_REPO, revision=HUB_REVISION, data_dir=config, split=HF_SPLIT[split]
        )
    except Exception as err:  # network, auth and missing-config errors come in many types
        raise DataError(
            f"{where}: cannot load from the Hugging Face hub ({type(err).__name__}: {err}); "
            "download the parquet files and set data.path to their directory"
        ) from err
    return where, _translation_pairs(dataset, where, src, tgt)


def _translation_pairs(dataset: Any, where: str, src: str, tgt: str) -> list[tuple[str, str]]:
    if "translation" not in dataset.column_names:
        raise DataError(f"{where}: no 'translation' column (columns: {dataset.column_names})")
    column = dataset.data.column("translation").combine_chunks()
    kind = column.type
    if pa.types.is_struct(kind) and column.null_count == 0:
        names = [kind.field(i).name for i in range(kind.num_fields)]
        if src not in names or tgt not in names:
            raise DataError(f"{where}: 'translation' has languages {names}, need {src} and {tgt}")
        # Arrow's columnar read is ~100x faster than row dicts on IWSLT's 200k rows.
        sources, targets = column.field(src).to_pylist(), column.field(tgt).to_pylist()
    else:
        # Null rows, or dicts whose keys or value types differ (which `datasets` stores as Json).
        rows = [r if isinstance(r, dict) else {} for r in dataset["translation"]]
        sources, targets = [r.get(src) for r in rows], [r.get(tgt) for r in rows]
    for row, pair in enumerate(zip(sources, targets)):
        for lang, text in zip((src, tgt), pair):
            if not isinstance(text, str):
                raise DataError(f"{where}: row {row + 1}: no {lang} text (got {text!r})")
    return list(zip(sources, targets))


# --- filtering -------------------------------------------------------------------------------


@dataclass
class FilterReport:
    """What ``encode_pairs`` kept and why it dropped the rest; each pair counts in one bucket."""

    total: int = 0
    kept: int = 0
    src_too_long: int = 0
    tgt_too_long: int = 0
    empty: int = 0
    kept_indices: list[int] = field(default_factory=list, repr=False)  # input positions kept

    def counts(self) -> dict[str, int]:
        """The counts alone (for JSON reports)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "kept_indices"}

    def __str__(self) -> str:
        return (
            f"kept {self.kept}/{self.total} pairs (dropped: {self.src_too_long} source too long, "
            f"{self.tgt_too_long} target too long, {self.empty} empty)"
        )


def encode_pairs(
    pairs: Sequence[tuple[str, str]], tok: Tokenizer, max_len: int
) -> tuple[list[Example], FilterReport]:
    """Tokenize pairs into ``(src_ids + [EOS], tgt_ids)``, dropping those that do not fit.

    A pair is kept iff both sides tokenize to at least one piece and each side, with its EOS
    (source) or BOS/EOS (target), has at most ``max_len`` tokens. Drops are checked in the order
    empty, source too long, target too long. The report is logged at INFO.
    """
    sources = tok.encode_batch([s for s, _ in pairs])
    targets = tok.encode_target_batch([t for _, t in pairs])
    report, examples = FilterReport(total=len(pairs)), []
    for i, (s, t) in enumerate(zip(sources, targets)):
        if not s or not t:
            report.empty += 1
        elif len(s) + 1 > max_len:
            report.src_too_long += 1
        elif len(t) + 1 > max_len:
            report.tgt_too_long += 1
        else:
            examples.append((s + [EOS_ID], t))
            report.kept_indices.append(i)
    report.kept = len(examples)
    logger.info("length filter (max_len %d): %s", max_len, report)
    return examples, report


# --- batching --------------------------------------------------------------------------------


@dataclass
class Batch:
    """Padded tensors of one batch; padding is ``PAD_ID`` on the right."""

    src: torch.Tensor  # (B, S) source ids + EOS
    tgt_in: torch.Tensor  # (B, T) BOS + target ids
    tgt_out: torch.Tensor  # (B, T) target ids + EOS
    index: torch.Tensor  # (B,) position of each example in the list that was batched

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""
        return Batch(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.src, self.tgt_in, self.tgt_out, self.index)
            )
        )

    @property
    def ntokens(self) -> int:
        """Number of non-pad target tokens (the loss denominator)."""
        return int(self.tgt_out.ne(PAD_ID).sum())

    def __len__(self) -> int:
        return self.src.size(0)


def _pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [PAD_ID] * (width - len(r)) for r in rows], dtype=torch.long)


def collate(examples: Sequence[Example], index: Sequence[int]) -> Batch:
    """Pad ``examples`` into a ``Batch``; ``index`` is stored as ``Batch.index``."""
    if not examples or len(examples) != len(index):
        raise ValueError(
            f"collate needs examples with one index each, got {len(examples)}/{len(index)}"
        )
    return Batch(
        src=_pad([s for s, _ in examples]),  # (B, S)
        tgt_in=_pad([[BOS_ID, *t] for _, t in examples]),  # (B, T)
        tgt_out=_pad([[*t, EOS_ID] for _, t in examples]),  # (B, T)
        index=torch.tensor(list(index), dtype=torch.long),  # (B,)
    )


def token_batches(
    examples: Sequence[Example], batch_tokens: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
) -> list[Batch]:
    """Token-bucket batches: sorted by (source, target) length, cut so B * max(S, T) <= budget.

    Every example lands in exactly one batch; a single example longer than the budget gets a
    batch of its own. With ``shuffle`` the batch order (and which of equally long examples share
    a batch) is drawn from a generator seeded by ``(seed, epoch)``, so a resumed run sees the
    same batches; without it batches come shortest first, for evaluation.
    """
    rng = random.Random(f"token_batches:{seed}:{epoch}")
    tiebreak = list(range(len(examples)))
    if shuffle:
        rng.shuffle(tiebreak)
    order = sorted(
        range(len(examples)),
        key=lambda i: (len(examples[i][0]), len(examples[i][1]), tiebreak[i]),
    )
    groups: list[list[int]] = []
    width = 0
    for i in order:
        w = max(len(examples[i][0]), len(examples[i][1]) + 1)
        if groups and (len(groups[-1]) + 1) * max(width, w) <= batch_tokens:
            groups[-1].append(i)
            width = max(width, w)
        else:
            groups.append([i])
            width = w
    if shuffle:
        rng.shuffle(groups)
    return [collate([examples[i] for i in group], group) for group in groups]


def sentence_batches(
    sources: Sequence[Sequence[int]], batch_size: int
) -> tuple[list[torch.Tensor], list[int]]:
    """Padded ``(B, S)`` source batches, longest first, and the order to undo it with ``unsort``.

    ``sources`` are model inputs (ids ending in EOS, like ``Example[0]``). Decoding in length
    order wastes little on padding; ``unsort(outputs, order)`` puts per-sentence outputs, taken
    batch after batch, back in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    batches = [
        _pad([sources[i] for i in order[k : k + batch_size]])  # (B, S)
        for k in range(0, len(order), batch_size)
    ]
    return batches, order


def unsort(items: Sequence[Any], order: Sequence[int]) -> list[Any]:
    """Inverse of a permutation: ``out[order[k]] = items[k]``."""
    if len(items) != len(order):
        raise ValueError(f"got {len(items)} items for an order of {len(order)}")
    out: list[Any] = [None] * len(order)
    for k, i in enumerate(order):
        out[i] = items[k]
    return out


def scored_pairs(
    data: DataConfig,
    split: str,
    tok,
    max_len: int,
    max_sentences: int = 0,
    source: str = "",
    pair: str = "",
) -> tuple[list[tuple[str, str]], str]:
    """The pairs an evaluation scores and a note on how they were chosen.

    Default: ``split`` of ``data`` length-filtered at ``max_len`` like the training data;
    ``source`` demo | iwslt2017 scores that corpus instead (``pair``, default data's), a .tsv
    file every line of it (long sources are split into parts when translated). ``max_sentences`` > 0
    keeps that many, evenly spread (``spread``)."""
    if source:
        pair = pair or data.pair
        if source in ("demo", "iwslt2017"):
            data = DataConfig(source=source, pair=pair)
        elif Path(source).suffix in (".tsv", ".gz"):
            pairs = load_pairs(DataConfig(source="tsv", pair=pair, path=source), split)
            kept = spread(pairs, max_sentences)
            subset = f"{len(kept)} pairs evenly spread over the {len(pairs)}"
            which = subset if len(kept) < len(pairs) else f"all {len(pairs)} pairs"
            return kept, f"{which} of {source} (long sources split)"
        else:
            raise ConfigError(f"source must be demo, iwslt2017 or a .tsv file, got '{source}'")
    pairs = load_pairs(data, split)
    _, report = encode_pairs(pairs, tok, max_len)
    kept = [pairs[i] for i in report.kept_indices]
    within = len(kept)
    kept = spread(kept, max_sentences)
    subset = f", {len(kept)} of them evenly spread" if len(kept) < within else ""
    return kept, (
        f"{data.source} {split} split: {within} of {len(pairs)} pairs "
        f"(length filter at max_len {max_len}{subset})"
    )
