"""Search methods, the store and resume, on a tiny model with JSONL tasks."""

import itertools
import json

import numpy as np
import pytest

from blockprune import api, models, search
from blockprune.engine import Engine
from blockprune.runs.store import RESULTS_FILE, Store, StoreError
from blockprune.tasks import load_task


def make_evaluator(tiny_dir, jsonl_tasks, out, **kw):
    bm = models.load(str(tiny_dir), device="cpu")
    tasks = [load_task(f"jsonl:{jsonl_tasks / n}.jsonl", bm.tokenizer, bm.eos_token_id, ppl_window=16)
             for n in ("mc", "ppl", "em")]
    store = Store(out, {"model": str(tiny_dir)})
    return search.Evaluator(Engine(bm), tasks, store, progress=False, **kw)


def test_beam_keeps_the_best_children_and_scores_each_set_once(tiny_dir, jsonl_tasks, tmp_path):
    ev = make_evaluator(tiny_dir, jsonl_tasks, tmp_path / "run")
    result = search.run("beam", ev, max_remove=3, beam_width=2)
    n = ev.num_blocks
    # step 1 = all singles; each later step = children of the previous beam, deduplicated
    assert sorted(result.evaluated[:n]) == [(b,) for b in range(n)]
    for prev, step in zip(result.steps, result.steps[1:]):
        children = {tuple(sorted(p + (b,))) for p in prev for b in range(n) if b not in p}
        everything = {k: ev.evaluate([k])[k].mean_drop for k in children}
        best = sorted(everything, key=lambda k: (everything[k], k))[:2]
        assert step == best
    records = [json.loads(line) for line in (tmp_path / "run" / RESULTS_FILE).read_text().splitlines()]
    keys = [(tuple(r["removed"]), r["task"]) for r in records if r.get("type") is None]
    assert len(keys) == len(set(keys))  # nothing scored twice
    assert len({k for k, _ in keys}) == len(set(result.evaluated)) + 1  # + the dense baseline


def test_exhaustive_finds_the_true_best_and_greedy_is_a_chain(tiny_dir, jsonl_tasks, tmp_path):
    ev = make_evaluator(tiny_dir, jsonl_tasks, tmp_path / "run")
    ex = search.run("exhaustive", ev, max_remove=2)
    all_pairs = list(itertools.combinations(range(ev.num_blocks), 2))
    drops = ev.evaluate(all_pairs)
    assert ex.steps[1][0] == min(all_pairs, key=lambda k: (drops[k].mean_drop, k))
    gr = search.run("greedy", ev, max_remove=3)
    assert [len(s) for s in gr.steps] == [1, 1, 1]
    chain = [s[0] for s in gr.steps]
    assert all(set(a) < set(b) for a, b in zip(chain, chain[1:]))


def test_protected_blocks_and_min_depth(tiny_dir, jsonl_tasks, tmp_path):
    ev = make_evaluator(tiny_dir, jsonl_tasks, tmp_path / "run")
    res = search.run("beam", ev, max_remove=5, beam_width=2, protected=[0, 5], min_depth=4)
    assert max(len(k) for k in res.evaluated) == 2  # 6 blocks, keep >= 4
    assert all(0 not in k and 5 not in k for k in res.evaluated)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_remove=6), "less than the number of blocks"),
    (dict(max_remove=0), "at least 1"),
    (dict(protected=[9]), "out of range"),
    (dict(protected=list(range(6))), "every block is protected"),
])
def test_bad_search_settings(tiny_dir, jsonl_tasks, tmp_path, kwargs, message):
    ev = make_evaluator(tiny_dir, jsonl_tasks, tmp_path / "run")
    with pytest.raises(search.SearchError, match=message):
        search.run("beam", ev, **kwargs)


def test_exhaustive_refuses_too_many_candidates(tiny_dir, jsonl_tasks, tmp_path):
    ev = make_evaluator(tiny_dir, jsonl_tasks, tmp_path / "run")
    with pytest.raises(search.SearchError, match="more than --max-candidates"):
        search.run("exhaustive", ev, max_remove=3, max_candidates=20)


def test_store_drops_a_torn_last_line_and_refuses_other_settings(tmp_path):
    st = Store(tmp_path, {"a": 1})
    st.append([{"removed": [1], "task": "t", "value": 0.5, "per_sample": {"correct": [1, 0]}}])
    with open(tmp_path / RESULTS_FILE, "a") as f:
        f.write('{"removed": [2], "task": "t", "va')  # killed mid-write
    again = Store(tmp_path, {"a": 1})
    assert again.has([1], "t") and not again.has([2], "t")
    assert (tmp_path / RESULTS_FILE).read_text().endswith("\n")
    with pytest.raises(StoreError, match="different settings"):
        Store(tmp_path, {"a": 2})


def test_api_resume_reuses_every_stored_score(tiny_dir, jsonl_tasks, tmp_path, monkeypatch):
    tasks = [f"jsonl:{jsonl_tasks / n}.jsonl" for n in ("mc", "ppl", "em")]
    kw = dict(model=str(tiny_dir), tasks=tasks, out=tmp_path / "run", method="beam", beam_width=2, max_remove=2,
              samples=None, ppl_window=16, device="cpu", progress=False)
    first = api.run_search(**kw)
    first_analysis = json.loads((tmp_path / "run" / "cross_dataset_analysis.json").read_text())

    def boom(*a, **k):
        raise AssertionError("resume re-scored a stored candidate")

    monkeypatch.setattr(Engine, "score", boom)
    second = api.run_search(**kw)
    second_analysis = json.loads((tmp_path / "run" / "cross_dataset_analysis.json").read_text())
    assert second_analysis["candidates"] == first_analysis["candidates"]
    assert json.loads(json.dumps(second.recommendations)) == json.loads(json.dumps(first.recommendations))
    c = first_analysis["candidates"][0]
    assert set(c) >= {"removed", "scores", "drops", "mean_drop", "std_drop", "num_tasks"}
    assert c["num_tasks"] == 3
    # each drop from the stored per-sample scores, by the documented formula 1 - q/q_dense (q: mean
    # p_gold; the geometric-mean token probability for perplexity and gold log-prob), not from the analysis
    rec = {(tuple(r["removed"]), r["task"]): r["per_sample"] for r in map(json.loads, (tmp_path / "run" / RESULTS_FILE)
           .read_text().splitlines()) if r.get("type") is None}

    def quality(ps):
        if "p_gold" in ps:
            return np.mean(ps["p_gold"])
        if "nll" in ps:
            return np.exp(-np.sum(ps["nll"]) / np.sum(ps["ntok"]))
        return np.exp(np.sum(ps["gold_logprob"]) / np.sum(ps["gold_tokens"]))

    for cand in first_analysis["candidates"]:
        key = tuple(cand["removed"])
        want = {t: 1 - quality(rec[key, t]) / quality(rec[(), t]) for t in cand["drops"]}
        assert cand["drops"] == pytest.approx(want, rel=1e-6, abs=1e-9)
        drops = np.array([want[t] for t in sorted(want)])
        assert cand["mean_drop"] == pytest.approx(drops.mean()) and cand["std_drop"] == pytest.approx(drops.std(ddof=1))


def test_search_exports_the_balanced_recommendation(tiny_dir, jsonl_tasks, tmp_path):
    tasks = [f"jsonl:{jsonl_tasks / n}.jsonl" for n in ("mc", "ppl")]
    out = tmp_path / "run"
    res = api.run_search(model=str(tiny_dir), tasks=tasks, out=out, method="greedy", max_remove=2, samples=None,
                         ppl_window=16, device="cpu", progress=False, tolerance=0.99, export_formats=("hf",))
    balanced = res.recommendations["recommendations"]["balanced"]
    assert balanced["k"] >= 1
    manifest = json.loads((out / "export" / "export_manifest.json").read_text())
    assert manifest["removed"] == balanced["removed"]
    from reference import reload_hf_matches

    reload_hf_matches(out / "export" / "hf", models.load(str(tiny_dir), device="cpu"), balanced["removed"])
