"""An export's ``config.json``: written (``make_config``), checked strictly (``parse_config``) and
built into the spliced model it describes (``build_model``), by distill and by transformers alike.

``config.json`` is the one description of the architecture: teacher dimensions, tokenizer,
``replacements`` {site: a ``StudentSpec``'s dict} and the keys transformers reads (model_type,
auto_map, ids). Loading checks it strictly and names the key that does not fit; ``student_kinds``
({site: ``mixing`` or ``gated pairs``, ``distill.modes.KINDS``}) is for people and is not read
back, so exports written before it existed load as they did. This module is
part of every export's remote code (``distill.remote_code``): it imports only what that may.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distill.blocks import FAMILY_FIELDS
from distill.errors import CheckpointError, ConfigError
from distill.formats import FORMAT_VERSION, check_format, current_site
from distill.model import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    ModelConfig,
    Seq2SeqTransformer,
    site_path,
)
from distill.modes import MODES, mode_sites, site_kinds
from distill.students import StudentSpec, build_student, splice

# format_version (distill.formats.FORMAT_VERSION): 1: the first; 2: the model code ships in the
# export (auto_map: distill_hf), the structure fields (FAMILY_FIELDS: norm, positions, final_norm;
# a version 1 export lacks them and loads with its family's) and base_model; 3: sublayers named
# after what they are (distill.formats; older names read as today's).
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
SPECIAL_IDS = {
    "pad_token_id": PAD_ID,
    "unk_token_id": UNK_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "decoder_start_token_id": BOS_ID,
}
# The ids of the pieces that end a sentence and a clause (distill.chunks.boundary_ids of the
# export's tokenizer), where transformers' generate splits a source too long for the model. An
# export without them (older than these keys) splits every max_len - 1 pieces.
BOUNDARY_KEYS = ("sentence_end_ids", "clause_end_ids")


def check_spec(spec: dict[str, str], cfg: ModelConfig) -> None:
    """ValueError unless every site is one its mode replaces and no site lies inside another."""
    for site, mode in spec.items():
        if mode not in MODES:
            raise ValueError(f"site '{site}': unknown mode '{mode}' (known: {', '.join(MODES)})")
        site_path(site, cfg)  # names an unknown site
        if site not in mode_sites(mode, cfg):
            raise ValueError(
                f"site '{site}': mode '{mode}' replaces {MODES[mode].site.format(i='I')} sites"
            )
    paths = sorted((site_path(s, cfg), s) for s in spec)
    for (outer, a), (inner, b) in zip(paths, paths[1:]):
        if inner.startswith(outer + "."):  # e.g. encoder.0 (elr) holds encoder.0.self_attn (alr)
            raise ValueError(f"sites '{a}' and '{b}' overlap: only one of them can be replaced")


def make_config(
    cfg: ModelConfig,
    replacements: dict[str, dict],
    tokenizer: dict,
    boundaries: tuple[list[int], list[int]] | None = None,
    **extra,
) -> dict:
    """The ``config.json`` of an export (plain JSON, readable by distill and by transformers);
    ``boundaries``: (sentence end ids, clause end ids) of its tokenizer (``BOUNDARY_KEYS``)."""
    return {
        "model_type": "distill",
        "architectures": ["DistillForConditionalGeneration"],
        "auto_map": {  # the export's copy of distill/hf.py (distill.remote_code)
            "AutoConfig": "distill_hf.DistillConfig",
            "AutoModelForSeq2SeqLM": "distill_hf.DistillForConditionalGeneration",
        },
        "is_encoder_decoder": True,
        "use_cache": True,  # every decoder site, students included, decodes incrementally
        "format_version": FORMAT_VERSION,
        **dataclasses.asdict(cfg),
        "replacements": replacements,
        "student_kinds": site_kinds({site: r["mode"] for site, r in replacements.items()}),
        "tokenizer": tokenizer,
        **SPECIAL_IDS,
        **({} if boundaries is None else dict(zip(BOUNDARY_KEYS, map(list, boundaries)))),
        **extra,
    }


def generation_config(cfg: ModelConfig) -> dict:
    """generate() defaults under which transformers decodes exactly like ``distill.decode``."""
    return {
        "decoder_start_token_id": BOS_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "suppress_tokens": [PAD_ID],  # as distill.decode: padding is never generated
        # distill's decoders emit up to max_len tokens after BOS (max_length would count BOS).
        "max_new_tokens": cfg.max_len,
        "early_stopping": False,  # transformers' default, and distill's beam search
        "length_penalty": 1.0,
        "use_cache": True,
    }


def parse_config(config: dict, source: Path | str) -> tuple[ModelConfig, dict[str, dict]]:
    """(ModelConfig, replacements) from a ``config.json`` dict; CheckpointError names the key."""
    try:
        check_format(config.get("format_version", 1))
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None
    needed = [k for k in MODEL_KEYS if k not in FAMILY_FIELDS] + ["replacements"]
    missing = [k for k in needed if k not in config]
    if missing:
        raise CheckpointError(f"{source}: missing key '{missing[0]}'")
    for key, want in SPECIAL_IDS.items():
        if key in config and config[key] != want:
            raise CheckpointError(f"{source}: '{key}' is {config[key]!r}, distill uses {want}")
    kinds = {f.name: f.type.removesuffix(" | None") for f in dataclasses.fields(ModelConfig)}
    values = {}
    for key in MODEL_KEYS:
        value = config.get(key)
        if value is None and key in FAMILY_FIELDS:
            continue  # a version 1 export: the family's
        if type(value) not in KINDS[kinds[key]]:
            raise CheckpointError(f"{source}: '{key}' must be {kinds[key]}, got {value!r}")
        values[key] = value
    try:
        cfg = ModelConfig(**values)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    for key in BOUNDARY_KEYS:
        ids = config.get(key)
        if ids is not None and not (
            isinstance(ids, list) and all(type(i) is int and 0 <= i < cfg.vocab_size for i in ids)
        ):
            raise CheckpointError(f"{source}: '{key}' must be a list of piece ids, got {ids!r}")
    replacements = config["replacements"]
    if not isinstance(replacements, dict):
        raise CheckpointError(f"{source}: 'replacements' must be a mapping site -> spec")
    replacements = {current_site(site): spec for site, spec in replacements.items()}
    for site, spec in replacements.items():
        if not isinstance(spec, dict):
            raise CheckpointError(f"{source}: 'replacements.{site}' must be a mapping")
        try:
            StudentSpec.from_dict(spec, f"replacements.{site}", strict=True)
        except ConfigError as err:
            raise CheckpointError(f"{source}: {err}") from None
    try:
        check_spec({s: r["mode"] for s, r in replacements.items()}, cfg)
    except ValueError as err:
        raise CheckpointError(f"{source}: 'replacements': {err}") from None
    return cfg, replacements


def build_model(
    cfg: ModelConfig, replacements: dict[str, dict], cls: type[Seq2SeqTransformer] | None = None
) -> Seq2SeqTransformer:
    """A freshly initialised model of the exported architecture (teacher + spliced students)."""
    model = (cls or Seq2SeqTransformer)(cfg)
    students = {
        site: build_student(StudentSpec.from_dict(r), cfg) for site, r in replacements.items()
    }
    splice(model, students)
    return model.eval()
