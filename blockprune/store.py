"""The resumable result store of a run directory.

* `run.json`: the run's settings (model, tasks with their sample ids, seed, window, method, ...)
  and versions, written atomically (temporary file, then rename). A run directory is bound to its
  settings: opening it with different ones is refused.
* `results.jsonl`: one record per (candidate, task), appended as each completes, flushed and
  fsynced. A record is a single line; a torn last line from a killed process is dropped (and cut
  from the file) on the next open, so every record in the store is whole.
* Records of `"type": "work"` log the engine's work counters per scoring call.
* Records of `"type": "part"` hold a candidate's per-sample scores on some samples of a task
  (racing scores candidates on growing sample subsets; see blockprune.search). A candidate that
  reaches the end of a race gets a whole record like any other; one eliminated early keeps parts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"


class StoreError(Exception):
    """A run directory that cannot be used (corrupt, or created with other settings)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def key_of(removed: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(int(b) for b in removed))


class Store:
    def __init__(self, directory: Path, settings: dict, extra: dict | None = None):
        """Open (or create) the store in `directory` for `settings`.

        `settings` are what the scores depend on, and the search that produced them; `extra`
        (versions, timestamps) is recorded but not compared.
        """
        self.dir = Path(directory)
        self.settings = settings
        self.results: dict[tuple[tuple[int, ...], str], dict] = {}
        self.work: list[dict] = []
        self.parts: dict[tuple[tuple[int, ...], str], list[dict]] = {}
        run_file = self.dir / RUN_FILE
        if run_file.exists():
            try:
                stored = json.loads(run_file.read_text(encoding="utf-8"))["settings"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise StoreError(f"{run_file} is corrupt; use a new --out directory") from None
            diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            if diff:
                raise StoreError(
                    f"{self.dir} holds a run with different settings ({', '.join(diff)}); "
                    "rerun with the same settings to resume, or use a new --out directory"
                )
            self._load()
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_file, {"settings": settings, **(extra or {})})

    @classmethod
    def open_existing(cls, directory: Path) -> "Store":
        """Open a finished or interrupted run for reading (reports)."""
        run_file = Path(directory) / RUN_FILE
        if not run_file.exists():
            raise StoreError(f"{directory} is not a blockprune run directory (no {RUN_FILE})")
        try:
            settings = json.loads(run_file.read_text(encoding="utf-8"))["settings"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise StoreError(f"{run_file} is corrupt") from None
        return cls(directory, settings)

    @property
    def run_info(self) -> dict:
        return json.loads((self.dir / RUN_FILE).read_text(encoding="utf-8"))

    def _load(self) -> None:
        path = self.dir / RESULTS_FILE
        if not path.exists():
            return
        raw = path.read_bytes()
        good_end = raw.rfind(b"\n") + 1  # a torn last line (no newline) is dropped
        if good_end < len(raw):
            with open(path, "r+b") as f:
                f.truncate(good_end)
        for lineno, line in enumerate(raw[:good_end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise StoreError(f"{path}:{lineno}: corrupt record; use a new --out directory") from None
            self._index(rec)

    def _index(self, rec: dict) -> None:
        if rec.get("type") == "work":
            self.work.append(rec)
        elif rec.get("type") == "part":
            self.parts.setdefault((key_of(rec["removed"]), rec["task"]), []).append(rec)
        else:
            self.results[(key_of(rec["removed"]), rec["task"])] = rec

    def has(self, removed: Iterable[int], task: str) -> bool:
        return (key_of(removed), task) in self.results

    def get(self, removed: Iterable[int], task: str) -> dict:
        return self.results[(key_of(removed), task)]

    def append(self, records: list[dict]) -> None:
        """Persist records (one line each), then index them. Already-stored ones are skipped."""
        fresh = [r for r in records if r.get("type") in ("work", "part") or (key_of(r["removed"]), r["task"]) not in self.results]
        if not fresh:
            return
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in fresh)
        with open(self.dir / RESULTS_FILE, "a", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        for r in fresh:
            # index what a reader of the file would get back, so resumed and fresh runs agree
            self._index(json.loads(json.dumps(r)))

    def candidates(self) -> list[tuple[int, ...]]:
        """Candidates with a whole record for at least one task."""
        return sorted({k for k, _ in self.results}, key=lambda k: (len(k), k))

    def partial_candidates(self) -> list[tuple[int, ...]]:
        """Candidates scored on only some samples (eliminated by racing, or interrupted)."""
        return sorted({k for k, t in self.parts if (k, t) not in self.results}, key=lambda k: (len(k), k))

    def samples_of(self, removed: Iterable[int], task: str) -> dict[int, dict]:
        """{sample index: {per-sample field: value}} of everything stored for (candidate, task)."""
        key = key_of(removed)
        out: dict[int, dict] = {}
        recs = self.parts.get((key, task), [])
        if (key, task) in self.results:
            rec = self.results[(key, task)]
            n = len(next(iter(rec["per_sample"].values())))
            recs = [{**rec, "samples": list(range(n))}]
        for rec in recs:
            for j, i in enumerate(rec["samples"]):
                out[int(i)] = {f: v[j] for f, v in rec["per_sample"].items()}
        return out
