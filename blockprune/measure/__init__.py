"""blockprune.measure: what is measured after a search, on the real model.

Owns: `latency` (dense vs pruned prefill and decode: `blockprune bench` and a run's latency step),
`generation` (timed generation in torch, onnxruntime and ONNX Runtime GenAI), `heldout` (the
held-out check: `blockprune validate`), `costs` (each unit's KV bytes, weight bytes and time,
measured before a search by halves or with --budget; an unreachable budget refused there).
May import: everything below it (blockprune.export, blockprune.settings, blockprune.report, ...);
only blockprune.api and blockprune.cli import it.
"""
