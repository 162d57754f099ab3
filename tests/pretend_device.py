"""A pretend accelerator for CPU-only machines: catches the device mistakes a GPU run would hit.

Inside ``pretend_device()`` accelerate's device is ``meta`` (``ACCELERATE_TORCH_DEVICE``), so
every stage believes it runs on an accelerator. A tensor moved or created there is a CPU tensor
wrapped in ``OnDevice``, which reports ``device='meta'`` and computes real numbers on the CPU, so a
whole stage runs and its results can be compared with a CPU run. ``DeviceMismatch`` is raised
by any operation that mixes such a tensor with a tensor of another device, as CUDA would (a
teacher left on the CPU while its batches went to the stage's device, a mask made with
``torch.arange(n)``, an optimizer state on the wrong side), and by a matrix product, embedding
or attention computed on CPU tensors alone: work the stage left on the CPU. As on CUDA, 0-dim
CPU tensors may join (scalars), and ``copy_``/``to`` cross devices. What leaves the device
(``.cpu()``, ``.tolist()``, ``.item()``) is plain again; ``.numpy()`` of it fails, as on CUDA.

``meta`` rather than ``cuda``: a CPU-only torch refuses to build autograd graphs on a CUDA
device. Code that branches on ``device.type == "cuda"`` takes its other branch here.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing

DEVICE = torch.device("meta")
# Cross-device by design: ``x.to(device)``, ``param.copy_(cpu_tensor)`` (load_state_dict).
_CROSSING = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
# The work a stage must do on its device: matrix products, embeddings, attention. Run on
# CPU tensors inside ``pretend_device()`` they mean a model or a batch the stage left behind.
_COMPUTE = ("mm", "addmm", "bmm", "baddbmm", "embedding", "_scaled_dot_product")
# torch.tensor(data, device="meta") keeps only the shape: build on the CPU, then move.
_CONSTRUCTORS = {torch.tensor, torch.as_tensor, torch.asarray}


class DeviceMismatch(RuntimeError):
    """An operation mixed tensors of the stage's device with tensors of another device, or
    computed on the CPU what the stage should compute on its device."""


class OnDevice(torch.Tensor):
    """A CPU tensor (``elem``) the code under test sees on ``DEVICE``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=DEVICE,
            requires_grad=elem.requires_grad,
        )
        out.elem = elem
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"OnDevice({self.elem!r})"

    def tolist(self):  # torch refuses tolist() of a subclass; CUDA tensors have one
        return self.elem.tolist()

    # A traceable wrapper: Module.to swaps it into the existing Parameter objects, so an
    # optimizer made before the move still holds the model's parameters (as with CUDA).
    def __tensor_flatten__(self):
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return OnDevice(inner["elem"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _on_device(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


def _tensors(values):
    """The tensors among aten arguments (a tensor, or a list of them, per argument)."""
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (t for t in v if isinstance(t, torch.Tensor))


def _unwrap(v):
    if isinstance(v, OnDevice):
        return v.elem
    if isinstance(v, (list, tuple)) and any(isinstance(t, OnDevice) for t in v):
        return type(v)(t.elem if isinstance(t, OnDevice) else t for t in v)
    return v


def _run(func, args, kwargs):
    """``func`` on the CPU tensors inside; its outputs on the device its inputs (or its
    ``device=`` argument) name; ``DeviceMismatch`` when the inputs disagree."""
    leaves = [*_tensors(args), *_tensors(kwargs.values())]
    placed = {id(t.elem): t for t in leaves if isinstance(t, OnDevice)}
    other = [t for t in leaves if not isinstance(t, OnDevice) and t.dim() > 0]
    if placed and other and func not in _CROSSING:
        t = other[0]
        raise DeviceMismatch(
            f"{func}: a {tuple(t.shape)} tensor on {t.device} meets tensors on the stage's "
            f"device {DEVICE}"
        )
    if not placed and other and func.__name__.split(".")[0].startswith(_COMPUTE):
        shapes = ", ".join(str(tuple(t.shape)) for t in other)
        raise DeviceMismatch(
            f"{func}: computed on the CPU ({shapes}) while the stage's device is {DEVICE}"
        )
    wrap = placed
    if kwargs.get("device") is not None:
        wrap = _on_device(kwargs["device"])
        if wrap:
            kwargs = {**kwargs, "device": torch.device("cpu")}
    out = func(*map(_unwrap, args), **{k: _unwrap(v) for k, v in kwargs.items()})
    if not wrap:
        return out
    if func.is_view:
        out = pytree.tree_map_only(torch.Tensor, OnDevice, out)
        return return_and_correct_aliasing(func, args, kwargs, out)

    # An in-place op returns its own input: give back that input's wrapper, not a new one.
    def wrap_one(t):
        if not isinstance(t, torch.Tensor):
            return t
        return placed[id(t)] if id(t) in placed else OnDevice(t)

    return type(out)(map(wrap_one, out)) if isinstance(out, (tuple, list)) else wrap_one(out)


class _Dispatch(TorchDispatchMode):
    """Sees every aten operation, factories with ``device=`` included."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _Constructors(TorchFunctionMode):
    """``torch.tensor(data, device=...)``: never an aten operation with its data."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONSTRUCTORS and _on_device(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": None}).to(DEVICE)
        return func(*args, **kwargs)


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@contextlib.contextmanager
def pretend_device() -> Iterator[torch.device]:
    """Within: accelerate's device (every stage's) is ``DEVICE``, and mixing devices raises."""
    # ACCELERATE_USE_CPU (tests/conftest.py) would make accelerate refuse a device not the CPU.
    before = {k: os.environ.pop(k, None) for k in ("ACCELERATE_TORCH_DEVICE", "ACCELERATE_USE_CPU")}
    os.environ["ACCELERATE_TORCH_DEVICE"] = DEVICE.type
    _reset_accelerate()
    try:
        with warnings.catch_warnings():
            # load_state_dict warns that copying into a meta parameter is a no-op: not here.
            warnings.filterwarnings("ignore", message=".*meta parameter.*")
            with _Constructors(), _Dispatch():
                yield DEVICE
    finally:
        for key, value in before.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
        _reset_accelerate()
