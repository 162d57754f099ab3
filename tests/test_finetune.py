"""The end-to-end finetune stage: what it trains, what it leaves alone, resumption, export."""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from distill_recipes import finetune
from safetensors.torch import load_file

from distill.cli import load_recipe_config, main
from distill.data import collate, encode_pairs, load_pairs
from distill.errors import ConfigError
from distill.export import export
from distill.model import site_path
from distill.modes import VARIANTS
from distill.pretrained import from_pretrained
from distill.runs import load_teacher, load_variant, teacher_data, variant_spec
from distill.students import splice
from distill.train import TrainingDiverged
from tests.helpers import PassThrough
from tests.reliability.helpers import run_and_kill

FINETUNE = ["run", "finetune", "--config", "tiny"]


@pytest.fixture(scope="module")
def tuned(layerwise, tmp_path_factory) -> Path:
    run = Path(shutil.copytree(layerwise, tmp_path_factory.mktemp("tuned") / "run"))
    assert main(["-q", *FINETUNE, f"run_dir={run}"]) == 0
    return run


def _batch(run: Path, n: int = 8):
    teacher, tok = load_teacher(run)
    pairs = load_pairs(teacher_data(run), "valid")
    examples, _ = encode_pairs(pairs, tok, teacher.cfg.max_len)
    return collate(examples[:n], list(range(n)))


def test_students_only_leaves_every_teacher_weight_bit_identical(layerwise, tuned):
    teacher = load_file(layerwise / "teacher" / "model.safetensors")
    tuned_weights = load_file(tuned / "finetune" / "attentionless" / "model.safetensors")
    model, _ = load_teacher(layerwise)
    paths = [
        site_path(s, model.cfg) + "." for s in variant_spec(layerwise, VARIANTS["attentionless"])
    ]
    kept = [k for k in teacher if not any(k.startswith(p) for p in paths)]
    assert kept and all(torch.equal(teacher[k], tuned_weights[k]) for k in kept)
    # ... while the students did move.
    before = load_file(layerwise / "students" / "cross" / "students.safetensors")
    key = "decoder.0.cross_attn_sublayer.attn.fc1.weight"
    assert not torch.equal(before["decoder/0/cross_attn.fc1.weight"], tuned_weights[key])


def test_distillation_loss_is_exactly_zero_with_identity_adapters(layerwise):
    teacher, _ = load_teacher(layerwise)
    model, _ = load_teacher(layerwise)
    sites = list(variant_spec(layerwise, VARIANTS["attentionless"]))
    splice(model, {s: PassThrough(model.get_submodule(site_path(s, model.cfg))) for s in sites})
    assert all(isinstance(model.get_submodule(site_path(s, model.cfg)), PassThrough) for s in sites)
    cfg = finetune.Config(run_dir=str(layerwise), hidden_weight=1.0, temperature=2.0)
    batch = _batch(layerwise)
    loss, terms = finetune.finetune_loss(model, teacher, batch, cfg, sites)
    assert loss.item() == 0.0 and terms["kd"].item() == 0.0 and terms["hidden"].item() == 0.0
    spliced, _, _ = load_variant(layerwise, VARIANTS["attentionless"])
    loss, _ = finetune.finetune_loss(spliced, teacher, batch, cfg, sites)
    assert loss.item() > 0


def test_the_loss_falls_at_least_four_fold_on_a_tiny_run(layerwise, tmp_path):
    run = Path(shutil.copytree(layerwise, tmp_path / "run"))
    argv = [f"run_dir={run}", "init=random", "train.epochs=8", "train.lr=3e-3"]
    assert main(["-q", *FINETUNE, *argv]) == 0
    records = [json.loads(x) for x in (run / "finetune/attentionless/metrics.jsonl").open()]
    valid = [r["valid_kd"] for r in records if "valid_kd" in r]
    kd = [r["kd"] for r in records if "kd" in r]
    assert len(valid) == 8 and kd[0] >= 4 * kd[-1], (kd[0], kd[-1])
    spec = json.loads((run / "finetune/attentionless/spec.json").read_text())
    assert spec["settings"]["init"] == "random" and spec["valid_kd"] < valid[0]


def test_teacher_lr_scale_gives_the_teacher_weights_a_slower_rate(layerwise, tmp_path):
    run = Path(shutil.copytree(layerwise, tmp_path / "run"))
    argv = [f"run_dir={run}", "trainable=all", "teacher_lr_scale=0.1", "train.max_steps=1"]
    argv += ["train.schedule=constant"]
    assert main(["-q", *FINETUNE, *argv]) == 0
    before = load_variant(layerwise, VARIANTS["attentionless"])[0].state_dict()
    after = load_file(run / "finetune" / "attentionless" / "model.safetensors")
    model, _ = load_teacher(layerwise)
    paths = [
        site_path(s, model.cfg) + "." for s in variant_spec(layerwise, VARIANTS["attentionless"])
    ]
    step = {k: (after[k] - before[k]).abs().max().item() for k in before}
    student = max(v for k, v in step.items() if any(k.startswith(p) for p in paths))
    rest = max(v for k, v in step.items() if not any(k.startswith(p) for p in paths))
    # Adam's first step moves each weight by ~lr whatever its gradient's size.
    assert student > 0 and rest == pytest.approx(0.1 * student, rel=0.05), (student, rest)


def test_the_table_and_the_card_say_when_the_teacher_was_retrained_too(layerwise, tmp_path):
    run = Path(shutil.copytree(layerwise, tmp_path / "run"))
    assert main(["-q", *FINETUNE, f"run_dir={run}", "trainable=all", "train.max_steps=1"]) == 0
    said = "the finetune stage trained every weight, the teacher's included (`trainable: all`)"
    argv = ["run", "evaluate", "--config", "tiny", f"run_dir={run}", "max_sentences=2"]
    assert main(["-q", *argv, "variants=[attentionless]"]) == 0
    table = (run / "eval" / "results.md").read_text()
    assert f"Tuned attentionless: {said}." in table.splitlines()
    card = (export(run, "attentionless", tmp_path / "export") / "README.md").read_text()
    assert f"spliced in, {said}, end to end for 1 steps" in card


@pytest.mark.slow
def test_a_killed_finetune_resumes_to_the_same_tuned_weights(layerwise, tuned, tmp_path):
    broken = Path(shutil.copytree(layerwise, tmp_path / "broken"))
    argv = [*FINETUNE, f"run_dir={broken}", "train.ckpt_every=3"]
    # learning_rate: once when the optimizer is made, then before each step (tiny: 5 per epoch;
    # checkpoints at 3, 5, 6): the 8th call returns before step 7, after the checkpoint at 6.
    run_and_kill("distill.train.learning_rate", 8, argv, tmp_path / "m")
    out = broken / "finetune" / "attentionless"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6
    assert not (out / "spec.json").exists()
    assert main(["-q", *argv]) == 0
    a = load_file(tuned / "finetune" / "attentionless" / "model.safetensors")
    b = load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "checkpoint").exists()


def test_tuned_students_exported_and_loaded_give_the_in_memory_logits(tuned, tmp_path):
    out = export(tuned, "attentionless", tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "tuned" and config["finetune"]["trainable"] == "students"
    assert "Stage: **tuned**" in (out / "README.md").read_text()
    loaded, _ = from_pretrained(out)
    in_memory, _, _ = load_variant(tuned, VARIANTS["attentionless"], tuned="attentionless")
    layer_wise, _, _ = load_variant(tuned, VARIANTS["attentionless"])
    batch = _batch(tuned)
    with torch.no_grad():
        want = in_memory(batch.src, batch.tgt_in)
        assert torch.equal(loaded(batch.src, batch.tgt_in), want)
        assert not torch.allclose(layer_wise(batch.src, batch.tgt_in), want)
    plain = export(tuned, "attentionless", tmp_path / "layerwise", layer_wise=True)
    assert json.loads((plain / "config.json").read_text())["stage"] == "layer-wise"


def test_evaluate_shows_the_layer_wise_and_the_tuned_row_side_by_side(tuned):
    argv = ["run", "evaluate", "--config", "tiny", f"run_dir={tuned}"]
    assert main(["-q", *argv, "variants=[teacher,attentionless]"]) == 0
    rows = json.loads((tuned / "eval" / "results.json").read_text())["rows"]
    assert [(r["variant"], r["stage"]) for r in rows] == [
        ("teacher", ""),
        ("attentionless", "layer-wise"),
        ("attentionless", "tuned"),
    ]
    assert [r["kinds"] for r in rows] == ["", "mixing", "mixing"]
    assert [r["trainable"] for r in rows] == ["", "", "students"]  # the tiny config's
    table = (tuned / "eval" / "results.md").read_text()
    assert "| attentionless | tuned | alr xs, dec_self xs, cross xs | mixing |" in table
    assert (
        "Tuned attentionless: the finetune stage trained the students alone, every teacher "
        "weight kept as it was (`trainable: students`)." in table
    )
    assert main(["-q", *argv, "variants=[teacher]", "splits=[valid]"]) == 0
    valid = json.loads((tuned / "eval" / "results-valid.json").read_text())
    assert valid["split"] == "valid" and "valid split" in valid["note"]


def test_a_non_finite_loss_term_is_named(layerwise, tmp_path, monkeypatch):
    run = Path(shutil.copytree(layerwise, tmp_path / "run"))
    monkeypatch.setattr(finetune, "distill_kl", lambda *a: torch.tensor(float("nan")))
    cfg = load_recipe_config("finetune", "tiny", [f"run_dir={run}"])[1]
    with pytest.raises(TrainingDiverged, match="loss term 'kd' is nan at step 1"):
        finetune.main(cfg)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("variants=[teacher]", "variants: unknown or empty variant 'teacher'"),
        ("trainable=norms", "trainable must be one of students, students+norms, all"),
        ("kd_weight=0", "all 0: nothing to learn"),
        ("targets=gold", "targets must be one of reference, teacher"),
        ("teacher_lr_scale=0", "teacher_lr_scale must be > 0, got 0"),
        ("target_beam=0", "target_beam must be >= 1, got 0"),
        ("target_beam=4", "target_beam applies to targets=teacher"),
    ],
)
def test_bad_finetune_settings_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_recipe_config("finetune", "tiny", [override])


def test_a_variant_without_layer_wise_students_fails_before_training(layerwise, capsys):
    argv = [*FINETUNE, f"run_dir={layerwise}", "variants=[elr]"]
    assert main(["-q", *argv]) == 2
    assert "students/elr/spec.json: not found" in capsys.readouterr().err
    assert not (layerwise / "finetune" / "elr").exists()


HYBRID = "attentionless+keep1"  # the teacher's cross-attention at decoder layer 1
KEPT = ["decoder.1.cross_attn"]


def test_a_hybrid_is_tuned_evaluated_and_exported_end_to_end(layerwise, tmp_path, monkeypatch):
    run = Path(shutil.copytree(layerwise, tmp_path / "run"))
    argv = [f"run_dir={run}", f"variants=[{HYBRID}]", "train.max_steps=4"]
    assert main(["-q", *FINETUNE, *argv]) == 0
    spec = json.loads((run / "finetune" / HYBRID / "spec.json").read_text())
    assert spec["kept"] == KEPT and set(spec["sites"]).isdisjoint(KEPT) and len(spec["sites"]) == 5
    teacher = load_file(layerwise / "teacher" / "model.safetensors")
    tuned = load_file(run / "finetune" / HYBRID / "model.safetensors")
    kept = [k for k in teacher if k.startswith(site_path(KEPT[0]) + ".")]
    assert kept and all(torch.equal(teacher[k], tuned[k]) for k in kept)  # students only train
    argv = ["run", "evaluate", "--config", "tiny", f"run_dir={run}"]
    assert main(["-q", *argv, f"variants=[teacher,alr,cross,attentionless,{HYBRID}]"]) == 0
    rows = json.loads((run / "eval" / "results.json").read_text())["rows"]
    assert [(r["variant"], r["stage"], r["attentionless"], r["kept"]) for r in rows] == [
        ("teacher", "", False, []),
        ("alr", "layer-wise", False, []),
        ("cross", "layer-wise", False, []),
        ("attentionless", "layer-wise", True, []),
        (HYBRID, "layer-wise", False, KEPT),
        (HYBRID, "tuned", False, KEPT),
    ]
    table = (run / "eval" / "results.md").read_text()
    assert f"| {HYBRID} (hybrid) | tuned |" in table and "| attentionless | layer-wise |" in table
    assert (
        f"{HYBRID}: hybrid, not attentionless: keeps the teacher's attention at `{KEPT[0]}`"
        in table
    )
    # The card's whole-test-split row (2451 pairs, tested in test_export.py) is not at stake here.
    monkeypatch.setattr("distill.export._whole_split", lambda *args: None)
    out = export(run, HYBRID, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "tuned" and config["attentionless"] is False
    assert config["hybrid"] == {"base": "attentionless", "kept": KEPT}
    in_memory, _, _ = load_variant(run, VARIANTS["attentionless"], tuned=HYBRID, kept=KEPT)
    batch = _batch(run)
    with torch.no_grad():
        want = in_memory(batch.src, batch.tgt_in)
        assert torch.equal(from_pretrained(out)[0](batch.src, batch.tgt_in), want)


def test_a_hybrid_keeping_a_layer_the_teacher_lacks_fails_before_training(layerwise, capsys):
    argv = [*FINETUNE, f"run_dir={layerwise}", "variants=[attentionless+keep2]"]
    assert main(["-q", *argv]) == 2
    assert "the teacher has no decoder layer 2" in capsys.readouterr().err
    assert not (layerwise / "finetune").exists()


def _frontier_module():
    path = Path(__file__).resolve().parent.parent / "bench" / "hybrid_frontier.py"
    spec = importlib.util.spec_from_file_location("hybrid_frontier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hybrid_frontier_scores_every_keep_set_on_the_validation_split(layerwise, tmp_path):
    run = Path(shutil.copytree(layerwise, tmp_path / "run"))
    frontier = _frontier_module()
    assert (
        frontier.main(
            [str(run), "--base", "attentionless", "--k", "1,2", "--valid-sentences", "20"]
        )
        == 0
    )
    found = json.loads((run / "eval" / "hybrid-frontier.json").read_text())
    rows = {r["variant"]: r for r in found["rows"]}
    keep = ["attentionless+keep0", "attentionless+keep1", "attentionless+keep0_1"]
    assert list(rows) == ["teacher", "attentionless", *keep]
    assert rows["attentionless+keep0_1"]["kept"] == ["decoder.0.cross_attn", "decoder.1.cross_attn"]
    for k, names in (("1", keep[:2]), ("2", keep[2:])):
        assert found["best"][k] == max(names, key=lambda n: rows[n]["bleu"])
    # The same pairs and scores as `distill run evaluate ... splits=[valid] max_sentences=20`.
    argv = ["run", "evaluate", "--config", "tiny", f"run_dir={run}", "splits=[valid]"]
    argv += ["max_sentences=20", f"variants=[teacher,{','.join(keep)}]"]
    assert main(["-q", *argv]) == 0
    valid = json.loads((run / "eval" / "results-valid.json").read_text())
    assert valid["note"] == found["note"] and "20 of them evenly spread" in found["note"]
    scores = {r["variant"]: (r["bleu"], r["chrf"]) for r in valid["rows"]}
    assert scores == {n: (rows[n]["bleu"], rows[n]["chrf"]) for n in ["teacher", *keep]}
    assert frontier.main([str(run), "--base", "attentionless", "--k", "3"]) == 2
    assert frontier.main([str(run), "--base", "alr", "--k", "1"]) == 2


def test_finetune_on_the_teachers_beam_decodes_caches_them_and_old_outputs_still_match(
    layerwise, tmp_path, monkeypatch
):
    """Sequence-level KD with Kim & Rush's beam search: the decoder inputs are the teacher's beam
    decodes (cached beside the greedy ones), the setting is stored, and a finished output written
    before the key existed is still the same setting (target_beam 1)."""
    import distill.prefixes

    run = Path(shutil.copytree(layerwise, tmp_path / "run"))
    calls = []
    real = distill.prefixes.beam_search
    monkeypatch.setattr(
        distill.prefixes, "beam_search", lambda *a, **k: calls.append(a[2]) or real(*a, **k)
    )
    argv = [*FINETUNE, f"run_dir={run}", "targets=teacher", "target_beam=2", "train.max_steps=2"]
    assert main(["-q", *argv]) == 0
    assert calls and set(calls) == {2}  # every batch of sources decoded by a beam of 2
    cached = sorted(p.name for p in (run / "finetune").glob("*.targets.json"))
    assert cached and all(".beam2." in name for name in cached)
    out = run / "finetune" / "attentionless"
    spec = json.loads((out / "spec.json").read_text())
    assert spec["settings"]["targets"] == "teacher" and spec["settings"]["target_beam"] == 2
    # An output of the code before target_beam: its stored settings lack the key.
    settings = json.loads((out / "settings.json").read_text())
    assert settings.pop("target_beam") == 2
    settings["targets"] = "reference"
    (out / "settings.json").write_text(json.dumps(settings))
    assert main(["-q", *FINETUNE, f"run_dir={run}", "train.max_steps=2"]) == 0  # skipped
    assert main(["-q", *FINETUNE, f"run_dir={run}", "targets=teacher", "target_beam=2"]) == 2
