"""Generation latency of a tiny model: PyTorch dense vs pruned vs the exported ONNX decoder (pytest-benchmark).

One greedy generation (prompt 32 + 16 tokens, batch 1, KV cache) per round with the runners that
`blockprune bench` uses (`latency.TorchGeneration`, `latency.OrtGeneration`); every runner must produce
the tokens of HF `generate()`. On a real model: `blockprune bench` (see README.md).
"""

import numpy as np
import pytest
import torch

from blockprune import latency, models
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
