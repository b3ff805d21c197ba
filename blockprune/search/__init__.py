"""blockprune.search: which removal sets to score, and scoring them on every task.

Owns: `methods` (sensitivity, greedy, beam, exhaustive, evolutionary via `evolve`, one-shot
baselines via `oneshot`, given sets; `run`, re-exported here), `evaluator` (every set scored on
every task, racing: sequential sampling), `shard` (the work cut into units), `cluster` (Ray
workers, one model replica each), `progress` (progress bars on and off a terminal).
May import: blockprune.analysis (statistics), blockprune.healing, blockprune.engine, and below.
"""

from . import evolve, oneshot
from .methods import (METHODS, Evaluator, Racing, SearchError, SearchResult, check_limits, check_rank_by_entries,
                      check_sets, parse_sets, read_sets_file, run)

__all__ = ["METHODS", "Evaluator", "Racing", "SearchError", "SearchResult", "check_limits", "check_rank_by_entries",
           "check_sets", "evolve", "oneshot", "parse_sets", "read_sets_file", "run"]
