"""Score the teacher and every spliced variant of a run dir: BLEU, chrF, parameters, speed.

    distill run evaluate --config demo                  # RUN_DIR/eval/results.{json,md,png}
    distill evaluate runs/demo --source my.tsv --beam 4 # the same table on other pairs
    distill evaluate exports/demo-attentionless         # one exported model
    distill run evaluate --config tiny

A variant splices the students of one or more modes into a fresh copy of the teacher (all layers
of each mode at once, no fine-tuning: the paper's protocol, the "layer-wise" row) and decodes the
test split; a variant the finetune stage trained end to end gets a second, "tuned" row beside it.
Variants whose students are not trained yet are skipped. Hybrids (``attentionless_pw+keep1``:
the teacher's cross-attention kept at decoder layer 1) are scored when named in ``variants``;
every row says whether the model is attentionless, which kinds of student it holds (``kinds``:
mixing, gated pairs; distill/modes.py), which sites a hybrid keeps and, for a tuned row, what
the finetune stage trained (``trainable``).
``splits=[valid,test]`` scores the validation split too (where settings are chosen; the demo
does, and ``distill export`` picks its default variant from it): RUN_DIR/eval/results-valid.*
beside results.*. A split is length-filtered like the training data (the count is in the
table's notes); ``--source FILE`` scores every line: a source too long for the model is
translated in parts, split at sentence or clause ends (``distill.decode.translate_texts``), never
truncated.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from distill_eval.report import write_chart, write_markdown

from distill.bleu import evaluate_model
from distill.checkpoint import atomic_write_json, atomic_write_text, read_json
from distill.data import DataConfig, scored_pairs
from distill.device import resolve_device
from distill.errors import ConfigError
from distill.hardware import provenance
from distill.model import teacher_attention
from distill.modes import VARIANTS, kinds_label, resolve_variant, resolve_variants, site_kinds
from distill.runs import (
    load_teacher,
    load_variant,
    student_spec,
    students_dir,
    teacher_data,
    tuned_spec,
)
from distill.students import StudentSpec

log = logging.getLogger("recipes.evaluate")


@dataclass
class Config:
    run_dir: str = ""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))  # hybrids: name them
    beam: int = 1
    batch_size: int = 64
    max_sentences: int = 0  # 0 = the whole (length-filtered) test split
    source: str = ""  # "" = the teacher's own corpus; else demo | iwslt2017 | a .tsv file
    pair: str = ""  # with `source`: "" = the teacher's pair
    # The splits scored, each into its own table: "valid" is where settings are chosen (and what
    # `distill export` picks its default variant by), "test" is only reported.
    splits: list[str] = field(default_factory=lambda: ["test"])
    # Where models decode: auto (the stage's device: a GPU if torch sees one), cpu, cuda, cuda:N.
    device: str = "auto"

    REMOVED_KEYS: ClassVar[dict[str, str]] = {"split": "use splits=[valid] (or [valid,test])"}

    def __post_init__(self) -> None:
        if self.device != "auto":
            resolve_device(self.device)  # a bad name or a missing GPU fails before any data loads
        if not self.splits or set(self.splits) - {"test", "valid"}:
            raise ValueError(f"splits must be a list of test and valid, got {self.splits}")
        for v in self.variants:
            resolve_variant(v)
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")


def test_pairs(cfg: Config, tok, max_len: int, data: DataConfig | None = None, split: str = "test"):
    """(pairs to score, note on how they were chosen); default corpus: the teacher's."""
    data = data or teacher_data(cfg.run_dir)
    return scored_pairs(data, split, tok, max_len, cfg.max_sentences, cfg.source, cfg.pair)


def student_label(spec: dict) -> str:
    """``"alrr m residual"``: a mode's students as the results table names them."""
    return StudentSpec.from_dict(spec).label()


def kinds(replacements: dict[str, dict]) -> str:
    """``"mixing + gated pairs"``: the kinds of student at a model's replaced sites."""
    return kinds_label(site_kinds({s: r["mode"] for s, r in replacements.items()}).values())


def available_modes(run_dir: str) -> set[str]:
    root = students_dir(run_dir)
    return {p.parent.name for p in root.glob("*/spec.json")} if root.exists() else set()


def evaluate_run(cfg: Config, split: str = "test") -> dict:
    device = resolve_device(cfg.device)
    teacher, tok = load_teacher(cfg.run_dir)
    variants = resolve_variants(cfg.variants, teacher.cfg)  # a hybrid's layers: before any data
    pairs, note = test_pairs(cfg, tok, teacher.cfg.max_len, split=split)
    trained = available_modes(cfg.run_dir)
    rows = []
    for variant in variants:
        name, modes = variant.name, list(variant.modes)
        if not set(modes) <= trained:
            log.info("skipping %s: students for %s not trained", name, sorted(set(modes) - trained))
            continue
        tuned_as = tuned_spec(cfg.run_dir, name) if modes else None
        stages = ["layer-wise"] + (["tuned"] if tuned_as else [])
        for stage in stages:
            tuned = name if stage == "tuned" else None
            model, _, info = load_variant(cfg.run_dir, modes, tuned, variant.kept, device=device)
            labels = [student_label(student_spec(cfg.run_dir, mode)) for mode in modes]
            sites = list(info["replacements"])
            log.info("evaluating %s, %s (%d sites replaced)", name, stage, len(sites))
            result, _ = evaluate_model(
                model, tok, pairs, beam=cfg.beam, batch_size=cfg.batch_size, progress=True
            )
            rows.append(
                {
                    "variant": name,
                    "stage": stage if modes else "",
                    "modes": modes,
                    "students": ", ".join(labels),
                    "sites": sites,
                    "kinds": kinds(info["replacements"]),
                    "params_replaced": info["replaced"],
                    "params_student": info["student"],
                    "attentionless": not teacher_attention(model),
                    "kept": list(variant.kept),
                    "trainable": tuned_as["settings"]["trainable"] if stage == "tuned" else "",
                    **result,
                }
            )
            log.info(
                "%-14s %-10s BLEU %6.2f chrF %6.2f  %.1f sent/s",
                name,
                stage if modes else "",
                result["bleu"],
                result["chrf"],
                result["sentences_per_s"],
            )
    base = next((r["bleu"] for r in rows if r["variant"] == "teacher"), None)
    for r in rows:
        r["bleu_ratio"] = round(r["bleu"] / base, 3) if base else None
    return {"note": note, "split": split, "beam": cfg.beam, "rows": rows}


def evaluate_export(cfg: Config) -> dict:
    """The one model of an export directory, scored like a run's variants."""
    from distill.pretrained import from_pretrained

    model, tok = from_pretrained(cfg.run_dir, device=cfg.device)
    config = read_json(Path(cfg.run_dir) / "config.json")
    trained_on = config.get("data", {})
    if not cfg.source and trained_on.get("source") not in ("demo", "iwslt2017"):
        raise ConfigError(f"{cfg.run_dir}: give --source (demo, iwslt2017 or a .tsv file)")
    # A tsv/text export has no corpus path here: --source names the corpus, only the pair counts
    # (iwslt2017 takes any pair).
    source = trained_on.get("source")
    source = source if source in ("demo", "iwslt2017") else "iwslt2017"
    data = DataConfig(source=source, pair=trained_on.get("pair", "de-en"))
    pairs, note = test_pairs(cfg, tok, model.cfg.max_len, data)
    result, _ = evaluate_model(
        model, tok, pairs, beam=cfg.beam, batch_size=cfg.batch_size, progress=True
    )
    reps = config["replacements"]
    stage = config.get("stage", "layer-wise") if reps else ""  # the teacher has none
    row = {
        "variant": config.get("variant", Path(cfg.run_dir).name),
        "stage": stage,
        "modes": sorted({r["mode"] for r in reps.values()}),
        "students": ", ".join(sorted({student_label(r) for r in reps.values()})),
        "sites": list(reps),
        "kinds": kinds(reps),  # read off the modes: older exports have no student_kinds
        "params_replaced": config.get("parameters", {}).get("replaced", 0),
        "params_student": config.get("parameters", {}).get("student", 0),
        "attentionless": not teacher_attention(model),
        "kept": (config.get("hybrid") or {}).get("kept", []),
        "trainable": config["finetune"]["trainable"] if stage == "tuned" else "",
        **result,
    }
    return {"note": note, "beam": cfg.beam, "rows": [row]}


def main(cfg: Config) -> Path:
    out = Path(cfg.run_dir) / "eval"
    for split in cfg.splits:
        results = evaluate_run(cfg, split)
        results["provenance"] = provenance(["distill", *sys.argv[1:]])  # CPU, date, commit
        out.mkdir(parents=True, exist_ok=True)
        stem = "results" if split == "test" else f"results-{split}"
        atomic_write_json(out / f"{stem}.json", results)
        atomic_write_text(out / f"{stem}.md", write_markdown(results))
        write_chart(results, out / f"{stem}.png")
        print(write_markdown(results))
    return out


def evaluate_path(
    path: str,
    source: str = "",
    beam: int = 1,
    pair: str = "",
    batch_size: int = 64,
    max_sentences: int = 0,
    device: str = "auto",
) -> dict:
    """``distill evaluate PATH``: the table of a run dir or an export dir, printed, not written."""
    from distill.pretrained import is_export

    cfg = Config(
        run_dir=path,
        beam=beam,
        batch_size=batch_size,
        max_sentences=max_sentences,
        source="" if source in ("", "default") else source,
        pair=pair,
        device=device,
    )
    results = evaluate_export(cfg) if is_export(path) else evaluate_run(cfg)
    print(write_markdown(results))
    return results
