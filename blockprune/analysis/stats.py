"""Paired bootstrap over samples for the drops of a run, and sample-size planning.

Every candidate of a run is scored on the same samples of every task, so uncertainty comes from
which samples were drawn. One bootstrap replicate resamples, per task, that task's samples with
replacement, and recomputes every candidate's score, the dense baseline's score and the drop
from the same resample (paired); the mean over tasks uses the same replicate of every task.
Percentile intervals over `B` replicates give each candidate's 95% interval, per task and of the
mean, and differences between two candidates are judged on their replicate-wise differences.

How a score turns per-sample fields into a (numerator, denominator) pair and sums into a drop is
in `blockprune.tasks.scores`.

Sample-size planning: an interval's half-width shrinks as 1/sqrt(n). If a drop d measured on n
samples has bootstrap standard error se, deciding whether it lies above or below a tolerance t
at two-sided level 95% needs z * se * sqrt(n / m) < |d - t|, that is
m = n * (z * se / |d - t|)^2 samples.
"""

from __future__ import annotations

import math

import numpy as np

from ..tasks import scores

DEFAULT_REPLICATES = 1000
Z95 = 1.959963984540054


def per_sample_arrays(per_sample: dict, score: str) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per sample of `score` from a record's per-sample dict."""
    return scores.get(score).arrays(per_sample)


def resample_counts(n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[n, replicates]: how often sample i is drawn in replicate b (resampling n with replacement)."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(replicates)]).T.astype(float)


def drop_replicates(score: str, base: tuple[np.ndarray, np.ndarray], cands: tuple[np.ndarray, np.ndarray],
                    counts: np.ndarray) -> np.ndarray:
    """[K, B] drop of K candidates (per-sample num/den [K, n]) against the baseline's per-sample
    num/den [n], each column one paired resample `counts` [n, B] (a column of ones: the point value)."""
    sc = scores.get(score)
    return sc.drop((base[0] @ counts, base[1] @ counts), (cands[0] @ counts, cands[1] @ counts))


def point_drop(score: str, base: tuple[np.ndarray, np.ndarray], cand: tuple[np.ndarray, np.ndarray]) -> float:
    """The drop of one candidate on all its samples."""
    sc = scores.get(score)
    return float(sc.drop((base[0].sum(), base[1].sum()), (cand[0].sum(), cand[1].sum())))


def bootstrap(store, keys: list[tuple[int, ...]], rank_by: dict[str, str], replicates: int = DEFAULT_REPLICATES,
              seed: int = 0) -> dict[str, np.ndarray]:
    """{task: [len(keys), replicates] drop of the task's ranking score} from paired resamples of
    each task's samples (one resample per task and replicate, shared by every candidate)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, score in rank_by.items():
        base = per_sample_arrays(store.get((), name)["per_sample"], score)
        counts = resample_counts(len(base[0]), replicates, rng)
        pairs = [per_sample_arrays(store.get(k, name)["per_sample"], score) for k in keys]
        nums = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, len(base[0])))
        dens = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, len(base[0])))
        out[name] = drop_replicates(score, base, (nums, dens), counts)
    return out


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def upper(replicates: np.ndarray, confidence: float) -> float:
    """One-sided upper bound: the `confidence` quantile of the replicates."""
    return float(np.quantile(replicates, confidence))


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Is `a` (the best) lower than `b` (the runner-up)? Replicate-wise difference b - a."""
    diff = b - a
    lo, hi = interval(diff)
    p = float((np.sum(diff <= 0) + 1) / (len(diff) + 1))  # one-sided bootstrap p-value
    return {"difference": float(np.mean(diff)), "ci95": [lo, hi], "p_value": p, "significant": lo > 0}


def shift(search: float, search_se: float, held: float, held_se: float, z: float = Z95) -> str | None:
    """'above' / 'below' when a held-out estimate differs from the search's by more than z standard
    errors of the difference of two independent estimates (disjoint samples: the variances add);
    None when the two agree within their noise."""
    se = math.sqrt(search_se ** 2 + held_se ** 2)
    if not np.isfinite(se):
        return None
    diff = held - search
    if diff > z * se:
        return "above"
    if diff < -z * se:
        return "below"
    return None


def samples_needed(n: int, se: float, drop: float, tolerance: float, z: float = Z95) -> int | None:
    """Samples that would put a 95% interval of half-width z*se*sqrt(n/m) clear of the tolerance;
    None when the drop sits on the tolerance (no finite sample size decides it)."""
    margin = abs(drop - tolerance)
    if margin == 0 or not np.isfinite(se):
        return None
    return max(n, int(math.ceil(n * (z * se / margin) ** 2)))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


# ---- over a handful of values (the replaced system's datasets): exact sums, Student t -------------
def fmean(xs) -> float:
    """Mean with an exactly rounded sum (math.fsum)."""
    return math.fsum(xs) / len(xs)


def fstd(xs, ddof: int = 0) -> float | None:
    """Standard deviation with exactly rounded sums: population (ddof=0) or sample (ddof=1); None
    when there are no more values than `ddof`."""
    if len(xs) <= ddof:
        return None
    m = fmean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


def student_t():
    """scipy.stats.t, or None without scipy."""
    try:
        from scipy.stats import t
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return t


def mean_interval95(xs) -> list[float] | None:
    """95% interval of the mean of `xs`: Student t (df = n - 1) with scipy, else the normal
    approximation (Z95); None for fewer than two values."""
    n = len(xs)
    if n < 2:
        return None
    t = student_t()
    q = float(t.ppf(0.975, n - 1)) if t is not None else Z95
    m, h = fmean(xs), q * fstd(xs, 1) / math.sqrt(n)
    return [m - h, m + h]
