"""Teacher targets (sequence-level distillation): decodes, the cache, record and students stages."""

import json
import logging
import shutil

import pytest
import torch

import distill.prefixes
from distill.data import DataConfig, encode_pairs, load_pairs, spread
from distill.decode import greedy
from distill.errors import ConfigError
from distill.model import EOS_ID, PRESETS, ModelConfig
from distill.prefixes import teacher_targets
from distill.record import Recording, record
from distill.runs import save_model, teacher_data, write_config
from tests.helpers import tiny_teacher
from tests.test_record import examples

CFG = ModelConfig(**PRESETS["unit"])  # max_len 8


def one_by_one(model, ex):
    """The expected targets: each source decoded alone, cut to max_len - 1, empty -> reference."""
    out = []
    for src, ref in ex:
        hyp = greedy(model, torch.tensor(src)[None])[0][: model.cfg.max_len - 1]
        out.append((src, hyp or ref))
    return out


def test_teacher_targets_are_each_sources_own_greedy_decode_in_input_order():
    model, ex = tiny_teacher(), examples(30)
    got = teacher_targets(model, ex, batch_size=7, progress=False)
    assert got == one_by_one(model, ex)
    assert [s for s, _ in got] == [s for s, _ in ex]
    assert sum(t != r for (_, t), (_, r) in zip(got, ex)) > len(ex) // 2  # really replaced
    assert all(len(t) + 1 <= CFG.max_len for _, t in got)
    raw = greedy(model, torch.tensor(ex[0][0])[None])[0]
    assert len(raw) == CFG.max_len and len(got[0][1]) == CFG.max_len - 1  # the cut happened


def test_beam_targets_are_each_sources_own_best_beam_hypothesis():
    from distill.decode import beam_search

    model, ex = tiny_teacher(), examples(12)
    got = teacher_targets(model, ex, batch_size=5, progress=False, beam=3)
    for (src, ref), (_, tgt) in zip(ex, got):
        hyp = beam_search(model, torch.tensor(src)[None], 3)[0][: model.cfg.max_len - 1]
        assert tgt == (hyp or ref)
    assert got != teacher_targets(model, ex, batch_size=5, progress=False)  # not the greedy ones


def test_an_empty_decode_keeps_the_reference(caplog):
    model, ex = tiny_teacher(), examples(9)
    with torch.no_grad():
        model.generator.bias[EOS_ID] = 1e4  # EOS wins the first step: every decode is empty
    assert all(not h for h in greedy(model, torch.tensor(ex[0][0])[None]))
    with caplog.at_level(logging.INFO, logger="distill.prefixes"):
        got = teacher_targets(model, ex, batch_size=4, progress=False)
    assert got == ex
    assert "9 empty decodes kept the reference" in caplog.text


def test_the_cache_is_reused_for_the_same_sources_only(tmp_path, monkeypatch):
    model, ex = tiny_teacher(), examples(30)
    cache = tmp_path / "train.targets.json"
    first = teacher_targets(model, ex, batch_size=8, cache=cache, progress=False)
    assert json.loads(cache.read_text())["sentences"] == len(ex)

    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these sources")

    monkeypatch.setattr(distill.prefixes, "greedy", fail)
    assert teacher_targets(model, ex, batch_size=8, cache=cache, progress=False) == first
    other = [(src[:-1] + [5, EOS_ID] if i == 3 else src, t) for i, (src, t) in enumerate(ex)]
    with pytest.raises(AssertionError, match="decoded although"):
        teacher_targets(model, other, batch_size=8, cache=cache, progress=False)


def test_a_recording_from_before_the_targets_key_is_resumed_as_reference(tmp_path, monkeypatch):
    model, ex, out = tiny_teacher(), examples(12), tmp_path / "rec"
    record(model, ex, ["decoder.0.self_attn"], out, shard_size=8, dtype="fp32", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["targets"] == "reference"
    del manifest["targets"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert Recording(out).targets == "reference"
    monkeypatch.setattr("distill.record.capture", lambda *a: pytest.fail("recorded again"))
    record(model, ex, ["decoder.0.self_attn"], out, shard_size=8, dtype="fp32", progress=False)


# --- the record and students stages on a tiny untrained teacher ------------------------------

RUN_CFG = ModelConfig(**{**PRESETS["unit"], "max_len": 24})  # the toy pairs fit in 24 tokens


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_pairs, tiny_tokenizer):
    """RUN_DIR/teacher/ as the teacher stage leaves it, on a TSV of the toy pairs."""
    from distill_recipes.teacher import Config as TeacherConfig

    root = tmp_path_factory.mktemp("prefixes")
    corpus = root / "corpus"
    corpus.mkdir()
    for split, rows in (("train", tiny_pairs[:60]), ("valid", tiny_pairs[60:80])):
        lines = ["de\ten", *(f"{de}\t{en}" for de, en in rows)]
        (corpus / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    run = root / "run"
    out = run / "teacher"
    out.mkdir(parents=True)
    data = DataConfig(source="tsv", path=str(corpus), max_len=RUN_CFG.max_len, vocab_size=96)
    write_config(out, TeacherConfig(run_dir=str(run), data=data, model=RUN_CFG))
    save_model(out, tiny_teacher(max_len=RUN_CFG.max_len))
    shutil.copy(tiny_tokenizer.path, out / "spm.model")
    return run


def split_examples(run, tok, split: str, limit: int):
    ex, _ = encode_pairs(load_pairs(teacher_data(run), split), tok, RUN_CFG.max_len)
    return spread(ex, limit)  # the subset the record stage takes


def recorded_tgt_len(path) -> dict[int, int]:
    rec = Recording(path)
    lengths = {}
    for i in range(len(rec.shard_sizes)):
        shard = rec.shard(i)
        lengths.update(zip(shard["sentence"].tolist(), shard["tgt_len"].tolist()))
    return lengths


def record_cfg(run, targets: str):
    from distill_recipes.record import Config

    return Config(
        run_dir=str(run),
        modes=["dec_self"],
        dtype="fp32",
        shard_size=16,
        batch_size=8,
        max_sentences=30,
        valid_sentences=10,
        targets=targets,
    )


@pytest.fixture(scope="module")
def teacher_recording(run_dir):
    from distill_recipes.record import main

    main(record_cfg(run_dir, "teacher"))
    return run_dir


def test_record_with_teacher_targets_records_the_teachers_decodes(
    teacher_recording, tiny_tokenizer
):
    model = tiny_teacher(max_len=RUN_CFG.max_len)
    for split, limit in (("train", 30), ("valid", 10)):
        ex = split_examples(teacher_recording, tiny_tokenizer, split, limit)
        want = one_by_one(model, ex)
        assert any(len(t) != len(r) for (_, t), (_, r) in zip(want, ex))  # a visible difference
        path = teacher_recording / "record" / split
        assert Recording(path).targets == "teacher"
        assert recorded_tgt_len(path) == {i: len(t) + 1 for i, (_, t) in enumerate(want)}
        assert (teacher_recording / "record" / f"{split}-{limit}.targets.json").is_file()


def test_record_again_with_reference_targets_needs_redo_and_then_records_again(
    teacher_recording, tiny_tokenizer, tmp_path
):
    from distill_recipes.record import main

    from distill.stages import redo

    run = tmp_path / "run"
    shutil.copytree(teacher_recording, run)
    with pytest.raises(ConfigError, match=r'record: targets was "teacher", now "reference"; .*'):
        main(record_cfg(run, "reference"))  # not skipped as "already complete"
    assert Recording(run / "record" / "train").targets == "teacher"
    redo(run, "record")
    main(record_cfg(run, "reference"))
    path = run / "record" / "train"
    assert Recording(path).targets == "reference"
    ex = split_examples(run, tiny_tokenizer, "train", 30)
    assert recorded_tgt_len(path) == {i: len(t) + 1 for i, (_, t) in enumerate(ex)}


def test_students_refuse_an_unknown_targets_value():
    from distill_recipes.students import Config

    with pytest.raises(ValueError, match="targets must be one of reference, teacher, got 'bad'"):
        Config(targets="bad")


def test_students_on_disk_refuse_a_recording_made_with_other_targets(teacher_recording):
    from distill_recipes.students import Config, main

    cfg = Config(run_dir=str(teacher_recording), modes=["dec_self"], size="xs", source="disk")
    with pytest.raises(ConfigError, match="targets=reference but .*record/train was recorded"):
        main(cfg)
    assert not (teacher_recording / "students").exists()  # failed before writing anything


def test_online_students_train_on_teacher_targets(run_dir, tiny_tokenizer, tmp_path, monkeypatch):
    import distill_recipes.students
    from distill_recipes.students import Config

    shutil.copytree(run_dir / "teacher", tmp_path / "teacher")
    run_dir, seen = tmp_path, {}
    monkeypatch.setattr(
        distill_recipes.students, "train_mode", lambda cfg, mode, t, ex, *a: seen.update(ex)
    )
    cfg = Config(
        run_dir=str(run_dir),
        modes=["dec_self"],
        size="xs",
        source="online",
        max_sentences=30,
        valid_sentences=10,
        targets="teacher",
    )
    distill_recipes.students.main(cfg)
    model = tiny_teacher(max_len=RUN_CFG.max_len)
    for split, limit in (("train", 30), ("valid", 10)):
        want = one_by_one(model, split_examples(run_dir, tiny_tokenizer, split, limit))
        assert seen[split] == want
        assert (run_dir / "students" / f"{split}-{limit}.targets.json").is_file()
