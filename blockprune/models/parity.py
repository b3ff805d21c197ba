"""The load-time parity check: refuse a model the engine would score wrongly, before any task is scored.

On two short real token sequences: the model is causal, and the engine's dense log-probs (every
block through the same in-place runner the engine picks, the final norm, the scoring head) equal
the model's own forward's. `blockprune.models.load` runs it (`parity=True`).
"""

from __future__ import annotations

import torch

from . import fused
from .adapter import BlockModel, arch_of, one_line
from ..kernels import scoring_head
from .sources import ModelError


# Two short sentences the tokenizer turns into real token sequences (with its leading specials, as
# every request starts): the engine's dense log-probs on them must be the model's own forward's.
PARITY_TEXTS = ("The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
                "It was the best of times, it was the worst of times; it was the age of wisdom.")
PARITY_TOKENS = 24  # tokens per sequence at most
# Tolerated difference of a sequence's summed log-probability, per scored token, by dtype: fp32 runs
# the same operations batched differently (about 1e-7 apart); half precision rounds the logits the
# model's forward returns, and a deep model's blocks differently ordered in it (4e-3 apart on
# SmolLM2 in bfloat16 on a CPU). A missing final norm costs far more than either (0.2-3 nats/token).
PARITY_ATOL = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_PARITY_ATOL = 0.3
# A causal model's logits at a position do not move when later tokens change (relative to the
# logits' size; a few bfloat16 steps at |logit| ~ 30 in half precision).
CAUSAL_ATOL = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_CAUSAL_ATOL = 2e-2


def _parity_sequences(bm: BlockModel) -> list[list[int]]:
    vocab = bm.head.weight.shape[0]
    seqs = []
    for text in PARITY_TEXTS:
        try:
            ids = [int(i) for i in bm.tokenizer(text).input_ids]
        except Exception:  # noqa: BLE001 - a tokenizer that cannot: ids of our own below
            ids = []
        seqs.append([i for i in ids if 0 <= i < vocab][:PARITY_TOKENS])
    if any(len(s) < 6 for s in seqs):
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (PARITY_TOKENS, PARITY_TOKENS - 7)]
    return seqs


@torch.inference_mode()
def _own_logits(bm: BlockModel, ids: list[int]) -> torch.Tensor:
    """The model's own forward on one sequence: logits [T, V] in float64."""
    try:
        out = bm.model(input_ids=torch.tensor([ids], device=bm.device), use_cache=False)
    except Exception as exc:  # noqa: BLE001 - any model: say which, in one line
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): its own forward fails on text-only input: "
                         f"{one_line(exc)}") from None
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape[:2]) != (1, len(ids)):
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): its forward returns no logits per position; "
                         "blockprune drives causal language models")
    return logits[0].double()


@torch.inference_mode()
def _blockwise_logprobs(bm: BlockModel, seqs: list[list[int]]) -> list[float]:
    """Summed log-probs of each sequence's tokens 1.. as the engine computes a dense row: the
    sequences right-padded into one batch, the prelude, every block through the same in-place
    runner, the final norm and the scoring head."""
    longest = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (longest - len(s)) for s in seqs], device=bm.device)
    prelude = bm.prelude(ids)
    hidden = prelude.hidden.clone()
    rows = torch.arange(len(seqs), device=hidden.device)
    run = fused.runner_for(bm, None) or bm.run_block_inplace  # as the engine picks it
    for layer in range(bm.num_blocks):
        run(layer, hidden, rows, prelude, len(seqs))
    out = []
    for i, s in enumerate(seqs):
        h = bm.normed(hidden[i, : len(s) - 1])
        targets = torch.tensor(s[1:], device=h.device)
        lse, tgt, _ = scoring_head(h, bm.head.weight, targets, bias=getattr(bm.head, "bias", None),
                                   softcap=bm.logit_softcap)
        out.append(float((tgt.double() - lse.double()).sum()))
    return out


def check_parity(bm: BlockModel) -> dict:
    """Refuse a model the engine would score wrongly, before any task is scored.

    On two short real token sequences: (1) the model is causal (a position's logits do not move
    when later tokens change: a bidirectional encoder such as BERT is refused); (2) the engine's
    dense log-probs equal the model's own forward's (a final norm, a projection or block arguments
    the adapter does not reproduce would make every score wrong). Returns what was measured.
    """
    seqs = _parity_sequences(bm)
    vocab = bm.head.weight.shape[0]
    ids = seqs[0]
    half = len(ids) // 2
    altered = ids[:half] + [(t + 1 + vocab // 2) % vocab for t in ids[half:]]
    a, b = _own_logits(bm, ids)[:half], _own_logits(bm, altered)[:half]
    leak = float((a - b).abs().max()) / (1.0 + float(a.abs().max()))
    if not leak <= CAUSAL_ATOL.get(bm.dtype, HALF_CAUSAL_ATOL):
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}) is not a causal decoder: its outputs at a position change "
                         "when later tokens change (a bidirectional encoder, such as BERT); blockprune scores causal "
                         "language models")
    own = []
    for s in seqs:
        lp = torch.log_softmax(_own_logits(bm, s), -1)
        own.append(float(lp[:-1].gather(1, torch.tensor(s[1:], device=lp.device)[:, None]).sum()))
    try:
        got = _blockwise_logprobs(bm, seqs)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any model: say which, in one line
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): blockprune cannot run its blocks one at a time: "
                         f"{one_line(exc)}") from None
    per_token = max(abs(float(g) - o) / (len(s) - 1) for g, o, s in zip(got, own, seqs))
    atol = PARITY_ATOL.get(bm.dtype, HALF_PARITY_ATOL)
    if not per_token <= atol:
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): blockprune's dense log-probs differ from the model's own "
                         f"forward by {per_token:.3g} nats/token on a test sentence (tolerance {atol:g}), so every "
                         "score would be wrong: the adapter does not reproduce this architecture (its final norm, a "
                         "projection or its blocks' arguments)")
    return {"sequences": len(seqs), "tokens": sum(len(s) for s in seqs), "max_diff_per_token": per_token,
            "tolerance": atol, "causal_leak": leak}
