"""Fixtures for the pytest-benchmark suites: the test suite's tiny models (tests/conftest.py), and a
tiny decoder-with-past ONNX graph.

    .venv/bin/python -m pytest bench -p no:cacheprovider                      # measure
    .venv/bin/python -m pytest bench -p no:cacheprovider --benchmark-disable  # smoke test (CI)
"""

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("blockprune_tests_conftest",
                                               Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests)
tiny_model = _tests.tiny_model
tiny_dir = _tests.tiny_dir  # noqa: F401 - a fixture, re-exported
# tests/reference.py: the one naive reference loop of tests and benchmarks (`import reference`);
# appended, so that tests/conftest.py never shadows this file as `conftest`
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))


def write_tiny_decoder(bm, removed, out: Path) -> Path:
    """An export directory (manifest + onnx/decoder_with_past.onnx) of `bm` without `removed`.

    Traced with the TorchScript exporter (under a second for a tiny model; the dynamo exporter that
    `blockprune export` uses takes ~15 s) around the same wrapper and I/O names, and checked with the
    export's own verification (prefill and decode step vs PyTorch, names per kept layer).
    """
    from blockprune import models
    from blockprune.export import MANIFEST
    from blockprune.export import onnx as ox

    pruned = models.remove_blocks(bm, removed)
    n = len(pruned.blocks)
    past = ox._probe_past(pruned.model, n, 2, 3)
    ids = torch.randint(0, bm.model.get_input_embeddings().num_embeddings, (2, 5))
    mask, positions = torch.ones(2, 8, dtype=torch.long), torch.arange(3, 8).expand(2, -1)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
            **{name: {0: "batch", 2: "past"} for name in ox.past_names(n)},
            **{name: {0: "batch", 2: "total"} for name in ox.present_names(n)}}
    graph = Path(out) / "onnx" / ox.DECODER_FILE
    graph.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ox.DecoderWithPastGraph(pruned.model, n).eval(), (ids, mask, positions, *past), str(graph),
                          input_names=["input_ids", "attention_mask", "position_ids", *ox.past_names(n)],
                          output_names=["logits", *ox.present_names(n)], dynamic_axes=axes, dynamo=False,
                          opset_version=17)
    ox.verify_decoder(pruned.model, graph)
    (Path(out) / MANIFEST).write_text(json.dumps({"model": bm.name, "removed": sorted(removed),
                                                  "kept_blocks": bm.num_blocks - len(set(removed)), "formats": ["onnx"]}))
    return Path(out)
