"""Export directories: the ``config.json`` schema, rebuilding the spliced model, loading it.

An export directory (written by ``distill.export.export``) holds:
    config.json             teacher dimensions, tokenizer, ``replacements`` {site: a
                            ``StudentSpec``'s dict} and the keys transformers reads
                            (model_type, auto_map, ids); for people, not read back:
                            ``attentionless``, ``teacher_attention`` (the sites that keep the
                            teacher's attention) and ``hybrid`` ({base, kept} or null)
    model.safetensors       state dict of the spliced model: replaced attention has no weights here
    spm.model               the SentencePiece tokenizer (a Marian teacher's export: its renumbered
                            MarianTokenizer files instead; each tokenizer class of
                            distill.tokenizer writes its own, ``export_files``)
    generation_config.json  generate() defaults that match distill's own decoding
    configuration_distill.py, modeling_distill.py   thin remote code for transformers' Auto classes
    README.md               the model card

``config.json`` is the one description of the architecture: distill and transformers both rebuild
the model from it, so loading checks it strictly and names the key that does not fit.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from distill.blocks import FAMILY_FIELDS
from distill.checkpoint import load_state_dict, load_tensors, read_json
from distill.errors import CheckpointError, ConfigError, DataError
from distill.model import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    ModelConfig,
    Seq2SeqTransformer,
    site_path,
)
from distill.modes import MODES, mode_sites
from distill.students import StudentSpec, build_student, splice

log = logging.getLogger(__name__)

# 2: the structure fields (FAMILY_FIELDS: norm, positions, final_norm); a version 1 export lacks
# them and loads with its family's.
FORMAT_VERSION = 2
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
SPECIAL_IDS = {
    "pad_token_id": PAD_ID,
    "unk_token_id": UNK_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "decoder_start_token_id": BOS_ID,
}
REMOTE_CODE = {
    "configuration_distill.py": "from distill.hf import DistillConfig  # noqa: F401\n",
    "modeling_distill.py": "from distill.hf import DistillForConditionalGeneration  # noqa: F401\n",
}


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


def make_config(cfg: ModelConfig, replacements: dict[str, dict], tokenizer: dict, **extra) -> dict:
    """The ``config.json`` of an export (plain JSON, readable by distill and by transformers)."""
    return {
        "model_type": "distill",
        "architectures": ["DistillForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_distill.DistillConfig",
            "AutoModelForSeq2SeqLM": "modeling_distill.DistillForConditionalGeneration",
        },
        "is_encoder_decoder": True,
        "use_cache": True,  # every decoder site, students included, decodes incrementally
        "format_version": FORMAT_VERSION,
        **dataclasses.asdict(cfg),
        "replacements": replacements,
        "tokenizer": tokenizer,
        **SPECIAL_IDS,
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
    replacements = config["replacements"]
    if not isinstance(replacements, dict):
        raise CheckpointError(f"{source}: 'replacements' must be a mapping site -> spec")
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


class TranslationModel(Seq2SeqTransformer):
    """An exported model: a ``Seq2SeqTransformer`` that carries its tokenizer and translates."""

    tokenizer = None  # set by ``from_pretrained``

    def too_long(self, texts: list[str]) -> list[int]:
        """Indices of ``texts`` longer than ``max_len`` tokens with their EOS (truncated if run)."""
        limit = self.cfg.max_len - 1
        return [i for i, ids in enumerate(self.tokenizer.encode_batch(texts)) if len(ids) > limit]

    def translate(
        self, texts: list[str], beam: int = 1, batch_size: int = 64, progress: bool = False
    ) -> list[str]:
        """One translation per text (empty in, empty out); long sources are truncated, logged."""
        from distill.decode import translate_texts

        out, truncated = translate_texts(
            self, self.tokenizer, texts, beam=beam, batch_size=batch_size, progress=progress
        )
        if truncated:
            log.warning(
                "%d of %d sources exceed max_len %d tokens and were truncated",
                truncated,
                len(texts),
                self.cfg.max_len,
            )
        return out


def is_export(path: str | Path) -> bool:
    """Whether ``path`` looks like an export directory (as opposed to a run directory)."""
    return (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").exists()


def from_pretrained(
    path: str | Path, device: str | torch.device = "auto"
) -> tuple[TranslationModel, object]:
    """(model in eval mode with ``.translate``, tokenizer) from an export directory, on
    ``device``: ``auto`` (a GPU when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.
    """
    from distill.device import resolve_device
    from distill.tokenizer import load_tokenizer

    device = resolve_device(device)  # a bad name fails before anything loads
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not an export directory")
    cfg, replacements = parse_config(read_json(path / "config.json"), path / "config.json")
    tensors = load_tensors(path / "model.safetensors")
    if tensors and all(k.startswith("model.") for k in tensors):  # saved by transformers
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    try:
        tok = load_tokenizer(path)
    except DataError as err:  # a missing or unreadable tokenizer makes the export incomplete
        raise CheckpointError(str(err)) from None
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{tok.path}: tokenizer has {tok.vocab_size} pieces, "
            f"config.json says vocab_size {cfg.vocab_size}"
        )
    model = build_model(cfg, replacements, TranslationModel)
    load_state_dict(model, tensors, path / "model.safetensors")
    model.tokenizer = tok
    return model.to(device).eval(), tok
