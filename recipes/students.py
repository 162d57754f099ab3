"""Train one student per site for each mode, on the teacher's own activations.

    distill run students --config demo                 # from RUN_DIR/record (disk shards)
    distill run students --config demo source=online   # straight from teacher passes, no disk
    distill run students --config demo modes=[alr,cross] modes.cross.epochs=4
    distill run students --config demo source=online progressive=[alr,dec_self,cross_pw]
    distill run students --config tiny

Each site's student learns the teacher's output of that site from the teacher's input of that
site (never from outputs of earlier replaced sites): masked MSE over non-pad elements
(``distill.losses``), Adam. All sites of a mode train together in one loop; their losses are
summed, and since they share no parameters and Adam is per parameter, that is the same as
training each alone. ``modes`` maps each mode to its own settings (size, activation, rate,
epochs, schedule; ``ModeSettings``); what a mode can do is ``distill.modes.MODES``.

``progressive`` modes (online only) train site by site in model order instead (``chain``): each
site's student learns on teacher passes with the students of every earlier listed site spliced
in, i.e. on the inputs it will see in the spliced model, and still against what the teacher's own
module computes there. Each finished site's weights are kept under students/<mode>/sites/<site>/,
so a killed run redoes at most the site in progress (which resumes from its checkpoint).

Two additions beyond the paper, both on by default and off in the ``paper`` config: non-causal
students start from a least-squares fit of the site (``init: lstsq``, ``distill/lstsq.py``;
optionally with ``local_units`` position-local nonlinear units), and modes whose site returns
its input plus a change (ALRR, ELR) learn only the change, ``x + MLP(x)`` (``residual``).
Writes RUN_DIR/students/<mode>/: config.yaml, init.json, metrics.jsonl (train loss, validation
MSE per epoch), checkpoint/ (resumable; deleted once finished), students.safetensors and
spec.json (written last: a mode with one is skipped).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from distill.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    drop_checkpoint,
    load_state_dict,
    load_tensors,
    read_json,
    resolve_checkpoint,
    save_tensors,
)
from distill.config import to_dict
from distill.device import stage_device
from distill.errors import ConfigError
from distill.formats import current_site
from distill.losses import mode_loss, site_loss, student_key
from distill.lstsq import (
    SUPPORTED_ACTIVATIONS,
    check_local_units,
    least_squares_init,
    normal_equations,
)
from distill.model import list_sites, site_path
from distill.modes import (
    ACTIVATIONS,
    DEFAULT_MODES,
    MODES,
    RESIDUAL_MODES,
    SIZES,
    check_modes,
    mode_sites,
)
from distill.prefixes import TARGETS
from distill.record import DiskBatches, OnlineBatches, Recording, sites_overlap
from distill.runs import (
    load_students,
    load_teacher,
    split_examples,
    students_dir,
    teacher_dir,
    write_config,
)
from distill.stages import Claim, begin, result_settings
from distill.students import StudentSpec, build_student, init_from_teacher
from distill.train import SCHEDULES, TrainConfig, fit, process_state

log = logging.getLogger("recipes.students")

PAPER_LR = {"alr": 1e-4}  # the paper: 1e-4 for ALR, 1e-3 for every other mode
INITS = ("lstsq", "random")
INIT_BATCH = 1000  # sentences per Gram product of the least-squares init
PARTIAL = "sites"  # students/<mode>/sites/<site>/: one progressive site's checkpoint and weights


def _student_train_defaults() -> TrainConfig:
    return TrainConfig(
        epochs=21, schedule="constant", lr=1e-3, eps=1e-8, ckpt_every=100, log_every=10
    )


@dataclass
class ModeSettings:
    """One mode's settings in ``modes: {alr: {size: m, lr: 1e-4, epochs: 5}, ...}``; an unset
    field takes the config-wide value (``size``, ``activation``, ``train.*``)."""

    size: str = ""  # "" = the config's `size`
    activation: str = ""  # "" = the config's `activation`; swiglu/geglu: gated hidden units
    lr: float = 0.0  # 0 = the paper's rate for the mode (1e-4 for ALR), else train.lr
    epochs: int = 0  # 0 = train.epochs
    schedule: str = ""  # "" = train.schedule
    # Hidden units per position the least-squares init starts as position-local nonlinear
    # features instead of linear ones (distill/lstsq.py); needs max_len * n < width.
    local_units: int = 0
    # Learn output - input (x + MLP(x)); None = on wherever the mode's site adds its input.
    residual: bool | None = None
    # Pair-gate students (cross_gate): weight of the loss teaching the gates the teacher's
    # attention weights (layer-wise training only; 0 = output MSE alone).
    align: float = 0.0

    def __post_init__(self) -> None:
        if self.size and self.size not in SIZES:
            raise ValueError(f"unknown size '{self.size}' (known: {', '.join(SIZES)})")
        if self.activation and self.activation not in ACTIVATIONS:
            known = ", ".join(ACTIVATIONS)
            raise ValueError(f"unknown activation '{self.activation}' (known: {known})")
        if self.schedule and self.schedule not in SCHEDULES:
            known = ", ".join(SCHEDULES)
            raise ValueError(f"schedule must be one of {known}, got '{self.schedule}'")
        # TrainConfig checks the rate again when a mode starts; fail now, not mid-run.
        if not 0 <= self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.local_units < 0:
            raise ValueError(f"local_units must be a whole number >= 0, got {self.local_units}")
        if not 0 <= self.align < math.inf:
            raise ValueError(f"align must be a finite number >= 0, got {self.align}")


@dataclass
class Config:
    run_dir: str = ""
    # The modes to train, in order: a list of names (every setting from the config-wide keys)
    # or {mode: ModeSettings} to set a mode's own size, rate, epochs, ...
    modes: list[str] | dict[str, ModeSettings] = field(default_factory=lambda: list(DEFAULT_MODES))
    size: str = "m"
    activation: str = "leaky_relu"
    # "lstsq": non-causal students start from ridge regressions (distill/lstsq.py); "random" is
    # the paper's (PyTorch's default initialisation).
    init: str = "lstsq"
    source: str = "disk"  # "disk" (RUN_DIR/record) or "online" (teacher forward passes)
    batch_size: int = 256  # sentences (the paper: 2000)
    shard_size: int = 1000  # online mode: the same batching as a recording with this shard size
    max_sentences: int = 0  # online mode: 0 = whole train split
    valid_sentences: int = 500
    # "teacher": decoder sites learn on the teacher's greedy decodes (the prefixes of inference);
    # online mode decodes them, disk mode needs a recording made with the same targets.
    targets: str = "reference"
    train: TrainConfig = field(default_factory=_student_train_defaults)
    # Modes trained site by site in model order, each site on teacher passes with the students
    # of every earlier listed site spliced in (source=online; no two may share a site).
    progressive: list[str] = field(default_factory=list)

    # The flat per-mode keys of older configs: each is now a field of ``modes: {MODE: {...}}``.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        old: f"use modes: {{MODE: {{{new}: ...}}}} (e.g. modes.elr.{new}=...)"
        for old, new in (
            ("sizes", "size"),
            ("activations", "activation"),
            ("lrs", "lr"),
            ("epochs", "epochs"),
            ("schedules", "schedule"),
            ("local_units", "local_units"),
            ("residual", "residual"),
        )
    }

    def __post_init__(self) -> None:
        if isinstance(self.modes, list):
            self.modes = {m: ModeSettings() for m in self.modes}
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
        ModeSettings(size=self.size, activation=self.activation)  # checks the config-wide two
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got '{self.init}'")
        for mode, settings in self.modes.items():
            spec, act = MODES[mode], self.activation_of(mode)
            if settings.residual and not spec.residual:
                raise ValueError(
                    f"modes: {mode}: residual: the mode has no residual variant "
                    f"(only {', '.join(RESIDUAL_MODES)})"
                )
            if settings.local_units and not spec.lstsq:
                raise ValueError(f"local_units: mode '{mode}' has no least-squares init")
            if settings.align and not spec.pair:
                raise ValueError(f"modes: {mode}: align: only pair-gate modes have gates to align")
            if self.init == "lstsq" and spec.lstsq and act not in SUPPORTED_ACTIVATIONS:
                raise ValueError(
                    f"init=lstsq supports the activations {', '.join(SUPPORTED_ACTIVATIONS)}; "
                    f"use init=random with activation={act} (mode {mode})"
                )
        if self.source not in ("disk", "online"):
            raise ValueError(f"source must be 'disk' or 'online', got '{self.source}'")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got '{self.targets}'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self._check_progressive()

    def _check_progressive(self) -> None:
        for i, name in enumerate(self.progressive):
            if name not in self.modes:
                known = ", ".join(self.modes)
                raise ConfigError(f"progressive: mode '{name}' is not one of modes ({known})")
            for other in self.progressive[:i]:
                a, b = (MODES[m].site.format(i=0) for m in (other, name))
                if sites_overlap(a, b):
                    raise ConfigError(
                        f"progressive: {other} and {name} replace the same site ({a}, {b})"
                    )
        if self.progressive and self.source != "online":
            raise ConfigError(
                f"progressive: needs source=online (got {self.source}): each site trains on "
                "teacher passes with the earlier sites' students spliced in"
            )

    def size_of(self, mode: str) -> str:
        return self.modes[mode].size or self.size

    def activation_of(self, mode: str) -> str:
        return self.modes[mode].activation or self.activation

    def residual_of(self, mode: str, residual_sites: bool = True) -> bool:
        """Whether ``mode``'s students learn output - input: by default wherever the site adds
        its input, which a post-LN teacher's (Marian's) or a SAS teacher's sites never do."""
        found = self.modes[mode].residual
        return MODES[mode].residual and residual_sites if found is None else found

    def student_of(self, mode: str, model_cfg) -> StudentSpec:
        """The spec of ``mode``'s students for a teacher of ``model_cfg``."""
        residual = self.residual_of(mode, model_cfg.residual_sites)
        return StudentSpec(mode, self.size_of(mode), self.activation_of(mode), residual)

    def train_of(self, mode: str) -> TrainConfig:
        """``train`` with the mode's own rate, epochs and schedule."""
        s = self.modes[mode]
        return dataclasses.replace(
            self.train,
            lr=s.lr or PAPER_LR.get(mode, self.train.lr),
            epochs=s.epochs or self.train.epochs,
            schedule=s.schedule or self.train.schedule,
        )


def _batches(
    cfg: Config, sites, split: str, teacher, examples, recording, epoch: int, spliced=None
):
    """One epoch's batches of ``sites``; ``spliced`` ({site: student}, online only) sit in the
    teacher during its passes."""
    if cfg.source == "disk":
        return DiskBatches(recording[split], sites, cfg.batch_size, cfg.train.seed, epoch)
    return OnlineBatches(
        teacher,
        examples[split],
        sites,
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        seed=cfg.train.seed,
        epoch=epoch,
        students=spliced,
    )


def check_widths(cfg: Config, model_cfg) -> None:
    """``ConfigError`` when a mode's local units would fill its whole hidden layer (checked once
    the teacher's max_len is known, before any training)."""
    if cfg.init != "lstsq":
        return  # unused (main warns)
    for mode, settings in cfg.modes.items():
        width = MODES[mode].width(cfg.size_of(mode))
        try:
            check_local_units(
                settings.local_units, model_cfg.max_len, width, f"local_units: {mode}"
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None


def _lstsq(
    cfg: Config,
    students: dict,
    residual: bool,
    local: int,
    teacher,
    examples,
    recording,
    valid,
    cache,
    spliced=None,
):
    """Least-squares init of one mode's students (``local`` position-local units per position)
    from the training batches (read in large batches; ``spliced`` as in ``_batches``), ridge
    strengths chosen on ``valid``; the normal equations stay in ``cache`` for a later mode with
    the same sites and target (ASLR after ALR)."""
    sites, d = list(students), teacher.cfg.d_model
    big = dataclasses.replace(cfg, batch_size=INIT_BATCH)
    missing = [s for s in sites if (s, residual) not in cache]
    if missing:
        passes = _batches(big, missing, "train", teacher, examples, recording, 0, spliced)
        found = normal_equations(
            {s: students[s] for s in missing}, passes, residual=residual, d_model=d
        )
        cache.update({(s, residual): v for s, v in found.items()})
    least_squares_init(
        students,
        {s: cache[(s, residual)] for s in sites},
        _batches(big, sites, "train", teacher, examples, recording, 0, spliced),
        valid,
        residual=residual,
        d_model=d,
        local=local,
        seed=cfg.train.seed,
    )


def _build(cfg: Config, mode: str, teacher) -> nn.ModuleDict:
    """The mode's students, one per site (keys ``student_key``), seeded: the same initial
    weights whichever way they train; a student with a teacher counterpart (cross_gate's
    values) starts from the teacher site's weights (``init_from_teacher``)."""
    model_cfg = teacher.cfg
    spec = cfg.student_of(mode, model_cfg)
    torch.manual_seed(cfg.train.seed)
    students = nn.ModuleDict()
    for s in mode_sites(mode, model_cfg):
        student = build_student(spec, model_cfg)
        init_from_teacher(student, teacher.get_submodule(site_path(s, model_cfg)))
        students[student_key(s)] = student
    return students.to(stage_device())  # the least-squares init runs there too, before fit


def _init_of(cfg: Config, mode: str) -> tuple[str, int]:
    """(init the mode's students really get, their position-local units)."""
    init = cfg.init if MODES[mode].lstsq else "random"
    return init, cfg.modes[mode].local_units if init == "lstsq" else 0


def _validator(sites: list[str], valid):
    """``validate`` for ``fit``: the validation MSE over ``valid`` of each site and their mean."""

    def validate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        total = [0.0] * len(sites)
        for batch in valid:
            batch = batch.to(device)
            for j, s in enumerate(sites):
                total[j] += site_loss(model[student_key(s)], s, batch).item()
        mse = {f"valid_mse/{s}": v / max(len(valid), 1) for s, v in zip(sites, total)}
        return {"valid_mse": sum(mse.values()) / len(sites), **mse}

    return validate


def _finish(cfg: Config, mode: str, students: nn.ModuleDict, model_cfg, **extra) -> None:
    """students.safetensors, then spec.json (the mark of a finished mode), then drop the resume
    state: a finished mode is skipped, never resumed, and its checkpoint (weights and Adam's
    moments, 0.9 GB for the demo's ELR) is only disk now."""
    out = students_dir(cfg.run_dir) / mode
    init, local = _init_of(cfg, mode)
    save_tensors(out / "students.safetensors", students.state_dict())
    spec = {
        **cfg.student_of(mode, model_cfg).to_dict(),
        "sites": mode_sites(mode, model_cfg),
        "init": init,
        "local_units": local,
        "align": cfg.modes[mode].align,
    }
    atomic_write_json(out / "spec.json", {**spec, **extra})
    drop_checkpoint(out, out / PARTIAL)


def mode_config(cfg: Config, mode: str) -> Config:
    """``cfg`` for ``mode`` alone, with its own rate, epochs and schedule (its config.yaml)."""
    progressive = cfg.progressive if mode in cfg.progressive else []
    alone = {m: cfg.modes[m] for m in (progressive or [mode])}
    return dataclasses.replace(cfg, modes=alone, train=cfg.train_of(mode), progressive=progressive)


def claim_mode(cfg: Config, mode: str, model_cfg, report: bool = True) -> Claim:
    """``distill.stages.begin`` for students/<mode>: its settings are the mode's resolved ones
    (size, activation, residual, rate, epochs, ...; a progressive mode's chain too) and the
    shared keys that reach it; it is built on the teacher and, from disk, the recording."""
    one = mode_config(cfg, mode)  # a progressive mode: with the modes of its chain
    own = {
        m: dataclasses.replace(
            cfg.modes[m],
            size=cfg.size_of(m),
            activation=cfg.activation_of(m),
            residual=cfg.residual_of(m, model_cfg.residual_sites),
        )
        for m in one.modes
    }
    tree = to_dict(dataclasses.replace(one, modes=own))
    for key in ("size", "activation"):  # folded into modes.<mode>
        tree.pop(key)
    online = cfg.source == "online"
    free = () if online else ("shard_size", "max_sentences")  # online-only keys
    after = [teacher_dir(cfg.run_dir)] + ([] if online else [Path(cfg.run_dir) / "record"])
    out = students_dir(cfg.run_dir) / mode
    finished = (out / "spec.json").exists()
    settings = result_settings(tree, free)
    return begin(out, cfg.run_dir, settings, finished=finished, after=after, report=report)


def train_mode(cfg: Config, mode: str, teacher, examples, recording, cache=None) -> Path:
    """Train (or resume) one mode's students; ``cache`` carries normal equations between modes."""
    cache = {} if cache is None else cache
    out = students_dir(cfg.run_dir) / mode
    claim = claim_mode(cfg, mode, teacher.cfg)
    if claim.status == "skip":
        return out
    out.mkdir(parents=True, exist_ok=True)
    sites = mode_sites(mode, teacher.cfg)
    residual = cfg.residual_of(mode, teacher.cfg.residual_sites)
    students = _build(cfg, mode, teacher)
    train_cfg = cfg.train_of(mode)
    proc = process_state()  # under several processes, only the main one writes files
    if proc.is_main_process:
        claim.store()
        write_config(out, mode_config(cfg, mode))
    valid = _batches(cfg, sites, "valid", teacher, examples, recording, 0)
    validate = _validator(sites, valid)
    init, local = _init_of(cfg, mode)
    if init == "lstsq" and resolve_checkpoint(out / "checkpoint") is None:
        some = {s: students[student_key(s)] for s in sites}
        _lstsq(cfg, some, residual, local, teacher, examples, recording, valid, cache)
        with torch.no_grad():
            scores = validate(students)
        log.info("%s: validation MSE after least-squares init %.4f", mode, scores["valid_mse"])
        if proc.is_main_process:
            atomic_write_json(out / "init.json", {"init": init, "local_units": local, **scores})
    fit(
        students,
        lambda e: _batches(cfg, sites, "train", teacher, examples, recording, e),
        lambda m, b: mode_loss(m, sites, b, teacher, cfg.modes[mode].align),
        train_cfg,
        out,
        d_model=teacher.cfg.d_model,
        desc=f"students:{mode}",
        validate=validate,
    )
    if proc.is_main_process:
        _finish(cfg, mode, students, teacher.cfg)
    proc.wait_for_everyone()
    return out


def chain(cfg: Config, model_cfg) -> list[tuple[str, str]]:
    """[(site, mode)] of the progressive modes in model order (encoder layers, then decoder
    layers, self- before cross-attention): the order they train in."""
    order = list_sites(model_cfg)
    pairs = [(s, m) for m in cfg.progressive for s in mode_sites(m, model_cfg)]
    return sorted(pairs, key=lambda pair: order.index(pair[0]))


def train_site(cfg: Config, mode: str, site: str, student, teacher, examples, spliced) -> None:
    """Train one progressive site's ``student`` in place on teacher passes with ``spliced``
    ({site: student} of the earlier sites) in the teacher, resuming from its checkpoint; once
    done its weights are students/<mode>/sites/<site>/student.safetensors, which a later run
    loads instead of training again."""
    out = students_dir(cfg.run_dir) / mode / PARTIAL / site
    older = [p for p in out.parent.glob("*") if p.name != site and current_site(p.name) == site]
    if older and not out.exists():
        older[0].rename(out)  # a site's work from before its name changed (distill.formats)
    weights = out / "student.safetensors"
    if weights.exists():
        load_state_dict(student, load_tensors(weights), weights)
        log.info("%s: %s already trained: %s", mode, site, weights)
        return
    out.mkdir(parents=True, exist_ok=True)
    proc = process_state()
    one = nn.ModuleDict({student_key(site): student})

    def batches(split: str, epoch: int):
        return _batches(cfg, [site], split, teacher, examples, {}, epoch, spliced)

    valid = batches("valid", 0)
    validate = _validator([site], valid)
    init, local = _init_of(cfg, mode)
    if init == "lstsq" and resolve_checkpoint(out / "checkpoint") is None:
        residual = cfg.residual_of(mode, teacher.cfg.residual_sites)
        only = {site: student}
        _lstsq(cfg, only, residual, local, teacher, examples, {}, valid, cache={}, spliced=spliced)
        with torch.no_grad():
            score = validate(one)[f"valid_mse/{site}"]
        log.info("%s: validation MSE after least-squares init %.4f", site, score)
        if proc.is_main_process:
            atomic_write_json(out / "init.json", {f"valid_mse/{site}": score})
    fit(
        one,
        lambda e: batches("train", e),
        lambda m, b: mode_loss(m, [site], b, teacher, cfg.modes[mode].align),
        cfg.train_of(mode),
        out,
        d_model=teacher.cfg.d_model,
        desc=f"students:{mode}:{site}",
        validate=validate,
    )
    if proc.is_main_process:
        save_tensors(weights, student.state_dict())
        drop_checkpoint(out)
    proc.wait_for_everyone()


def _finish_progressive(cfg: Config, mode: str, students: nn.ModuleDict, model_cfg) -> None:
    """The mode's files as train_mode writes them, from its sites' parts: metrics.jsonl (each
    record with its "site"), init.json, students.safetensors, spec.json (with "progressive")."""
    out, sites = students_dir(cfg.run_dir) / mode, mode_sites(mode, model_cfg)
    records, scores = [], {}
    for site in sites:
        part = out / PARTIAL / site
        for line in (part / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            records.append(json.dumps({**json.loads(line), "site": site}, sort_keys=True))
        if (part / "init.json").exists():
            scores.update(read_json(part / "init.json"))
    atomic_write_text(out / "metrics.jsonl", "".join(r + "\n" for r in records))
    init, local = _init_of(cfg, mode)
    if scores:
        mean = sum(scores.values()) / len(scores)
        atomic_write_json(
            out / "init.json", {"init": init, "local_units": local, "valid_mse": mean, **scores}
        )
    _finish(cfg, mode, students, model_cfg, progressive=cfg.progressive)


def train_progressive(cfg: Config, teacher, examples) -> None:
    """Train the ``progressive`` modes site by site along ``chain``; a finished mode's students
    are loaded and spliced in for the sites after them."""
    proc = process_state()
    students: dict[str, nn.ModuleDict] = {}
    done = set()
    for mode in cfg.progressive:
        out = students_dir(cfg.run_dir) / mode
        claim = claim_mode(cfg, mode, teacher.cfg)
        if claim.status == "skip":
            found = read_json(out / "spec.json").get("progressive", [])
            if found != cfg.progressive:
                raise ConfigError(
                    f"progressive: {out} holds students trained with progressive={found}; "
                    "delete it to train them again"
                )
            loaded = load_students(cfg.run_dir, mode, teacher.cfg)
            students[mode] = nn.ModuleDict({student_key(s): m for s, m in loaded.items()})
            done.add(mode)
            continue
        students[mode] = _build(cfg, mode, teacher)
        if proc.is_main_process:
            claim.store()
            write_config(out, mode_config(cfg, mode))
    device = next(teacher.parameters()).device
    spliced: dict[str, nn.Module] = {}
    for site, mode in chain(cfg, teacher.cfg):
        student = students[mode][student_key(site)]
        if mode not in done:
            train_site(cfg, mode, site, student, teacher, examples, spliced)
            if site == mode_sites(mode, teacher.cfg)[-1] and proc.is_main_process:
                _finish_progressive(cfg, mode, students[mode], teacher.cfg)
            proc.wait_for_everyone()
        # A fresh copy: a student's no-grad tables (students.padded_norm_linear's memo) are keyed
        # by tensor versions, which torch's fused Adam steps leave unchanged, so the trained
        # module may hold tables of older weights; a copy computes them from its final ones.
        fresh = build_student(cfg.student_of(mode, teacher.cfg), teacher.cfg)
        fresh.load_state_dict(student.state_dict())
        spliced[site] = fresh.to(device).eval()


def main(cfg: Config) -> Path:
    teacher, tok = load_teacher(cfg.run_dir, device=stage_device())
    for p in teacher.parameters():
        p.requires_grad_(False)
    check_modes(cfg.modes, teacher.cfg)
    for mode in cfg.modes:
        if cfg.residual_of(mode, teacher.cfg.residual_sites) and not teacher.cfg.residual_sites:
            c = teacher.cfg
            why = (
                f"{c.family} teacher is post-LN"
                if not c.pre_norm
                else f"{c.block} teacher has no skip"
            )
            raise ConfigError(
                f"modes: {mode}: residual: the {why}, its sites do not add their input "
                "(set residual: false)"
            )
    check_widths(cfg, teacher.cfg)
    for mode in cfg.modes:  # changed settings of a finished mode fail now, before data loads
        claim_mode(cfg, mode, teacher.cfg, report=False)
    examples, recording = {}, {}
    if cfg.source == "disk":
        for split in ("train", "valid"):
            recording[split] = Recording(Path(cfg.run_dir) / "record" / split)
            if recording[split].targets != cfg.targets:
                raise ConfigError(
                    f"targets={cfg.targets} but {recording[split].path} was recorded with "
                    f"targets={recording[split].targets}; record again with "
                    f"targets={cfg.targets} or use source=online"
                )
            wanted = sorted({s for m in cfg.modes for s in mode_sites(m, teacher.cfg)})
            recording[split].check_compatible(teacher.cfg, wanted)
            recording[split].verify()  # a bad shard fails now, before anything is written
    else:
        cache = Path(cfg.run_dir) / "students"
        for split, limit in (("train", cfg.max_sentences), ("valid", cfg.valid_sentences)):
            examples[split], _ = split_examples(
                cfg.run_dir, teacher, tok, split, limit, cfg.targets, cache
            )
    local = {m: s.local_units for m, s in cfg.modes.items() if s.local_units}
    if cfg.init != "lstsq" and local:
        log.warning("local_units %s unused: they are part of init=lstsq", local)
    cache: dict = {}
    order = [m for m in cfg.modes if m not in cfg.progressive]
    for i, mode in enumerate(order):
        train_mode(cfg, mode, teacher, examples, recording, cache)
        later = {s for m in order[i + 1 :] for s in mode_sites(m, teacher.cfg)}
        for key in [k for k in cache if k[0] not in later]:
            del cache[key]  # no later mode solves for this site
    train_progressive(cfg, teacher, examples)
    return students_dir(cfg.run_dir)
