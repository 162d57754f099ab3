"""Broken artefacts of earlier stages: recordings and checkpoints are checked before anything is
written, and the error names the file."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.checkpoint import save_checkpoint
from distill.data import Tokenizer
from distill.modes import mode_sites
from distill.students import build_student
from tests.reliability.helpers import RECORD, STUDENTS, fails, json_model_cfg, tree

# --- recordings ------------------------------------------------------------------------------


def _rewrite_shard(run: Path, change) -> None:
    """Apply ``change`` to train shard 0's tensors and fix its checksum in the manifest."""
    shard = run / "record" / "train" / "shard-00000.safetensors"
    save_file(change(load_file(shard)), shard)
    manifest_path = run / "record" / "train" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def _edit_manifest(run: Path, **changes) -> None:
    path = run / "record" / "train" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))


TRAIN = Path("record") / "train"
RECORDING_ERRORS = {
    # name: (how to break the run dir, extra overrides, what the message must say)
    "truncated_shard": (
        lambda r: _truncate(r / TRAIN / "shard-00001.safetensors"),
        [],
        r"train/shard-00001\.safetensors: checksum mismatch",
    ),
    "checksum_mismatch": (
        lambda r: _flip_a_byte(r / TRAIN / "shard-00002.safetensors"),
        [],
        r"train/shard-00002\.safetensors: checksum mismatch",
    ),
    "missing_shard": (
        lambda r: (r / TRAIN / "shard-00003.safetensors").unlink(),
        [],
        r"train/shard-00003\.safetensors: shard file missing",
    ),
    "missing_manifest": (
        lambda r: (r / TRAIN / "manifest.json").unlink(),
        [],
        r"train/manifest\.json: recording manifest not found$",
    ),
    "unfinished_recording": (
        lambda r: (r / TRAIN / "manifest.json").rename(r / TRAIN / "manifest.partial.json"),
        [],
        r"train/manifest\.json: recording manifest not found \(recording unfinished",
    ),
    "no_recording": (
        lambda r: shutil.rmtree(r / "record"),
        [],
        r"record/train/manifest\.json: recording manifest not found",
    ),
    "manifest_not_json": (
        lambda r: (r / TRAIN / "manifest.json").write_text("{"),
        [],
        r"train/manifest\.json: invalid JSON",
    ),
    "manifest_unknown_dtype": (
        lambda r: _edit_manifest(r, dtype="fp8"),
        [],
        r"train/manifest\.json: unknown dtype 'fp8'",
    ),
    "site_not_recorded": (
        lambda r: None,
        ["modes=[dec_self]"],
        r"record/train: site 'decoder\.0\.self_attn' was not recorded \(recorded: encoder\.0",
    ),
    "dimension_mismatch": (
        lambda r: _edit_manifest(r, d_model=32),
        [],
        r"record/train: recorded with d_model 32, .* the teacher has 16",
    ),
    "fp16_shard_in_fp32_recording": (
        lambda r: _rewrite_shard(
            r, lambda t: {k: v.half() if v.is_floating_point() else v for k, v in t.items()}
        ),
        [],
        r"shard-00000\.safetensors: tensor 'encoder\.0\.self_attn\.x' is F16, the manifest "
        "says fp32",
    ),
}


@pytest.mark.parametrize("case", RECORDING_ERRORS)
def test_bad_recording_fails_before_students_write_anything(case, run_copy, capsys):
    breaks, extra, needle = RECORDING_ERRORS[case]
    breaks(run_copy)
    before = tree(run_copy)
    fails([*STUDENTS, f"run_dir={run_copy}", *extra], capsys, needle)
    assert tree(run_copy) == before


def test_a_teacher_that_overflows_fp16_names_the_site(run_copy, capsys):
    weights = run_copy / "teacher" / "model.safetensors"
    tensors = load_file(weights)
    for part in ("weight", "bias"):  # V of encoder layer 0: the attention core's output explodes
        tensors[f"encoder.0.self_attn_sublayer.attn.v_proj.{part}"] *= 1e6
    save_file(tensors, weights)
    shutil.rmtree(run_copy / "record")
    fails(
        [*RECORD, f"run_dir={run_copy}", "dtype=fp16"],
        capsys,
        r"site 'encoder\.0\.self_attn': the teacher's output \(up to [\d.e+]+\) overflows fp16; "
        "record with dtype=fp32",
        progress=True,
    )
    assert not list((run_copy / "record").rglob("*.safetensors"))
    assert not list((run_copy / "record").rglob("manifest*.json"))


# --- checkpoints -----------------------------------------------------------------------------


def _other_tokenizer(r: Path, pairs) -> None:
    Tokenizer.train([t for p in pairs for t in p], 64, r / "teacher" / "spm.model")


def _edit_model_json(r: Path, **changes) -> None:
    path = r / "teacher" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


CHECKPOINT_ERRORS = {
    # name: (how to break the run dir, recipe argv, what the message must say)
    "no_teacher_for_students": (
        lambda r, p: shutil.rmtree(r / "teacher"),
        STUDENTS,
        r"run: no trained teacher here \(model\.json missing\)",
    ),
    "no_teacher_for_record": (
        lambda r, p: shutil.rmtree(r / "teacher"),
        RECORD,
        r"run: no trained teacher here \(model\.json missing\)",
    ),
    "teacher_weights_of_other_shape": (
        lambda r, p: _edit_model_json(r, d_ff=64),
        STUDENTS,
        r"teacher/model\.safetensors: 'decoder\.0\.ff_sublayer\.ff\.fc1\.bias' has shape \(32,\), "
        r"the model expects \(64,\)",
    ),
    "teacher_weights_truncated": (
        lambda r, p: (r / "teacher" / "model.safetensors").write_bytes(b"\x00" * 12),
        STUDENTS,
        r"teacher/model\.safetensors: not a readable safetensors file",
    ),
    "model_json_unknown_key": (
        lambda r, p: _edit_model_json(r, d_modle=16),
        STUDENTS,
        r"teacher/model\.json: unknown config key 'd_modle'",
    ),
    "tokenizer_of_another_model": (
        _other_tokenizer,
        STUDENTS,
        r"teacher/spm\.model: tokenizer has \d+ pieces, the model expects 300",
    ),
    "tokenizer_not_sentencepiece": (
        lambda r, p: (r / "teacher" / "spm.model").write_bytes(b"not a model"),
        RECORD,
        r"teacher/spm\.model: not a SentencePiece model",
    ),
    "teacher_config_missing": (
        lambda r, p: (r / "teacher" / "config.yaml").unlink(),
        RECORD,
        r"teacher/config\.yaml: not found; run `distill run teacher` first",
    ),
    "teacher_config_corrupt": (
        lambda r, p: (r / "teacher" / "config.yaml").write_text("data: [\n"),
        RECORD,
        r"teacher/config\.yaml:\d+: invalid YAML",
    ),
}


@pytest.mark.parametrize("case", CHECKPOINT_ERRORS)
def test_bad_teacher_checkpoint_fails_naming_the_file(case, run_copy, tiny_pairs, capsys):
    breaks, argv, needle = CHECKPOINT_ERRORS[case]
    shutil.rmtree(run_copy / "record")  # or `run record` would skip: its recording is complete
    breaks(run_copy, tiny_pairs)
    before = tree(run_copy)
    fails([*argv, f"run_dir={run_copy}"], capsys, needle)
    assert tree(run_copy) == before


def test_a_student_checkpoint_from_other_settings_is_named_and_kept(run_copy, capsys):
    sites = mode_sites("alr", json_model_cfg(run_copy))
    other = torch.nn.ModuleDict(
        {s.replace(".", "/"): build_student("alr", json_model_cfg(run_copy), "s") for s in sites}
    )
    ckpt = run_copy / "students" / "alr" / "checkpoint"
    save_checkpoint(ckpt, other, None, {"step": 2, "epoch": 0, "batch": 2, "done": False})
    before = tree(ckpt)
    fails(
        [*STUDENTS, f"run_dir={run_copy}", "size=xs"],
        capsys,
        r"checkpoint/model\.safetensors: '.*' has shape .*; the checkpoint is from a run with "
        r"other settings: delete .*checkpoint",
    )
    assert tree(ckpt) == before
