"""Atomic files and resumable checkpoints, all tensors in ``safetensors`` (no pickle).

A checkpoint is a directory: ``model.safetensors``, ``optimizer.safetensors`` + ``optimizer.json``
(Adam moments flattened by parameter index), ``rng.safetensors`` and ``state.json`` (step, epoch,
position in the epoch, whatever the loop needs to continue). It is written to a temporary sibling
and renamed into place, so a kill at any moment leaves either the old or the new one, never half.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distill.errors import CheckpointError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """The one atomic write: yields a temp path beside ``path`` to write the file to; on a clean
    exit it is fsynced and renamed over ``path`` (then the directory is fsynced), on any error
    it is removed. A kill at any moment leaves the old file or the new one, never half; a temp
    file a kill left behind is named ``.<name>.*.tmp`` (``atomic_dir`` sweeps those)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None):
    """safetensors file written atomically (contiguous CPU copies)."""
    clean, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        if v.data_ptr() in seen:  # tied weights: safetensors stores each copy on its own
            v = v.clone()
        seen.add(v.data_ptr())
        clean[k] = v
    with atomic_file(path) as tmp:
        save_file(clean, tmp, metadata={k: str(v) for k, v in (meta or {}).items()})


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file raises ``CheckpointError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from None


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success it replaces ``final`` (old kept as .old until
    the swap is done), on error it is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):  # left by a kill mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(final.name + ".old")
    if final.exists():
        # Only now is .old redundant; if a kill left .old alone, it stays until tmp is in place.
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint dir at ``path``, or its ``.old`` twin if a swap was interrupted."""
    path = Path(path)
    for cand in (path, path.with_name(path.name + ".old")):
        if (cand / "state.json").is_file():
            return cand
    return None


def drop_checkpoint(out: str | Path, *more: str | Path) -> None:
    """Remove ``out``'s resume state (checkpoint/ and its .old twin) and ``more``: called once a
    finished mark is written, since a finished output is skipped, never resumed."""
    for path in (Path(out) / "checkpoint", Path(out) / "checkpoint.old", *map(Path, more)):
        shutil.rmtree(path, ignore_errors=True)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
) -> None:
    """Atomically write model, optimizer, RNG and loop ``state`` to directory ``path``."""
    with atomic_dir(path) as tmp:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_tensors(tmp / "optimizer.safetensors", tensors)
            atomic_write_json(tmp / "optimizer.json", meta)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda.{i}"] = s
        save_tensors(tmp / "rng.safetensors", rng)
        atomic_write_json(tmp / "state.json", state)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load what ``save_checkpoint`` wrote into ``model``/``optimizer``; return the loop state."""
    path = Path(path)
    load_state_dict(model, load_tensors(path / "model.safetensors"), path / "model.safetensors")
    if optimizer is not None:
        tensors = load_tensors(path / "optimizer.safetensors")
        meta = read_json(path / "optimizer.json")
        state: dict[int, dict] = {}
        for key, value in list(tensors.items()) + list(meta["scalars"].items()):
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = value
        try:
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"{path / 'optimizer.json'}: does not match the model ({err})"
            ) from None
    if restore_rng:
        rng = load_tensors(path / "rng.safetensors")
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            # Written on a machine with other GPUs (or none): restore the ones both have.
            keys = [f"cuda.{i}" for i in range(torch.cuda.device_count())]
            cuda = [rng[k] for k in keys if k in rng]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
    return read_json(path / "state.json")


def load_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """``model.load_state_dict`` with a one-line ``CheckpointError`` for missing/extra/misshaped;
    names of an older format read as today's (``distill.formats.current_keys``)."""
    from distill.formats import current_keys

    own = model.state_dict()
    tensors = current_keys(tensors, own)
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{source}: does not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, value in tensors.items():
        if value.shape != own[name].shape:
            raise CheckpointError(
                f"{source}: '{name}' has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[name].shape)}"
            )
    model.load_state_dict(tensors)
