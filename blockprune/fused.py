"""Fused block runner: Triton gather+pre-norm and residual-add+scatter around the HF attention/MLP.

(Stub: filled in by the kernels work of issue 5.)
"""

from __future__ import annotations


def runner_for(bm, mode: bool | None = None):
    """A callable with BlockModel.run_block_inplace's signature, or None to use the plain path."""
    if mode:
        raise NotImplementedError("fused block runner not available yet")
    return None
