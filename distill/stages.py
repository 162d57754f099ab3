"""What each stage was asked: the settings that determine its output, stored beside it.

Every output a stage makes (``teacher/``, ``record/``, ``students/<mode>/``,
``finetune/<variant>/``) holds ``settings.json``: the stage's config flattened to dotted keys,
without the keys that cannot change a result (``RESULT_FREE``: logging, checkpoint interval,
threads, device, inference batch sizes), plus ``after.<output>``, a digest of the settings of
each output it was built from. A stage compares them before it skips a finished output or
resumes an unfinished one; a difference is one ``ConfigError`` naming the first differing key,
its old and new value and the two ways out: a new ``run_dir=``, or ``--redo STAGE`` (``redo``
below), which deletes that output and every later output built on it before anything runs.

Run dirs written before settings were stored are trusted, with one warning per output, and
reported as trusted (``TRUSTED``), never as "finished with the same settings": there was nothing
to compare. ``REPORT`` collects what each stage did with its outputs, for the pipeline's summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.checkpoint import atomic_write_json, read_json
from distill.config import STAGES
from distill.errors import ConfigError

log = logging.getLogger(__name__)

SETTINGS = "settings.json"
# The stages in the order they run; each is built on the ones before it.
ORDER = STAGES
# A stage's output dir under RUN_DIR when it is not the stage's name, and what else goes with it:
# a Marian teacher's training dirs, bench/budget_curve.py's finetune arms (budget/).
DIRS = {"teacher": ("teacher", "marian", "marian-train"), "finetune": ("finetune", "budget")}
DIRS["evaluate"] = ("eval",)
STAGE_OF = {"eval": "evaluate", "budget": "finetune", "marian": "teacher"}
# Keys (dotted, or a last component) that never change what a stage produces.
RESULT_FREE = (
    "run_dir",
    "threads",
    "device",
    "log_every",
    "ckpt_every",
    "eval_every",
    "eval.batch_size",
)
# Keys (a last component) added after settings were first stored, each with the value that gives
# what outputs written without it gave: a stored output lacking one matches that value.
ADDED_KEYS = {"target_beam": 1}
REPORT: list[str] = []
TRUSTED = "trusted (written before settings were recorded)"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def result_settings(tree: Mapping[str, Any], free: Iterable[str] = ()) -> dict[str, Any]:
    """The result-relevant keys of a config dict, flattened; ``free`` adds stage-own free keys."""
    free = (*RESULT_FREE, *free)
    flat = flatten(tree)
    return {k: v for k, v in flat.items() if k not in free and k.rsplit(".", 1)[-1] not in free}


def digest(out: Path) -> str:
    """A short digest of ``out``'s stored settings ("" when it has none)."""
    path = Path(out) / SETTINGS
    if not path.is_file():
        return ""
    text = json.dumps(read_json(path), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _label(out: Path, run_dir: Path) -> str:
    try:
        return Path(out).relative_to(run_dir).as_posix()
    except ValueError:
        return Path(out).as_posix()


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else json.dumps(value, default=str)


_MISSING = object()


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The first key (in ``new``'s order, then ``old``'s) whose value differs, or None."""
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a is _MISSING and key.rsplit(".", 1)[-1] in ADDED_KEYS:
            a = ADDED_KEYS[key.rsplit(".", 1)[-1]]  # written before the key existed
        if json.dumps(a, default=str, sort_keys=True) != json.dumps(b, default=str, sort_keys=True):
            return key
    return None


@dataclass
class Claim:
    """What ``begin`` found for one output: "skip" (finished, same settings), "resume"
    (unfinished, same settings) or "start" (new); ``store`` writes the settings of a new one."""

    out: Path
    settings: dict[str, Any]
    status: str

    def store(self) -> None:
        """Write settings.json (call it where the stage writes its first file, on the main
        process); a no-op unless the output is new."""
        if self.status == "start" and not (self.out / SETTINGS).is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / SETTINGS, self.settings)


def begin(
    out: Path,
    run_dir: str | Path,
    settings: Mapping[str, Any],
    *,
    finished: bool,
    after: Iterable[Path] = (),
    report: bool = True,
) -> Claim:
    """Check ``settings`` against ``out``'s stored ones before the stage skips, resumes or starts
    ``out``. Raises ConfigError naming the first differing key; an output from before settings
    were stored is trusted with a warning. Nothing is written (``Claim.store`` does that);
    ``report``: add the outcome to ``REPORT`` and the log (off for a check ahead of time)."""
    run_dir, out = Path(run_dir), Path(out)
    label = _label(out, run_dir)
    new = {**settings, **{f"after.{_label(a, run_dir)}": digest(a) for a in after}}
    path, trusted = out / SETTINGS, False
    if path.is_file():
        old = read_json(path)
        key = first_difference(old, new)
        if key is not None:
            stage = label.split("/", 1)[0]
            if key.startswith("after."):
                what = f"was built on other {key[6:]} settings than the ones there now"
            else:
                was, now = _show(old.get(key, _MISSING)), _show(new.get(key, _MISSING))
                what = f"{key} was {was}, now {now}"
            target = label if stage in ("students", "finetune") else STAGE_OF.get(stage, stage)
            raise ConfigError(
                f"{run_dir / label}: {what}; keep it and use a new run_dir=, or replace it "
                f"with --redo {target}"
            )
        status = "skip" if finished else "resume"
    elif out.is_dir() and any(p.name != SETTINGS for p in out.iterdir()):
        if report:
            log.warning("%s: no stored settings (written by an older version): trusted", out)
        status = "skip" if finished else "resume"
        trusted = True
    else:
        status = "start"
    why = TRUSTED if trusted else "finished with the same settings"
    what = {
        "skip": f"skipped: {why}",
        "resume": "resumed from its checkpoint" + (f", {TRUSTED}" if trusted else ""),
        "start": "started",
    }[status]
    if report:
        REPORT.append(f"{label}: {what}")
    if report and status == "skip":
        log.info("%s: %s, skipped: %s", label, why, out)
    return Claim(out, new, status)


def redo(run_dir: str | Path, target: str, allowed: Iterable[str] = ORDER) -> list[Path]:
    """Delete ``target``'s output (a stage, or ``students/<mode>`` / ``finetune/<variant>``) and
    every later output built on it, before anything runs. The outputs are first renamed into one
    trash dir (each rename atomic), then removed: a crash leaves whole outputs or none.
    Returns the removed paths. ``allowed``: the stages this command may redo."""
    run_dir = Path(run_dir)
    stage, _, name = target.partition("/")
    allowed = tuple(allowed)
    if stage not in allowed or (name and stage not in ("students", "finetune")):
        raise ConfigError(
            f"--redo {target}: expected one of {', '.join(allowed)}"
            + (" (or students/<mode>, finetune/<variant>)" if "students" in allowed else "")
        )
    victims = _victims(run_dir, stage, name)
    if not victims:
        log.info("--redo %s: nothing to remove in %s", target, run_dir)
        return []
    trash = run_dir / f".redo-{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    for i, path in enumerate(victims):
        path.rename(trash / f"{i}-{path.name}")
    shutil.rmtree(trash)
    log.info("--redo %s: removed %s", target, ", ".join(_label(p, run_dir) for p in victims))
    return victims


def _victims(run_dir: Path, stage: str, name: str) -> list[Path]:
    """The outputs ``redo`` removes: a whole stage and every later one, or one mode's students
    with the variants tuned from them (and the results), or one variant (and the results)."""
    if not name:
        later = [d for s in ORDER[ORDER.index(stage) :] for d in DIRS.get(s, (s,))]
        return [run_dir / d for d in later if (run_dir / d).exists()]
    found = [run_dir / stage / name]
    if stage == "students":
        found += [
            d
            for d in sorted((run_dir / "finetune").glob("*"))
            if d.is_dir() and _tuned_from(d, name)
        ]
    found += [run_dir / "eval", run_dir / "budget"]
    return [p for p in found if p.exists()]


def _tuned_from(variant_dir: Path, mode: str) -> bool:
    """Whether a finetune output was built on ``mode``'s students (unknown: assume it was)."""
    settings = variant_dir / SETTINGS
    if settings.is_file():
        return f"after.students/{mode}" in read_json(settings)
    spec = variant_dir / "spec.json"
    return mode in read_json(spec).get("modes", []) if spec.is_file() else True
