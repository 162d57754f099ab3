"""Train the spliced students end to end: distil the teacher's next-token distributions.

    distill run finetune --config demo                  # after `distill run students`
    distill run finetune --config demo variants=[cross] trainable=students+norms
    distill run finetune --config demo variants=[attentionless_pw+keep1]   # a hybrid
    distill run finetune --config tiny

The layer-wise stage trains each student alone on the teacher's own inputs; spliced together they
never saw each other's errors. This stage splices a variant's students into a copy of the teacher
and trains them on the training split, teacher-forced, with
    kd_weight     * T^2 * KL(teacher_T || spliced_T)   next-token distributions at temperature T
  + ce_weight     * cross-entropy on the reference      (0 = pure distillation)
  + hidden_weight * MSE of each replaced site's output against the teacher's output there.
``trainable`` says what moves: ``students`` (the teacher's own weights stay bit-identical),
``students+norms`` (and every LayerNorm) or ``all``; ``teacher_lr_scale`` lets the teacher's own
weights learn slower than the students (0.33 with ``train.lr: 3e-4``: the rest at 1e-4).
``init: random`` starts from fresh students of the same shapes (the no-layer-wise-stage
ablation); ``targets: teacher`` teacher-forces on the teacher's own decodes of the sources
(sequence-level distillation, Kim & Rush 2016) instead of references: greedy, or a beam search
of width ``target_beam`` (their setting), cached once per teacher in RUN_DIR/finetune/.
Writes RUN_DIR/finetune/<variant>/: config.yaml, metrics.jsonl (each loss term), checkpoint/
(resumable; deleted once finished), model.safetensors (the tuned spliced model) and spec.json.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distill.activations import ActBatch, padding_masks, site_hooks, site_io
from distill.checkpoint import atomic_write_json, drop_checkpoint, save_tensors
from distill.config import to_dict
from distill.data import token_batches
from distill.device import stage_device
from distill.losses import distill_kl, output_at_real_tokens, smoothed_cross_entropy
from distill.model import PAD_ID, site_path
from distill.modes import VARIANTS, Variant, resolve_variant, resolve_variants
from distill.prefixes import TARGETS
from distill.runs import (
    TRAINABLE,
    finetune_dir,
    load_teacher,
    splice_spec,
    split_examples,
    students_dir,
    teacher_dir,
    tuned_spec,
    variant_spec,
    write_config,
)
from distill.stages import Claim, begin, result_settings
from distill.train import TrainConfig, TrainingDiverged, fit, masked_mean, process_state

log = logging.getLogger("recipes.finetune")

INITS = ("layerwise", "random")


def _finetune_train_defaults() -> TrainConfig:
    # A small peak rate after a warm-up: at 1e-3 Adam's first steps undo the layer-wise start.
    return TrainConfig(
        epochs=1, schedule="cosine", lr=1e-4, warmup=50, eps=1e-8, ckpt_every=100, log_every=10
    )


@dataclass
class Config:
    run_dir: str = ""
    variants: list[str] = field(default_factory=lambda: ["attentionless"])
    init: str = "layerwise"  # "layerwise" (RUN_DIR/students) | "random" (same shapes, fresh)
    trainable: str = "students"
    teacher_lr_scale: float = 1.0  # the teacher's own trainable weights learn at train.lr * this
    temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    targets: str = "reference"  # "teacher": the teacher's decodes as decoder inputs
    target_beam: int = 1  # with targets=teacher: 1 = greedy decodes, k > 1 = beam search of width k
    batch_tokens: int = 2000
    max_sentences: int = 0  # training sentences (evenly spread over the filtered split); 0 = all
    valid_sentences: int = 500
    train: TrainConfig = field(default_factory=_finetune_train_defaults)

    def __post_init__(self) -> None:
        for v in self.variants:
            try:
                modes = resolve_variant(v).modes
            except ValueError as err:
                raise ValueError(f"variants: {err}") from None
            if not modes:
                known = ", ".join(k for k, modes in VARIANTS.items() if modes)
                raise ValueError(f"variants: unknown or empty variant '{v}' (known: {known})")
        for key, value, allowed in (
            ("init", self.init, INITS),
            ("trainable", self.trainable, TRAINABLE),
            ("targets", self.targets, TARGETS),
        ):
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
        if self.target_beam < 1:
            raise ValueError(f"target_beam must be >= 1, got {self.target_beam}")
        if self.target_beam > 1 and self.targets != "teacher":
            raise ValueError("target_beam applies to targets=teacher (the teacher's decodes)")
        for key in ("temperature", "teacher_lr_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        weights = {"kd_weight": self.kd_weight, "ce_weight": self.ce_weight}
        weights["hidden_weight"] = self.hidden_weight
        for key, w in weights.items():
            if not w >= 0:
                raise ValueError(f"{key} must be >= 0, got {w}")
        if not any(weights.values()):
            raise ValueError("kd_weight, ce_weight and hidden_weight are all 0: nothing to learn")
        for key in ("batch_tokens", "valid_sentences"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


def forward_with_sites(model, batch, sites: list[str]) -> tuple[torch.Tensor, ActBatch]:
    """(logits (N, V) at the real target tokens, what ``sites`` received and returned) of one
    teacher-forced pass."""
    with site_hooks(model, sites) as got:
        logits, _ = output_at_real_tokens(model, batch)
    return logits, ActBatch({**got, **padding_masks(batch.src, batch.tgt_in)})


def finetune_loss(model, teacher, batch, cfg: Config, sites: list[str]):
    """(weighted loss, {term: value}); ``TrainingDiverged`` names a non-finite term."""
    hidden_sites = sites if cfg.hidden_weight else []
    with torch.no_grad():
        t_logits, t_sites = forward_with_sites(teacher, batch, hidden_sites)
    logits, s_sites = forward_with_sites(model, batch, hidden_sites)
    terms, weights = {}, {}
    if cfg.kd_weight:
        terms["kd"] = distill_kl(logits, t_logits, cfg.temperature)
        weights["kd"] = cfg.kd_weight
    if cfg.ce_weight:
        reference = batch.tgt_out[batch.tgt_out != PAD_ID]
        terms["ce"], weights["ce"] = smoothed_cross_entropy(logits, reference, 0.0), cfg.ce_weight
    if hidden_sites:
        per_site = []
        for s in hidden_sites:
            student, target = site_io(s_sites, s), site_io(t_sites, s)
            per_site.append(masked_mean((student.y.float() - target.y.float()) ** 2, target.mask))
        terms["hidden"], weights["hidden"] = torch.stack(per_site).mean(), cfg.hidden_weight
    values = {k: v.detach() for k, v in terms.items()}
    for name, value in values.items():
        if not torch.isfinite(value):
            raise TrainingDiverged(f"loss term '{name}' is {value.item()}")
    return sum(weights[k] * terms[k] for k in terms), values


def trainable_parameters(
    model: nn.Module, sites: list[str], what: str, teacher_lr_scale: float = 1.0
) -> list[dict]:
    """Optimizer groups of the parameters ``what`` trains: the students' at the full rate, the
    teacher's own (norms or all) at ``teacher_lr_scale`` of it. Every other parameter gets
    ``requires_grad=False``."""
    if what == "all":
        chosen = list(model.parameters())
    else:
        modules = [model.get_submodule(site_path(s, model.cfg)) for s in sites]
        if what == "students+norms":
            modules += [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
        chosen = list({id(p): p for m in modules for p in m.parameters()}.values())
    keep = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    if teacher_lr_scale == 1.0:  # one group: the checkpoints of earlier runs still resume
        return [{"params": chosen}]
    student = {
        id(p) for s in sites for p in model.get_submodule(site_path(s, model.cfg)).parameters()
    }
    groups = [{"params": [p for p in chosen if id(p) in student]}]
    rest = [p for p in chosen if id(p) not in student]
    return groups + ([{"params": rest, "lr_scale": teacher_lr_scale}] if rest else [])


def _examples(cfg: Config, teacher, tok, split: str, limit: int):
    cache = Path(cfg.run_dir) / "finetune"
    found = split_examples(
        cfg.run_dir, teacher, tok, split, limit, cfg.targets, cache, cfg.target_beam
    )
    return found[0]


def claim_variant(cfg: Config, resolved: Variant, report: bool = True) -> Claim:
    """``distill.stages.begin`` for finetune/<variant>: the config with this variant alone,
    built on the teacher and the students of the variant's modes."""
    out = finetune_dir(cfg.run_dir, resolved.name)
    tree = to_dict(dataclasses.replace(cfg, variants=[resolved.name]))
    after = [teacher_dir(cfg.run_dir)] + [students_dir(cfg.run_dir) / m for m in resolved.modes]
    finished = tuned_spec(cfg.run_dir, resolved.name) is not None
    settings = result_settings(tree)
    return begin(out, cfg.run_dir, settings, finished=finished, after=after, report=report)


def tune_variant(
    cfg: Config, resolved: Variant, teacher, tok, train, valid, claim: Claim | None = None
) -> Path:
    """Train (or resume) one variant end to end; a finished one is skipped (``claim``: its
    ``claim_variant``, when already made). A hybrid's kept sites are the teacher's own
    attention: they train only under ``trainable: all``."""
    variant = resolved.name
    out = finetune_dir(cfg.run_dir, variant)
    claim = claim or claim_variant(cfg, resolved)
    if claim.status == "skip":
        return out
    out.mkdir(parents=True, exist_ok=True)
    proc = process_state()  # under several processes, only the main one writes files
    if proc.is_main_process:
        claim.store()
        write_config(out, dataclasses.replace(cfg, variants=[variant]))
    spec = variant_spec(cfg.run_dir, resolved.modes, resolved.kept)
    model, _ = load_teacher(cfg.run_dir)
    torch.manual_seed(cfg.train.seed)
    info = splice_spec(model, cfg.run_dir, spec, fresh=cfg.init == "random")
    sites = list(spec)
    params = trainable_parameters(model, sites, cfg.trainable, cfg.teacher_lr_scale)
    log.info(
        "%s: %d sites, %d trainable parameters (%s), init %s",
        variant,
        len(sites),
        sum(p.numel() for g in params for p in g["params"]),
        cfg.trainable,
        cfg.init,
    )
    valid_batches = token_batches(valid, cfg.batch_tokens, shuffle=False)

    def validate(m) -> dict[str, float]:
        totals: dict[str, float] = {}
        device = next(m.parameters()).device
        for b in valid_batches:
            loss, terms = finetune_loss(m, teacher, b.to(device), cfg, sites)
            for k, v in {"loss": loss, **terms}.items():
                totals[f"valid_{k}"] = totals.get(f"valid_{k}", 0.0) + float(v) / len(valid_batches)
        return totals

    state = fit(
        model,
        lambda e: token_batches(
            train, cfg.batch_tokens, shuffle=True, seed=cfg.train.seed, epoch=e
        ),
        lambda m, b: finetune_loss(m, teacher, b, cfg, sites),
        cfg.train,
        out,
        d_model=teacher.cfg.d_model,
        desc=f"finetune:{variant}",
        validate=validate,
        params=params,
    )
    model.eval()
    with torch.no_grad():
        scores = validate(model)
    if proc.is_main_process:
        save_tensors(out / "model.safetensors", model.state_dict())
        settings = {k: getattr(cfg, k) for k in ("init", "trainable", "teacher_lr_scale")}
        settings.update({k: getattr(cfg, k) for k in ("temperature", "targets", "target_beam")})
        settings.update({k: getattr(cfg, k) for k in ("kd_weight", "ce_weight", "hidden_weight")})
        settings.update(
            steps=state["step"],
            lr=cfg.train.lr,
            schedule=cfg.train.schedule,
            batch_tokens=cfg.batch_tokens,
            sentences=len(train),
        )
        atomic_write_json(
            out / "spec.json",
            {
                "variant": variant,
                "modes": list(resolved.modes),
                "kept": list(resolved.kept),
                "sites": spec,
                "replacements": info["replacements"],
                "settings": settings,
                **scores,
            },
        )
        drop_checkpoint(out)
    proc.wait_for_everyone()
    log.info("%s tuned in %d steps: %s", variant, state["step"], scores)
    return out


def main(cfg: Config) -> Path:
    # The frozen teacher lives on the stage's device: fit moves the spliced model and every
    # batch there, and the teacher's forward in finetune_loss reads the same batches.
    teacher, tok = load_teacher(cfg.run_dir, device=stage_device())
    for p in teacher.parameters():
        p.requires_grad_(False)
    variants = resolve_variants(cfg.variants, teacher.cfg)  # e.g. a hybrid's layer index
    # changed settings of a finished variant fail now, before data loads
    claims = {v.name: claim_variant(cfg, v) for v in variants}
    todo = [v for v in variants if claims[v.name].status != "skip"]
    for v in todo:  # a missing layer-wise student fails now, before any data loads
        variant_spec(cfg.run_dir, v.modes, v.kept)
    if todo:
        train = _examples(cfg, teacher, tok, "train", cfg.max_sentences)
        valid = _examples(cfg, teacher, tok, "valid", cfg.valid_sentences)
        for v in todo:
            tune_variant(cfg, v, teacher, tok, train, valid, claims[v.name])
    return Path(cfg.run_dir) / "finetune"
