"""Generation latency of a tiny model: PyTorch dense vs pruned vs the exported ONNX decoder (pytest-benchmark).

One greedy generation (prompt 32 + 16 tokens, batch 1, KV cache) per round with the runners that
`blockprune bench` uses (`latency.TorchGeneration`, `latency.OrtGeneration`); every runner must produce
the tokens of HF `generate()`. On a real model: `blockprune bench` (see README.md).
"""

import numpy as np
import pytest
import torch

from blockprune.measure import latency
from blockprune import models
from conftest import tiny_model, write_tiny_decoder

PROMPT, GEN = 32, 16
GROUP = "generate 32 + 16 tokens, batch 1, tiny Llama (6 blocks)"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    bm = tiny_model("llama", layers=6)
    ids = latency._prompt(262, 1, PROMPT)
    ids_t = torch.as_tensor(ids)
    expected = {}
    for removed in ([], [1, 3]):
        model = models.remove_blocks(bm, removed).model if removed else bm.model
        out = model.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=GEN,
                             min_new_tokens=GEN, do_sample=False, eos_token_id=None, pad_token_id=0)
        expected[tuple(removed)] = out[:, PROMPT:].numpy()
    graph = write_tiny_decoder(bm, [], tmp_path_factory.mktemp("ort")) / "onnx" / "decoder_with_past.onnx"
    return bm, ids, expected, graph


def _check(run: dict, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(run["tokens"], expected)
    assert run["prefill"] > 0 and len(run["steps"]) == GEN - 1 and min(run["steps"]) > 0


@pytest.mark.benchmark(group=GROUP)
def test_torch_dense(benchmark, setup):
    bm, ids, expected, _ = setup
    _check(benchmark(latency.TorchGeneration(bm.model), ids, GEN), expected[()])


@pytest.mark.benchmark(group=GROUP)
def test_torch_pruned(benchmark, setup):
    bm, ids, expected, _ = setup
    pruned = models.remove_blocks(bm, [1, 3])
    _check(benchmark(latency.TorchGeneration(pruned.model), ids, GEN), expected[(1, 3)])


@pytest.mark.benchmark(group=GROUP)
def test_onnxruntime_dense(benchmark, setup):
    bm, ids, expected, graph = setup
    _check(benchmark(latency.OrtGeneration(graph, torch.device("cpu")), ids, GEN), expected[()])


# ---- speed claims the test suite no longer times (tests/ checks what happens, bench/ how fast) ------
# Asserted only when benchmarks run (`pytest bench`); with --benchmark-disable (make test) they skip
# before doing any work.
ELASTIC = "onnx-elastic prefill of 64 tokens, tiny Llama (6 blocks)"


@pytest.fixture(scope="module")
def elastic_graph(tmp_path_factory):
    from blockprune.export import elastic, export_model

    bm = tiny_model("llama", layers=6)
    out = tmp_path_factory.mktemp("elastic") / "out"
    export_model(bm, [1, 3], out, formats=["onnx-elastic"])
    return out / "onnx-elastic" / elastic.ELASTIC_FILE


def _elastic_prefill(sess, keep):
    ids = np.arange(3, 67, dtype=np.int64)[None]
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in sess.get_inputs()
            if i.name.startswith("past_key_values.")}
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(64)[None], "keep": keep, **past}
    return lambda: sess.run(["logits"], feeds)


@pytest.mark.benchmark(group=ELASTIC)
@pytest.mark.parametrize("skipped", [0, 4])
def test_onnx_elastic_skipping_blocks_saves_time(benchmark, request, skipped):
    """Skipping 4 of 6 blocks in the elastic graph runs faster than keeping them all (was
    `elastic_speedup > 1` in tests/test_export_runtimes.py)."""
    if benchmark.disabled:
        pytest.skip("a speed claim: measured with benchmarks enabled")
    import time

    import onnxruntime as ort

    sess = ort.InferenceSession(str(request.getfixturevalue("elastic_graph")))
    keep = np.array([True] + [False] * skipped + [True] * (5 - skipped))
    dense, cut = _elastic_prefill(sess, np.ones(6, dtype=bool)), _elastic_prefill(sess, keep)
    best = {}
    for name, run in (("dense", dense), ("cut", cut)) * 10:  # interleaved, best of 10 each
        start = time.perf_counter()
        run()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    benchmark(cut)
    if skipped:
        assert best["cut"] < best["dense"], best


@pytest.mark.benchmark(group="one-line refusals")
@pytest.mark.parametrize("flags", [["--model", "no-such-model-anywhere"],  # was tests/test_hostile.py's < 10 s
                                   ["--ray-address", "127.0.0.1:1"]])  # was tests/test_cluster.py's < 10 s
def test_refusals_answer_within_10_s(benchmark, tiny_dir, tmp_path, monkeypatch, capsys, flags):
    if benchmark.disabled:
        pytest.skip("a speed claim: measured with benchmarks enabled")
    from blockprune import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = tmp_path / "t.jsonl"
    task.write_text('{"text": "To be, or not to be, that is the question."}\n')
    args = ["search", "--model", str(tiny_dir), "--task", f"jsonl:{task}", "--out", str(tmp_path / "o"), "--device", "cpu",
            "--no-progress"]
    args = args[:1] + flags + args[3:] if flags[0] == "--model" else args + flags
    codes = benchmark.pedantic(cli.main, args=(args,), rounds=3)
    assert codes == 2 and not (tmp_path / "o").exists(), capsys.readouterr().err
    assert benchmark.stats.stats.max < 10
