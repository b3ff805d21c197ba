"""blockprune.models: the model as a list of blocks.

Owns: `sources` (what --model names: an embedded name, a directory, a GGUF file, a hub id; the
embedded model's conversion; content hashes), `adapter` (BlockModel: the prelude, each block as a
callable, the final norm and head, for every architecture it drives; physical removal),
`loader` (`load`, `wrap`: a model loaded and checked, re-exported here), `parity` (the load-time
check that running block by block equals the model's own forward), `fused` (the Triton runner of
a whole block, checked against the adapter).
May import: blockprune.data, blockprune.runs, blockprune.tasks, blockprune.kernels.
"""

from .loader import (BlockModel, ModelError, Prelude, check_device, check_parity, find_blocks, load,
                     quiet_transformers, remove_blocks, resolve, weights_bytes, without_blocks, wrap)
from .units import UNITS, blocks_left, prune, remove_units, unit_model

__all__ = ["BlockModel", "ModelError", "Prelude", "UNITS", "blocks_left", "check_device", "check_parity", "find_blocks",
           "load", "prune", "quiet_transformers", "remove_blocks", "remove_units", "resolve", "unit_model",
           "weights_bytes", "without_blocks", "wrap"]
