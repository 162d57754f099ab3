"""Run directories: where each stage writes, and loading what an earlier stage wrote.

RUN_DIR/teacher/               config.yaml, spm.model (or tokenizer/: an imported Marian
                               teacher's renumbered MarianTokenizer), model.json (ModelConfig),
                               model.safetensors, metrics.jsonl, bleu.json (written last)
RUN_DIR/record/{train,valid}/  manifest.json (written last) + fp16/fp32 safetensors shards
RUN_DIR/students/<mode>/       config.yaml, metrics.jsonl, init.json (least-squares init),
                               students.safetensors, spec.json (written last: mode, size, sites,
                               activation, residual, init, local_units)
RUN_DIR/finetune/<variant>/    config.yaml, metrics.jsonl, model.safetensors, spec.json
                               (written last: variant, modes, kept (a hybrid's teacher sites),
                               sites, replacements, settings, final validation losses)
RUN_DIR/eval/                  results.{json,md,png} (test split), results-valid.* (valid),
                               hybrid-frontier.json (bench/hybrid_frontier.py, valid)
Every output also holds settings.json (distill/stages.py): the settings that made it. A stage
skips what a finished spec.json / manifest.json / bleu.json marks as done and resumes the rest
from its checkpoint/, both only when the stored settings match the ones asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from distill.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_state_dict,
    load_tensors,
    read_json,
)
from distill.config import from_dict, load_yaml, to_yaml
from distill.data import DataConfig
from distill.errors import CheckpointError, ConfigError
from distill.formats import FORMAT_VERSION, current_site, model_fields
from distill.model import ModelConfig, Seq2SeqTransformer


def teacher_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "teacher"


def write_config(out_dir: Path, cfg) -> None:
    """The resolved config of a stage, beside its outputs (enough to reproduce the run)."""
    atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))


def save_model(out_dir: Path, model: Seq2SeqTransformer) -> None:
    """Final teacher weights (safetensors) + its ``ModelConfig`` as JSON."""
    from distill.checkpoint import save_tensors

    atomic_write_json(
        out_dir / "model.json", {"format_version": FORMAT_VERSION, **dataclasses.asdict(model.cfg)}
    )
    save_tensors(out_dir / "model.safetensors", model.state_dict())


def load_teacher(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer) from a teacher dir or a run dir holding ``teacher/``."""
    from distill.tokenizer import load_tokenizer

    path = Path(path)
    if not (path / "model.json").exists() and (path / "teacher" / "model.json").exists():
        path = path / "teacher"
    if not (path / "model.json").exists():
        raise CheckpointError(f"{path}: no trained teacher here (model.json missing)")
    try:
        cfg = from_dict(ModelConfig, model_fields(read_json(path / "model.json")))
    except ConfigError as err:
        raise CheckpointError(f"{path / 'model.json'}: {err}") from None
    model = Seq2SeqTransformer(cfg)
    load_state_dict(model, load_tensors(path / "model.safetensors"), path / "model.safetensors")
    tok = load_tokenizer(path / "tokenizer" if (path / "tokenizer").is_dir() else path)
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{tok.path}: tokenizer has {tok.vocab_size} pieces, the model expects {cfg.vocab_size}"
        )
    return model.to(device).eval(), tok


def split_examples(
    run_dir: str | Path,
    teacher,
    tok,
    split: str,
    limit: int = 0,
    targets: str = "reference",
    cache_dir: Path | None = None,
    beam: int = 1,
):
    """(examples, FilterReport) of the run's ``split``, filtered at the teacher's max_len like
    its data, ``limit`` of them evenly spread (0 = all). ``targets="teacher"``: each target is
    the teacher's decode instead, greedy or with ``beam`` (cached in ``cache_dir``)."""
    from distill.data import encode_pairs, load_pairs, spread

    found, report = encode_pairs(load_pairs(teacher_data(run_dir), split), tok, teacher.cfg.max_len)
    return on_targets(spread(found, limit), teacher, split, targets, cache_dir, beam), report


def on_targets(
    examples, teacher, split: str, targets: str, cache_dir: Path | None = None, beam: int = 1
):
    """``examples`` as they are (``targets="reference"``), or with each target replaced by the
    teacher's decode (``"teacher"``: greedy, or a beam search of width ``beam``), cached in
    ``cache_dir``/<split>-<n>.targets.json (<split>-<n>.beam<k>.targets.json)."""
    from distill.prefixes import teacher_targets

    if targets != "teacher":
        return examples
    name = f"{split}-{len(examples)}" + (f".beam{beam}" if beam > 1 else "") + ".targets.json"
    cache = None if cache_dir is None else cache_dir / name
    return teacher_targets(teacher, examples, cache=cache, beam=beam)


def teacher_data(run_dir: str | Path) -> DataConfig:
    """The corpus settings (the ``data`` section of its config) the teacher of ``run_dir`` was
    trained on: every later stage reads the same corpus, splits and filters."""
    path = teacher_dir(run_dir) / "config.yaml"
    if not path.exists():
        raise CheckpointError(f"{path}: not found; run `distill run teacher` first")
    try:
        found = load_yaml(path)
        if not isinstance(found.get("data"), dict):
            raise ConfigError("data: missing (a teacher config has a data section)")
        return from_dict(DataConfig, found["data"], "data.")
    except ConfigError as err:
        message = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
        raise CheckpointError(message) from None


def students_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "students"


def student_spec(run_dir: str | Path, mode: str) -> dict:
    """RUN_DIR/students/<mode>/spec.json: a ``StudentSpec``'s fields, the sites, the init and
    the training settings that shaped them (local_units, align, progressive)."""
    path = students_dir(run_dir) / mode / "spec.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found; train them first (distill run students ... mode={mode})"
        )
    spec = read_json(path)
    if isinstance(spec, dict) and isinstance(spec.get("sites"), list):
        spec["sites"] = [current_site(s) for s in spec["sites"]]  # of an older format
    return spec


def trained_student(run_dir: str | Path, mode: str):
    """The ``StudentSpec`` of ``mode``'s trained students (CheckpointError names the file)."""
    from distill.students import StudentSpec

    path = students_dir(run_dir) / mode / "spec.json"
    try:
        return StudentSpec.from_dict(student_spec(run_dir, mode))
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_students(run_dir: str | Path, mode: str, model_cfg: ModelConfig) -> dict:
    """{site: trained student} of ``mode`` from RUN_DIR/students/<mode>/."""
    from distill.students import build_student

    path = students_dir(run_dir) / mode
    sites, spec = student_spec(run_dir, mode)["sites"], trained_student(run_dir, mode)
    students = torch.nn.ModuleDict(
        {s.replace(".", "/"): build_student(spec, model_cfg) for s in sites}
    )
    load_state_dict(
        students, load_tensors(path / "students.safetensors"), path / "students.safetensors"
    )
    return {s: students[s.replace(".", "/")].eval() for s in sites}


def variant_spec(
    run_dir: str | Path, modes: Sequence[str], kept: Sequence[str] = ()
) -> dict[str, str]:
    """{site: mode} of the trained students of ``modes`` (a variant's sites), less the ``kept``
    sites (a hybrid's: they keep the teacher's attention, ``modes.resolve_variant``)."""
    spec: dict[str, str] = {}
    for mode in modes:
        spec.update(dict.fromkeys(student_spec(run_dir, mode)["sites"], mode))
    unknown = [s for s in kept if s not in spec]
    if unknown:
        raise ConfigError(f"kept site '{unknown[0]}' is not one that {', '.join(modes)} replace")
    return {site: mode for site, mode in spec.items() if site not in kept}


def splice_spec(model, run_dir: str | Path, spec: dict[str, str], fresh: bool = False) -> dict:
    """Splice the students of ``spec`` ({site: mode}) from RUN_DIR/students into ``model``;
    ``fresh``: the same architectures, randomly initialised. Returns the export's
    ``replacements`` ({site: StudentSpec dict}) and the parameter counts."""
    from distill.model import count_parameters, site_path
    from distill.students import build_student, effective_parameters, splice

    replacements, chosen, replaced, student = {}, {}, 0, 0
    for mode in dict.fromkeys(spec.values()):
        trained = trained_student(run_dir, mode)
        if fresh:
            sites = student_spec(run_dir, mode)["sites"]
            students = {s: build_student(trained, model.cfg) for s in sites}
        else:
            students = load_students(run_dir, mode, model.cfg)
        for site in [s for s in spec if spec[s] == mode]:
            if site not in students:
                raise CheckpointError(f"{run_dir}: no trained '{mode}' student for site '{site}'")
            chosen[site] = students[site]
            replaced += count_parameters(model.get_submodule(site_path(site, model.cfg)))
            student += effective_parameters(students[site])
            replacements[site] = trained.to_dict()
    splice(model, chosen)
    return {"replacements": replacements, "replaced": replaced, "student": student}


def finetune_dir(run_dir: str | Path, variant: str) -> Path:
    """RUN_DIR/finetune/<variant>/: the end-to-end tuned students of one variant."""
    return Path(run_dir) / "finetune" / variant


# What the finetune stage's ``trainable`` lets move (its allowed values), in the words the results
# table and the model card use beside a tuned score: "tuned" alone would hide that the teacher's
# own weights moved too.
TRAINABLE = {
    "students": "the students alone, every teacher weight kept as it was",
    "students+norms": "the students and every LayerNorm, the teacher's other weights kept",
    "all": "every weight, the teacher's included",
}


def trained_text(trainable: str) -> str:
    """What a tuned model's finetune stage trained, from its ``trainable`` setting."""
    return f"the finetune stage trained {TRAINABLE[trainable]} (`trainable: {trainable}`)"


def tuned_spec(run_dir: str | Path, variant: str) -> dict | None:
    """RUN_DIR/finetune/<variant>/spec.json (what was tuned and how), or None if not tuned."""
    path = finetune_dir(run_dir, variant) / "spec.json"
    return read_json(path) if path.is_file() else None


def load_variant(
    run_dir: str | Path,
    modes: Sequence[str],
    tuned: str | None = None,
    kept: Sequence[str] = (),
    device: str | torch.device = "cpu",
):
    """(teacher with the students of ``modes`` spliced in, on ``device``, tokenizer, splice
    info); the ``kept`` sites (a hybrid's) keep the teacher's own attention module.

    With ``tuned`` (a variant name), the weights are those RUN_DIR/finetune/<tuned>/ trained
    end to end (the students, and the teacher's own weights if the stage trained them)."""
    model, tok = load_teacher(run_dir)
    spec = variant_spec(run_dir, modes, kept)
    if tuned is None:
        info = splice_spec(model, run_dir, spec)
        return model.to(device), tok, info
    found = tuned_spec(run_dir, tuned)
    if found is None:
        raise CheckpointError(
            f"{finetune_dir(run_dir, tuned)}: not tuned; run `distill run finetune`"
        )
    info = splice_spec(model, run_dir, spec, fresh=True)
    stored = {current_site(s): r for s, r in (found.get("replacements") or {}).items()}
    if stored != info["replacements"]:
        raise CheckpointError(
            f"{finetune_dir(run_dir, tuned)}: tuned other students than RUN_DIR/students holds "
            "now; run the finetune stage again"
        )
    path = finetune_dir(run_dir, tuned) / "model.safetensors"
    load_state_dict(model, load_tensors(path), path)
    return model.to(device).eval(), tok, info
