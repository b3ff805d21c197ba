"""Fused block runner: gather+pre-norm and residual-add+scatter kernels around the HF attention/MLP.

The plain path (`BlockModel.run_block_inplace`) gathers the rows that keep a block, calls the HF
block whole and writes the rows back. For Llama-style pre-norm blocks
(``h = h + attn(norm1(h)); h = h + mlp(norm2(h))``) the fused path instead runs, per micro-batch
of rows `part`:

    x = gather_norm(hidden, part, norm1)      # one kernel: read only those rows, normalise
    residual_add(hidden, part, self_attn(x))  # one kernel: hidden[part] += out, in place
    x = gather_norm(hidden, part, norm2)
    residual_add(hidden, part, mlp(x))

A model by halves (`--units attention|mlp|sublayers`, models.units) runs each half the same way:
one gather_norm and one residual_add around its sublayer, so a row that skips a half costs nothing.

Attention and MLP stay the model's own modules (cuBLAS / SDPA), called with exactly the arguments
the block's forward passes them. The kernels dispatch through `blockprune.kernels` (Triton on CUDA,
the torch references elsewhere; `BLOCKPRUNE_KERNELS` forces either).

Supported: blocks whose forward is Llama's decoder-layer forward, source for source (Llama,
SmolLM, Mistral, Qwen2, Qwen3 in transformers 5), with RMSNorm or LayerNorm pre-norms. Anything
else (Gemma's extra feed-forward norms, GPT-2, GPT-NeoX, Phi-3's dropout, Granite's residual
multiplier, ...) takes the plain path. Before it is used, the runner is checked once numerically
against the plain path on random rows.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import textwrap
from typing import Any

import torch
from torch import nn

from .. import kernels
from .adapter import BlockModel, Prelude, attention_kwargs, select_rows as _select_rows
from .units import UnitModel

log = logging.getLogger("blockprune")
ROLES = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
# Norm variants tried on a module of unknown class, in order (see kernels.gather_norm_reference).
RMS_VARIANTS = (
    {"kind": "rms", "offset": 0.0, "cast_early": True},  # Llama
    {"kind": "rms", "offset": 1.0, "cast_early": False},  # Gemma
    {"kind": "rms", "offset": 1.0, "cast_early": True},
    {"kind": "rms", "offset": 0.0, "cast_early": False},
)


class FusedError(RuntimeError):
    """The fused runner was forced (fused=True) on a model it cannot run exactly, or its one-off
    check raised instead of comparing (a bug in the fused path: never a reason to fall back)."""


class DeviceError(RuntimeError):
    """A CUDA error inside one of the engine's one-off checks (the fused runner's, the packing's).

    After an illegal memory access or a device-side assert the CUDA context is unusable: falling
    back to another path would only move the failure somewhere unrelated, so the run stops at the
    check, with one line naming it (the original error chained as the cause)."""


# RuntimeError texts of the CUDA runtime / libraries (case-sensitive: "cuda:0" in a device-mismatch
# message is not one). torch raises most of them as torch.AcceleratorError (torch >= 2.8).
_DEVICE_TEXT = re.compile(r"\bCUDA\b|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|device-side assert|illegal memory access|"
                          r"illegal instruction|misaligned address|unspecified launch failure")


def device_error(exc: BaseException) -> bool:
    """Whether `exc` is a CUDA error (after which the CUDA context cannot be trusted), by type:
    torch.AcceleratorError where this torch has it, torch.cuda.CudaError, a deferred CUDA call's
    error, CUDA out of memory; or a RuntimeError whose message is a CUDA runtime/library error."""
    types = tuple(t for t in (getattr(torch, "AcceleratorError", None), getattr(torch.cuda, "CudaError", None),
                              getattr(torch.cuda, "DeferredCudaCallError", None),
                              getattr(torch, "OutOfMemoryError", None)) if isinstance(t, type))
    if types and isinstance(exc, types):
        return True
    return isinstance(exc, RuntimeError) and bool(_DEVICE_TEXT.search(str(exc)))


def check_raised(what: str, name: str, exc: BaseException) -> RuntimeError:
    """The one-line error for a check (`what`) of model `name` that raised `exc` (raise it `from exc`)."""
    text = str(exc).strip()
    first = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
    if isinstance(exc, torch.OutOfMemoryError):
        return DeviceError(f"{name}: {what} ran out of GPU memory, so the run stops here: {first}")
    if device_error(exc):
        return DeviceError(f"{name}: CUDA error in {what}, the CUDA context is unusable after it, so the run "
                           f"stops here: {first}")
    return FusedError(f"{name}: {what} raised {first} (a bug in the fused path; BLOCKPRUNE_FUSED=0 runs the "
                      f"plain path)")


def _forward_source(cls: type) -> str | None:
    try:
        return textwrap.dedent(inspect.getsource(cls.forward)).strip()
    except (OSError, TypeError):
        return None


def _llama_forward_source() -> str | None:
    try:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    except ImportError:  # pragma: no cover - transformers always ships Llama
        return None
    return _forward_source(LlamaDecoderLayer)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2


@torch.inference_mode()
def norm_spec(module: nn.Module, dtype: torch.dtype) -> dict | None:
    """The gather_norm arguments that reproduce `module` on `dtype` inputs, or None.

    nn.LayerNorm by type; an RMSNorm of any class by probing: the module is run on random rows and
    compared with each variant of the reference (Llama, Gemma-style offset, either cast order).
    """
    if isinstance(module, nn.LayerNorm):
        if module.weight is None or len(module.normalized_shape) != 1:
            return None
        return {"weight": module.weight, "bias": module.bias, "eps": float(module.eps), "kind": "layer"}
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not isinstance(eps, (int, float)):
        return None
    if "rms" not in type(module).__name__.lower():
        return None
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, weight.shape[0], generator=g) * 3).to(device=weight.device, dtype=dtype)
    try:
        want = module(x)
    except Exception:  # noqa: BLE001 - a norm we cannot call on plain rows is not one we replace
        return None
    rows = torch.arange(2, device=weight.device)
    tol = _tolerance(dtype)
    for variant in RMS_VARIANTS:
        got = kernels.gather_norm_reference(x, rows, weight, None, float(eps), **variant)
        if got.dtype == want.dtype and torch.allclose(got.float(), want.float(), rtol=tol, atol=tol):
            return {"weight": weight, "bias": None, "eps": float(eps), **variant}
    return None


def unsupported_reason(bm: BlockModel) -> str | None:
    """Why the fused runner cannot drive this model's blocks, or None when it can. A model by halves
    (models.units) can when its blocks can: each half is one pre-norm and one residual add."""
    if isinstance(bm, UnitModel):
        return unsupported_reason(bm.base)
    reference = _llama_forward_source()
    if reference is None:
        return "the Llama decoder layer of transformers cannot be read"
    checked: set[type] = set()
    for i, block in enumerate(bm.blocks):
        cls = type(block)
        if cls not in checked:
            missing = [r for r in ROLES if not isinstance(getattr(block, r, None), nn.Module)]
            if missing:
                return f"{cls.__name__} has no {', '.join(missing)} (not a Llama-style pre-norm block)"
            if _forward_source(cls) != reference:
                return f"{cls.__name__}.forward is not the Llama pre-norm block forward"
            checked.add(cls)
        for role in ("input_layernorm", "post_attention_layernorm"):
            if norm_spec(getattr(block, role), bm.dtype) is None:
                name = type(getattr(block, role)).__name__
                return f"block {i}: {role} ({name}) is not an RMSNorm or LayerNorm we reproduce"
    return None


class FusedRunner:
    """BlockModel.run_block_inplace with gather+norm and residual-add kernels (see module doc)."""

    def __init__(self, bm: BlockModel):
        self.bm = bm
        self.halves = isinstance(bm, UnitModel)  # blocks are halves: one pre-norm each (models.units.Half)
        self.norms = [norm_spec(b.pre_norm(), bm.dtype) if self.halves else
                      (norm_spec(b.input_layernorm, bm.dtype), norm_spec(b.post_attention_layernorm, bm.dtype))
                      for b in bm.blocks]
        self._signatures: dict[type, inspect.Signature] = {}

    def _attn_kwargs(self, block: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
        """What the block's forward passes to self_attn besides hidden_states (its signature cached per class)."""
        cls = type(block)
        sig = self._signatures.get(cls)
        if sig is None:
            sig = self._signatures[cls] = inspect.signature(cls.forward)
        return attention_kwargs(sig, args, kwargs)

    @torch.inference_mode()
    def __call__(self, index: int, hidden: torch.Tensor, idx: torch.Tensor, prelude: Prelude, micro: int) -> None:
        """hidden[idx] = block(hidden[idx]), `micro` rows per call; row r uses sample r % prelude.batch.
        A half (models.units.Half): hidden[idx] += half.add(norm(hidden[idx])), its one pre-norm
        gathered and its one residual added by the kernels."""
        block = self.bm.blocks[index]
        args, kwargs = prelude.block_args[index]
        if self.halves:
            for s in range(0, len(idx), micro):
                part = idx[s : s + micro]
                x = kernels.gather_norm(hidden, part, **self.norms[index])
                if block.attention:
                    rows = (part % prelude.batch).to(hidden.device)
                    out = block.add(x, _select_rows(args, prelude.batch, rows), _select_rows(kwargs, prelude.batch, rows))
                else:
                    out = block.add(x)
                kernels.residual_add(hidden, part, out)
            return
        norm1, norm2 = self.norms[index]
        for s in range(0, len(idx), micro):
            part = idx[s : s + micro]
            rows = (part % prelude.batch).to(hidden.device)
            attn_kwargs = self._attn_kwargs(
                block, _select_rows(args, prelude.batch, rows), _select_rows(kwargs, prelude.batch, rows))
            x = kernels.gather_norm(hidden, part, **norm1)
            attn = block.self_attn(hidden_states=x, **attn_kwargs)
            kernels.residual_add(hidden, part, attn[0] if isinstance(attn, (tuple, list)) else attn)
            x = kernels.gather_norm(hidden, part, **norm2)
            kernels.residual_add(hidden, part, block.mlp(x))


@torch.inference_mode()
def verify(bm: BlockModel, runner: FusedRunner) -> str | None:
    """Run the first and the last block on random rows both ways; None when they agree (rows that
    run the block allclose, the others untouched), else what differs."""
    vocab = bm.head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    batch, seq = 2, 8
    prelude = bm.prelude(torch.randint(0, vocab, (batch, seq), generator=g))
    base = prelude.hidden
    scale = base.float().std().clamp_min(1e-3)  # a 0-dim tensor on the model's device
    noise = (torch.randn((4, *base.shape[1:]), generator=g).to(base.device) * scale).to(base.dtype)
    hidden = torch.cat([base, base.repeat(2, 1, 1) + noise])  # 6 rows; row r uses sample r % 2
    idx = torch.tensor([0, 3, 4], device=base.device)
    untouched = torch.tensor([1, 2, 5], device=base.device)
    tol = _tolerance(bm.dtype)
    for index in sorted({0, bm.num_blocks - 1}):
        plain = hidden.clone()
        bm.run_block_inplace(index, plain, idx, prelude, 2)
        fused = hidden.clone()
        runner(index, fused, idx, prelude, 2)
        if not torch.equal(fused[untouched], hidden[untouched]):
            return f"block {index}: rows outside the index list changed"
        a, b = fused[idx].float(), plain[idx].float()
        err = (a - b).abs().max().item()
        if not torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item()):
            return f"block {index}: fused and plain outputs differ (max abs diff {err:.3g})"
    return None


def _auto_enabled(bm: BlockModel) -> bool:
    env = os.environ.get("BLOCKPRUNE_FUSED", "").strip().lower()
    if env in ("0", "false", "off", "no"):
        return False
    if env in ("1", "true", "on", "yes"):
        return True
    return bm.device.type == "cuda" and kernels.triton_available()


def runner_for(bm: BlockModel, mode: bool | None = None):
    """A callable with BlockModel.run_block_inplace's signature, or None to use the plain path.

    mode None (auto): fused when the model is on CUDA and Triton imports, or BLOCKPRUNE_FUSED=1
    (BLOCKPRUNE_FUSED=0 turns it off); an unsupported model or a numerical mismatch in the check
    takes the plain path, and why is said once (log and `bm.meta["fused_reason"]`, which run.json
    records). A check that raises ends the run in either mode: DeviceError for a CUDA error (the
    context is unusable after it), FusedError otherwise. True: fused or FusedError saying why not.
    False: the plain path.
    """
    if mode is False or (mode is None and not _auto_enabled(bm)):
        return None
    key = ("fused", kernels.backend(), str(bm.device), bm.dtype)
    problem = bm.meta.get(key)
    runner = None
    if problem is None:
        try:
            problem = unsupported_reason(bm)
            if problem is None:
                runner = FusedRunner(bm)
                problem = verify(bm, runner)
        except Exception as exc:  # noqa: BLE001 - only a mismatch or an unsupported model falls back
            # A check that raises is not a mismatch: a CUDA error (illegal memory access, ...) has
            # broken the context and anything else is a bug in the fused path. Either ends the run
            # here, in one line, rather than later somewhere unrelated.
            raise check_raised("the fused block runner's check", bm.name, exc) from exc
        bm.meta[key] = problem or ""
        if problem and not mode:
            bm.meta["fused_reason"] = problem
            log.warning("fused block runner off for %s, plain path used: %s", bm.name, problem)
    if problem:
        if mode:
            raise FusedError(f"{bm.name}: no fused block runner: {problem}")
        return None
    return runner or FusedRunner(bm)
