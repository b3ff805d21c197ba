"""Evolutionary search for larger removal counts.

Size 1 is scored exactly (every single block): it ranks the blocks by sensitivity, which biases
the mutations. For each larger size k a population of `population` sets is kept:

1. start: every set of the size-(k-1) population plus one block, the block drawn with weights that
   favour insensitive blocks (the greedy choice is always included);
2. each of `generations` generations makes `offspring` new sets from tournament-selected parents:
   a swap (one removed block back in, one kept block out; both drawn by sensitivity) or, with
   probability `crossover`, k blocks drawn from the union of two parents;
3. new sets are raced (`Evaluator.race`, keep = population): only those that can enter the
   population are scored on all samples; the population is the best `population` sets so far.

Deterministic for a seed. The population of each size is that step's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .evaluator import rank as rank_sets
from ..runs.store import key_of


@dataclass
class Settings:
    population: int = 8
    offspring: int = 16
    generations: int = 3
    crossover: float = 0.3


def _weights(blocks: Sequence[int], rank: dict[int, int], favour_low: bool, scale: float) -> np.ndarray:
    r = np.array([rank[b] for b in blocks], dtype=float)
    w = np.exp(-(r if favour_low else -r) / scale)
    return w / w.sum()


def run(ev, allowed: Sequence[int], k_max: int, settings: Settings, seed: int, result):
    rng = np.random.default_rng(seed)
    allowed = list(allowed)
    singles = ev.evaluate([(b,) for b in allowed])
    ranked = rank_sets(singles)
    result.evaluated.extend(singles)
    result.steps.append(ranked[: settings.population])
    rank = {key[0]: i for i, key in enumerate(ranked)}
    scale = max(1.0, len(allowed) / 4)
    seen = set(singles)
    population = ranked[: settings.population]
    drops = {k: v.mean_drop for k, v in singles.items()}

    def pick(blocks: Sequence[int], favour_low: bool, count: int = 1) -> list[int]:
        blocks = list(blocks)
        return [int(b) for b in rng.choice(blocks, size=min(count, len(blocks)), replace=False,
                                           p=_weights(blocks, rank, favour_low, scale))]

    for k in range(2, k_max + 1):
        start = []
        for parent in population:
            outside = [b for b in allowed if b not in parent]
            if not outside:
                continue
            greedy = min(outside, key=lambda b: rank[b])
            start.append(key_of(parent + (greedy,)))
            start.append(key_of(parent + tuple(pick(outside, favour_low=True))))
        start = [s for s in dict.fromkeys(start) if s not in seen]
        scored = ev.race(start, keep=settings.population)
        seen.update(start)
        result.evaluated.extend(scored)
        drops.update({key: v.mean_drop for key, v in scored.items()})
        population = sorted(scored, key=lambda key: (drops[key], key))[: settings.population]
        for _ in range(settings.generations):
            children: list[tuple[int, ...]] = []
            for _attempt in range(settings.offspring * 20):
                if len(children) >= settings.offspring:
                    break
                a, b = (population[i] for i in rng.choice(len(population), size=2, replace=len(population) < 2))
                parent = a if (drops[a], a) <= (drops[b], b) else b  # tournament of two
                if len(population) > 1 and rng.random() < settings.crossover:
                    other = population[int(rng.integers(len(population)))]
                    union = sorted(set(parent) | set(other))
                    child = key_of(pick(union, favour_low=True, count=k)) if len(union) > k else None
                else:
                    out = pick(parent, favour_low=False)[0]
                    inside = [x for x in allowed if x not in parent]
                    child = key_of([x for x in parent if x != out] + pick(inside, favour_low=True)) if inside else None
                if child and len(child) == k and child not in seen and child not in children:
                    children.append(child)
            if not children:
                break
            scored = ev.race(children, keep=settings.population)
            seen.update(children)
            result.evaluated.extend(scored)
            drops.update({key: v.mean_drop for key, v in scored.items()})
            population = sorted(set(population) | set(scored), key=lambda key: (drops[key], key))[: settings.population]
        result.steps.append(population)
    return result
