"""The modelling code of an export: the modules of this package that ``distill.hf`` needs, as
flat files beside the weights, so that transformers loads and runs an export without distill.

    distill_hf.py, distill_model.py, distill_blocks.py, ...   distill/hf.py, distill/model.py, ...

Written at export time from the package's own source, never a hand-kept copy: ``remote_code``
walks the imports of ``distill.hf`` with ``ast``, function-level ones included (transformers'
loader checks those too, and fetches every file a relative import names), and rewrites each
``from distill.X import ...`` into ``from .distill_X import ...``. The ``distill_`` prefix keeps
the names apart from transformers' own modules. A module that imports anything but the standard
library and ``ALLOWED`` (what loading an export may need) fails the export, naming the import and
the modules that lead to it: a refactor that makes the model need tqdm, datasets or accelerate
is caught here, not by a Hub user.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import NoReturn

PACKAGE = Path(__file__).resolve().parent
ROOT = "hf"  # the module of the transformers classes that config.json's auto_map names
ALLOWED = ("torch", "transformers", "safetensors", "tokenizers")
PREFIX = "distill_"  # distill/<module>.py is the export's distill_<module>.py
_OWN = re.compile(r"from\s+distill\.(\w+)")


def _offset(lines: list[str], node: ast.stmt) -> int:
    """Where ``node`` starts in the text ``"".join(lines)`` (ast counts columns in UTF-8 bytes)."""
    line = lines[node.lineno - 1]
    column = len(line.encode("utf-8")[: node.col_offset].decode("utf-8"))
    return sum(len(before) for before in lines[: node.lineno - 1]) + column


def _flatten(module: str, chain: list[str]) -> tuple[str, list[str]]:
    """(the source of ``distill.<module>`` with its own imports made relative, the modules they
    name); ``chain``: the modules that lead to it from ``ROOT``, for the error."""
    path = PACKAGE / f"{module}.py"
    source = path.read_text(encoding="utf-8")

    def refuse(node: ast.stmt, what: str) -> NoReturn:
        needed = " -> ".join(f"distill.{m}" for m in chain)
        raise RuntimeError(
            f"{path}:{node.lineno}: {what}, which an export's modelling code ({needed}) cannot "
            f"use: it may import the standard library, {', '.join(ALLOWED)} and "
            "`from distill.X import ...`"
        )

    own = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        for name in names:
            top, _, rest = name.partition(".")
            if top == "distill" and isinstance(node, ast.ImportFrom) and rest.isidentifier():
                if not (PACKAGE / f"{rest}.py").is_file():
                    refuse(node, f"imports {name}, not a module file of the package")
                own.append((node, rest))
            elif top == "distill" or not top:
                refuse(node, f"imports {name} in a form that is not rewritten")
            elif top not in sys.stdlib_module_names and top not in ALLOWED:
                refuse(node, f"imports '{top}'")
    lines = source.splitlines(keepends=True)
    for node, other in sorted(own, key=lambda n: (n[0].lineno, n[0].col_offset), reverse=True):
        start = _offset(lines, node)
        found = _OWN.match(source, start)
        if found is None:
            refuse(node, "imports distill in a form that is not rewritten")
        source = f"{source[:start]}from .{PREFIX}{other}{source[found.end() :]}"
    return source, [other for _, other in own]


def remote_code() -> dict[str, str]:
    """{file name: source} for every module ``distill.hf`` needs, its own imports made relative.

    RuntimeError (a bug in distill, not bad input) when a needed module imports something
    outside the standard library and ``ALLOWED``, or imports distill in a form not rewritten."""
    files, chains, todo = {}, {ROOT: [ROOT]}, [ROOT]
    while todo:
        module = todo.pop()
        files[f"{PREFIX}{module}.py"], needed = _flatten(module, chains[module])
        for other in needed:
            if other not in chains:
                chains[other] = chains[module] + [other]
                todo.append(other)
    return files
