"""blockprune.analysis: what the scores say.

Owns: `candidates` (every candidate's per-task drops with their intervals, read from the store:
`build`, re-exported here), `stats` (paired bootstrap, sample-size planning), `advice` (the
recommendation rules: best set per k, conservative / balanced / aggressive, the stepwise path),
`format` (how a figure is written: a drop, a removal set by its units' names, a table cell),
`budgets` (--budget kv=/params=/decode=: the best set within a measured cost).
May import: blockprune.runs, blockprune.tasks, and below.
"""

from .candidates import AnalysisError, build

__all__ = ["AnalysisError", "build"]
