"""Checks on the shipped German→English demo corpus (distill/demo_corpus) and its builder."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import pytest

from distill.demo_corpus.build import clean, is_usable, norm_key, read_mo, read_po

CORPUS = Path(__file__).resolve().parents[1] / "distill" / "demo_corpus"
SPLITS = ("train", "valid", "test")
HEADER = "de\ten\torigin"


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    """Raw lines (header included) of each split."""
    return {
        split: gzip.decompress((CORPUS / f"{split}.tsv.gz").read_bytes())
        .decode("utf-8")
        .split("\n")
        for split in SPLITS
    }


@pytest.fixture(scope="module")
def rows(corpus: dict[str, list[str]]) -> dict[str, list[list[str]]]:
    assert all(lines[-1] == "" for lines in corpus.values()), "files end with a newline"
    return {split: [line.split("\t") for line in lines[1:-1]] for split, lines in corpus.items()}


def test_header(corpus: dict[str, list[str]]) -> None:
    for lines in corpus.values():
        assert lines[0] == HEADER


def test_every_row_has_three_clean_nonempty_fields(rows: dict[str, list[list[str]]]) -> None:
    for split, table in rows.items():
        for row in table:
            assert len(row) == 3 and all(field.strip() == field != "" for field in row), (
                split,
                row,
            )
            assert not any("\r" in field for field in row), (split, row)


def test_origins_are_documented(rows: dict[str, list[list[str]]]) -> None:
    licenses = (CORPUS / "LICENSES.md").read_text("utf-8")
    origins = {row[2] for table in rows.values() for row in table}
    assert "ddtp" in origins and any(o.startswith("mo:") for o in origins)
    assert any(o.startswith("po:") for o in origins)
    for origin in origins:
        assert re.fullmatch(r"ddtp|(?:mo|po):[a-z0-9][\w.+-]*", origin), origin
        assert f"| {origin} |" in licenses, f"{origin} missing from LICENSES.md"


def _keys(table: list[list[str]]) -> list[str]:
    """``norm_key`` of every German source, computed in one pass over the whole column."""
    column = re.sub(r"[^\w\s]+", " ", "\n".join(row[0] for row in table).casefold())
    keys = [" ".join(line.split()) for line in column.split("\n")]
    assert all(keys[i] == norm_key(table[i][0]) for i in range(0, len(table), 997))
    return keys


def test_no_valid_or_test_source_in_train(rows: dict[str, list[list[str]]]) -> None:
    keys = {split: _keys(table) for split, table in rows.items()}
    for split, split_keys in keys.items():
        assert len(set(split_keys)) == len(split_keys), f"duplicate German source in {split}"
    train = set(keys["train"])
    assert not train & set(keys["valid"])
    assert not train & set(keys["test"])
    assert not set(keys["valid"]) & set(keys["test"])


def test_sizes(rows: dict[str, list[list[str]]]) -> None:
    assert len(rows["train"]) >= 100_000
    assert 2_000 <= len(rows["valid"]) <= 3_500
    assert 2_000 <= len(rows["test"]) <= 3_500
    assert sum((CORPUS / f"{split}.tsv.gz").stat().st_size for split in SPLITS) <= 8_000_000


def test_word_counts(rows: dict[str, list[list[str]]]) -> None:
    for table in rows.values():
        for de, en, _ in table:
            assert 3 <= len(de.split()) <= 60 and 3 <= len(en.split()) <= 60, (de, en)


def test_gzip_is_deterministic() -> None:
    for split in SPLITS:
        head = (CORPUS / f"{split}.tsv.gz").read_bytes()[:10]
        assert head[:3] == b"\x1f\x8b\x08" and struct.unpack("<I", head[4:8])[0] == 0  # mtime 0


def test_clean_strips_placeholders_accelerators_and_markup() -> None:
    assert clean("Could not open “%s”: %d%% done") == "Could not open: % done"
    assert clean("_Open the <b>file</b> %(name)s now…") == "Open the file now…"
    assert clean("&Speichern unter {0} ~hier") == "Speichern unter hier"
    assert clean("keyword %<export%> not allowed for %qD") == "keyword export not allowed for"
    assert clean("Today's topics (%d messages)") == "Today's topics (messages)"


def test_is_usable_filters() -> None:
    assert is_usable("Die Datei wurde gespeichert.", "The file has been saved.")
    assert not is_usable("Datei speichern", "Save")  # too short
    assert not is_usable("  -x, --extract   Dateien auspacken", "  -x, --extract   extract files")
    assert not is_usable(
        "Siehe /usr/share/doc/foo für Details", "See /usr/share/doc/foo for details"
    )
    assert not is_usable("Keine Übersetzung hier vorhanden", "Keine Übersetzung hier vorhanden")
    assert not is_usable("ALLE DATEIEN LÖSCHEN JETZT", "DELETE ALL FILES NOW")


def test_read_po_skips_fuzzy_obsolete_and_untranslated() -> None:
    po = "\n".join(
        [
            'msgid ""',
            'msgstr "Content-Type: text/plain; charset=UTF-8\\n"',
            "",
            'msgctxt "menu"',
            'msgid "Open the "',
            '"\\"file\\""',
            'msgstr "Die \\"Datei\\" "',
            '"öffnen"',
            "",
            "#, fuzzy",
            'msgid "Fuzzy one"',
            'msgstr "Unsicher"',
            "",
            'msgid "One file"',
            'msgid_plural "Many files"',
            'msgstr[0] "Eine Datei"',
            'msgstr[1] "Viele Dateien"',
            "",
            'msgid "Untranslated"',
            'msgstr ""',
            "",
            '#~ msgid "Obsolete"',
            '#~ msgstr "Veraltet"',
        ]
    )
    assert list(read_po(po)) == [
        ('Open the "file"', 'Die "Datei" öffnen'),
        ("One file", "Eine Datei"),
    ]


def test_read_mo_reads_context_and_plurals() -> None:
    entries = sorted(
        [
            (b"", b"Content-Type: text/plain; charset=UTF-8\n"),
            (b"menu\x04Open file", "Datei öffnen".encode()),
            (b"One file\0Many files", b"Eine Datei\0Viele Dateien"),
        ]
    )
    ids = b"".join(k + b"\0" for k, _ in entries)
    strs = b"".join(v + b"\0" for _, v in entries)
    start = 28 + 16 * len(entries)
    table, offset = [], start
    for key, _ in entries:
        table.append((len(key), offset))
        offset += len(key) + 1
    for _, value in entries:
        table.append((len(value), offset))
        offset += len(value) + 1
    header = struct.pack("<7I", 0x950412DE, 0, len(entries), 28, 28 + 8 * len(entries), 0, 0)
    data = header + b"".join(struct.pack("<2I", *t) for t in table) + ids + strs
    assert dict(read_mo(data)) == {"Open file": "Datei öffnen", "One file": "Eine Datei"}
