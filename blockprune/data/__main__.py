"""`python -m blockprune.data [task ...]`: download everything, build the archive indexes, and
extract the named BIG-bench tasks, so later runs are fast."""

import sys

from . import benchmark_datasets, bigbench_prefetch, fetch_all, shakespeare_plays
from .cache import DataError

fetch_all()
print(f"{len(shakespeare_plays())} Shakespeare texts, {len(benchmark_datasets())} benchmark datasets")
try:
    if sys.argv[1:]:
        bigbench_prefetch(sys.argv[1:])
except DataError as exc:
    sys.exit(f"error: {exc}")
