"""The main job: teacher -> record -> students -> finetune -> evaluate, skipping finished stages.

    distill run pipeline --config demo                         # what `make demo` runs
    distill run pipeline --config demo online=true             # students from teacher passes
    distill run pipeline --config demo students.size=s teacher.train.epochs=1
    distill run pipeline --config tiny

Each stage starts from its own named config (recipes/configs/<stage>/<stages>.yaml); the
pipeline's sections hold deltas on top of it. Everything lands in RUN_DIR (default runs/<config>):
teacher/, record/, students/<mode>/, finetune/<variant>/, eval/results.{json,md,png}.

Each output stores the settings that made it (distill/stages.py): a finished one is skipped only
when they match, a changed key is an error naming it, and `--redo STAGE` (or `redo=STAGE`)
deletes that stage's output and every later one first. The log ends with what each stage did.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config import STAGES  # the stages in the order they run
from distill.errors import ConfigError

log = logging.getLogger("recipes.pipeline")


def stage_config(stage: str, base: str, delta: dict[str, Any], run_dir: str):
    """The Config of ``stage``: recipes/configs/<stage>/<base>.yaml (the Config's defaults when
    ``base`` is "") + ``delta`` + run_dir."""
    import importlib

    from distill.config import build, config_path

    module = importlib.import_module(f"distill_recipes.{stage}")
    try:
        path = config_path(stage, base) if base else None
        return build(module.Config, path, delta={**delta, "run_dir": run_dir})
    except ConfigError as err:
        raise ConfigError(f"pipeline section '{stage}': {err}") from None


@dataclass
class Config:
    run_dir: str = ""
    # Base config name of every stage; "" = none: the sections hold whole stage configs (as
    # `--print-config` writes them).
    stages: str = "demo"
    online: bool = False  # train students from teacher passes; skip the record stage
    teacher: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    students: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resolved()  # a bad key in any section fails here, before any data loads

    def resolved(self) -> dict[str, Any]:
        deltas = {s: getattr(self, s) for s in STAGES}
        if self.online:
            deltas["students"] = {**deltas["students"], "source": "online"}
        return {s: stage_config(s, self.stages, deltas[s], self.run_dir) for s in STAGES}

    def to_dict(self) -> dict[str, Any]:
        """This pipeline with each section its stage's whole config, on no base config
        (``stages: ""``): what ``--print-config`` prints; it loads back as the same stages."""
        from distill.config import to_dict

        head = {"run_dir": self.run_dir, "stages": "", "online": self.online}
        return head | {name: to_dict(cfg) for name, cfg in self.resolved().items()}


def main(cfg: Config) -> Path:
    import importlib

    from distill.stages import REPORT
    from distill.train import process_state

    stages = cfg.resolved()
    started = time.perf_counter()
    REPORT.clear()
    for name in STAGES:
        if name == "record" and cfg.online:
            continue
        t0 = time.perf_counter()
        log.info("=== stage %s ===", name)
        importlib.import_module(f"distill_recipes.{name}").main(stages[name])
        # Under `accelerate launch` the main process writes a stage's outputs after the others
        # return: none may start the next stage before they are there.
        process_state().wait_for_everyone()
        if name == "evaluate":
            REPORT.append("eval: scored again (evaluation is never skipped)")
        log.info("stage %s: %.1f s", name, time.perf_counter() - t0)
    for line in REPORT:  # what each stage did with each of its outputs, and why
        log.info("pipeline: %s", line)
    log.info(
        "pipeline finished in %.1f min: %s",
        (time.perf_counter() - started) / 60,
        Path(cfg.run_dir) / "eval" / "results.md",
    )
    return Path(cfg.run_dir)
