"""Record the teacher's site inputs/outputs for the student modes, as safetensors shards.

    distill run record --config demo             # after `distill run teacher --config demo`
    distill run record --config tiny

Writes RUN_DIR/record/{train,valid}/: shard-*.safetensors + manifest.json (sites, dims, dtype,
sentence counts, sha256 per shard, targets). With ``targets=teacher`` the decoder is
teacher-forced on the teacher's greedy decodes (cached in RUN_DIR/record/{split}-{n}.targets.json),
so decoder students learn on the prefixes they meet at inference. Prints the disk estimate
first and refuses when the disk is short. Interrupted? Run it again: it continues after the last
complete shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from distill.config import to_dict
from distill.device import stage_device
from distill.modes import DEFAULT_MODES, MODES, check_modes, recorded_sites
from distill.prefixes import TARGETS
from distill.record import Recording, record
from distill.runs import load_teacher, on_targets, split_examples, teacher_dir, write_config
from distill.stages import begin, result_settings
from distill.train import process_state

log = logging.getLogger("recipes.record")


@dataclass
class Config:
    run_dir: str = ""
    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    dtype: str = "fp16"  # "fp16" halves the disk; "fp32" keeps the teacher's exact values
    shard_size: int = 1000  # sentences per shard (and the unit of shuffling for students)
    batch_size: int = 100  # sentences per teacher forward pass while recording
    max_sentences: int = 0  # 0 = the whole train split
    valid_sentences: int = 500
    # "teacher": targets are the teacher's greedy decodes (sequence-level distillation), so
    # decoder sites are recorded on the prefixes they see at inference.
    targets: str = "reference"

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
        if self.dtype not in ("fp16", "fp32"):
            raise ValueError(f"dtype must be fp16 or fp32, got '{self.dtype}'")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got '{self.targets}'")
        for name in ("shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def main(cfg: Config) -> Path:
    out = Path(cfg.run_dir) / "record"
    splits = ("train", "valid")
    # batch_size: sentences per teacher pass, which do not change what is recorded
    settings = result_settings(to_dict(cfg), free=("batch_size",))
    # An older recording (no stored settings) on other targets is redone (record() sees its
    # header differ), not skipped.
    finished = all((out / s / "manifest.json").exists() for s in splits) and all(
        Recording(out / s).targets == cfg.targets for s in splits
    )
    claim = begin(out, cfg.run_dir, settings, finished=finished, after=[teacher_dir(cfg.run_dir)])
    if claim.status == "skip":
        return out
    model, tok = load_teacher(cfg.run_dir, device=stage_device())
    check_modes(cfg.modes, model.cfg)
    sites = recorded_sites(cfg.modes, model.cfg)
    # Read both splits before writing anything: a corpus that moved fails with a clean run dir.
    examples = {}
    for split, limit in (("train", cfg.max_sentences), ("valid", cfg.valid_sentences)):
        examples[split], report = split_examples(cfg.run_dir, model, tok, split, limit)
        log.info("%s: %s; recording %d sentences", split, report, len(examples[split]))
    out.mkdir(parents=True, exist_ok=True)
    if process_state().is_main_process:  # several processes share the shards (record())
        claim.store()
        write_config(out, cfg)
    # Teacher targets on valid too: students' validation MSE then measures what they train on.
    for split in ("train", "valid"):
        examples[split] = on_targets(examples[split], model, split, cfg.targets, out)
    for split in ("train", "valid"):
        manifest = record(
            model,
            examples[split],
            sites,
            out / split,
            shard_size=cfg.shard_size,
            dtype=cfg.dtype,
            batch_size=cfg.batch_size,
            targets=cfg.targets,
        )
        log.info("%s: %d shards, %.1f MB", split, len(manifest["shards"]), manifest["bytes"] / 1e6)
    return out
