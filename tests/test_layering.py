"""The direction of imports: library <- eval <- recipes <- command line, and no cycles.

Every ``import`` statement counts, function-level ones included (they hide cycles, they do not
remove them). docs/DESIGN.md describes the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# importable package name -> its folder in the checkout (pyproject.toml's package-dir)
PACKAGES = {"distill": "distill", "distill_eval": "eval", "distill_recipes": "recipes"}
# Lower layers never import higher ones. The command line lives in the distill package but is
# the top layer: it runs the recipes.
TOP = ("distill.cli", "distill.__main__")
RANKS = {"distill": 0, "distill_eval": 1, "distill_recipes": 2, "cli": 3}


def layer(module: str) -> str:
    if module in TOP:
        return "cli"
    return module.split(".", 1)[0]


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages under ``root``."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = [package, *path.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported project module) for every import statement in the file."""
    out = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            # `from pkg import mod` imports the submodule when there is one
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            while target and target not in known:  # `import a.b.c` -> the deepest known module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.append((node.lineno, target))
    return out


def violations(root: Path) -> list[str]:
    """One line per upward import and per import cycle among the project's modules."""
    known = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    found = []
    for name, path in known.items():
        for line, target in imports(path, name, known):
            graph[name].add(target)
            if RANKS[layer(target)] > RANKS[layer(name)]:
                where = path.relative_to(root)
                found.append(
                    f"{where}:{line}: {name} imports {target} "
                    f"(layer {layer(target)} is above {layer(name)})"
                )
    # cycles: depth-first search, reporting each back edge's loop once
    state: dict[str, int] = {}
    stack: list[str] = []
    loops: set[tuple[str, ...]] = set()

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                loop = stack[stack.index(n) :]
                i = loop.index(min(loop))
                loops.add(tuple(loop[i:] + loop[:i]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    found += [f"import cycle: {' -> '.join([*loop, loop[0]])}" for loop in sorted(loops)]
    return found


def test_the_project_imports_only_downward_and_without_cycles():
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"distill/__init__.py": "", "recipes/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_an_upward_import_inside_a_function_is_found(tmp_path):
    root = _tree(
        tmp_path,
        {
            "distill/runs.py": (
                "import os\n\ndef f():\n    from distill_recipes.teacher import Config\n"
            ),
            "recipes/teacher.py": "from distill.runs import f\n",
        },
    )
    assert violations(root) == [
        "distill/runs.py:4: distill.runs imports distill_recipes.teacher "
        "(layer distill_recipes is above distill)",
        "import cycle: distill.runs -> distill_recipes.teacher -> distill.runs",
    ]


def test_the_command_line_may_import_recipes_but_not_the_reverse(tmp_path):
    root = _tree(
        tmp_path,
        {
            "distill/cli.py": "import distill_recipes.pipeline\n",
            "recipes/pipeline.py": "def f():\n    from distill import cli\n",
        },
    )
    assert violations(root) == [
        "recipes/pipeline.py:2: distill_recipes.pipeline imports distill.cli "
        "(layer cli is above distill_recipes)",
        "import cycle: distill.cli -> distill_recipes.pipeline -> distill.cli",
    ]


def test_a_cycle_within_the_library_is_found(tmp_path):
    root = _tree(
        tmp_path,
        {"distill/a.py": "from . import b\n", "distill/b.py": "def f():\n    import distill.a\n"},
    )
    assert violations(root) == ["import cycle: distill.a -> distill.b -> distill.a"]
