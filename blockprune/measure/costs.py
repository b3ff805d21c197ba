"""What each unit costs, measured on the run's device: KV-cache bytes per token, weight bytes, and
the time it takes at decode and at prefill, at short and long context (#32).

* **KV bytes per token**: read from the cache the model's own forward fills (the bytes of each
  layer's keys and values after a forward of a few tokens, per token), so a model with grouped
  queries, sliding layers or a KV-less layer is counted as it is, not from a formula. An MLP half
  holds none; a block, its attention's.
* **weight bytes**: the unit's own parameters (norms included), at the model's dtype.
* **time**: forward hooks time each unit's modules inside the model's own forward (one decode
  step of one token after a cache of `context` tokens and one untimed step; one prefill of
  `context` tokens), `reps`
  times, the median per unit; on CUDA with events (no synchronisation between units). A set's
  speedup is predicted as T / (T - the sum of its units' times), T the whole step under the same
  hooks (blockprune.analysis.budgets); the report measures the recommended sets' real speed
  separately (latency.json), and says both.

A search (`for_search`) keeps them in OUT/costs.json, reused on resume, and `check_budgets` refuses
a --budget no set of at most --max-remove removable units could meet, before the search.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ..analysis import budgets
from ..models.adapter import output_cache
from ..export.onnx import cache_kwarg
from ..search import SearchError
from ..settings import Settings
from ..models.units import UnitModel, unit_name
from ..runs.outputs import COSTS_FILE

CONTEXTS = (64, 512, 2048)


def _unit_modules(bm) -> list[list[torch.nn.Module]]:
    """Each unit's modules inside the model's own forward (a half: its pre-norm, core, post-norm)."""
    if isinstance(bm, UnitModel):
        out = []
        for half in bm.blocks:
            out.append([getattr(half, n) for n in (half.pre, half.core, half.post) if n is not None])
        return out
    return [[block] for block in bm.blocks]


def _kv_bytes_per_layer(bm) -> list[int]:
    """Bytes per token of each decoder layer's KV cache, read from a cache the model filled."""
    base = bm.base if isinstance(bm, UnitModel) else bm
    tokens = 4
    ids = torch.zeros((1, tokens), dtype=torch.long, device=base.device)
    with torch.inference_mode():
        cache = output_cache(base.model(input_ids=ids, use_cache=True))
    layers = getattr(cache, "layers", None)
    per_layer = []
    for b in range(base.num_blocks):
        layer = layers[b] if layers is not None and b < len(layers) else None
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        n = sum(t.numel() * t.element_size() for t in (keys, values) if isinstance(t, torch.Tensor))
        per_layer.append(n // tokens)
    return per_layer


def _timer(device: torch.device):
    if device.type == "cuda":
        def mark():
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e

        def elapsed(a, b):
            return a.elapsed_time(b) / 1e3
    else:
        mark = time.perf_counter

        def elapsed(a, b):
            return b - a
    return mark, elapsed


@torch.inference_mode()
def _time_units(bm, context: int, phase: str, reps: int) -> tuple[float, list[float]]:
    """(seconds of the whole step, seconds per unit), medians over `reps`, inside the model's forward."""
    base = bm.base if isinstance(bm, UnitModel) else bm
    device = base.device
    mark, elapsed = _timer(device)
    groups = _unit_modules(bm)
    spans: list[list] = [[] for _ in groups]
    handles = _hook(groups, spans, mark)
    gen = torch.Generator().manual_seed(0)
    vocab = base.head.weight.shape[0]
    totals, per_unit = [], [[] for _ in groups]
    try:
        for r in range(reps + 1):  # the first is a warm-up
            ids = torch.randint(3, vocab, (1, context), generator=gen).to(device)
            cache = None
            if phase == "decode":
                for h in handles:  # the prefill that builds the cache is not timed
                    h.remove()
                cache = output_cache(base.model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1))
                # the first step after a prefill pays one-off costs (allocations, kernels for new shapes):
                # a server's steady state is the steps after it, so one untimed step first
                cache = output_cache(base.model(input_ids=ids[:, -2:-1], use_cache=True, logits_to_keep=1,
                                                **{cache_kwarg(base.model): cache}))
                handles = _hook(groups, spans, mark)
                ids = ids[:, -1:]
            for s in spans:
                s.clear()
            start = mark()
            base.model(input_ids=ids, use_cache=phase == "decode", logits_to_keep=1, **{cache_kwarg(base.model): cache})
            end = mark()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r == 0:
                continue
            totals.append(elapsed(start, end))
            for u, s in enumerate(spans):
                per_unit[u].append(sum(elapsed(a, b) for a, b in s if b is not None))
    finally:
        for h in handles:
            h.remove()
    return statistics.median(totals), [statistics.median(x) for x in per_unit]


def _hook(groups, spans, mark) -> list:
    """Pre/post hooks on each unit's modules that record (start, end) marks into spans[unit]."""
    handles = []
    for u, mods in enumerate(groups):
        def pre(_m, _a, u=u):
            spans[u].append([mark(), None])

        def post(_m, _a, _o, u=u):
            spans[u][-1][1] = mark()

        for m in mods:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    return handles


def measure(bm, contexts: Sequence[int] = CONTEXTS, reps: int = 3, phases: Sequence[str] = ("decode", "prefill"),
            log=None) -> dict:
    """Every unit's KV bytes per token, weight bytes and time (see the module doc); JSON-ready."""
    units = getattr(bm, "units", "blocks")
    base = bm.base if isinstance(bm, UnitModel) else bm
    limit = getattr(base, "max_positions", None)
    contexts = sorted({min(int(c), limit - 1) if limit else int(c) for c in contexts})
    kv_layer = _kv_bytes_per_layer(bm)
    rows = []
    for u, mods in enumerate(_unit_modules(bm)):
        params = {id(p): p for m in mods for p in m.parameters()}
        attention = units == "blocks" or u % 2 == 0
        rows.append({"unit": u, "name": unit_name(u, units),
                     "params": sum(p.numel() for p in params.values()),
                     "weight_bytes": sum(p.numel() * p.element_size() for p in params.values()),
                     "kv_bytes_per_token": kv_layer[u if units == "blocks" else u // 2] if attention else 0})
    dense_params = sum(p.numel() * p.element_size() for p in base.model.parameters())
    out = {"units": units, "device": str(base.device), "dtype": str(base.dtype).replace("torch.", ""),
           "dense": {"weight_bytes": dense_params, "kv_bytes_per_token": sum(kv_layer)},
           "rows": rows, "time": {}, "reps": reps}
    for phase in phases:
        out["time"][phase] = {}
        for c in contexts:
            t0 = time.perf_counter()
            total, per = _time_units(bm, c, phase, reps)
            out["time"][phase][str(c)] = {"total_s": total, "units_s": per}
            if log:
                log(f"{phase} at {c} tokens: {1e3 * total:.2f} ms ({time.perf_counter() - t0:.1f} s to measure)")
    return out


# ---- a search's costs -----------------------------------------------------------------------------
def for_search(s: Settings, um, out: Path) -> dict:
    """Each unit's KV bytes, weight bytes and time (blockprune.measure.costs): OUT/costs.json when a
    resumed run measured them on this device and dtype, else measured now (about a minute here)."""
    contexts = sorted(set(CONTEXTS) | {b.context for b in map(budgets.parse_budget, s.budgets) if b.context})
    try:
        old = json.loads((out / COSTS_FILE).read_text(encoding="utf-8"))
        measured = set(old.get("time", {}).get("decode", {}))
        if (old.get("units"), old.get("device"), old.get("dtype")) == (s.units, str(um.device), s.dtype) and \
                len(old.get("rows", [])) == um.num_blocks and {str(c) for c in contexts} <= measured:
            return old
    except (OSError, ValueError, AttributeError):
        pass
    log = (lambda msg: print(f"blockprune: costs: {msg}", file=sys.stderr, flush=True)) if s.progress else None
    if log:
        log(f"measuring each of the {um.num_blocks} units' KV cache, weights and time (decode and prefill at "
            f"{', '.join(map(str, contexts))} tokens of context)")
    return measure(um, contexts=contexts, log=log)


def check_budgets(s: Settings, costs: dict, num_blocks: int) -> None:
    """Refuse a --budget that no set of at most --max-remove removable units can meet (one line,
    naming the closest reachable value), before the search."""
    allowed = [u for u in range(s.unit_count(num_blocks)) if u not in set(s.all_protected(num_blocks))]
    most = max((len(x) for x in s.sets), default=0) if s.method == "given" else s.max_remove
    for text in s.budgets:
        b = budgets.parse_budget(text)
        try:
            ok, best = budgets.reachable(costs, b, allowed, most)
        except budgets.BudgetError as exc:
            raise SearchError(str(exc)) from None
        if not ok:
            limit = "the largest --sets set" if s.method == "given" else f"--max-remove {most}"
            raise SearchError(
                f"--budget {b} cannot be met: with {limit} of the {len(allowed)} removable units (--units {s.units}) "
                f"the closest reachable is {b.what}={best:.3g}; remove more units, or loosen the budget")
