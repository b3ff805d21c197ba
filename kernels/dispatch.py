"""Dispatch: each op picks its Triton kernel on CUDA tensors (or when forced) and its torch
reference elsewhere. `BLOCKPRUNE_KERNELS=torch|triton|auto`."""

from __future__ import annotations

import os

from .gather_norm import gather_norm_reference
from .kl_head import dense_expectation, kl_from_expectation, kl_head_reference
from .residual_add import residual_add_reference
from .scoring_head import scoring_head_reference


def backend() -> str:
    """'torch' or 'triton' as forced by BLOCKPRUNE_KERNELS, else 'auto'."""
    value = os.environ.get("BLOCKPRUNE_KERNELS", "auto").lower()
    if value not in ("auto", "torch", "triton"):
        raise ValueError(f"BLOCKPRUNE_KERNELS must be auto, torch or triton, not {value!r}")
    return value


def triton_available() -> bool:
    """Whether the Triton kernels import (on CPU they run only under TRITON_INTERPRET=1)."""
    return _triton_gather_norm() is not None


def _triton_scoring_head():
    """The Triton kernel, or None when Triton cannot be imported."""
    try:
        from .scoring_head_triton import scoring_head_triton
    except ImportError:
        return None
    return scoring_head_triton


def _triton_kl_head():
    try:
        from .kl_head_triton import kl_head_triton
    except ImportError:
        return None
    return kl_head_triton


def _triton_gather_norm():
    try:
        from .gather_norm_triton import gather_norm_triton
    except ImportError:
        return None
    return gather_norm_triton


def _triton_residual_add():
    try:
        from .residual_add_triton import residual_add_triton
    except ImportError:
        return None
    return residual_add_triton


def _choose(loader, is_cuda: bool, reference):
    """Triton when forced, or under 'auto' for CUDA tensors when Triton imports; else the reference."""
    mode = backend()
    if mode == "triton" or (mode == "auto" and is_cuda):
        kernel = loader()
        if kernel is not None:
            return kernel
        if mode == "triton":
            raise RuntimeError("BLOCKPRUNE_KERNELS=triton, but triton cannot be imported")
    return reference


def scoring_head(hidden, weight, targets, bias=None, softcap=None):
    """Per position: (log-sum-exp, target logit, target is argmax). See scoring_head_reference.

    Triton when forced (CPU tensors then need TRITON_INTERPRET=1 set before import), or under
    'auto' for CUDA tensors when Triton imports; the reference otherwise.
    """
    op = _choose(_triton_scoring_head, hidden.is_cuda, scoring_head_reference)
    return op(hidden, weight, targets, bias=bias, softcap=softcap)


def kl_head(hidden, dense_hidden, weight, targets, bias=None, softcap=None, dense_index=None):
    """Per position: (KL(dense || candidate), log-sum-exp, target logit, target is argmax) for the
    candidate `hidden`; `dense_index` names each position's row of `dense_hidden`. See
    kl_head_reference. Dispatch as scoring_head."""
    op = _choose(_triton_kl_head, hidden.is_cuda, kl_head_reference)
    return op(hidden, dense_hidden, weight, targets, bias=bias, softcap=softcap, dense_index=dense_index)


def gather_norm(hidden, idx, weight, bias=None, eps=1e-6, kind="rms", offset=0.0, cast_early=True):
    """norm(hidden[idx]) as a compact [n, T, D] batch. See gather_norm_reference. Dispatch as
    scoring_head."""
    op = _choose(_triton_gather_norm, hidden.is_cuda, gather_norm_reference)
    return op(hidden, idx, weight, bias=bias, eps=eps, kind=kind, offset=offset, cast_early=cast_early)


def residual_add(hidden, idx, out):
    """hidden[idx] += out in place (distinct rows); returns hidden. See residual_add_reference.
    Dispatch as scoring_head."""
    op = _choose(_triton_residual_add, hidden.is_cuda, residual_add_reference)
    return op(hidden, idx, out)


__all__ = [
    "backend", "dense_expectation", "gather_norm", "kl_from_expectation", "gather_norm_reference", "kl_head", "kl_head_reference", "residual_add",
    "residual_add_reference", "scoring_head", "scoring_head_reference", "triton_available",
]
