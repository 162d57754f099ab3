"""Typed configs: dataclasses with defaults, YAML files holding deltas, ``key=value`` overrides.

A config is a (possibly nested) dataclass. ``from_dict`` builds one from a mapping and rejects
unknown keys and wrong types with a ``ConfigError`` naming the dotted key, so a typo fails before
any data loads. Each dataclass validates its own values in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from distill.errors import ConfigError

T = TypeVar("T")


def _quote(text: str) -> str:
    """``'text'``, with newlines and other unprintables escaped: an error stays one line."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _container(tp: Any) -> type | None:
    """dict for mapping-like annotations (dicts, dataclasses), list for sequences, else None."""
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return dict
    return list if typing.get_origin(tp) in (list, tuple) else None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append((arg, err))
        # A mapping given where one arm is a mapping: that arm's error names the inner key.
        shaped = [err for arg, err in errors if _container(arg) is type(value)]
        if len(shaped) == 1 and type(value) in (dict, list):
            raise shaped[0]
        raise ConfigError(f"config key '{key}': expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        (_, value_tp) = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"config key '{key}': integer too large for a float") from None
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-3` (no dot) as a string; it is a float to anyone writing a rate.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected int, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(
            f"config key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    removed = getattr(cls, "REMOVED_KEYS", {})  # a class's retired keys -> what replaced them
    for key, value in data.items():
        if key in removed and key not in fields:
            raise ConfigError(f"config key {_quote(f'{prefix}{key}')} was removed: {removed[key]}")
        if key not in fields:
            raise ConfigError(_unknown_key(f"{prefix}{key}", value, fields))
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            # A section holds deltas from the field's own default (e.g. the students' constant
            # rate), not from the defaults of the section's class.
            value = merge(_default_dict(fields[key]), value)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config '{prefix.rstrip('.') or cls.__name__}': {err}") from None


def _unknown_key(key: str, value: Any, fields: typing.Iterable[str]) -> str:
    """The error for a key that is not one of ``fields``. A stage's name over a recipe's own keys
    (``students.size=s`` given to the students recipe) is the pipeline's prefix: say so, and give
    the keys without it."""
    if key in STAGES and isinstance(value, dict) and value:
        leaves = _overrides(value)
        named = f"{key}.{leaves[0].partition('=')[0]}" if len(leaves) == 1 else key
        here = " ".join(leaves[:3]) + (" ..." if len(leaves) > 3 else "")
        return (
            f"unknown config key {_quote(named)}: stage prefixes like '{key}.' belong to "
            f"`distill run pipeline`; a single recipe's keys have none (here: {here})"
        )
    return f"unknown config key {_quote(key)} (known: {', '.join(sorted(fields))})"


def _overrides(data: dict[str, Any], prefix: str = "") -> list[str]:
    """The ``key=value`` overrides that set the leaves of ``data``."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _overrides(value, f"{prefix}{key}.")
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=math.inf)  # one line
            out.append(f"{prefix}{key}=" + text.removesuffix("...\n").strip())
    return out


def _default_dict(f: dataclasses.Field) -> dict[str, Any]:
    """The default of a dataclass-typed field as a plain dict ({} when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.asdict(f.default_factory())
    if f.default is not dataclasses.MISSING and dataclasses.is_dataclass(f.default):
        return dataclasses.asdict(f.default)
    return {}


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config, every key included; a config whose YAML is not
    its own fields (the pipeline's: every stage resolved) says so with a ``to_dict`` method."""
    own = getattr(cfg, "to_dict", None)
    return own() if callable(own) else dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """``cfg`` as YAML (``config.yaml`` in run dirs, ``--print-config``) that ``build`` reads
    back as the same config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001), the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {_quote(text)} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {_quote(text)} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _entry(item: Any) -> bool:
    """A name, or a one-key mapping {name: settings}: an item of a list that selects."""
    if isinstance(item, dict):
        return len(item) == 1 and isinstance(next(iter(item)), str)
    return isinstance(item, str)


def merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``delta`` wins. A list of names over a mapping selects (and orders)
    its entries, keeping their settings: ``modes=[alr, cross]`` over ``modes: {alr: {lr: 1e-4},
    dec_self: {...}, cross: {...}}`` keeps alr's and cross's settings; a new name gets none. An
    item may also be ``{name: {settings}}``, merged over that entry's: ``[alr, {cross: {epochs:
    8}}]``."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), dict) and all(map(_entry, value)):
            picked = [item if isinstance(item, dict) else {item: {}} for item in value]
            out[key] = {
                name: merge(out[key].get(name) or {}, own or {})
                for item in picked
                for name, own in item.items()
            }
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a syntax error or non-mapping names the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def build(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: list[str] = (),
    delta: dict[str, Any] | None = None,
) -> T:
    """Defaults of ``cls`` <- YAML deltas <- ``delta`` <- ``key=value`` overrides, checked."""
    data = merge(load_yaml(yaml_path) if yaml_path else {}, delta or {})
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for part in keys[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node.update(merge(node, {keys[-1]: value}))  # a list over a mapping selects (merge)
    return from_dict(cls, data)


def _recipes_dir() -> Path:
    """The folder of the ``distill_recipes`` package (``recipes/`` in a checkout), found without
    importing it."""
    spec = importlib.util.find_spec("distill_recipes")
    if spec is None or not spec.submodule_search_locations:
        return Path(__file__).resolve().parent.parent / "recipes"
    return Path(next(iter(spec.submodule_search_locations)))


# The recipes' YAML configs. The library only reads these files: it never imports a recipe.
RECIPES_DIR = _recipes_dir()
CONFIG_ROOT = RECIPES_DIR / "configs"
# The pipeline's stages, in the order they run; each is also a recipe of its own.
STAGES = ("teacher", "record", "students", "finetune", "evaluate")
RECIPES = (*STAGES, "pipeline")


def available() -> dict[str, list[str]]:
    """Recipe name -> config names, for recipes whose module exists."""
    out = {}
    for name in RECIPES:
        if not (RECIPES_DIR / f"{name}.py").is_file():
            continue
        folder = CONFIG_ROOT / name
        out[name] = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    return out


def shipped_config(recipe: str, name: str) -> Path:
    """recipes/configs/RECIPE/NAME.yaml; unknown recipes and names list the known ones."""
    found = available()
    if recipe not in found:
        raise ConfigError(f"unknown recipe {_quote(recipe)} (known: {', '.join(found)})")
    if name not in found[recipe]:
        known = ", ".join(found[recipe]) or "none"
        raise ConfigError(f"unknown config {_quote(name)} for recipe '{recipe}' (known: {known})")
    return CONFIG_ROOT / recipe / f"{name}.yaml"


def config_path(recipe: str, name: str) -> Path:
    """A YAML path, or a shipped config NAME of ``recipe`` (``shipped_config``)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists() and recipe in available():
        return path
    return shipped_config(recipe, name)
