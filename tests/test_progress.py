"""`distill -q` silences progress bars as well as log lines."""

from distill import progress
from distill.cli import main
from distill.progress import progress_bar


def test_quiet_hides_bars_and_the_default_shows_them(capsys, monkeypatch):
    monkeypatch.setattr(progress, "QUIET", False)
    assert sum(progress_bar(range(3), desc="counting")) == 3
    assert "counting" in capsys.readouterr().err
    assert sum(progress_bar(range(3), desc="hidden", show=False)) == 3
    monkeypatch.setattr(progress, "QUIET", True)
    assert sum(progress_bar(range(3), desc="counting")) == 3
    assert "counting" not in capsys.readouterr().err


def test_the_command_line_flag_sets_quiet(monkeypatch, capsys):
    monkeypatch.setattr(progress, "QUIET", False)
    assert main(["-q", "ls"]) == 0
    assert progress.QUIET
    assert main(["ls"]) == 0
    assert not progress.QUIET
