"""Kernels for masked multi-candidate scoring.

Each op lives in its own file next to its pure-torch reference. `scoring_head` dispatches: the
Triton kernel on CUDA tensors when Triton is available, the reference elsewhere.
`BLOCKPRUNE_KERNELS=torch` forces the references, `=triton` forces Triton (an error if absent).
"""

from __future__ import annotations

import os

from .scoring_head import scoring_head_reference


def backend() -> str:
    """'torch' or 'triton' as forced by BLOCKPRUNE_KERNELS, else 'auto'."""
    value = os.environ.get("BLOCKPRUNE_KERNELS", "auto").lower()
    if value not in ("auto", "torch", "triton"):
        raise ValueError(f"BLOCKPRUNE_KERNELS must be auto, torch or triton, not {value!r}")
    return value


def _triton_scoring_head():
    """The Triton kernel, or None when Triton cannot be imported."""
    try:
        from .scoring_head_triton import scoring_head_triton
    except ImportError:
        return None
    return scoring_head_triton


def scoring_head(hidden, weight, targets, bias=None, softcap=None):
    """Per position: (log-sum-exp, target logit, target is argmax). See scoring_head_reference.

    Triton when forced (CPU tensors then need TRITON_INTERPRET=1 set before import), or under
    'auto' for CUDA tensors when Triton imports; the reference otherwise.
    """
    mode = backend()
    if mode == "triton" or (mode == "auto" and hidden.is_cuda):
        kernel = _triton_scoring_head()
        if kernel is not None:
            return kernel(hidden, weight, targets, bias=bias, softcap=softcap)
        if mode == "triton":
            raise RuntimeError("BLOCKPRUNE_KERNELS=triton, but triton cannot be imported")
    return scoring_head_reference(hidden, weight, targets, bias=bias, softcap=softcap)


__all__ = ["backend", "scoring_head", "scoring_head_reference"]
