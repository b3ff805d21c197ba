"""Search over removal sets. Sees only scores: `Evaluator.evaluate(sets)` -> mean drop per set.

Methods (every candidate is scored on every task):
* sensitivity: every single block.
* greedy: grow one set, each step adding the block whose removal costs least.
* beam: keep the W best sets of each size; children are the beam's sets plus one block,
  set-equivalent children evaluated once.
* exhaustive: every set of size 1..K (refused above a candidate limit).
Ties in mean drop are broken by the sorted block ids, so a search is deterministic.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .engine import Engine, trie_block_rows
from .store import Store, key_of
from .tasks import Task, relative_drop

METHODS = ("sensitivity", "greedy", "beam", "exhaustive")


class SearchError(Exception):
    """Search settings that cannot work (one-line message)."""


@dataclass
class Evaluated:
    removed: tuple[int, ...]
    scores: dict[str, float]
    drops: dict[str, float]

    @property
    def mean_drop(self) -> float:
        return float(np.mean(list(self.drops.values())))


class Evaluator:
    """Scores removal sets on every task through the engine, persisting as it goes."""

    def __init__(self, engine: Engine, tasks: Sequence[Task], store: Store, batch_candidates: int = 256,
                 progress: bool = True):
        self.engine = engine
        self.tasks = list(tasks)
        self.store = store
        self.num_blocks = engine.model.num_blocks
        self.batch_candidates = batch_candidates
        self.progress = progress
        self._baseline: dict[str, float] | None = None

    def _masks(self, sets: Sequence[tuple[int, ...]]) -> np.ndarray:
        keep = np.ones((len(sets), self.num_blocks), dtype=bool)
        for i, s in enumerate(sets):
            keep[i, list(s)] = False
        return keep

    def _score_missing(self, sets: list[tuple[int, ...]]) -> None:
        todo = [(t, [s for s in sets if not self.store.has(s, t.name)]) for t in self.tasks]
        todo = [(t, ss) for t, ss in todo if ss]
        if not todo:
            return
        total = sum(trie_block_rows(self._masks(ss)) * self.engine.row_tokens(t.requests) for t, ss in todo)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="tok", unit_scale=True, desc=f"scoring {len(sets)} sets", leave=False, dynamic_ncols=True)
        try:
            for task, missing in todo:
                for i in range(0, len(missing), self.batch_candidates):
                    chunk = missing[i : i + self.batch_candidates]
                    start = time.perf_counter()
                    result = self.engine.score(task.requests, self._masks(chunk), progress=bar.update if bar else None)
                    seconds = time.perf_counter() - start
                    per_sample = task.per_sample(result.logprob, result.greedy)
                    values = task.value(per_sample)
                    records = []
                    for c, s in enumerate(chunk):
                        rec = {"removed": list(s), "task": task.name, "value": float(values[c]),
                               "per_sample": {k: v[c].tolist() for k, v in per_sample.items()}}
                        if "correct_norm" in per_sample:
                            rec["acc_norm"] = float(np.mean(per_sample["correct_norm"][c]))
                        records.append(rec)
                    records.append({"type": "work", "task": task.name, "candidates": len(chunk), "seconds": round(seconds, 3),
                                    **result.work.as_dict()})
                    self.store.append(records)
        finally:
            if bar is not None:
                bar.close()

    @property
    def baseline(self) -> dict[str, float]:
        if self._baseline is None:
            self._score_missing([()])
            self._baseline = {t.name: self.store.get((), t.name)["value"] for t in self.tasks}
        return self._baseline

    def evaluate(self, sets: Sequence[Sequence[int]]) -> dict[tuple[int, ...], Evaluated]:
        base = self.baseline
        keys = list(dict.fromkeys(key_of(s) for s in sets))
        self._score_missing(keys)
        out = {}
        for k in keys:
            scores = {t.name: self.store.get(k, t.name)["value"] for t in self.tasks}
            drops = {t.name: relative_drop(t.metric, base[t.name], scores[t.name]) for t in self.tasks}
            out[k] = Evaluated(k, scores, drops)
        return out


@dataclass
class SearchResult:
    method: str
    steps: list[list[tuple[int, ...]]] = field(default_factory=list)  # kept sets per size (beam/greedy)
    evaluated: list[tuple[int, ...]] = field(default_factory=list)


def _rank(results: dict[tuple[int, ...], Evaluated]) -> list[tuple[int, ...]]:
    return sorted(results, key=lambda k: (results[k].mean_drop, k))


def validate(num_blocks: int, max_remove: int, protected: Sequence[int] = (), min_depth: int = 1,
             method: str = "beam", beam_width: int = 1, max_candidates: int = 5000) -> list[int]:
    """Check the settings before anything is written; return the blocks that may be removed."""
    if method not in METHODS:
        raise SearchError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    bad = sorted(b for b in protected if not 0 <= b < num_blocks)
    if bad:
        raise SearchError(f"protected block ids {bad} out of range 0..{num_blocks - 1}")
    if max_remove < 1:
        raise SearchError("--max-remove must be at least 1")
    if max_remove >= num_blocks:
        raise SearchError(f"--max-remove {max_remove} must be less than the number of blocks ({num_blocks})")
    if not 0 <= min_depth <= num_blocks:
        raise SearchError(f"--min-depth must be in 0..{num_blocks}")
    if method == "beam" and beam_width < 1:
        raise SearchError("--beam-width must be at least 1")
    allowed = [b for b in range(num_blocks) if b not in set(protected)]
    if not allowed:
        raise SearchError("every block is protected: nothing to remove")
    if method == "exhaustive":
        k_max = min(max_remove, num_blocks - min_depth, len(allowed))
        count = sum(math.comb(len(allowed), k) for k in range(1, k_max + 1))
        if count > max_candidates:
            raise SearchError(
                f"exhaustive search over {len(allowed)} blocks up to {k_max} removed is {count} candidates, "
                f"more than --max-candidates {max_candidates}; lower --max-remove or use beam"
            )
    return allowed


def run(method: str, ev: Evaluator, max_remove: int = 3, beam_width: int = 3, protected: Sequence[int] = (),
        min_depth: int = 1, max_candidates: int = 5000) -> SearchResult:
    num_blocks = ev.num_blocks
    allowed = validate(num_blocks, max_remove, protected, min_depth, method, beam_width, max_candidates)
    k_max = 1 if method == "sensitivity" else min(max_remove, num_blocks - min_depth, len(allowed))
    result = SearchResult(method)
    if method == "exhaustive":
        for k in range(1, k_max + 1):
            res = ev.evaluate(list(itertools.combinations(allowed, k)))
            result.steps.append(_rank(res))
            result.evaluated.extend(res)
        return result
    width = {"greedy": 1, "sensitivity": len(allowed), "beam": beam_width}[method]
    beam: list[tuple[int, ...]] = [()]
    for _ in range(k_max):
        children = list(dict.fromkeys(key_of(p + (b,)) for p in beam for b in allowed if b not in p))
        if not children:
            break
        res = ev.evaluate(children)
        ranked = _rank(res)
        result.evaluated.extend(res)
        beam = ranked[:width]
        result.steps.append(beam)
    return result
