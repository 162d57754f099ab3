"""The README's and BENCHMARKS.md's result tables are what eval/tables.py renders from the
committed docs/results/*.json: no number in them is typed by hand."""

import copy
import re

import pytest
from distill_eval import tables


@pytest.fixture(scope="module")
def data():
    return tables.load()


def test_every_committed_table_matches_its_json():
    assert tables.main(["--check"]) == 0  # python eval/tables.py regenerates them


@pytest.mark.parametrize("doc", tables.DOCS)
def test_a_changed_number_in_the_json_makes_the_check_fail(doc, data):
    text = (tables.ROOT / doc).read_text(encoding="utf-8")
    names = re.findall(r"<!-- generated: ([\w-]+) -->", text)
    assert names and set(names) <= set(tables.TABLES)  # the doc holds generated tables
    changed = copy.deepcopy(data)
    changed["test"]["rows"][0]["bleu"] += 1.0  # the teacher's test BLEU
    changed["speed"]["rows"][0]["bleu_split"] += 1.0
    assert tables.render(text, data) == text
    assert tables.render(text, changed) != text


def test_the_headline_holds_the_teacher_and_every_attentionless_row_with_its_speed(data):
    table = tables.headline(data).split("\n\n")[0].splitlines()[2:]
    rows = [r for r in data["test"]["rows"] if r["variant"] == "teacher" or r["attentionless"]]
    assert len(table) == len(rows)  # no row picked by hand
    speed = {(r["variant"], r["stage"]): r for r in data["speed"]["rows"]}
    assert ("teacher", "") in speed and len(speed) > 1
    for line in table:
        variant, _, stage = (cell.strip() for cell in line.split("|")[1:4])
        found = speed.get((variant, stage))
        want = f"{found['speed_vs_teacher']['median']:.2f} (" if found else "not measured"
        assert want in line, line


def test_an_unknown_table_name_is_refused(data):
    with pytest.raises(SystemExit, match="unknown generated table 'nope'"):
        tables.render("<!-- generated: nope -->\n<!-- end generated: nope -->", data)


def test_provenance_names_distills_own_commit_and_survives_a_machine_without_git(monkeypatch):
    import subprocess

    from distill import hardware

    found = hardware.provenance(["distill", "run", "evaluate"])
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tables.ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert found["commit"].split("+")[0] == head and found["command"] == "distill run evaluate"
    assert found["cpu"] == hardware.describe_cpu() and found["threads"] >= 1

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(hardware.subprocess, "run", no_git)
    assert hardware.provenance(["x"])["commit"] == ""  # an installed wheel, no git: no crash
