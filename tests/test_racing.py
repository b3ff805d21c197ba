"""Racing, reuse of states across calls, evolutionary search and the one-shot baselines."""

import json

import numpy as np
import pytest
import torch

from blockprune import analysis, models, search
from blockprune.search import oneshot
from blockprune.engine import Engine
from blockprune.runs.store import RESULTS_FILE, Store
from blockprune.tasks import load_task

RACING = search.Racing(first=2, growth=2.0, confidence=0.9, replicates=200)


def evaluator(tiny_dir, jsonl_tasks, out, racing=None, reuse_bytes=0):
    bm = models.load(str(tiny_dir), device="cpu")
    tasks = [load_task(f"jsonl:{jsonl_tasks / n}.jsonl", bm.tokenizer, bm.eos_token_id, ppl_window=8)
             for n in ("mc", "ppl", "em")]
    store = Store(out, {"model": str(tiny_dir), "num_blocks": bm.num_blocks, "method": "beam", "tasks": {
        t.name: {"spec": t.name, "kind": t.kind, "metric": t.metric, "higher_is_better": t.higher_is_better, "n": t.n,
                 "sample_ids": t.sample_ids} for t in tasks}})
    return search.Evaluator(Engine(bm, reuse_bytes=reuse_bytes), tasks, store, progress=False, racing=racing)


def records(path):
    return [json.loads(line) for line in (path / RESULTS_FILE).read_text().splitlines()]


def test_racing_finds_what_exact_beam_finds_with_less_work(tiny_dir, jsonl_tasks, tmp_path):
    exact = evaluator(tiny_dir, jsonl_tasks, tmp_path / "exact")
    raced = evaluator(tiny_dir, jsonl_tasks, tmp_path / "raced", racing=RACING)
    want = search.run("beam", exact, max_remove=3, beam_width=2)
    got = search.run("beam", raced, max_remove=3, beam_width=2)
    assert got.steps == want.steps
    assert raced.eliminated, "nothing was dropped: the test no longer exercises racing"
    # tokens, not rows: a subset of perplexity windows packs into other rows than all of them do
    work = {name: sum(w["block_tokens"] for w in ev.store.work) for name, ev in (("exact", exact), ("raced", raced))}
    assert work["raced"] < work["exact"]
    # survivors have whole records equal to the exact run's; dropped sets only parts
    for key in got.evaluated:
        for task in raced.tasks:
            a, b = raced.store.get(key, task.name), exact.store.get(key, task.name)
            assert a["value"] == pytest.approx(b["value"], rel=1e-6)
            for field in a["per_sample"]:
                np.testing.assert_allclose(a["per_sample"][field], b["per_sample"][field], rtol=1e-5, atol=1e-6)
    for key in raced.eliminated:
        assert not any(raced.store.has(key, t.name) for t in raced.tasks)
        assert any(raced.store.samples_of(key, t.name) for t in raced.tasks)
    # the analysis reports dropped singles as partial estimates, never as ranked candidates
    a = analysis.build(Store.open_existing(tmp_path / "raced"), replicates=50)
    dropped = {tuple(c["removed"]) for c in a["eliminated"]}
    assert dropped == {k for k in raced.eliminated}
    assert not dropped & {tuple(c["removed"]) for c in a["candidates"]}
    assert all(b["samples"] for b in a["per_block"] if (b["block"],) in dropped)


def test_racing_resumes_without_rescoring(tiny_dir, jsonl_tasks, tmp_path):
    ev = evaluator(tiny_dir, jsonl_tasks, tmp_path / "run", racing=RACING)
    first = search.run("beam", ev, max_remove=2, beam_width=2)
    before = len(records(tmp_path / "run"))
    again = evaluator(tiny_dir, jsonl_tasks, tmp_path / "run", racing=RACING)
    second = search.run("beam", again, max_remove=2, beam_width=2)
    assert second.steps == first.steps
    assert len(records(tmp_path / "run")) == before  # nothing scored twice, not even a part


def _parent_with_stored_states(tiny_dir, jsonl_tasks, tmp_path):
    """Engines without and with the state cache, a task, and the parent set {1} whose states the
    caching engine has stored."""
    plain = evaluator(tiny_dir, jsonl_tasks, tmp_path / "a").engine
    reuse = evaluator(tiny_dir, jsonl_tasks, tmp_path / "b", reuse_bytes=2**28).engine
    task = evaluator(tiny_dir, jsonl_tasks, tmp_path / "c").tasks[1]
    parent = np.ones((1, plain.model.num_blocks), dtype=bool)
    parent[0, 1] = False
    reuse.score(task.requests, parent)
    reuse.retain(parent)
    return plain, reuse, task, parent


def test_a_child_starts_from_its_parents_stored_states(tiny_dir, jsonl_tasks, tmp_path):
    plain, reuse, task, parent = _parent_with_stored_states(tiny_dir, jsonl_tasks, tmp_path)
    L = plain.model.num_blocks
    children = np.repeat(parent, L - 1, axis=0)
    for i, j in enumerate(b for b in range(L) if b != 1):
        children[i, j] = False
    want = plain.score(task.requests, children)
    got = reuse.score(task.requests, children)
    np.testing.assert_allclose(got.logprob, want.logprob, rtol=1e-5, atol=1e-5)
    assert (got.greedy == want.greedy).all()
    # without the cache the trie runs the parent's trunk (its L-1 kept blocks but the last) once;
    # with it, a child removing block j starts at block j
    rows = plain.score(task.requests, np.ones((1, L), dtype=bool)).work.block_rows // L
    assert want.work.block_rows - got.work.block_rows == (L - 2) * rows
    assert got.work.reused_block_rows == (L - 2) * rows


def test_evolutionary_search_is_deterministic_and_keeps_populations(tiny_dir, jsonl_tasks, tmp_path):
    settings = search.evolve.Settings(population=3, offspring=4, generations=2)
    runs = []
    for name in ("a", "b"):
        ev = evaluator(tiny_dir, jsonl_tasks, tmp_path / name, racing=RACING)
        runs.append(search.run("evolutionary", ev, max_remove=3, evolution=settings, seed=1))
    res = runs[0]
    assert res.steps == runs[1].steps
    assert [len(step[0]) for step in res.steps] == [1, 2, 3]
    # each population's order checked on drops scored again by an exact evaluator with its own
    # store, not on what the raced search stored and ranked by
    exact = evaluator(tiny_dir, jsonl_tasks, tmp_path / "exact")
    for step in res.steps:
        assert 1 <= len(step) <= 3 and len(set(step)) == len(step)
        drops, stored = exact.evaluate(step), ev.evaluate(step)
        for k in step:
            assert stored[k].mean_drop == pytest.approx(drops[k].mean_drop, rel=1e-6, abs=1e-9), k
        assert [drops[k].mean_drop for k in step] == sorted(drops[k].mean_drop for k in step)
    # the start population of size 2 holds the greedy child of the best single: nothing worse wins
    first, second = res.steps[0][0][0], res.steps[0][1][0]
    greedy_child = tuple(sorted((first, second)))
    best_two = min(exact.evaluate(res.steps[1]).values(), key=lambda e: e.mean_drop)
    assert best_two.mean_drop <= exact.evaluate([greedy_child])[greedy_child].mean_drop


def test_block_influence_matches_hf_hidden_states(tiny_dir, jsonl_tasks, tmp_path):
    ev = evaluator(tiny_dir, jsonl_tasks, tmp_path / "run")
    bm = ev.engine.model
    dist = oneshot.hidden_distances(bm, ev.tasks, max_span=2, rows_per_task=3)
    # independent: HF's own hidden states, one unpadded request at a time
    cos_sum, count = np.zeros(bm.num_blocks), 0
    for task in ev.tasks:
        for r in task.requests[:3]:
            out = bm.model(input_ids=torch.tensor([r.tokens]), output_hidden_states=True)
            hs = out.hidden_states
            for layer in range(bm.num_blocks - 1):  # the last entry has the final norm applied
                cos_sum[layer] += torch.nn.functional.cosine_similarity(hs[layer][0], hs[layer + 1][0], dim=-1).sum().item()
            count += len(r.tokens)
    np.testing.assert_allclose(dist["influence"][:-1], 1 - cos_sum[:-1] / count, atol=1e-5)
    bi = search.run("block-influence", ev, max_remove=3)
    assert [len(s[0]) for s in bi.steps] == [1, 2, 3]
    assert set(bi.steps[0][0]) < set(bi.steps[1][0]) < set(bi.steps[2][0])  # the k lowest BI: nested
    ang = search.run("angular", ev, max_remove=3, protected=[2])
    for step in ang.steps:
        s = step[0]
        assert list(s) == list(range(s[0], s[0] + len(s))) and 2 not in s  # consecutive, never protected


def test_a_small_state_cache_evicts_without_changing_scores(tiny_dir, jsonl_tasks, tmp_path):
    plain = evaluator(tiny_dir, jsonl_tasks, tmp_path / "a").engine
    tiny = evaluator(tiny_dir, jsonl_tasks, tmp_path / "b", reuse_bytes=40_000).engine  # a few rows' states
    task = evaluator(tiny_dir, jsonl_tasks, tmp_path / "c").tasks[0]
    rng = np.random.default_rng(0)
    masks = rng.random((12, plain.model.num_blocks)) < 0.7
    reused = 0
    for _ in range(3):  # later passes find some states, lose others to eviction mid-pass
        got = tiny.score(task.requests, masks)
        reused += got.work.reused_block_rows
        want = plain.score(task.requests, masks)
        np.testing.assert_allclose(got.logprob, want.logprob, rtol=1e-5, atol=1e-5)
        masks = np.concatenate([masks[:6], rng.random((6, plain.model.num_blocks)) < 0.7])
    assert tiny.cache.bytes <= 40_000
    assert reused > 0  # some states were reused, so both paths ran


def test_children_restored_from_stored_states_count_head_positions_once(tiny_dir, jsonl_tasks, tmp_path):
    """Every child starts from the parent's stored states, so the trie's root node is empty: it
    must cost no LM-head positions (a resumed search reported 1.21x the naive loop before)."""
    plain, reuse, task, parent = _parent_with_stored_states(tiny_dir, jsonl_tasks, tmp_path)
    L = plain.model.num_blocks
    children = np.repeat(parent, L - 2, axis=0)
    for i, j in enumerate(range(2, L)):  # all children share the parent's prefix through block 1
        children[i, j] = False
    got = reuse.score(task.requests, children)
    want = plain.score(task.requests, children)
    np.testing.assert_allclose(got.logprob, want.logprob, rtol=1e-5, atol=1e-5)
    scored = sum(r.num_scored for r in task.requests)
    assert got.work.head_positions == want.work.head_positions == len(children) * scored
    assert got.work.head_positions <= got.work.naive_head_positions
