"""Work units: how one search step's scoring is cut into pieces a worker runs whole.

A step asks for jobs (task, removal sets, samples). One process runs each job's sets in chunks
of `--candidates-per-pass` through its engine (`LocalRunner`). Several workers (blockprune.search.cluster)
need pieces, and the cut must not throw away what makes the engine fast:

* Samples first. A task's samples are dealt once into one bin per worker, balanced by their
  tokens (largest first into the lightest bin). A unit holds one bin's share of a job, so every
  unit runs the job's whole candidate trie and no block row is computed twice; and a worker keeps
  seeing the same rows step after step, so the states it stored for the beam's parents serve
  their children (trie.StateCache) as they do in one process.
* Sets only when a piece is still too big for one worker (more workers than samples, or an
  exhaustive step of thousands of sets): the sets, sorted by keep-mask as the engine's trie sorts
  them, are cut into contiguous runs, so candidates that share a kept prefix stay together and
  only the prefixes on either side of a cut are run twice.
* Every unit is costed in block tokens (distinct kept prefixes x row tokens), the unit of work the
  engine counts, not in candidates: a unit of 50 sets that share 20 blocks is cheaper than one
  of 10 that share none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from ..engine import Engine, Scores
from ..tasks.kinds import generates, needs_dense
from ..engine.trie import trie_block_rows


@dataclass
class Unit:
    """Score `sets` on the requests of `samples` of `task` (samples None: every sample, whole records)."""

    id: int
    task: object  # a tasks.Task
    sets: list[tuple[int, ...]]
    samples: list[int] | None
    req_ids: list[int]
    cost: int = 0  # block tokens the engine is expected to run (before reuse of stored states)
    home: int | None = None  # the worker whose rows these are (None: any)
    tries: int = 0
    meta: dict = field(default_factory=dict)  # who ran it, for the work record


def masks_of(sets: Sequence[Sequence[int]], num_blocks: int) -> np.ndarray:
    keep = np.ones((len(sets), num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i, list(s)] = False
    return keep


def requests_of(task, samples: Sequence[int] | None) -> list[int]:
    """Request ids of these samples of `task` (None: all of them)."""
    if samples is None:
        return list(range(len(task.requests)))
    wanted = set(int(i) for i in samples)
    return [r for r, s in enumerate(task.request_sample) if s in wanted]


def sample_bins(sample_tokens: Sequence[int], bins: int) -> list[int]:
    """Deal samples into `bins` of nearly equal tokens: largest first into the lightest bin (ties:
    the lower bin, then the lower sample). Returns each sample's bin; deterministic."""
    load = [0] * bins
    out = [0] * len(sample_tokens)
    for i in sorted(range(len(sample_tokens)), key=lambda i: (-sample_tokens[i], i)):
        b = min(range(bins), key=lambda b: (load[b], b))
        out[i] = b
        load[b] += int(sample_tokens[i])
    return out


def trie_order(sets: Sequence[tuple[int, ...]], num_blocks: int) -> list[tuple[int, ...]]:
    """Sets in the order the engine's trie visits them (keep-masks descending): neighbours share the
    longest kept prefixes."""
    masks = masks_of(sets, num_blocks)
    return [sets[i] for i in sorted(range(len(sets)), key=lambda i: masks[i].tobytes(), reverse=True)]


def split_sets(sets: Sequence[tuple[int, ...]], num_blocks: int, max_rows: int) -> list[list[tuple[int, ...]]]:
    """Cut trie-ordered `sets` into contiguous runs of at most `max_rows` block rows per request
    (a single set above it is a run of its own). Among the cuts that keep a run within the limit the
    one whose neighbours share the shortest kept prefix is taken, so whole subtrees stay together.

    In trie order the masks that share a prefix are contiguous, so a set adds to its run exactly the
    blocks it keeps from the first block where it differs from its predecessor on."""
    sets = list(sets)
    masks = masks_of(sets, num_blocks)
    runs: list[list[tuple[int, ...]]] = []
    start = 0
    while start < len(sets):
        rows = int(masks[start].sum())
        end = start + 1
        while end < len(sets):
            added = _new_rows(masks[end - 1], masks[end])
            if rows + added > max_rows:
                break
            rows += added
            end += 1
        if end < len(sets) and end - start > 1:
            # the cut in (start, end] with the shortest prefix shared across it, latest on ties
            shared = [_shared_prefix(masks[c - 1], masks[c]) for c in range(start + 1, end + 1)]
            best = min(range(len(shared)), key=lambda j: (shared[j], -j))
            end = start + 1 + best
        runs.append(sets[start:end])
        start = end
    return runs


def _new_rows(prev: np.ndarray, mask: np.ndarray) -> int:
    differ = np.flatnonzero(prev != mask)
    return int(mask[differ[0]:].sum()) if len(differ) else 0


def _shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Kept blocks two masks run in common before they first differ."""
    differ = np.flatnonzero(a != b)
    upto = int(differ[0]) if len(differ) else len(a)
    return int(a[:upto].sum())


def unit_cost(engine: Engine, task, sets: Sequence[tuple[int, ...]], req_ids: Sequence[int]) -> int:
    masks = masks_of(sets, engine.model.num_blocks)
    if needs_dense(task):  # the engine adds the dense path to every candidate group
        masks = np.concatenate([masks, np.ones((1, masks.shape[1]), dtype=bool)])
    return trie_block_rows(masks) * engine.row_tokens([task.requests[r] for r in req_ids])


class LocalRunner:
    """One process: each job's sets in chunks of `batch_candidates`, in the order given."""

    def __init__(self, engine: Engine, batch_candidates: int = 256):
        self.engine = engine
        self.batch_candidates = batch_candidates

    def units(self, jobs) -> list[Unit]:
        out = []
        for task, sets, samples in jobs:
            req_ids = requests_of(task, samples)
            for i in range(0, len(sets), self.batch_candidates):
                chunk = list(sets[i : i + self.batch_candidates])
                out.append(Unit(len(out), task, chunk, samples, req_ids, unit_cost(self.engine, task, chunk, req_ids)))
        return out

    def run(self, units: Sequence[Unit], progress: Callable[[int], None] | None) -> Iterator[tuple[Unit, Scores]]:
        for unit in units:
            start = time.perf_counter()
            masks = masks_of(unit.sets, self.engine.model.num_blocks)
            result = self.engine.score([unit.task.requests[r] for r in unit.req_ids], masks, progress=progress,
                                       kl=needs_dense(unit.task))
            if generates(unit.task):  # the unit's samples decoded under every set, in one batch
                samples = list(range(unit.task.n)) if unit.samples is None else sorted(int(s) for s in unit.samples)
                result.generated = (samples, unit.task.generate(self.engine, masks, samples))
            unit.meta = {"seconds": round(time.perf_counter() - start, 3)}
            yield unit, result

    def retain(self, masks: np.ndarray) -> None:
        self.engine.retain(masks)

    def after_step(self) -> None:
        pass


SPLIT_ABOVE = 1.5  # a unit is cut by sets above this many times one worker's fair share of the step


def plan_units(engine: Engine, jobs, workers: int, batch_candidates: int,
               bins: dict[str, list[int]]) -> list[Unit]:
    """Units for `workers` (see the module docstring). `bins[task name]`: each sample's bin."""
    units: list[Unit] = []
    num_blocks = engine.model.num_blocks
    for task, sets, samples in jobs:
        wanted = list(range(task.n)) if samples is None else sorted(int(i) for i in samples)
        by_bin: dict[int, list[int]] = {}
        for i in wanted:
            by_bin.setdefault(bins[task.name][i], []).append(i)
        ordered = trie_order(list(sets), num_blocks)
        for b, part in sorted(by_bin.items()):
            whole = samples is None and len(part) == task.n
            req_ids = requests_of(task, part)
            for i in range(0, len(ordered), batch_candidates):
                chunk = ordered[i : i + batch_candidates]
                units.append(Unit(0, task, chunk, None if whole else part, req_ids,
                                  unit_cost(engine, task, chunk, req_ids), home=b))
    # a unit well above one worker's fair share of the step would hold the others up: cut its sets
    # (token-balanced bins stay within a few percent of it; a task with fewer samples than workers
    # does not)
    fair = sum(u.cost for u in units) / max(1, workers)
    out: list[Unit] = []
    for u in units:
        if u.cost <= SPLIT_ABOVE * fair or len(u.sets) == 1:
            out.append(u)
            continue
        rows = trie_block_rows(masks_of(u.sets, num_blocks))
        for run in split_sets(u.sets, num_blocks, max(1, int(np.ceil(rows / np.ceil(u.cost / fair))))):
            out.append(Unit(0, u.task, run, u.samples, u.req_ids, unit_cost(engine, u.task, run, u.req_ids), home=u.home))
    for i, u in enumerate(out):
        u.id = i
    return out
