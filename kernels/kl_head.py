"""KL scoring head: per position, KL(p_dense || p_candidate) over the vocabulary together with the
candidate's log-sum-exp, target logit and target-is-argmax, from one pass over the LM head.

Scoring a pruned candidate against the dense model by KL would otherwise need both full logit
matrices (P x V each); here both hidden states meet each weight chunk once and only one chunk of
logits per model ever exists. The KL streams by the identity, with a = dense and b = candidate
logits, ``KL = sum_v e^(a_v - m) (a_v - b_v) / sum_v e^(a_v - m) - lse(a) + lse(b)``, keeping the
running max m of a and rescaling both sums whenever it grows.

`kl_head_reference` is the pure-torch ground truth (CPU and tests); the fused Triton kernel with
the same signature (less `chunk`) is `kl_head_triton.kl_head_triton`, chosen by
`blockprune.kernels.kl_head`.
"""

from __future__ import annotations

import torch

from .scoring_head import DEFAULT_CHUNK


def check_kl_args(hidden, dense_hidden, weight, targets, bias, dense_index=None) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not match")
    if dense_index is None and dense_hidden.shape != hidden.shape:
        raise ValueError(f"dense_hidden {tuple(dense_hidden.shape)} should be {tuple(hidden.shape)}")
    if dense_index is not None:
        if dense_hidden.dim() != 2 or dense_hidden.shape[1] != hidden.shape[1]:
            raise ValueError(f"dense_hidden {tuple(dense_hidden.shape)} should be [*, {hidden.shape[1]}]")
        if dense_index.shape != (hidden.shape[0],):
            raise ValueError(f"dense_index {tuple(dense_index.shape)} should be ({hidden.shape[0]},)")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets {tuple(targets.shape)} should be ({hidden.shape[0]},)")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias {tuple(bias.shape)} should be ({weight.shape[0]},)")
    if hidden.shape[0] and weight.shape[0] == 0:
        raise ValueError("empty vocabulary")


def kl_head_reference(
    hidden: torch.Tensor,
    dense_hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    dense_index: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [P, D] (candidate) and dense_hidden (dense model), both already final-normed,
    weight [V, D], targets [P] -> (kl [P] fp32, lse [P] fp32, target_logit [P] fp32,
    is_argmax [P] bool).

    dense_hidden is [P, D] (row p pairs with hidden[p]), or [Q, D] with `dense_index` [P] naming
    the dense row of each position: many candidates are compared with the same dense positions,
    whose logits and softmax are then computed once per chunk, not once per candidate.
    kl is KL(p_dense || p_candidate) in nats, clamped at 0; lse, target_logit and is_argmax are
    those of `scoring_head_reference` for `hidden` (computed identically, chunk by chunk).
    Logits are fp32, `chunk` vocabulary rows at a time. Per chunk, with e = e^(a - m) of the dense
    row: sum e, sum e*a (per dense row) and sum e*b (per position) are accumulated.
    """
    check_kl_args(hidden, dense_hidden, weight, targets, bias, dense_index)
    num_pos = hidden.shape[0]
    vocab = weight.shape[0]
    device = hidden.device
    h = hidden.float()
    hd = dense_hidden.float()
    idx = torch.arange(num_pos, device=device) if dense_index is None else dense_index.to(device).long()
    num_dense = hd.shape[0]
    # the engine's layout: dense_index = arange(Q) repeated once per trie node
    tiled = (dense_index is not None and num_dense > 0 and num_pos % num_dense == 0
             and torch.equal(idx, torch.arange(num_dense, device=device).repeat(num_pos // num_dense)))
    # candidate: exactly scoring_head_reference's accumulators
    run_max = torch.full((num_pos,), float("-inf"), device=device)
    lse = torch.full((num_pos,), float("-inf"), device=device)
    target_logit = torch.zeros(num_pos, device=device)
    # dense rows: running max, sum e^(a - max), sum e^(a - max) * a; per position: sum e^(a - max) * b
    max_a = torch.full((num_dense,), float("-inf"), device=device)
    sum_a = torch.zeros(num_dense, device=device)
    sum_aa = torch.zeros(num_dense, device=device)
    sum_ab = torch.zeros(num_pos, device=device)
    ar = torch.arange(num_pos, device=device)
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        w = weight[start:stop].float().T
        logits = h @ w
        dense = hd @ w
        if bias is not None:
            logits = logits + bias[start:stop].float()
            dense = dense + bias[start:stop].float()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
            dense = torch.tanh(dense / softcap) * softcap
        run_max = torch.maximum(run_max, logits.max(dim=1).values)
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        inside = (targets >= start) & (targets < stop)
        local = (targets - start).clamp(0, stop - start - 1)
        target_logit = torch.where(inside, logits[ar, local], target_logit)

        new_max = torch.maximum(max_a, dense.max(dim=1).values)
        scale = torch.exp(max_a - new_max)  # 0 on the first chunk (max_a = -inf)
        e = torch.exp(dense - new_max[:, None])
        sum_a = sum_a * scale + e.sum(dim=1)
        sum_aa = sum_aa * scale + (e * dense).sum(dim=1)
        if tiled:  # positions are node-major copies of the dense rows: broadcast, no gather
            cross = (logits.view(-1, num_dense, stop - start) * e).sum(dim=2).reshape(-1)
            sum_ab = sum_ab * scale.repeat(num_pos // num_dense) + cross
        elif dense_index is not None:
            sum_ab = sum_ab * scale[idx] + (e[idx] * logits).sum(dim=1)
        else:
            sum_ab = sum_ab * scale + (e * logits).sum(dim=1)
        max_a = new_max
    lse_a = max_a + torch.log(sum_a)
    # KL = sum p_a (a - b) - lse_a + lse_b, with p_a = e / sum e
    kl = ((sum_aa[idx] - sum_ab) / sum_a[idx] - lse_a[idx] + lse).clamp_min(0.0)
    return kl, lse, target_logit, target_logit >= run_max


def dense_expectation(
    dense_hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense side of KL without a softcap, once per position: (lse_a [Q] fp32, mean [Q, D] fp32)
    with mean = sum_v p_dense(v) W_v, the LM-head row expected under the dense distribution.

    Logits are affine in the hidden state (a = W h_a + c, b = W h_b + c), so
    ``sum_v p_a(v) (a_v - b_v) = mean . (h_a - h_b)`` and every candidate's KL needs only its own
    log-sum-exp (`kl_from_expectation`): the dense logits are computed once per chunk of positions,
    not once per candidate. Online over vocabulary chunks in fp32 (GEMMs: cuBLAS on a GPU).
    """
    if dense_hidden.dim() != 2 or weight.dim() != 2 or dense_hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"dense_hidden {tuple(dense_hidden.shape)} and weight {tuple(weight.shape)} do not match")
    num, dim = dense_hidden.shape
    device = dense_hidden.device
    h = dense_hidden.float()
    run_max = torch.full((num,), float("-inf"), device=device)
    total = torch.zeros(num, device=device)
    mean = torch.zeros((num, dim), device=device)
    for start in range(0, weight.shape[0], chunk):
        w = weight[start : start + chunk].float()
        logits = h @ w.T
        if bias is not None:
            logits = logits + bias[start : start + chunk].float()
        new_max = torch.maximum(run_max, logits.max(dim=1).values)
        scale = torch.exp(run_max - new_max)  # 0 on the first chunk
        e = torch.exp(logits - new_max[:, None])
        total = total * scale + e.sum(dim=1)
        mean = mean * scale[:, None] + e @ w
        run_max = new_max
    return run_max + torch.log(total), mean / total[:, None]


def kl_from_expectation(hidden: torch.Tensor, dense_hidden: torch.Tensor, lse: torch.Tensor,
                        dense_lse: torch.Tensor, dense_mean: torch.Tensor) -> torch.Tensor:
    """KL(p_dense || p_candidate) fp32 from the candidate's log-sum-exp (the scoring head's) and the
    dense side of `dense_expectation`: ``mean . (h_a - h_b) - lse_a + lse_b``, clamped at 0. The
    dense tensors ([P, D], [P]) broadcast over leading candidate dimensions of `hidden` / `lse`
    ([..., P, D], [..., P]): many candidates share one dense side without copies of it."""
    cross = (dense_mean * (dense_hidden.float() - hidden.float())).sum(dim=-1)
    return (cross - dense_lse + lse).clamp_min(0.0)
