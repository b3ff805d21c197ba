"""blockprune.engine: many candidates scored in one pass.

Owns: `scoring` (Engine: rows carry a keep-mask, skipped blocks cost nothing, the scoring and KL
heads; re-exported here), `trie` (shared kept prefixes computed once), `packing` (several requests
in one row), `decode` (greedy decoding of many removal sets at once, the prompt prefix shared),
`steps` (each decoding step's block arguments, from the model's own forward).
May import: blockprune.models, blockprune.tasks (a request), blockprune.kernels, and below.
"""

from ..tasks.request import Request
from .scoring import Engine, Scores, Work, trie_block_rows

__all__ = ["Engine", "Request", "Scores", "Work", "trie_block_rows"]
