"""blockprune: find which transformer blocks can be removed with the least loss, and ship the result.

A package per stage, lowest first; each may import only the packages before it (checked by
bench/import_graph.py and tests/test_import_graph.py):

    data      registry downloads and the cache (the embedded model, Shakespeare, benchmarks)
    runs      where blockprune writes: the output checks, the run-directory lock, the store
    tasks     task specs, kinds, loaders, benchmarks, lm-eval, generative tasks, scores
    models    --model resolution, the block adapter, loading with its parity check, fused blocks
    engine    masked batched scoring: the trie, packing, the heads, batched decoding
    healing   the closed-form repair maps and their calibration
    analysis  per-candidate drops, bootstrap statistics, the recommendation rules
    search    the methods, the evaluator with racing, work shards, Ray workers
    report    REPORT.md, its sections, plots and words; the replaced system's view
    export    (export/) verified HF, ONNX, ONNX Runtime GenAI and GGUF artifacts
    settings  every option of a search (settings.py)
    measure   latency, timed generation, the held-out check
    api, cli  the Python API and the command line

kernels/ (blockprune.kernels) holds the Triton ops beside their torch references; it imports
nothing of blockprune.
"""

__version__ = "0.1.0"


def versions() -> dict:
    """Versions of blockprune and the libraries its results depend on (optional ones when installed)."""
    import torch
    import transformers

    out = {"blockprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript", "triton"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out
