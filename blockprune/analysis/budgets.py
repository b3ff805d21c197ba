"""Budgets (#32): the best removal set within a cost, from each unit's measured costs
(blockprune.measure.costs: KV-cache bytes per token, weight bytes, time per phase and context).

`kv=0.70`: at most 70% of the dense KV cache kept; `params=0.8`: at most 80% of the weights;
`decode=1.25` / `decode=1.25@2048`: at least 1.25x decode speed at that context (default the
longest measured), predicted as T / (T - the removed units' time); `prefill=...` alike.
`choose` ranks the sets that meet a budget by the run's mean drop (its ranking score) and names the
closest set when none does; `reachable` says before a search whether any set of at most K removable
units could meet it at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

KINDS = ("kv", "params", "decode", "prefill")
FRACTIONS = ("kv", "params")  # the budgets met at or below their value


class BudgetError(Exception):
    """A --budget that is malformed, out of range or that no set can reach (one line)."""


@dataclass(frozen=True)
class Budget:
    what: str  # kv | params: a fraction of dense kept at most; decode | prefill: a speedup at least
    value: float
    context: int | None = None  # decode / prefill: the context it is read at (None: the longest measured)

    def __str__(self) -> str:
        return f"{self.what}={self.value:g}" + (f"@{self.context}" if self.context else "")

    @property
    def at_most(self) -> bool:
        """A fraction of the dense model's kept (kv, params): met at or below its value; a speed at or above."""
        return self.what in FRACTIONS


def parse_budget(text: str) -> Budget:
    """`kv=0.7`, `params=0.8`, `decode=1.25`, `decode=1.25@2048`: a Budget, or BudgetError."""
    m = re.fullmatch(r"\s*([a-z]+)\s*=\s*([0-9.eE+-]+)\s*(?:@\s*(\d+))?\s*", text or "")
    if not m or m.group(1) not in KINDS:
        raise BudgetError(f"--budget {text!r}: write KIND=VALUE with KIND one of {', '.join(KINDS)} "
                          "(e.g. kv=0.7, params=0.8, decode=1.25@2048)")
    what, context = m.group(1), m.group(3)
    try:
        value = float(m.group(2))
    except ValueError:
        raise BudgetError(f"--budget {text!r}: {m.group(2)!r} is not a number") from None
    if what in FRACTIONS and not 0 < value < 1:
        raise BudgetError(f"--budget {text!r}: {what} is the fraction of the dense model's "
                          f"{'KV cache' if what == 'kv' else 'weights'} kept, in (0, 1) (e.g. {what}=0.7)")
    if what in ("decode", "prefill") and not (value > 1 and value < 100):
        raise BudgetError(f"--budget {text!r}: {what} is a speedup over dense, above 1 (e.g. {what}=1.25)")
    if context is not None and what in FRACTIONS:
        raise BudgetError(f"--budget {text!r}: @CONTEXT applies to decode and prefill only")
    if context is not None and int(context) < 1:
        raise BudgetError(f"--budget {text!r}: the context must be at least 1 token")
    return Budget(what, value, int(context) if context else None)


def set_costs(costs: dict, removed: Sequence[int]) -> dict:
    """A set's kept fractions (kv, params) and predicted speedups per phase and context."""
    rows = costs["rows"]
    dense = costs["dense"]
    kv = sum(rows[u]["kv_bytes_per_token"] for u in removed)
    w = sum(rows[u]["weight_bytes"] for u in removed)
    out = {"kv": 1 - kv / dense["kv_bytes_per_token"] if dense["kv_bytes_per_token"] else 1.0,
           "params": 1 - w / dense["weight_bytes"]}
    for phase, by_ctx in costs.get("time", {}).items():
        out[phase] = {}
        for c, t in by_ctx.items():
            saved = sum(t["units_s"][u] for u in removed)
            out[phase][c] = t["total_s"] / max(t["total_s"] - saved, 1e-12)
    return out


def _measure_of(b: Budget, sc: dict) -> float:
    if b.at_most:
        return sc[b.what]
    by_ctx = sc.get(b.what) or {}
    return by_ctx[context_of(b, by_ctx)]


def context_of(b: Budget, by_ctx: dict) -> str:
    """The measured context a speed budget is read at (its own, else the longest measured)."""
    if not by_ctx:
        raise BudgetError(f"--budget {b}: {b.what} time was not measured")
    ctx = str(b.context) if b.context else max(by_ctx, key=int)
    if ctx not in by_ctx:
        raise BudgetError(f"--budget {b}: {b.what} was measured at {', '.join(sorted(by_ctx, key=int))} tokens of "
                          f"context, not {b.context}")
    return ctx


def meets(b: Budget, sc: dict) -> bool:
    v = _measure_of(b, sc)
    return v <= b.value if b.at_most else v >= b.value


def choose(candidates: Sequence[dict], costs: dict, budgets: Sequence[Budget]) -> dict:
    """Per budget: the candidate (analysis' complete sets, best first by the ranking score) of least
    mean drop that meets it, with its costs; or, when none does, the closest one and a plain word."""
    out = {}
    for b in budgets:
        scored = [(c, set_costs(costs, c["removed"])) for c in candidates if c["removed"]]
        ok = [(c, sc) for c, sc in scored if meets(b, sc)]
        if ok:
            c, sc = min(ok, key=lambda x: x[0]["mean_drop"])
            out[str(b)] = {"budget": str(b), "removed": list(c["removed"]), "k": len(c["removed"]),
                           "mean_drop": c["mean_drop"], "ci95": c["ci95"], "costs": sc, "met": True}
            continue
        if not scored:
            out[str(b)] = {"budget": str(b), "met": False, "why": "no removal set was scored"}
            continue
        better = (lambda v: -v) if b.at_most else (lambda v: v)
        c, sc = max(scored, key=lambda x: better(_measure_of(b, x[1])))
        out[str(b)] = {"budget": str(b), "met": False, "closest": list(c["removed"]),
                       "closest_value": _measure_of(b, sc), "costs": sc,
                       "why": f"no searched set meets {b}: the closest reaches {b.what} {_measure_of(b, sc):.3f}"}
    return out


def reachable(costs: dict, budget: Budget, allowed: Sequence[int], max_remove: int) -> tuple[bool, float]:
    """Whether removing at most `max_remove` of the `allowed` units can meet `budget` at all (the
    units that save the most of its kind, taken together), and the best value such a set reaches."""
    rows = costs["rows"]
    if budget.at_most:
        key = "kv_bytes_per_token" if budget.what == "kv" else "weight_bytes"
        best = sorted((rows[u][key] for u in allowed), reverse=True)[:max_remove]
        dense = costs["dense"][key]
        value = 1 - sum(best) / dense if dense else 1.0
        return value <= budget.value, value
    by_ctx = costs["time"].get(budget.what, {})
    t = by_ctx[context_of(budget, by_ctx)]
    best = sorted((t["units_s"][u] for u in allowed), reverse=True)[:max_remove]
    value = t["total_s"] / max(t["total_s"] - sum(best), 1e-12)
    return value >= budget.value, value

