"""Recommendation rules and sample-size decisions on hand-built candidates (numbers by hand)."""

import pytest

from blockprune.analysis import advice

T = 0.05


def cand(removed, mean, ci, upper95, upper80, tasks):
    """tasks: {name: (drop, lo, hi, se)}"""
    return {"removed": list(removed), "mean_drop": mean, "std_drop": 0.0, "ci95": list(ci), "upper95": upper95,
            "upper80": upper80, "drops": {t: v[0] for t, v in tasks.items()},
            "task_ci95": {t: [v[1], v[2]] for t, v in tasks.items()}, "task_se": {t: v[3] for t, v in tasks.items()}}


def test_a_gain_on_one_task_cannot_hide_a_loss_on_another():
    # The demo's old failure: perplexity lost 25.8% (tight interval), two quiz tasks gained by luck;
    # the mean (-7%) with its whole interval below 5% qualified for every rule before.
    fooled = cand((17, 18, 19), -0.07, (-0.39, 0.04), 0.03, -0.02,
                  {"ppl": (0.258, 0.24, 0.28, 0.01), "mc1": (-0.30, -0.8, 0.2, 0.25), "mc2": (-0.17, -0.9, 0.5, 0.35)})
    honest = cand((16,), 0.02, (0.00, 0.04), 0.035, 0.03,
                  {"ppl": (0.045, 0.03, 0.06, 0.008), "mc1": (0.01, -0.05, 0.07, 0.03), "mc2": (0.0, -0.08, 0.08, 0.04)})
    assert not advice.guard(fooled, T)  # ppl's lower bound 24% > 5%
    assert advice.guard(honest, T)
    recs = advice.recommendations(advice.by_k([honest, fooled]), T)
    assert [recs[level]["removed"] for level in advice.LEVELS] == [[], [16], [16]]
    assert "no conservative set" in recs["conservative"]["note"]  # ppl's upper bound 6% > 5%


def test_levels_by_their_bounds():
    tight = {"a": (0.01, 0.0, 0.03, 0.01), "b": (0.02, 0.0, 0.04, 0.01)}
    c1 = cand((1,), 0.015, (0.0, 0.035), 0.03, 0.02, tight)  # every task within: conservative
    c2 = cand((1, 2), 0.04, (0.01, 0.07), 0.048, 0.045,  # one-sided 95% bound 4.8% <= 5%: balanced
              {"a": (0.04, 0.0, 0.08, 0.02), "b": (0.04, 0.0, 0.08, 0.02)})
    c3 = cand((1, 2, 3), 0.045, (0.0, 0.10), 0.09, 0.049,  # only the 80% bound <= 5%: aggressive
              {"a": (0.045, 0.0, 0.10, 0.025), "b": (0.045, 0.0, 0.10, 0.025)})
    wide = cand((1, 2, 3, 4), 0.03, (-0.30, 0.40), 0.33, 0.20,  # a wide interval qualifies for nothing
                {"a": (0.03, -0.3, 0.4, 0.2), "b": (0.03, -0.3, 0.4, 0.2)})
    recs = advice.recommendations(advice.by_k([c1, c2, c3, wide]), T)
    assert (recs["conservative"]["k"], recs["balanced"]["k"], recs["aggressive"]["k"]) == (1, 2, 3)
    # at a tolerance of 0.5% nothing qualifies, and each level says so
    recs = advice.recommendations(advice.by_k([c1, c2, c3, wide]), 0.005)
    assert all(recs[level]["k"] == 0 for level in advice.LEVELS)


def test_within_a_size_the_lowest_mean_drop_that_qualifies_is_chosen():
    best_but_guarded = cand((2,), 0.01, (0.0, 0.02), 0.02, 0.015,
                            {"a": (0.10, 0.08, 0.12, 0.01), "b": (-0.08, -0.1, -0.06, 0.01)})
    second = cand((5,), 0.02, (0.0, 0.04), 0.035, 0.03, {"a": (0.02, 0.0, 0.04, 0.01), "b": (0.02, 0.0, 0.04, 0.01)})
    recs = advice.recommendations(advice.by_k([best_but_guarded, second]), T)
    assert recs["balanced"]["removed"] == [5]


def test_decisions_state_what_the_samples_cannot_decide():
    tasks = {"a": {"n": 50, "available": 400}, "b": {"n": 30}}
    c = cand((3,), 0.05, (0.0, 0.10), 0.09, 0.07, {"a": (0.08, 0.04, 0.12, 0.02), "b": (0.01, -0.02, 0.04, 0.015)})
    above = cand((3, 4), 0.2, (0.1, 0.3), 0.28, 0.25, {"a": (0.3, 0.2, 0.4, 0.05), "b": (0.1, 0.0, 0.2, 0.05)})
    d = advice.decisions(advice.by_k([c, above]), tasks, T)
    assert [x["verdict"] for x in d] == ["undecided", "above"]
    a = d[0]["tasks"]["a"]
    # n * (1.96 * se / |d - t|)^2 = 50 * (1.96 * 0.02 / 0.03)^2 = 85.37 -> 86 samples
    assert a["verdict"] == "undecided" and a["samples_needed"] == 86 and a["available"] == 400
    assert d[0]["tasks"]["b"]["verdict"] == "within" and "samples_needed" not in d[0]["tasks"]["b"]


@pytest.mark.parametrize("lo, hi, verdict", [(0.0, 0.05, "within"), (0.051, 0.2, "above"), (0.04, 0.06, "undecided")])
def test_task_verdict(lo, hi, verdict):
    assert advice.task_verdict(lo, hi, T) == verdict
