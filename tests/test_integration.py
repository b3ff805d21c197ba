"""End to end on the real embedded model (SmolLM2-135M-Instruct) and real data, a few samples."""

import json

import numpy as np
import pytest

from blockprune import api, models
from blockprune.engine import Engine
from blockprune.tasks import load_task
from reference import naive_kl, naive_scores
from test_engine import spy_rows


def test_engine_matches_physical_removal_on_real_tasks(smollm2, monkeypatch):
    tasks = [load_task("mc:arc_easy", smollm2.tokenizer, smollm2.eos_token_id, samples=3),
             load_task("ppl:shakespeare/hamlet", smollm2.tokenizer, samples=1, ppl_window=64)]
    sets = [(), (0,), (14,), (20, 24, 26)]
    keep = np.ones((len(sets), smollm2.num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i, list(s)] = False
    engine = Engine(smollm2)
    assert engine.packing_limit() is not None, engine.packing_note
    calls = spy_rows(monkeypatch)
    packed = []
    for task in tasks:
        calls.clear()
        scores = engine.score(task.requests, keep)
        packed.append(any(row.packed for rows in calls for row in rows))
        # the multiple-choice rows (choices share a context) really ran packed: the values below check them
        assert packed == [True, False][: len(packed)], task.name
        for c, s in enumerate(sets):
            lp, gr = naive_scores(smollm2, task.requests, s)
            np.testing.assert_allclose(scores.logprob[c], lp, rtol=1e-4, err_msg=f"{task.name} {s}")
            naive_ps = task.per_sample(lp[None], gr[None])
            ps = task.per_sample(scores.logprob[c : c + 1], scores.greedy[c : c + 1])
            for key in ps:
                if key in ("correct", "correct_norm"):
                    assert (ps[key] == naive_ps[key]).all()  # accuracy counts exactly equal


def test_kl_to_the_dense_model_on_real_text(smollm2):
    """KL on Macbeth from the engine (dense added as a trie path) equals full-logit KL of plain
    forwards of physically pruned copies; the mildest block costs less KL than the first block."""
    task = load_task("kl:shakespeare/macbeth", smollm2.tokenizer, samples=1, ppl_window=48)
    sets = [(0,), (14,), (17, 18)]
    keep = np.ones((len(sets), smollm2.num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i, list(s)] = False
    r = Engine(smollm2).score(task.requests, keep, kl=True)
    for c, s in enumerate(sets):
        np.testing.assert_allclose(r.kl[c], naive_kl(smollm2, task.requests, s), rtol=1e-3, err_msg=str(s))
    kl = task.value(task.per_sample(r.logprob, r.greedy, r.kl))
    assert kl[1] < kl[2] < kl[0] and kl[0] > 1.0  # nats per token


def test_block_importance_on_hamlet_is_what_the_model_says(smollm2):
    """Real signal: block 0 is indispensable, block 14 nearly free, {20,24,26} in between."""
    task = load_task("ppl:shakespeare/hamlet", smollm2.tokenizer, samples=2, ppl_window=256)
    sets = [(), (0,), (14,), (20, 24, 26)]
    keep = np.ones((len(sets), smollm2.num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i, list(s)] = False
    r = Engine(smollm2).score(task.requests, keep)
    ppl = task.value(task.per_sample(r.logprob, r.greedy))
    dense, no0, no14, no3 = ppl
    assert 10 < dense < 200
    assert no0 > 50 * dense
    assert dense < no14 < 1.3 * dense
    assert 1.5 * dense < no3 < 20 * dense


def test_search_end_to_end_on_the_real_model(tmp_path):
    out = tmp_path / "run"
    res = api.run_search(model="smollm2-135m", out=out, method="beam", beam_width=2, max_remove=2,
                         tasks=["ppl:shakespeare/hamlet#2", "mc:arc_easy#4", "mc:sciq#3"],
                         ppl_window=32, protected=[0], progress=False)
    a = json.loads((out / "cross_dataset_analysis.json").read_text())
    assert a["model"] == "smollm2-135m" and a["num_blocks"] == 30
    assert set(a["tasks"]) == {"shakespeare_hamlet", "arc_easy", "sciq"}
    assert a["tasks"]["shakespeare_hamlet"]["higher_is_better"] is False
    assert len([c for c in a["candidates"] if len(c["removed"]) == 1]) == 29  # block 0 protected
    assert all(c["num_tasks"] == 3 and set(c["drops"]) == set(a["tasks"]) for c in a["candidates"])
    assert all(0 not in c["removed"] for c in a["candidates"])
    assert 0 < a["work"]["block_ratio"] < 0.55
    assert (out / "SUMMARY.md").read_text().startswith("# blockprune summary: smollm2-135m")
    k2 = [tuple(c["removed"]) for c in a["candidates"] if len(c["removed"]) == 2]  # sorted by mean drop
    assert res.result.steps[1] == k2[:2]


def test_a_gguf_file_is_a_model(smollm2, jsonl_tasks, tmp_path):
    """--model takes a GGUF file: dequantised on load, the same weights as the embedded default."""
    import json

    import torch

    from blockprune import cli, data, models

    directory, name = data.smollm2_gguf()
    gguf = models.load(str(directory / name), device="cpu")
    assert gguf.num_blocks == smollm2.num_blocks
    ids = torch.tensor([[1, 504, 3458, 28, 355, 441, 288, 325, 28]])
    with torch.no_grad():
        assert torch.equal(gguf.model(input_ids=ids).logits, smollm2.model(input_ids=ids).logits)
    out = tmp_path / "run"
    assert cli.main(["search", "--model", str(directory / name), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4",
                     "--method", "given", "--sets", "17,18,19", "--out", str(out), "--no-progress", "--device", "cpu",
                     "--no-latency"]) == 0
    analysis = json.loads((out / "cross_dataset_analysis.json").read_text())
    assert [c["removed"] for c in analysis["candidates"]] == [[17, 18, 19]]


def test_batched_generation_equals_generate_of_pruned_copies_on_the_real_model(smollm2):
    """The demo's generative task on SmolLM2: every (set, prompt) row decoded in one batch gives the
    tokens of `generate()` on the physically pruned copy, prompt by prompt (rows stop at EOS or at
    different limits)."""
    from test_decode import hf_tokens
    from test_engine import masks_for

    task = load_task("gen:basic_arithmetic/1d1d#4", smollm2.tokenizer, smollm2.eos_token_id, seed=1)
    sets = [(), (17,), (15, 17), (3, 20, 26)]
    limits = [12, 5, 9, 12]
    got = Engine(smollm2).generate(task.prompts, masks_for(sets, smollm2.num_blocks), limits, eos=task.eos)
    lengths = set()
    for c, removed in enumerate(sets):
        for p, prompt in enumerate(task.prompts):
            want = hf_tokens(smollm2, removed, prompt, limits[p], set(task.eos))
            assert got.tokens[c][p] == want, (removed, p)
            lengths.add(len(want))
    assert len(lengths) >= 2 and got.block_rows < got.naive_block_rows  # shared rows ran once
