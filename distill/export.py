"""Export one variant of a run as a self-contained directory (layout: ``distill.pretrained``).

    distill export runs/demo --out exports/demo-best      # best attentionless variant on valid
    distill export runs/demo --variant attentionless --out exports/demo-attentionless
    distill export runs/demo --variant attentionless_pw+keep1 --out DIR   # a hybrid
    distill export runs/demo --spec encoder.0.self_attn=alr,decoder.1.cross_attn=cross --out DIR

The teacher's weights with the students of the chosen modes spliced in, the tokenizer, a model
card with the variant's BLEU/chrF (from RUN_DIR/eval/results.json when that variant was scored
there, else scored now on the run's test split) and the modelling code transformers needs to
load and ``generate`` without distill installed (``distill.remote_code``: the package's own
modules, written at export time). config.json
and the card say whether the model is attentionless, which kind of student holds each replaced
site (mixing or gated pairs) and which sites keep the teacher's attention (a hybrid's kept sites,
or the sites no student replaced). The card's model-index calls the whole test split, scored here
with long sources split as ``distill translate`` does, ``test``, and the run's length-filtered
score by its own name.
Everything is written into a temporary sibling that is renamed into place: an interrupted export
leaves no OUT.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distill import __version__
from distill.bleu import evaluate_model
from distill.checkpoint import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_json,
    save_tensors,
)
from distill.chunks import boundary_ids
from distill.config import load_yaml
from distill.data import load_pairs, scored_pairs
from distill.device import stage_device
from distill.errors import CheckpointError, ConfigError, DistillError
from distill.export_config import check_spec, generation_config, make_config
from distill.formats import current_site
from distill.model import ModelConfig, count_parameters, teacher_attention
from distill.modelcard import model_card
from distill.modes import Variant, resolve_variant
from distill.remote_code import remote_code
from distill.runs import (
    load_teacher,
    load_variant,
    splice_spec,
    student_spec,
    teacher_data,
    teacher_dir,
    tuned_spec,
    variant_spec,
)

log = logging.getLogger(__name__)


def parse_spec(text: str) -> dict[str, str]:
    """``"encoder.0.self_attn=alr,decoder.1.cross_attn=cross"`` -> {site: mode}."""
    spec = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        site, sep, mode = item.partition("=")
        if not sep or not site.strip() or not mode.strip():
            raise ConfigError(f"--spec item '{item}' is not of the form SITE=MODE")
        spec[site.strip()] = mode.strip()
    if not spec:
        raise ConfigError("--spec is empty; give SITE=MODE[,SITE=MODE...]")
    return spec


def resolve_spec(
    run_dir: Path, variant_or_spec: str | dict[str, str], cfg: ModelConfig
) -> tuple[str, dict[str, str], Variant | None]:
    """(variant name, {site: mode}, the resolved variant or None for a spec) for a variant name
    (``distill.modes.resolve_variant``: a ``VARIANTS`` entry or a hybrid) or a spec."""
    if isinstance(variant_or_spec, dict):
        name, spec, variant = "custom", dict(variant_or_spec), None
    else:
        try:
            variant = resolve_variant(variant_or_spec, cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        name, spec = variant.name, variant_spec(run_dir, variant.modes, variant.kept)
    try:
        check_spec(spec, cfg)
    except ValueError as err:
        raise ConfigError(f"spec: {err}") from None
    for site, mode in spec.items():
        if site not in student_spec(run_dir, mode)["sites"]:
            raise CheckpointError(f"{run_dir}: no trained '{mode}' student for site '{site}'")
    return name, spec, variant


def best_variant(run_dir: str | Path, layer_wise: bool = False) -> dict:
    """The row of the run's validation scores (RUN_DIR/eval/results-valid.json, written by the
    evaluate stage with ``splits=[valid,...]``, as the demo does) with the best BLEU among the
    variants that replace every attention site (attentionless; no hybrid, no partial variant),
    tuned or layer-wise (only layer-wise rows when ``layer_wise``). What ``distill export``
    exports without ``--variant``."""
    path = Path(run_dir) / "eval" / "results-valid.json"
    todo = (
        f"score the variants on the validation split first (distill run evaluate --config NAME "
        f"run_dir={run_dir} splits=[valid]) or pass --variant"
    )
    if not path.is_file():
        raise ConfigError(f"{path}: not found; {todo}")
    rows = [
        row
        for row in read_json(path).get("rows", [])
        if row.get("attentionless") and (not layer_wise or row.get("stage") == "layer-wise")
    ]
    if not rows:
        raise ConfigError(
            f"{path}: no variant that replaces every attention site was scored; {todo}"
        )
    return max(rows, key=lambda row: row["bleu"])  # the first of equals


def _scores(
    run_dir: Path, name: str, stage: str, spec: dict[str, str], model, tok
) -> tuple[dict, str]:
    """(result row, test-set note): the run's own evaluation of this variant and stage, else a
    fresh one."""
    path = run_dir / "eval" / "results.json"
    if path.is_file():
        results = read_json(path)
        for row in results.get("rows", []):
            sites = {current_site(s) for s in row.get("sites", [])}  # of an older format too
            same = row.get("variant") == name and sites == set(spec)
            if same and row.get("stage", "layer-wise") in (stage, ""):
                log.info("scores of '%s' from %s", name, path)
                return row, results["note"]
    pairs, note = scored_pairs(teacher_data(run_dir), "test", tok, model.cfg.max_len)
    log.info("scoring '%s' on %d test pairs", name, len(pairs))
    row, _ = evaluate_model(model, tok, pairs, beam=1, progress=True)
    return row, note


def base_model(run_dir: Path) -> str | None:
    """The Hub id of an imported teacher, for the card's ``base_model``: read off the checkpoint
    folder its config.yaml records (``pretrained``) when that is a snapshot in the Hugging Face
    cache (``.../models--ORG--NAME/snapshots/REV``, where ``hf download`` and
    ``snapshot_download`` put it). None for a teacher trained here or imported from elsewhere."""
    pretrained = load_yaml(teacher_dir(run_dir) / "config.yaml").get("pretrained") or ""
    parts = Path(pretrained).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")  # a Hub id has no "--"
    if pretrained:
        log.info(
            "teacher imported from %s, no Hugging Face cache folder: no base_model", pretrained
        )
    return None


def _whole_split(data, model, tok) -> dict | None:
    """Scores on every pair of the run's test split, long sources split into parts: what
    translating the split's sources with ``distill translate`` and scoring them with sacreBLEU
    reproduces."""
    try:
        pairs = load_pairs(data, "test")
    except DistillError as err:  # e.g. a corpus that is not on this machine any more
        log.warning("no whole-test-split score in the model card: %s", err)
        return None
    log.info("scoring on all %d pairs of the %s test split", len(pairs), data.source)
    row, _ = evaluate_model(model, tok, pairs, beam=1, progress=True)
    return row


def _check_out(out_dir: Path) -> None:
    """Refuse to replace a directory that is not an earlier export (it would be deleted)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        config = out_dir / "config.json"
        old = read_json(config) if config.is_file() else None
        if not isinstance(old, dict) or old.get("model_type") != "distill":
            raise ConfigError(
                f"{out_dir}: exists and is not a distill export; choose another --out"
            )


def _shareable(directory: Path) -> None:
    """Temporary files and directories are created private; an export is meant to be shared."""
    umask = os.umask(0o022)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def export(
    run_dir: str | Path,
    variant_or_spec: str | dict[str, str],
    out_dir: str | Path,
    layer_wise: bool = False,
) -> Path:
    """Write the export directory ``out_dir`` for a variant name or a {site: mode} spec.

    A variant the finetune stage tuned is exported with its tuned weights unless ``layer_wise``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_out(out_dir)
    code = remote_code()  # a module the export cannot ship fails before any work
    model, tok = load_teacher(run_dir)
    cfg = model.cfg
    name, spec, variant = resolve_spec(run_dir, variant_or_spec, cfg)
    tuned = tuned_spec(run_dir, name) if variant and spec and not layer_wise else None
    if tuned is not None:
        model, tok, info = load_variant(run_dir, variant.modes, tuned=name, kept=variant.kept)
        log.info("exporting the tuned '%s' (RUN_DIR/finetune/%s)", name, name)
    else:
        info = splice_spec(model, run_dir, spec)
    replacements, replaced, student_params = info["replacements"], info["replaced"], info["student"]
    model = model.to(stage_device())  # scored where the stages run; saved from the CPU
    stage = "tuned" if tuned is not None else "layer-wise"
    row, note = _scores(run_dir, name, stage, spec, model, tok)
    data = teacher_data(run_dir)
    whole = _whole_split(data, model, tok)
    kept = teacher_attention(model)
    params = {
        "replaced": replaced,
        "student": student_params,
        "total": count_parameters(model),
    }
    config = make_config(
        cfg,
        replacements,
        tok.export_info(),
        boundary_ids(tok.pieces()),
        variant=name,
        stage=stage,
        finetune=tuned["settings"] if tuned is not None else None,
        data={"source": data.source, "pair": data.pair},
        parameters=params,
        attentionless=not kept,
        teacher_attention=kept,
        hybrid={"base": variant.base, "kept": list(variant.kept)}
        if variant and variant.hybrid
        else None,
        base_model=base_model(run_dir),
        distill_version=__version__,
    )
    with atomic_dir(out_dir) as tmp:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        tok.export_files(tmp)
        atomic_write_json(tmp / "generation_config.json", generation_config(cfg))
        for filename, source in code.items():
            atomic_write_text(tmp / filename, source)
        atomic_write_text(tmp / "README.md", model_card(config, row, note, out_dir.name, whole))
        atomic_write_json(tmp / "config.json", config)
        _shareable(tmp)
    log.info("exported '%s' (%d sites replaced) to %s", name, len(replacements), out_dir)
    return out_dir
