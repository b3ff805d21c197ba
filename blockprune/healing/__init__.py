"""blockprune.healing: repairing the cut (`--heal linear`).

Owns: `heal` (Healing: the closed-form linear map of each removed run, from one dense pass over
the calibration tokens, folded into the output projection of the block before the run),
`calibration` (the windows and samples it is fitted on, disjoint from everything scored).
May import: blockprune.models, blockprune.tasks, and below (never the engine: it is given a
Healing and asks it for folded weights).
"""
