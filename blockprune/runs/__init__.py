"""blockprune.runs: where blockprune writes, and the run directory's store.

Owns: `outputs` (may this command write here: `claim`, the one owner of that question; OUT/plain
reserved for a healed run's baseline), `rundir` (the one-writer lock of a run directory, temporary
folders swapped in whole, the user's umask), `identity` (a run's settings fingerprint, content
hashes, what differs), `store` (run.json and results.jsonl: the resumable per-sample records),
`names` (a run's units by name: 17, 17a, 17m; parsing them).
May import: blockprune.data only (nothing of it today); everything above writes through it.
"""
