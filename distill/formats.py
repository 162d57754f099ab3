"""Names that files of an older format use, read as today's (files are never rewritten).

Format 3 named the teacher's sublayers after what they are (format 1 and 2: by position):
    encoder.{i}.sublayer0   ->  encoder.{i}.self_attn_sublayer   (also ALRR's site name)
    encoder.{i}.sublayer1   ->  encoder.{i}.ff_sublayer
    decoder.{i}.sublayer0   ->  decoder.{i}.self_attn_sublayer
    decoder.{i}.sublayer1   ->  decoder.{i}.cross_attn_sublayer
    decoder.{i}.sublayer2   ->  decoder.{i}.ff_sublayer
    <feed-forward>.ff.0/.3  ->  <feed-forward>.ff.fc1/.fc2       (its two linear maps)
Site names reach files in record manifests and shard keys, students' spec.json, results rows and
an export's ``replacements``: ``current_site`` reads them. Parameter names reach every weights
file (teacher, students, fine-tuned models, checkpoints, exports): ``current_keys`` reads them,
renaming only the names the model lacks, so a student's own ``ff.0`` is never touched. The
version is ``FORMAT_VERSION``, written into model.json and an export's config.json.
"""

from __future__ import annotations

import re

from distill.errors import ConfigError

FORMAT_VERSION = 3

# (stack, old sublayer number, today's name)
SUBLAYERS = (
    ("encoder", 0, "self_attn_sublayer"),
    ("encoder", 1, "ff_sublayer"),
    ("decoder", 0, "self_attn_sublayer"),
    ("decoder", 1, "cross_attn_sublayer"),
    ("decoder", 2, "ff_sublayer"),
)
FEED_FORWARD = ((0, "fc1"), (3, "fc2"))  # nn.Sequential index -> today's name
# a name's parts are joined by "." or, in a ModuleDict of students (losses.student_key), "/"
_SUBLAYER_RES = [
    (re.compile(rf"(?<!\w)({stack})([./])(\d+)\2sublayer{n}(?!\w)"), rf"\1\2\3\2{new}")
    for stack, n, new in SUBLAYERS
]
_FEED_FORWARD_RES = [
    (re.compile(rf"\.ff\.{n}\.(weight|bias)$"), rf".ff.{new}.\1") for n, new in FEED_FORWARD
]


def current_site(name: str) -> str:
    """A site name (or a key that holds one: ``encoder.0.sublayer0.x``, ``encoder/0/sublayer0.w``)
    as today's code names it."""
    for old, new in _SUBLAYER_RES:
        name = old.sub(new, name)
    return name


def current_key(key: str) -> str:
    """A parameter name of an older weights file, renamed as ``current_site`` and ``ff.fc1/2``."""
    key = current_site(key)
    for old, new in _FEED_FORWARD_RES:
        key = old.sub(new, key)
    return key


def current_keys(tensors: dict, wanted) -> dict:
    """``tensors`` with each name that ``wanted`` (a model's parameter names) lacks renamed to its
    current name where ``wanted`` has that one; every other name as it was."""
    wanted = set(wanted)
    out = {}
    for key, value in tensors.items():
        new = key if key in wanted else current_key(key)
        out[new if new in wanted else key] = value
    return out


def old_key_mapping(n_enc: int, n_dec: int) -> dict[str, str]:
    """transformers' ``from_pretrained(key_mapping=...)`` for an export of format 1 (whose
    ``auto_map`` loads this package's code): each old module prefix -> today's."""
    mapping = {}
    for stack, n, new in SUBLAYERS:
        for i in range(n_enc if stack == "encoder" else n_dec):
            mapping[rf"{stack}\.{i}\.sublayer{n}\."] = f"{stack}.{i}.{new}."
    for n, new in FEED_FORWARD:
        mapping[rf"\.ff\.{n}\."] = f".ff.{new}."
    return mapping


def model_fields(data: dict) -> dict:
    """model.json's ``ModelConfig`` fields: less its ``format_version`` (absent before 3), which
    may not be newer than this code's."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of ModelConfig fields, got {type(data).__name__}")
    fields = dict(data)
    check_format(fields.pop("format_version", 1))
    return fields


def check_format(version) -> None:
    """``ConfigError`` unless ``version`` (a file's ``format_version``) is one this code reads."""
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"format_version {version!r}: written by a newer distill (this one reads up to "
            f"{FORMAT_VERSION}); upgrade distill"
        )
