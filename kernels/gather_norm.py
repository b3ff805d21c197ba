"""Gather + pre-norm: read only the rows that run a block (an index list built on the host) and
apply the block's input norm on the way, writing a compact batch for its attention / MLP.

`gather_norm_reference` is the pure-torch ground truth (CPU and tests); the fused Triton kernel
with the same signature is `gather_norm_triton.gather_norm_triton`, chosen by
`blockprune.kernels.gather_norm`.

Norm variants (the ones Hugging Face models use), all computed in fp32:

* `kind="rms", cast_early=True` (Llama, Mistral, Qwen2/3, SmolLM): ``(w + offset) * (x / rms(x)).to(x.dtype)``
  -- normalised in fp32, cast to the input dtype, then multiplied by the weight (the result has
  the promoted dtype of weight and input, exactly as `LlamaRMSNorm`).
* `kind="rms", cast_early=False, offset=1.0` (Gemma): ``((x / rms(x)) * (1 + w)).to(x.dtype)``.
* `kind="layer"`: LayerNorm with weight (plus `offset`) and optional bias, output in the input dtype.
"""

from __future__ import annotations

import torch

KINDS = ("rms", "layer")


def check_gather_args(hidden: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None, kind: str) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"hidden should be [N, T, D], not {tuple(hidden.shape)}")
    if idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"idx should be a 1-D integer tensor, not {tuple(idx.shape)} {idx.dtype}")
    if weight.shape != (hidden.shape[2],):
        raise ValueError(f"weight {tuple(weight.shape)} should be ({hidden.shape[2]},)")
    if bias is not None and bias.shape != (hidden.shape[2],):
        raise ValueError(f"bias {tuple(bias.shape)} should be ({hidden.shape[2]},)")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def gather_norm_dtype(hidden: torch.Tensor, weight: torch.Tensor, kind: str, cast_early: bool) -> torch.dtype:
    """Output dtype: Llama-style RMSNorm returns weight * x.to(input dtype) (promoted); the others
    return the input dtype."""
    if kind == "rms" and cast_early:
        return torch.promote_types(hidden.dtype, weight.dtype)
    return hidden.dtype


def gather_norm_reference(
    hidden: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    kind: str = "rms",
    offset: float = 0.0,
    cast_early: bool = True,
) -> torch.Tensor:
    """hidden [N, T, D], idx [n] (row ids, any order) -> norm(hidden[idx]) as a new [n, T, D]."""
    check_gather_args(hidden, idx, weight, bias, kind)
    x = hidden.index_select(0, idx.to(hidden.device)).float()
    if kind == "rms":
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if cast_early:
            w = weight + offset if offset else weight
            return w * y.to(hidden.dtype)
        return (y * (offset + weight.float())).to(hidden.dtype)
    w = weight.float() + offset
    y = torch.nn.functional.layer_norm(x, (x.shape[-1],), w, bias.float() if bias is not None else None, eps)
    return y.to(hidden.dtype)
