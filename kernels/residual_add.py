"""Residual add + scatter: ``hidden[idx] += out`` in place for exactly the rows that ran a block;
every other row is untouched (the identity, no weights read, no atomics: the rows are distinct).

`residual_add_reference` is the pure-torch ground truth; the Triton kernel with the same signature
is `residual_add_triton.residual_add_triton`, chosen by `blockprune.kernels.residual_add`.
The sum is formed as Hugging Face blocks do (``residual + out``: one rounding to the result
dtype) and stored in `hidden`'s dtype.
"""

from __future__ import annotations

import torch


def check_residual_args(hidden: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"hidden should be [N, T, D], not {tuple(hidden.shape)}")
    if idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"idx should be a 1-D integer tensor, not {tuple(idx.shape)} {idx.dtype}")
    if out.shape != (idx.shape[0], *hidden.shape[1:]):
        raise ValueError(f"out {tuple(out.shape)} should be ({idx.shape[0]}, {hidden.shape[1]}, {hidden.shape[2]})")


def residual_add_reference(hidden: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """hidden [N, T, D], idx [n] distinct row ids, out [n, T, D]: hidden[idx] += out in place;
    returns hidden."""
    check_residual_args(hidden, idx, out)
    idx = idx.to(hidden.device)
    hidden.index_copy_(0, idx, (hidden.index_select(0, idx) + out).to(hidden.dtype))
    return hidden
