"""Scoring head: per position, log-sum-exp over the vocabulary, the target's logit, and whether the
target is the argmax, without ever holding more than one vocabulary chunk of logits.

`scoring_head_reference` is the pure-torch ground truth (CPU and tests). A fused Triton kernel with
the same signature plugs in through `blockprune.kernels.scoring_head`.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 16384


def scoring_head_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [P, D] (already final-normed), weight [V, D], targets [P] ->
    (lse [P] fp32, target_logit [P] fp32, is_argmax [P] bool).

    Logits are computed in fp32, `chunk` vocabulary rows at a time; per-chunk log-sum-exps are
    combined with logaddexp.
    `is_argmax` is true when no logit exceeds the target's (ties count as a match).
    """
    num_pos = hidden.shape[0]
    vocab = weight.shape[0]
    h = hidden.float()
    run_max = torch.full((num_pos,), float("-inf"), device=hidden.device)
    lse = torch.full((num_pos,), float("-inf"), device=hidden.device)
    target_logit = torch.zeros(num_pos, device=hidden.device)
    ar = torch.arange(num_pos, device=hidden.device)
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        logits = h @ weight[start:stop].float().T
        if bias is not None:
            logits = logits + bias[start:stop].float()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        run_max = torch.maximum(run_max, logits.max(dim=1).values)
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        inside = (targets >= start) & (targets < stop)
        local = (targets - start).clamp(0, stop - start - 1)
        target_logit = torch.where(inside, logits[ar, local], target_logit)
    return lse, target_logit, target_logit >= run_max
