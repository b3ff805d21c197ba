"""Paired bootstrap over samples for the drops of a run.

Every candidate of a run is scored on the same samples of every task, so uncertainty comes from
which samples were drawn. One bootstrap replicate resamples, per task, that task's samples with
replacement, and recomputes every candidate's metric, the dense baseline's metric, the relative
drops and their mean over tasks from the same resample (paired). Percentile intervals over
`B` replicates give each candidate's 95% interval of its mean drop, and differences between two
candidates are judged on their replicate-wise differences.

Per-sample data by metric: accuracy / exact match: 0/1 per sample (metric = mean);
perplexity: NLL sum and token count per window (metric = exp(sum NLL / sum tokens)).
"""

from __future__ import annotations

import numpy as np

DEFAULT_REPLICATES = 1000


def _per_sample(record: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per sample such that metric = f(sum num / sum den)."""
    ps = record["per_sample"]
    if metric == "perplexity":
        return np.asarray(ps["nll"], dtype=float), np.asarray(ps["ntok"], dtype=float)
    values = ps.get("correct", ps.get("match"))
    values = np.asarray(values, dtype=float)
    return values, np.ones_like(values)


def _quality(metric: str, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    ratio = num / den
    return np.exp(-ratio) if metric == "perplexity" else ratio  # 1/ppl = exp(-mean NLL)


def resample_counts(n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[n, replicates]: how often sample i is drawn in replicate b (resampling n with replacement)."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(replicates)]).T.astype(float)


def drop_replicates(metric: str, base: tuple[np.ndarray, np.ndarray], cands: tuple[np.ndarray, np.ndarray],
                    counts: np.ndarray) -> np.ndarray:
    """[K, B] relative drop of K candidates (per-sample num/den [K, n]) against the baseline's
    per-sample num/den [n], each column one paired resample `counts` [n, B]."""
    q0 = _quality(metric, base[0] @ counts, base[1] @ counts)  # [B]
    q = _quality(metric, cands[0] @ counts, cands[1] @ counts)  # [K, B]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(q0 > 0, 1.0 - q / q0, q0 - q)


def per_sample_arrays(per_sample: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) arrays from a record's per-sample dict (see module docstring)."""
    return _per_sample({"per_sample": per_sample}, metric)


def bootstrap_mean_drops(store, keys: list[tuple[int, ...]], tasks: dict[str, dict],
                         replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> np.ndarray:
    """[len(keys), replicates] mean relative drop over tasks, one column per paired resample."""
    rng = np.random.default_rng(seed)
    total = np.zeros((len(keys), replicates))
    for name, info in tasks.items():
        metric = info["metric"]
        base = _per_sample(store.get((), name), metric)
        counts = resample_counts(len(base[0]), replicates, rng)
        nums = np.stack([_per_sample(store.get(k, name), metric)[0] for k in keys])
        dens = np.stack([_per_sample(store.get(k, name), metric)[1] for k in keys])
        total += drop_replicates(metric, base, (nums, dens), counts)
    return total / len(tasks)


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Is `a` (the best) lower than `b` (the runner-up)? Replicate-wise difference b - a."""
    diff = b - a
    lo, hi = interval(diff)
    p = float((np.sum(diff <= 0) + 1) / (len(diff) + 1))  # one-sided bootstrap p-value
    return {"difference": float(np.mean(diff)), "ci95": [lo, hi], "p_value": p, "significant": lo > 0}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)
