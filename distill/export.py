"""Export one variant of a run as a self-contained directory (layout: ``distill.pretrained``).

    distill export runs/demo --variant attentionless --out exports/demo-attentionless
    distill export runs/demo --spec encoder.0.self_attn=alr,decoder.1.cross_attn=cross --out DIR

The teacher's weights with the students of the chosen modes spliced in, the tokenizer, a model
card with the variant's BLEU/chrF (from RUN_DIR/eval/results.json when that variant was scored
there, else scored now on the run's test split) and the files transformers needs. Everything is
written into a temporary sibling that is renamed into place: an interrupted export leaves no OUT.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from distill import __version__
from distill.checkpoint import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_json,
    save_tensors,
)
from distill.data import load_pairs
from distill.errors import CheckpointError, ConfigError, DistillError
from distill.model import ModelConfig, count_parameters, site_path
from distill.modelcard import model_card
from distill.pretrained import REMOTE_CODE, check_spec, generation_config, make_config
from distill.runs import load_students, load_teacher, student_spec, teacher_config
from distill.students import effective_parameters, splice

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
) -> tuple[str, dict[str, str]]:
    """(variant name, {site: mode}) for a variant of ``recipes.evaluate.VARIANTS`` or a spec."""
    from recipes.evaluate import VARIANTS

    if isinstance(variant_or_spec, dict):
        name, spec = "custom", dict(variant_or_spec)
    elif variant_or_spec in VARIANTS:
        name, spec = variant_or_spec, {}
        for mode in VARIANTS[variant_or_spec]:
            spec.update(dict.fromkeys(student_spec(run_dir, mode)["sites"], mode))
    else:
        raise ConfigError(f"unknown variant '{variant_or_spec}' (known: {', '.join(VARIANTS)})")
    try:
        check_spec(spec, cfg)
    except ValueError as err:
        raise ConfigError(f"spec: {err}") from None
    for site, mode in spec.items():
        if site not in student_spec(run_dir, mode)["sites"]:
            raise CheckpointError(f"{run_dir}: no trained '{mode}' student for site '{site}'")
    return name, spec


def _scores(run_dir: Path, name: str, spec: dict[str, str], model, tok) -> tuple[dict, str]:
    """(result row, test-set note): the run's own evaluation of this variant, else a fresh one."""
    path = run_dir / "eval" / "results.json"
    if path.is_file():
        results = read_json(path)
        for row in results.get("rows", []):
            if row.get("variant") == name and set(row.get("sites", [])) == set(spec):
                log.info("scores of '%s' from %s", name, path)
                return row, results["note"]
    from eval.bleu import evaluate_model
    from recipes.evaluate import Config, test_pairs

    pairs, note = test_pairs(Config(run_dir=str(run_dir)), tok, model.cfg.max_len)
    log.info("scoring '%s' on %d test pairs", name, len(pairs))
    row, _ = evaluate_model(model, tok, pairs, beam=1, progress=True)
    return row, note


def _whole_split(data, model, tok) -> dict | None:
    """Scores on every pair of the run's test split, long sources truncated: what translating
    the split's sources with ``distill translate`` and scoring them with sacreBLEU reproduces."""
    from eval.bleu import evaluate_model

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


def export(run_dir: str | Path, variant_or_spec: str | dict[str, str], out_dir: str | Path) -> Path:
    """Write the export directory ``out_dir`` for a variant name or a {site: mode} spec."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_out(out_dir)
    model, tok = load_teacher(run_dir)
    cfg = model.cfg
    name, spec = resolve_spec(run_dir, variant_or_spec, cfg)
    replacements, replaced, student_params = {}, 0, 0
    for mode in dict.fromkeys(spec.values()):
        trained = student_spec(run_dir, mode)
        students = load_students(run_dir, mode, cfg)
        chosen = {site: students[site] for site in spec if spec[site] == mode}
        for site, student in chosen.items():
            replaced += count_parameters(model.get_submodule(site_path(site, cfg)))
            student_params += effective_parameters(student)
            replacements[site] = {
                "mode": mode,
                "size": trained["size"],
                "activation": trained["activation"],
                "residual": trained.get("residual", False),
            }
        splice(model, chosen)
    row, note = _scores(run_dir, name, spec, model, tok)
    data = teacher_config(run_dir).data
    whole = _whole_split(data, model, tok)
    params = {
        "replaced": replaced,
        "student": student_params,
        "total": count_parameters(model),
    }
    config = make_config(
        cfg,
        replacements,
        {"file": "spm.model", "type": "sentencepiece", "vocab_size": tok.vocab_size},
        variant=name,
        data={"source": data.source, "pair": data.pair},
        parameters=params,
        distill_version=__version__,
    )
    with atomic_dir(out_dir) as tmp:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        shutil.copyfile(tok.path, tmp / "spm.model")
        atomic_write_json(tmp / "generation_config.json", generation_config(cfg))
        for filename, code in REMOTE_CODE.items():
            atomic_write_text(tmp / filename, code)
        atomic_write_text(tmp / "README.md", model_card(config, row, note, out_dir.name, whole))
        atomic_write_json(tmp / "config.json", config)
        _shareable(tmp)
    log.info("exported '%s' (%d sites replaced) to %s", name, len(replacements), out_dir)
    return out_dir
