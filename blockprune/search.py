"""Search over removal sets. Sees only scores: `Evaluator.evaluate(sets)` -> mean drop per set.

Methods (every candidate is scored on every task):
* sensitivity: every single block.
* greedy: grow one set, each step adding the block whose removal costs least.
* beam: keep the W best sets of each size; children are the beam's sets plus one block,
  set-equivalent children evaluated once.
* exhaustive: every set of size 1..K (refused above a candidate limit).
* evolutionary: a population per size, mutated by swapping blocks (blockprune.evolve).
* given: exactly the sets a user names (a paper's set, another tool's answer), and dense.
* block-influence / angular: one-shot baselines from the dense model's hidden states, one set per
  size, then scored like the others (blockprune.oneshot).
Beam, greedy and evolutionary steps race (`Racing`): candidates that cannot reach the beam are
dropped after a few samples; what is kept is scored on every sample of every task.
Ties in mean drop are broken by the sorted block ids, so a search is deterministic. A set's drop
on a task is the drop of the task's ranking score (`--rank-by`, see blockprune.scores: by default
the lowest-variance faithful one), so ranking and racing use every sample's full signal.
"""

from __future__ import annotations

import itertools
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import evolve, oneshot, scores, stats
from .engine import Engine, trie_block_rows
from .store import Store, key_of
from .tasks import Task

METHODS = ("sensitivity", "greedy", "beam", "exhaustive", "evolutionary", "block-influence", "angular", "given")


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
    """Scores removal sets on every task through the engine, persisting as it goes."""

    def __init__(self, engine: Engine, tasks: Sequence[Task], store: Store, batch_candidates: int = 256,
                 progress: bool = True, racing: Racing | None = None, rank_by: dict[str, str] | None = None):
        self.engine = engine
        self.tasks = list(tasks)
        self.rank_by = rank_by or scores.resolve_rank_by(None, {t.name: t.kind for t in self.tasks})
        self.store = store
        self.num_blocks = engine.model.num_blocks
        self.batch_candidates = batch_candidates
        self.progress = progress
        self.racing = racing
        self.eliminated: list[tuple[int, ...]] = []
        self._baseline: dict[str, float] | None = None

    def _masks(self, sets: Sequence[tuple[int, ...]]) -> np.ndarray:
        keep = np.ones((len(sets), self.num_blocks), dtype=bool)
        for i, s in enumerate(sets):
            keep[i, list(s)] = False
        return keep

    def _requests_of(self, task: Task, samples: Sequence[int] | None) -> list[int]:
        if samples is None:
            return list(range(len(task.requests)))
        wanted = set(int(i) for i in samples)
        return [r for r, s in enumerate(task.request_sample) if s in wanted]

    def _run_jobs(self, jobs: list[tuple[Task, list[tuple[int, ...]], list[int] | None]], label: str) -> None:
        """Score (task, sets, samples) jobs; samples None = the whole task -> whole records, else parts."""
        if not jobs:
            return
        total = sum(trie_block_rows(self._masks(ss)) *
                    self.engine.row_tokens([t.requests[r] for r in self._requests_of(t, sm)]) for t, ss, sm in jobs)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="tok", unit_scale=True, desc=label, leave=False, dynamic_ncols=True)
        try:
            for task, sets, samples in jobs:
                req_ids = self._requests_of(task, samples)
                requests = [task.requests[r] for r in req_ids]
                for i in range(0, len(sets), self.batch_candidates):
                    chunk = sets[i : i + self.batch_candidates]
                    start = time.perf_counter()
                    kl = task.kind == "kl"
                    result = self.engine.score(requests, self._masks(chunk), progress=bar.update if bar else None, kl=kl)
                    seconds = time.perf_counter() - start
                    logprob = np.full((len(chunk), len(task.requests)), np.nan)
                    greedy = np.zeros((len(chunk), len(task.requests)), dtype=bool)
                    kl_sum = np.full((len(chunk), len(task.requests)), np.nan) if kl else None
                    logprob[:, req_ids], greedy[:, req_ids] = result.logprob, result.greedy
                    if kl:
                        kl_sum[:, req_ids] = result.kl
                    per_sample = task.per_sample(logprob, greedy, kl_sum)
                    records = []
                    if samples is None:
                        values = task.value(per_sample)
                        for c, s in enumerate(chunk):
                            records.append(self._record(task, s, {k: v[c] for k, v in per_sample.items()}, values[c]))
                    else:
                        cols = sorted(int(i) for i in samples)
                        for c, s in enumerate(chunk):
                            records.append({"type": "part", "removed": list(s), "task": task.name, "samples": cols,
                                            "per_sample": {k: v[c, cols].tolist() for k, v in per_sample.items()}})
                    records.append({"type": "work", "task": task.name, "candidates": len(chunk), "seconds": round(seconds, 3),
                                    **({"samples": len(samples)} if samples is not None else {}), **result.work.as_dict()})
                    self.store.append(records)
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _record(task: Task, removed: tuple[int, ...], per_sample: dict[str, np.ndarray], value: float) -> dict:
        rec = {"removed": list(removed), "task": task.name, "value": float(value),
               "per_sample": {k: np.asarray(v).tolist() for k, v in per_sample.items()}}
        if "correct_norm" in per_sample:
            rec["acc_norm"] = float(np.mean(per_sample["correct_norm"]))
        return rec

    def _score_missing(self, sets: list[tuple[int, ...]]) -> None:
        jobs = [(t, [s for s in sets if not self.store.has(s, t.name)], None) for t in self.tasks]
        self._run_jobs([j for j in jobs if j[1]], f"scoring {len(sets)} sets")

    @property
    def baseline(self) -> dict[str, float]:
        if self._baseline is None:
            self._score_missing([()])
            self._baseline = {t.name: self.store.get((), t.name)["value"] for t in self.tasks}
        return self._baseline

    def _evaluated(self, keys: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], Evaluated]:
        self.baseline
        base = {t.name: stats.per_sample_arrays(self.store.get((), t.name)["per_sample"], self.rank_by[t.name])
                for t in self.tasks}
        out = {}
        for k in keys:
            values, drops = {}, {}
            for t in self.tasks:
                score = self.rank_by[t.name]
                rec = self.store.get(k, t.name)
                values[t.name] = rec["value"]
                drops[t.name] = stats.point_drop(score, base[t.name], stats.per_sample_arrays(rec["per_sample"], score))
            out[k] = Evaluated(k, values, drops)
        return out

    def evaluate(self, sets: Sequence[Sequence[int]]) -> dict[tuple[int, ...], Evaluated]:
        """Score every set on all samples of every task (exact)."""
        self.baseline
        keys = list(dict.fromkeys(key_of(s) for s in sets))
        self.store.plan(keys)
        self._score_missing(keys)
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
                    missing = tuple(sorted(want - set(self.store.samples_of(k, t.name))))
                    if missing:
                        by_missing.setdefault(missing, []).append(k)
                jobs.extend((t, ks, list(m)) for m, ks in by_missing.items())
            self._run_jobs(jobs, f"racing {len(alive)} sets, round {r + 1}/{rounds}")
            alive = self._survivors(alive, subsets, keep)
            self.engine.retain(self._masks(alive))  # stored states of dropped sets are of no more use
        self.eliminated.extend(k for k in keys if k not in set(alive))
        self._finish(alive)
        return self._evaluated(alive)

    def _finish(self, keys: list[tuple[int, ...]]) -> None:
        """Whole records for `keys`: score the samples they miss, then merge parts into one record."""
        jobs = []
        for t in self.tasks:
            by_missing: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
            for k in keys:
                if self.store.has(k, t.name):
                    continue
                missing = tuple(sorted(set(range(t.n)) - set(self.store.samples_of(k, t.name))))
                by_missing.setdefault(missing, []).append(k)
            for m, ks in by_missing.items():
                if m:
                    jobs.append((t, ks, list(m)))
        self._run_jobs(jobs, f"racing {len(keys)} survivors, all samples")
        records = []
        for t in self.tasks:
            for k in keys:
                if self.store.has(k, t.name):
                    continue
                data = self.store.samples_of(k, t.name)
                fields = next(iter(data.values())).keys()
                per_sample = {f: _column([data[i][f] for i in range(t.n)]) for f in fields}
                records.append(self._record(t, k, per_sample, float(t.value(per_sample))))
        self.store.append(records)

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
            base_data = self.store.samples_of((), t.name)
            base = stats.per_sample_arrays({f: [base_data[i][f] for i in cols] for f in fields}, score)
            nums, dens = [], []
            for k in keys:
                data = self.store.samples_of(k, t.name)
                num, den = stats.per_sample_arrays({f: [data[i][f] for i in cols] for f in fields}, score)
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


def _column(values: list) -> np.ndarray:
    """Per-sample values as an array; samples that hold lists (per-choice fields) as an object array."""
    if values and isinstance(values[0], list):
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    return np.asarray(values)


@dataclass
class SearchResult:
    method: str
    steps: list[list[tuple[int, ...]]] = field(default_factory=list)  # kept sets per size (beam/greedy)
    evaluated: list[tuple[int, ...]] = field(default_factory=list)


def _rank(results: dict[tuple[int, ...], Evaluated]) -> list[tuple[int, ...]]:
    return sorted(results, key=lambda k: (results[k].mean_drop, k))


def parse_sets(text: str) -> list[tuple[int, ...]]:
    """'17,18,19;4,13' (or one set per line) -> [(17, 18, 19), (4, 13)]; syntax only."""
    sets = []
    for part in text.replace("\n", ";").split(";"):
        part = part.split("#", 1)[0].strip()
        if not part:
            continue
        try:
            ids = [int(x) for x in part.replace(" ", ",").split(",") if x.strip()]
        except ValueError:
            raise SearchError(f"--sets: {part!r} is not a comma-separated list of block ids") from None
        if not ids:
            continue
        if len(set(ids)) != len(ids):
            raise SearchError(f"--sets: {part!r} names a block twice")
        sets.append(key_of(ids))
    if not sets:
        raise SearchError("--sets: no set given (e.g. --sets '17,18,19;4,13')")
    return list(dict.fromkeys(sets))


def read_sets_file(path: str) -> list[tuple[int, ...]]:
    """A text file (one set per line, `#` comments) or another run's pruning_recommendations.json
    (its recommendations and the best set per k)."""
    import json
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchError(f"--sets-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if text.lstrip().startswith("{"):
        try:
            recs = json.loads(text)
            sets = [tuple(r["removed"]) for r in recs["recommendations"].values() if isinstance(r, dict) and r.get("removed")]
            sets += [tuple(v["best"]["removed"]) for v in recs.get("independent_best", {}).values()]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SearchError(f"--sets-file {path}: JSON, but not a blockprune pruning_recommendations.json") from None
        return parse_sets(";".join(",".join(map(str, s)) for s in sets))
    return parse_sets(text)


def check_sets(sets: Sequence[tuple[int, ...]], num_blocks: int, protected: Sequence[int] = (), min_depth: int = 1) -> None:
    for s in sets:
        bad = [b for b in s if not 0 <= b < num_blocks]
        if bad:
            raise SearchError(f"set {list(s)}: block ids {bad} out of range 0..{num_blocks - 1}")
        if set(s) & set(protected):
            raise SearchError(f"set {list(s)} removes protected block(s) {sorted(set(s) & set(protected))}")
        if num_blocks - len(s) < max(1, min_depth):
            raise SearchError(f"set {list(s)} keeps {num_blocks - len(s)} of {num_blocks} blocks, fewer than "
                              f"--min-depth {max(1, min_depth)}")


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
    if min_depth >= num_blocks:
        raise SearchError(f"--min-depth {min_depth} keeps all {num_blocks} blocks: nothing can be removed")
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
        min_depth: int = 1, max_candidates: int = 5000, evolution: "evolve.Settings | None" = None,
        seed: int = 0, sets: Sequence[Sequence[int]] = ()) -> SearchResult:
    """Run one search method. Beam, greedy and evolutionary steps race (when `ev.racing` is set);
    sensitivity, exhaustive, the one-shot baselines and given sets are scored exactly."""
    num_blocks = ev.num_blocks
    if method == "given":
        keys = list(dict.fromkeys(key_of(s) for s in sets))
        if not keys:
            raise SearchError("--method given needs --sets or --sets-file")
        check_sets(keys, num_blocks, protected, min_depth)
        result = SearchResult(method)
        res = ev.evaluate(keys)
        for k in sorted({len(s) for s in keys}):
            result.steps.append(_rank({s: e for s, e in res.items() if len(s) == k}))
        result.evaluated.extend(res)
        return result
    allowed = validate(num_blocks, max_remove, protected, min_depth, method, beam_width, max_candidates)
    k_max = min(1 if method == "sensitivity" else max_remove, num_blocks - min_depth, len(allowed))
    result = SearchResult(method)
    if method == "exhaustive":
        for k in range(1, k_max + 1):
            res = ev.evaluate(list(itertools.combinations(allowed, k)))
            result.steps.append(_rank(res))
            result.evaluated.extend(res)
        return result
    if method in oneshot.METHODS:
        sets = oneshot.sets_for(method, ev.engine.model, ev.tasks, allowed, k_max)
        res = ev.evaluate(sets)
        result.steps = [[s] for s in sets]
        result.evaluated.extend(res)
        return result
    if method == "evolutionary":
        return evolve.run(ev, allowed, k_max, evolution or evolve.Settings(), seed=seed, result=result)
    width = {"greedy": 1, "sensitivity": len(allowed), "beam": beam_width}[method]
    beam: list[tuple[int, ...]] = [()]
    for _ in range(k_max):
        children = list(dict.fromkeys(key_of(p + (b,)) for p in beam for b in allowed if b not in p))
        if not children:
            break
        # racing keeps scoring to the end only what can still reach the beam
        res = ev.evaluate(children) if method == "sensitivity" else ev.race(children, keep=width)
        ranked = _rank(res)
        result.evaluated.extend(res)
        beam = ranked[:width]
        result.steps.append(beam)
        ev.engine.retain(ev._masks(beam))  # the next step's children start from the beam's states
    return result

