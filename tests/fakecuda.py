"""Fake CUDA on a CPU-only torch build: run GPU code paths for their devices, not their values.

`fake_cuda()` enters `FakeTensorMode` (tensors carry shape, dtype and device, no data), so a model
whose parameters live on `cuda` can be driven on this CPU build: any op that mixes a CPU and a CUDA
tensor raises `FakeTensorDeviceMismatchError`, exactly where a real GPU would raise. On top of it a
dispatch mode emulates and counts what a real GPU run would pay a host synchronisation for:

- value-dependent ops (`.item()`, `allclose`, `equal`, `bool(tensor)`): emulated (0 / True),
- device-to-host copies (`.cpu()`, `.to("cpu")`),
- host-to-device copies of pageable memory (`.to("cuda")` of a CPU tensor; emulated: the CPU build
  cannot copy onto a fake device). The CPU build cannot pin memory, so every upload counts here:
  the count is an upper bound on what a CUDA build pays.

`Syncs.events` lists them in order (op name, and the Python frame of blockprune that issued it).
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_VALUE_OPS = {aten._local_scalar_dense.default: 0, aten.item.default: 0, aten.allclose.default: True, aten.equal.default: True,
              aten.is_nonzero.default: True}
_NP_DTYPES = {torch.bool: np.bool_, torch.int8: np.int8, torch.int32: np.int32, torch.int64: np.int64}


def _is_cuda(x) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "cuda"


def _where() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/blockprune/" in frame.filename or "/kernels/" in frame.filename:
            return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


@dataclass
class Syncs(TorchDispatchMode):
    events: list = field(default_factory=list)
    counting: bool = True

    def __post_init__(self):
        super().__init__()

    def _note(self, what: str) -> None:
        if self.counting:
            self.events.append((what, _where()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _VALUE_OPS:
            self._note(func.__name__)
            return _VALUE_OPS[func]
        if func.overloadpacket in (aten._to_copy, aten.to):
            src = args[0]
            dev = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (torch.device, str))), None))
            dtype = kwargs.get("dtype", next((a for a in args[1:] if isinstance(a, torch.dtype)), None))
            if dev is not None and torch.device(dev).type == "cuda" and not _is_cuda(src):
                self._note("host_to_device")
                with torch.device("cuda"):
                    return torch.empty(src.shape, dtype=dtype or src.dtype)
            if dev is not None and torch.device(dev).type == "cpu" and _is_cuda(src):
                self._note("device_to_host")
        if func is aten.copy_.default:
            dst, src = args[0], args[1]
            if _is_cuda(dst) and not _is_cuda(src) and src.dim() > 0:
                self._note("host_to_device")
                return dst
            if not _is_cuda(dst) and _is_cuda(src):
                self._note("device_to_host")
        return func(*args, **kwargs)

    def count(self) -> int:
        return len(self.events)


# The CPU build's Python indexing (`t[...]`, `t[...] = v`) takes a CUDA device guard before any
# dispatch and fails on a fake CUDA tensor; the same indexing as aten ops dispatches normally.
_getitem, _setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__


def _index_parts(t: torch.Tensor, index):
    """(view of t after the basic part of `index`, aten.index list or None)."""
    if not isinstance(index, tuple):
        index = (index,)
    index = tuple(torch.as_tensor(i, device=t.device) if isinstance(i, (list, np.ndarray)) else i for i in index)
    used = sum(1 for i in index if i is not None and i is not Ellipsis and not (isinstance(i, torch.Tensor) and i.dtype == torch.bool))
    used += sum(i.dim() for i in index if isinstance(i, torch.Tensor) and i.dtype == torch.bool)
    if Ellipsis in [i for i in index if not isinstance(i, torch.Tensor)]:
        at = next(k for k, i in enumerate(index) if i is Ellipsis and not isinstance(i, torch.Tensor))
        index = index[:at] + (slice(None),) * (t.dim() - used) + index[at + 1:]
    view, dim, advanced = t, 0, []
    for i in index:
        if i is None:
            view = aten.unsqueeze.default(view, dim)
            advanced.append(None)
            dim += 1
        elif isinstance(i, bool) or isinstance(i, torch.Tensor):
            if isinstance(i, torch.Tensor) and i.device != t.device and i.dim() > 0:
                i = i.to(t.device)
            advanced.append(i)
            dim += 1
        elif isinstance(i, int):
            view = aten.select.int(view, dim, i)
        elif isinstance(i, slice):
            view = aten.slice.Tensor(view, dim, i.start, i.stop, i.step or 1)
            advanced.append(None)
            dim += 1
        else:
            raise TypeError(f"fake_cuda cannot index with {type(i).__name__}")
    if not any(isinstance(i, torch.Tensor) for i in advanced):
        return view, None
    return view, advanced


def _fake_getitem(self, index):
    if not (isinstance(self, FakeTensor) and self.device.type == "cuda"):
        return _getitem(self, index)
    view, advanced = _index_parts(self, index)
    return view if advanced is None else aten.index.Tensor(view, advanced)


def _fake_setitem(self, index, value):
    if not (isinstance(self, FakeTensor) and self.device.type == "cuda"):
        return _setitem(self, index, value)
    view, advanced = _index_parts(self, index)
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(value, dtype=self.dtype, device=self.device)
    if advanced is None:
        aten.copy_.default(view, value)
    else:
        aten.index_put_.default(view, advanced, value.to(self.dtype))


_copy = torch.Tensor.copy_


def _fake_copy(self, src, non_blocking=False):
    if isinstance(self, FakeTensor) and self.device.type == "cuda":
        return aten.copy_.default(self, src, non_blocking)
    return _copy(self, src, non_blocking)


_contiguous = torch.Tensor.contiguous


def _fake_contiguous(self, memory_format=torch.contiguous_format):
    if isinstance(self, FakeTensor) and self.device.type == "cuda":
        return self if self.is_contiguous(memory_format=memory_format) else aten.clone.default(self, memory_format=memory_format)
    return _contiguous(self, memory_format=memory_format)


def _cast(name: str, dtype: torch.dtype):
    original = getattr(torch.Tensor, name)

    def cast(self, *args, **kwargs):
        if isinstance(self, FakeTensor) and self.device.type == "cuda" and not args and not kwargs:
            return self if self.dtype == dtype else aten._to_copy.default(self, dtype=dtype)
        return original(self, *args, **kwargs)

    return cast


_CASTS = {"float": torch.float32, "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16,
          "long": torch.int64, "int": torch.int32, "bool": torch.bool}


_invert = torch.Tensor.__invert__


def _fake_invert(self):
    if isinstance(self, FakeTensor) and self.device.type == "cuda":
        return aten.bitwise_not.default(self)
    return _invert(self)


def _fake_numpy(self, *args, **kwargs):
    return np.zeros(tuple(self.shape), dtype=_NP_DTYPES.get(self.dtype, np.float64))


class FakeCuda:
    """What `fake_cuda()` yields: `model(config)` builds a model on fake CUDA; `syncs()` is a
    fresh counting mode to wrap the code under test in (value checks only work inside it)."""

    @staticmethod
    def model(config, dtype=torch.float32):
        import transformers

        with unset_fake_temporarily(), torch.device("meta"):  # real meta tensors, then fake CUDA storage
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model.to_empty(device="cuda")

    @staticmethod
    def syncs() -> Syncs:
        return Syncs()


@contextlib.contextmanager
def fake_cuda(free_bytes: int = 8 * 2**30):
    """FakeTensorMode with CUDA memory queries answered and `.numpy()` of fake tensors returning
    zeros; yields a FakeCuda."""
    with FakeTensorMode(allow_non_fake_inputs=True), \
            mock.patch("torch.cuda.mem_get_info", lambda *a, **k: (free_bytes, 2 * free_bytes)), \
            mock.patch.object(FakeTensor, "numpy", _fake_numpy, create=True), \
            mock.patch.object(FakeTensor, "__getitem__", _fake_getitem, create=True), \
            mock.patch.object(FakeTensor, "__setitem__", _fake_setitem, create=True), \
            mock.patch.object(FakeTensor, "copy_", _fake_copy, create=True), \
            mock.patch.object(FakeTensor, "contiguous", _fake_contiguous, create=True), \
            mock.patch.object(FakeTensor, "__invert__", _fake_invert, create=True):
        # patched on FakeTensor, never on torch.Tensor: setting a dunder on torch.Tensor rewrites its type
        # slots for good (a tensor then passes for a sequence, and torch.tensor([0-d tensors]) fails later)
        with contextlib.ExitStack() as stack:
            for name, dtype in _CASTS.items():
                stack.enter_context(mock.patch.object(FakeTensor, name, _cast(name, dtype), create=True))
            yield FakeCuda()
