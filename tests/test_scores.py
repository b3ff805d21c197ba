"""Scores, drops and sample-size planning against hand-computed cases."""

import math

import numpy as np
import pytest

from blockprune.tasks import scores
from blockprune.analysis import stats


def drop(score, base_ps, cand_ps):
    return stats.point_drop(score, stats.per_sample_arrays(base_ps, score), stats.per_sample_arrays(cand_ps, score))


def test_mean_scores_are_relative_losses():
    assert drop("acc", {"correct": [1, 0]}, {"correct": [0, 0.5]}) == pytest.approx(0.5)  # 0.25 vs 0.5
    # p_gold 0.6 -> 0.45: 1 - 0.45/0.6 = 0.25
    assert drop("p_gold", {"p_gold": [0.5, 0.7]}, {"p_gold": [0.4, 0.5]}) == pytest.approx(0.25)
    # dense quality 0: the plain difference
    assert drop("exact_match", {"match": [0, 0]}, {"match": [1, 0]}) == pytest.approx(-0.5)


def test_loglik_scores_use_the_per_token_probability():
    # perplexity 40 -> 80 halves the per-token probability
    base = {"nll": [math.log(40) * 10], "ntok": [10]}
    cand = {"nll": [math.log(80) * 10], "ntok": [10]}
    assert drop("perplexity", base, cand) == pytest.approx(0.5)
    assert drop("perplexity", cand, base) == pytest.approx(-1.0)
    # gold answer: log-prob -2 over 4 tokens -> -3 over 4: drop 1 - exp(-0.25)
    base = {"gold_logprob": [-2.0], "gold_tokens": [4]}
    cand = {"gold_logprob": [-3.0], "gold_tokens": [4]}
    assert drop("gold_logprob", base, cand) == pytest.approx(1 - math.exp(-0.25))
    sc = scores.get("gold_logprob")
    num, den = sc.arrays(cand)
    assert sc.value(num.sum(), den.sum()) == pytest.approx(-0.75)  # shown as mean log-prob per token
    sc = scores.get("perplexity")
    num, den = sc.arrays({"nll": [math.log(40) * 4, math.log(40) * 6], "ntok": [4, 6]})
    assert sc.value(num.sum(), den.sum()) == pytest.approx(40)


def test_kl_drop_is_the_kl_itself():
    base = {"kl": [0.0, 0.0], "ntok": [10, 30]}
    cand = {"kl": [1.0, 3.0], "ntok": [10, 30]}
    assert drop("kl", base, cand) == pytest.approx(0.1)  # 4 nats over 40 tokens


def test_bootstrap_replicates_of_kl_are_token_weighted():
    # one replicate drawing sample 1 twice: (3 + 3) / (30 + 30) = 0.1; sample 0 twice: 2/20 = 0.1
    base = (np.zeros(2), np.array([10.0, 30.0]))
    cand = (np.array([[1.0, 6.0]]), np.array([[10.0, 30.0]]))
    counts = np.array([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    got = stats.drop_replicates("kl", base, cand, counts)[0]
    assert got == pytest.approx([0.1, 0.2, 7 / 40])


def test_resolve_rank_by():
    kinds = {"mc": "multiple_choice", "em": "exact_match", "ppl": "perplexity", "kl": "kl"}
    assert scores.resolve_rank_by(None, kinds) == {"mc": "p_gold", "em": "gold_logprob", "ppl": "perplexity", "kl": "kl"}
    assert scores.resolve_rank_by("metric", kinds) == {"mc": "acc", "em": "exact_match", "ppl": "perplexity", "kl": "kl"}
    assert scores.resolve_rank_by("acc_norm,em=exact_match", kinds)["mc"] == "acc_norm"
    assert scores.resolve_rank_by("perplexity", kinds)["kl"] == "perplexity"  # both ppl and kl tasks have it
    with pytest.raises(scores.ScoreError, match="task em .* has no score 'acc'"):
        scores.resolve_rank_by("em=acc", kinds)
    with pytest.raises(scores.ScoreError, match="no task has this score"):
        scores.resolve_rank_by("acc", {"ppl": "perplexity"})
    with pytest.raises(scores.ScoreError, match="unknown score"):
        scores.resolve_rank_by("accuracy", kinds)
    with pytest.raises(scores.ScoreError, match="no task named"):
        scores.resolve_rank_by("nope=acc", kinds)


def test_missing_field_is_a_clear_error():
    with pytest.raises(scores.ScoreError, match="p_gold"):
        stats.per_sample_arrays({"correct": [1, 0]}, "p_gold")


def test_samples_needed_by_hand():
    # drop 8% measured on 50 samples with standard error 2%: the 95% half-width is 1.96 * 2% = 3.92%,
    # the margin to a 5% tolerance is 3%: m = 50 * (3.92 / 3)^2 = 85.37 -> 86
    assert stats.samples_needed(50, 0.02, 0.08, 0.05) == 86
    # already decisive: never fewer than were used
    assert stats.samples_needed(50, 0.001, 0.08, 0.05) == 50
    assert stats.samples_needed(50, 0.02, 0.05, 0.05) is None


def test_upper_bound_is_a_quantile():
    reps = np.arange(101.0)  # 0..100
    assert stats.upper(reps, 0.95) == pytest.approx(95.0)
    assert stats.upper(reps, 0.80) == pytest.approx(80.0)
