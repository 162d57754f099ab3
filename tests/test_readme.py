"""The README's commands, in the order a user types them after `make demo`, work as written: run
here on the tiny pipeline (`make demo` on the tiny config), in a folder laid out as the README's
(``runs/demo``), each command parsed from the README itself."""

import contextlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from distill.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """The block's command lines, comments dropped."""
    lines = (line.split("   #")[0].split("  #")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def run_line(line: str) -> tuple[int, str]:
    """``distill ARGS [< IN] [> OUT]`` in this process: exit code and what it printed."""
    words = shlex.split(line)
    assert words[0] == "distill", line
    stdin = stdout = None
    if "<" in words:
        i = words.index("<")
        stdin, words = Path(words[i + 1]), words[:i] + words[i + 2 :]
    if ">" in words:
        i = words.index(">")
        stdout, words = Path(words[i + 1]), words[:i] + words[i + 2 :]
    out = io.StringIO()
    data = stdin.read_bytes() if stdin else b""
    fake_stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", fake_stdin)
        code = main(["-q", *words[1:]])
    if stdout:
        stdout.write_text(out.getvalue(), encoding="utf-8")
    return code, out.getvalue()


@pytest.fixture(scope="module")
def demo_dir(tiny_run, tmp_path_factory):
    """A folder where ``runs/demo`` is what `make demo` leaves (here: the tiny pipeline's run)."""
    root = tmp_path_factory.mktemp("readme")
    (root / "runs").mkdir()
    (root / "runs" / "demo").symlink_to(tiny_run)
    (root / "de.txt").write_text("Der Hund sieht den Ball.\nDie Katze mag das Haus!\n")
    return root


def test_the_readme_export_section_runs_as_written_after_make_demo(demo_dir, monkeypatch, capsys):
    monkeypatch.chdir(demo_dir)
    text = section("Export and use a model")
    lines = [line for block in blocks(text, "bash") for line in commands(block)]
    assert lines[0] == "distill export runs/demo --out exports/demo-best"  # the first thing typed
    for line in lines:
        code, out = run_line(line)
        assert code == 0, f"{line}: {capsys.readouterr().err}"
        if line.startswith("distill translate") and ">" not in line:
            assert out.count("\n") == 2, line  # one line out per line in
    assert Path("en.txt").read_text().count("\n") == 2
    # The default export replaces every attention site, and says which variant it is.
    config = json.loads((Path("exports/demo-best") / "config.json").read_text())
    assert config["attentionless"] and config["variant"].startswith("attentionless"), config
    for code in blocks(text, "python"):  # distill.from_pretrained, then the transformers lines
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(code, "README.md", "exec"), {})
        assert printed.getvalue().startswith("["), code
