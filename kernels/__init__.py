"""Kernels for masked multi-candidate scoring.

Each op lives in its own file next to its pure-torch reference: `gather_norm` (gather the rows
that run a block + its pre-norm), `residual_add` (add a block's output to exactly those rows, in
place), `scoring_head` (log-sum-exp / target logit / argmax without materialised logits) and
`kl_head` (the same for a pruned candidate plus its KL from the dense model, in one pass over the
LM head). Each dispatches: the Triton kernel on CUDA tensors when Triton is available, the
reference elsewhere.
`BLOCKPRUNE_KERNELS=torch` forces the references, `=triton` forces Triton (an error if absent).
"""

from __future__ import annotations

import os
import sys


def _hand_over_the_name() -> bool:
    """This folder is `blockprune.kernels`. Python also finds it as a top-level `kernels` when a
    checkout's root is on sys.path (`python -m ...` run there), and that name belongs to Hugging
    Face's `kernels` package, which transformers >= 5.25 imports. Where that package is installed,
    load it into sys.modules["kernels"]: the import system returns what that entry holds once this
    file ends. False where it is not installed (then this folder stands in, as a plain package)."""
    import importlib.machinery
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["kernels"]
        raise
    return True


if __name__ != "kernels" or not _hand_over_the_name():
    from .dispatch import (
        backend,
        dense_expectation,
        gather_norm,
        gather_norm_reference,
        kl_from_expectation,
        kl_head,
        kl_head_reference,
        residual_add,
        residual_add_reference,
        scoring_head,
        scoring_head_reference,
        triton_available,
    )

__all__ = [
    "backend",
    "dense_expectation",
    "gather_norm",
    "gather_norm_reference",
    "kl_from_expectation",
    "kl_head",
    "kl_head_reference",
    "residual_add",
    "residual_add_reference",
    "scoring_head",
    "scoring_head_reference",
    "triton_available",
]
