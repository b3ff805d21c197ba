"""A healed export's quality bound, part of its verification.

Reloading a healed checkpoint proves the file holds the folded model; it cannot tell a good fold
from a broken one (a negative ridge, a map fitted on garbage): the file would hold a broken model
faithfully. So before anything is written, the folded model's perplexity on a few held-out
windows (the calibration text's windows the maps were not fitted on; a text the healing never
saw when it was fitted on task samples only) is bounded by plain deletion's: healing exists to
repair the cut, and a fold that makes it more than BOUND times worse is refused in one line. The
figures (dense, plain, healed, the windows' ids) go into the manifest's `healing.quality`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from blockprune.models import BlockModel
from blockprune.tasks import load_task

from .hf import masked_logits

WINDOWS = 8  # held-out windows the bound is measured on
BOUND = 1.5  # the healed perplexity may be at most this many times plain deletion's
FALLBACK_TEXT = "shakespeare/macbeth"  # when the maps were fitted on task samples only
FALLBACK_WINDOW = 128


class QualityError(Exception):
    """A healed model worse than plain deletion beyond the bound (one-line message)."""


def held_out(bm: BlockModel, healing) -> tuple[str, list[str], list[tuple[int, ...]], int]:
    """(source, window ids, windows, first scored position) of the windows the bound is measured on:
    the calibration text's, never one the maps were fitted on."""
    cal = getattr(healing, "calibration_windows", None)
    if cal is not None and cal.spec:
        source, window, exclude = cal.spec, cal.window, list(cal.sample_ids)
    else:
        source, window, exclude = FALLBACK_TEXT, getattr(cal, "window", None) or FALLBACK_WINDOW, []
    task = load_task(f"kl:{source}", bm.tokenizer, bm.eos_token_id, WINDOWS, 0, window, exclude=exclude)
    return source, list(task.sample_ids), [tuple(r.tokens) for r in task.requests], task.requests[0].score_from


def perplexity(bm: BlockModel, removed: Sequence[int], windows, score_from: int) -> float:
    """Perplexity of `bm` with `removed` skipped, one window at a time."""
    nll, count = 0.0, 0
    for w in windows:
        ids = torch.tensor([w], device=bm.device)
        logits = masked_logits(bm, ids, removed)[0, score_from - 1: -1].double()
        nll -= torch.log_softmax(logits, -1).gather(1, ids[0, score_from:, None]).sum().item()
        count += len(w) - score_from
    return float(np.exp(nll / max(1, count)))


def check(plain: BlockModel, folded: BlockModel, removed: Sequence[int], healing) -> dict:
    """The bound (QualityError when it fails); returns the manifest's `healing.quality`."""
    source, ids, windows, start = held_out(plain, healing)
    dense = perplexity(plain, (), windows, start)
    unhealed = perplexity(plain, removed, windows, start)
    healed = perplexity(folded, removed, windows, start)
    out = {"source": source, "windows": len(windows), "sample_ids": ids, "dense_perplexity": dense,
           "plain_perplexity": unhealed, "healed_perplexity": healed, "bound": BOUND * unhealed}
    if not healed <= out["bound"]:  # NaN fails too
        ridge = healing.describe().get("ridge")
        raise QualityError(f"the healed model's perplexity on {len(windows)} held-out windows of {source} is "
                           f"{healed:.4g}, more than {BOUND}x plain deletion's {unhealed:.4g} (dense {dense:.4g}): its "
                           f"maps (ridge {ridge}) make the cut worse, not better; nothing was exported")
    return out
