"""BIG-bench's tasks (`task.json` files) from the `bigbench==1.0.0` sdist, where it is still in the
cache: PyPI no longer serves its files (December 2026)."""

from __future__ import annotations

import difflib
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from .cache import DataError, archive_members, atomic_open, cache_dir, one_line, scan_tar


_TASK_RE = re.compile(r"(?:^|/)bigbench/benchmark_tasks/(?P<name>[^/]+(?:/[^/]+)?)/task\.json$")


def _task_members() -> dict[str, str]:
    """'task' or 'task/subtask' -> tar member name of its task.json."""
    tasks = {}
    for member in archive_members("bigbench"):
        match = _TASK_RE.search(member)
        if match:
            tasks[match["name"]] = member
    return tasks


def bigbench_tasks() -> list[str]:
    """Sorted names ('task' and 'task/subtask') of all BIG-bench tasks with a task.json."""
    return sorted(_task_members())


def _task_key(task: str, subtask: str | None) -> str:
    key = task.strip("/") if subtask is None else f"{task.strip('/')}/{subtask.strip('/')}"
    if not key or ".." in key.split("/"):
        raise DataError(f"invalid BIG-bench task name {key!r}")
    return key


def _task_cache_path(key: str) -> Path:
    return cache_dir() / "bigbench" / key / "task.json"


def _unknown_task(key: str, tasks: dict[str, str]) -> DataError:
    """A DataError for an unknown task, listing close matches or the task's subtasks."""
    top = key.split("/")[0]
    if "/" in key and top in tasks:
        subtasks = sorted(k.split("/", 1)[1] for k in tasks if k.startswith(top + "/"))
        close = difflib.get_close_matches(key.split("/", 1)[1], subtasks, n=5, cutoff=0.6)
        if close:
            hint = f"did you mean: {', '.join(f'{top}/{s}' for s in close)}"
        else:
            hint = f"subtasks of {top}: {', '.join(subtasks[:10]) or '(none)'}"
            if len(subtasks) > 10:
                hint += f", ... ({len(subtasks)} in all)"
    else:
        close = difflib.get_close_matches(key, tasks, n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}" if close else "see bigbench_tasks()"
    return DataError(f"unknown BIG-bench task {key!r}; {hint}")


def bigbench_prefetch(names: Iterable[str]) -> None:
    """Extract the task.json of several tasks ('task' or 'task/subtask') in one pass over the archive."""
    keys = [_task_key(n, None) for n in names]
    missing = [k for k in keys if not _task_cache_path(k).is_file()]
    if not missing:
        return
    tasks = _task_members()
    for key in missing:
        if key not in tasks:
            raise _unknown_task(key, tasks)
    destinations = {tasks[k]: _task_cache_path(k) for k in missing}

    def save(member: str, src: IO[bytes]) -> None:
        with atomic_open(destinations[member]) as out:
            shutil.copyfileobj(src, out, 1 << 20)

    scan_tar("bigbench", destinations, save)


def bigbench_task(task: str, subtask: str | None = None) -> dict:
    """The parsed task.json of a BIG-bench task or subtask (``task="a/b"`` also works).

    Extracted from the archive into cache_dir()/"bigbench" on first use. For
    tasks split into subtasks the top-level task.json may have no examples.
    """
    key = _task_key(task, subtask)
    path = _task_cache_path(key)
    if not path.is_file():
        bigbench_prefetch([key])
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"unreadable cached {path}: {one_line(str(exc))}; delete it") from None
