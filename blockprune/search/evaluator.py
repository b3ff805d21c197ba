"""Scoring removal sets on every task, persisting as it goes: `Evaluator.evaluate(sets)` and
`Evaluator.race(sets, keep)` -> {set: Evaluated}. The search methods (blockprune.search,
blockprune.search.evolve) see only these.

A step's jobs (task, sets, samples) become work units (blockprune.search.shard) that a runner scores:
`shard.LocalRunner` in this process, or `cluster.Pool`, Ray workers each holding a model replica.
Either way this process is the only writer of the store: a unit's results are appended as the unit
finishes (whole records, or per-sample parts when a unit holds some of a task's samples), and a
set's parts are merged into its whole record once every sample is in. A rerun scores only the
samples that have no record yet.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..tasks import scores
from . import shard
from ..analysis import stats
from ..engine import Engine
from ..tasks.kinds import needs_dense
from ..runs.store import Store, key_of
from ..tasks import Task


@dataclass
class Evaluated:
    removed: tuple[int, ...]
    scores: dict[str, float]
    drops: dict[str, float]

    @property
    def mean_drop(self) -> float:
        return float(np.mean(list(self.drops.values())))


@dataclass
class Racing:
    """Multi-fidelity scoring of one search step (see `Evaluator.race`).

    Every task's samples are visited in a fixed seeded order. Round 0 scores every candidate on
    the first `first` samples of each task (all of a task with fewer), each later round on
    `growth` times as many, the last round on all. After each round but the last, a candidate
    is dropped when the paired bootstrap says, at `confidence`, that its mean drop is above each
    of `keep` others (the `keep` best by point estimate): it cannot reach the beam.
    """

    first: int = 8
    growth: float = 2.0
    confidence: float = 0.99
    replicates: int = 400

    def schedule(self, n: int) -> list[int]:
        sizes = [min(n, self.first)]
        while sizes[-1] < n:
            sizes.append(min(n, max(sizes[-1] + 1, int(math.ceil(sizes[-1] * self.growth)))))
        return sizes


class Evaluator:
    """Scores removal sets on every task through a runner (default: this process's engine)."""

    def __init__(self, engine: Engine, tasks: Sequence[Task], store: Store, batch_candidates: int = 256,
                 progress: bool = True, racing: Racing | None = None, rank_by: dict[str, str] | None = None,
                 runner=None):
        self.engine = engine
        self.tasks = list(tasks)
        self.rank_by = rank_by or scores.resolve_rank_by(None, {t.name: t.kind for t in self.tasks})
        self.store = store
        self.num_blocks = engine.model.num_blocks
        self.progress = progress
        self.racing = racing
        self.runner = runner or shard.LocalRunner(engine, batch_candidates)
        self.eliminated: list[tuple[int, ...]] = []
        for task in self.tasks:  # generative tasks decode the dense continuation once, before any unit
            if hasattr(task, "prepare"):
                task.prepare(engine)
        self._baseline: dict[str, float] | None = None

    def retain(self, sets: Sequence[tuple[int, ...]]) -> None:
        """Stored states are of use only on these sets' paths (racing survivors, the beam)."""
        self.runner.retain(shard.masks_of(sets, self.num_blocks))

    def _run_jobs(self, jobs: list[tuple[Task, list[tuple[int, ...]], list[int] | None]], label: str) -> None:
        """Score (task, sets, samples) jobs unit by unit; a unit of every sample (samples None)
        gives whole records, any other unit per-sample parts. Each unit is stored as it finishes."""
        if not jobs:
            return
        units = self.runner.units(jobs)
        bar = None
        if self.progress:
            from .progress import bar as progress_bar

            bar = progress_bar(sum(u.cost for u in units), label)
        try:
            for unit, result in self.runner.run(units, bar.update if bar else None):
                self.store.append(self._unit_records(unit, result))
        finally:
            if bar is not None:
                bar.close()
            self.runner.after_step()

    def _unit_records(self, unit: shard.Unit, result) -> list[dict]:
        task, chunk, samples = unit.task, unit.sets, unit.samples
        kl = needs_dense(task)
        logprob = np.full((len(chunk), len(task.requests)), np.nan)
        greedy = np.zeros((len(chunk), len(task.requests)), dtype=bool)
        kl_sum = np.full((len(chunk), len(task.requests)), np.nan) if kl else None
        logprob[:, unit.req_ids], greedy[:, unit.req_ids] = result.logprob, result.greedy
        if kl:
            kl_sum[:, unit.req_ids] = result.kl
        texts = None
        if getattr(result, "generated", None) is not None:  # generative: (samples, [set][i] tokens)
            gen_samples, tokens = result.generated
            full = [[None] * task.n for _ in chunk]
            for c in range(len(chunk)):
                for i, s in enumerate(gen_samples):
                    full[c][s] = tokens[c][i]
            per_sample = task.per_sample(logprob, greedy, kl_sum, generated=full)
            texts = task.last_texts
        else:
            per_sample = task.per_sample(logprob, greedy, kl_sum)
        records = []
        if samples is None:
            values = task.value(per_sample)
            for c, s in enumerate(chunk):
                records.append(self._record(task, s, {k: v[c] for k, v in per_sample.items()}, values[c]))
                if texts is not None:
                    records[-1]["generated"] = list(texts[c])
        else:
            cols = sorted(int(i) for i in samples)
            for c, s in enumerate(chunk):
                records.append({"type": "part", "removed": list(s), "task": task.name, "samples": cols,
                                "per_sample": {k: v[c, cols].tolist() for k, v in per_sample.items()}})
                if texts is not None:
                    records[-1]["generated"] = [texts[c, i] for i in cols]
        records.append({"type": "work", "task": task.name, "candidates": len(chunk), **unit.meta,
                        **({"samples": len(samples)} if samples is not None else {}), **result.work.as_dict()})
        return records

    @staticmethod
    def _record(task: Task, removed: tuple[int, ...], per_sample: dict[str, np.ndarray], value: float) -> dict:
        rec = {"removed": list(removed), "task": task.name, "value": float(value),
               "per_sample": {k: np.asarray(v).tolist() for k, v in per_sample.items()}}
        rec.update(task.record_extras(per_sample))
        return rec

    def _complete(self, keys: list[tuple[int, ...]], label: str) -> None:
        """Whole records for `keys` on every task: score the samples that have no record yet (all of
        them: whole records at once; some: parts), then merge each set's parts into its record."""
        jobs = []
        for t in self.tasks:
            by_missing: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
            for k in keys:
                if self.store.has(k, t.name):
                    continue
                have = set(self.store.columns(k, t.name)[0].tolist())
                by_missing.setdefault(tuple(i for i in range(t.n) if i not in have), []).append(k)
            for m, ks in by_missing.items():
                if m:
                    jobs.append((t, ks, None if len(m) == t.n else list(m)))
        self._run_jobs(jobs, label)
        records = []
        for t in self.tasks:
            for k in keys:
                if self.store.has(k, t.name):
                    continue
                idx, per_sample = self.store.columns(k, t.name)  # every sample is in: idx is 0..n-1
                assert len(idx) == t.n, (k, t.name)
                records.append(self._record(t, k, per_sample, float(t.value(per_sample))))
                texts = self._generated_of_parts(k, t)
                if texts is not None:
                    records[-1]["generated"] = texts
        self.store.append(records)

    def _generated_of_parts(self, key: tuple[int, ...], task: Task) -> list | None:
        """A generative task's texts per sample, gathered from the set's parts (None: none kept)."""
        texts: list = [None] * task.n
        for part in self.store.parts.get((key, task.name), []):
            for s, text in zip(part["samples"], part.get("generated") or []):
                texts[s] = text
        return texts if any(x is not None for x in texts) else None

    @property
    def baseline(self) -> dict[str, float]:
        if self._baseline is None:
            self._complete([()], "scoring the dense model")
            self._baseline = {t.name: self.store.get((), t.name)["value"] for t in self.tasks}
        return self._baseline

    def _evaluated(self, keys: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], Evaluated]:
        self.baseline
        base = {t.name: stats.per_sample_arrays(self.store.columns((), t.name)[1], self.rank_by[t.name])
                for t in self.tasks}
        out = {}
        for k in keys:
            values, drops = {}, {}
            for t in self.tasks:
                score = self.rank_by[t.name]
                values[t.name] = self.store.get(k, t.name)["value"]
                drops[t.name] = stats.point_drop(score, base[t.name],
                                                 stats.per_sample_arrays(self.store.columns(k, t.name)[1], score))
            out[k] = Evaluated(k, values, drops)
        return out

    def evaluate(self, sets: Sequence[Sequence[int]]) -> dict[tuple[int, ...], Evaluated]:
        """Score every set on all samples of every task (exact)."""
        self.baseline
        keys = list(dict.fromkeys(key_of(s) for s in sets))
        self.store.plan(keys)
        self._complete(keys, f"scoring {len(keys)} sets")
        return self._evaluated(keys)

    # ---- racing ---------------------------------------------------------------------------
    def sample_order(self, task: Task) -> np.ndarray:
        """The fixed order in which racing visits a task's samples (seeded by the task's name)."""
        return np.random.default_rng(zlib.crc32(task.name.encode())).permutation(task.n)

    def race(self, sets: Sequence[Sequence[int]], keep: int) -> dict[tuple[int, ...], Evaluated]:
        """Score `sets` on growing sample subsets, dropping those that cannot be among the `keep`
        best; the survivors (at least `keep` of them, when there are that many) are scored on all
        samples of every task and returned. Without racing settings this is `evaluate`."""
        if self.racing is None:
            return self.evaluate(sets)
        self.baseline
        keys = list(dict.fromkeys(key_of(s) for s in sets))
        self.store.plan(keys)
        orders = {t.name: self.sample_order(t) for t in self.tasks}
        schedules = {t.name: self.racing.schedule(t.n) for t in self.tasks}
        rounds = max(len(s) for s in schedules.values())
        alive = keys
        for r in range(rounds):
            subsets = {t.name: orders[t.name][: schedules[t.name][min(r, len(schedules[t.name]) - 1)]] for t in self.tasks}
            if r == rounds - 1:
                break
            jobs = []
            for t in self.tasks:
                want = set(int(i) for i in subsets[t.name])
                by_missing: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
                for k in alive:
                    missing = tuple(sorted(want - set(self.store.columns(k, t.name)[0].tolist())))
                    if missing:
                        by_missing.setdefault(missing, []).append(k)
                jobs.extend((t, ks, list(m)) for m, ks in by_missing.items())
            self._run_jobs(jobs, f"racing {len(alive)} sets, round {r + 1}/{rounds}")
            alive = self._survivors(alive, subsets, keep)
            self.retain(alive)  # stored states of dropped sets are of no more use
        self.eliminated.extend(k for k in keys if k not in set(alive))
        self._complete(alive, f"racing {len(alive)} survivors, all samples")
        return self._evaluated(alive)

    def _survivors(self, keys: list[tuple[int, ...]], subsets: dict[str, np.ndarray], keep: int) -> list[tuple[int, ...]]:
        if len(keys) <= keep:
            return keys
        rng = np.random.default_rng(0)
        reps = np.zeros((len(keys), self.racing.replicates))
        point = np.zeros(len(keys))
        for t in self.tasks:
            cols = [int(i) for i in subsets[t.name]]
            score = self.rank_by[t.name]
            fields = scores.get(score).fields()
            base = stats.per_sample_arrays(_at(self.store.columns((), t.name), cols, fields), score)
            nums, dens = [], []
            for k in keys:
                num, den = stats.per_sample_arrays(_at(self.store.columns(k, t.name), cols, fields), score)
                nums.append(num)
                dens.append(den)
            cand = (np.stack(nums), np.stack(dens))
            counts = stats.resample_counts(len(cols), self.racing.replicates, rng)
            reps += stats.drop_replicates(score, base, cand, counts)
            point += stats.drop_replicates(score, base, cand, np.ones((len(cols), 1)))[:, 0]
        reps /= len(self.tasks)
        point /= len(self.tasks)
        order = sorted(range(len(keys)), key=lambda i: (point[i], keys[i]))
        alive = []
        for rank, i in enumerate(order):
            if rank < keep:
                alive.append(keys[i])
                continue
            refs = order[:keep]
            lower = np.quantile(reps[i][None, :] - reps[refs], 1 - self.racing.confidence, axis=1)
            if not np.all(lower > 0):
                alive.append(keys[i])
        return alive


def _at(columns: tuple[np.ndarray, dict[str, np.ndarray]], samples: list[int], fields) -> dict[str, np.ndarray]:
    """`fields` of a store's columns (`Store.columns`) at the given sample indices (all stored)."""
    idx, per = columns
    pos = np.searchsorted(idx, samples)
    if len(samples) and (pos.max() >= len(idx) or not np.array_equal(idx[pos], samples)):
        raise KeyError(f"samples {sorted(set(samples) - set(idx.tolist()))[:5]} are not stored")
    return {f: per[f][pos] for f in fields}



def rank(results: dict[tuple[int, ...], Evaluated]) -> list[tuple[int, ...]]:
    return sorted(results, key=lambda k: (results[k].mean_drop, k))


