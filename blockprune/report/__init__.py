"""blockprune.report: REPORT.md and its files, from a run's store.

Owns: `write` (the report, SUMMARY.md, the JSON files: `write_report`, re-exported here), `text`
(the report's words in English and Chinese), `plots`, one module per section (`healing`,
`generation`, `heldout`, `latency`, `budgets`), and the replaced system's view (`replaced`: its result files
read; `replaced_report`: `report --replaced-system`).
May import: the packages below it (blockprune.analysis, blockprune.healing, blockprune.runs,
blockprune.tasks ...): a report reads a store, it never runs a model; never blockprune.measure
or blockprune.export.
"""

from .write import (DEFAULT_TOLERANCE, TEXT, ReportError, build_analysis, check_options, held_out_flags,
                    held_out_verdicts, latency_sets, load_validation, run_tolerance, write_report)

__all__ = ["DEFAULT_TOLERANCE", "TEXT", "ReportError", "build_analysis", "check_options", "held_out_flags",
           "held_out_verdicts", "latency_sets", "load_validation", "run_tolerance", "write_report"]
