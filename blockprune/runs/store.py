"""The resumable result store of a run directory.

* `run.json`: the run's settings (model, tasks with their sample ids, seed, window, method, ...)
  and versions, written atomically (temporary file, then rename). A run directory is bound to its
  settings: opening it with different ones is refused.
* `results.jsonl`: one record per (candidate, task), appended as each completes, flushed and
  fsynced. A record is a single line; a torn last line from a killed process is dropped (and cut
  from the file) on the next open, so every record in the store is whole.
* Records of `"type": "work"` log the engine's work counters per scoring call.
* Every record carries `"run"`, a fingerprint of the settings it was scored under: a store can
  tell its own records from another run's, and a run.json lost after the fact is rebuilt only
  when every record proves it was scored under the settings asked for now.
* A line that is not a whole record of this run (bad JSON, the wrong shape, an unknown task) is
  skipped with a warning naming it; its candidate is then simply missing and is scored again.
* Records of `"type": "plan"` list the sets a search step is about to score, and `"type": "done"`
  marks a search that finished: a report on a store without it says the run is incomplete and
  which planned sets have no record.
* `run.json`'s `"content"`: hashes of what the run read (`{"model": ..., "tasks": {name: ...}}`,
  see blockprune.models.sources.content_hash and blockprune.tasks.source_hash). Resuming, or validating,
  with a model or task data whose content changed since is refused in one line; a run written
  before blockprune kept them gets them on its next resume.
* A record naming blocks out of the model's range, or holding per-sample values that are not
  finite numbers (NaN, a string), is skipped with a warning like any other unusable line.
* Records of `"type": "part"` hold a candidate's per-sample scores on some samples of a task
  (racing scores candidates on growing sample subsets; see blockprune.search). A candidate that
  reaches the end of a race gets a whole record like any other; one eliminated early keeps parts.
* In memory the store is the run's results (the file is for durability): `Store.columns(set, task)`
  gives a (candidate, task)'s sample indices and per-sample fields as arrays, filled from each
  record as it is appended or read on resume, so a resumed run and a fresh one hold the same.
  The evaluator, racing and the analysis read these; after a search its store is passed on to the
  report, the held-out check and the latency step instead of results.jsonl being parsed again.
* For tests only: with `BLOCKPRUNE_KILL_AFTER_RECORDS=N` in its environment a process SIGKILLs
  itself right after the append that brings the records it wrote to N or more -- `kill -9` at a
  known point, however fast the machine. Unset (always, outside tests), nothing happens.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
from numbers import Real
from pathlib import Path
from typing import Iterable

import numpy as np

from .identity import (RESULTS_FILE, RUN_FILE, StoreError, content_changes, fingerprint, merge_content,
                       refuse_changed_content, refuse_other_settings, stored_settings)
from .rundir import LOCK_FILE, chmod_like_user



_WARNED: set[str] = set()


_written = 0  # records this process appended (for the tests' kill point)


def _kill_point(n: int) -> None:
    """BLOCKPRUNE_KILL_AFTER_RECORDS=N (tests only): SIGKILL this process once it has appended N records."""
    global _written
    _written += n
    limit = os.environ.get("BLOCKPRUNE_KILL_AFTER_RECORDS")
    if limit and _written >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)



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
        chmod_like_user(tmp)  # mkstemp makes 0600; the user's umask decides, as for results.jsonl
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _ids(value) -> bool:
    return isinstance(value, list) and all(isinstance(b, int) and not isinstance(b, bool) for b in value)


def _out_of_range(ids: list, num_blocks) -> str | None:
    if isinstance(num_blocks, int) and not isinstance(num_blocks, bool):
        bad = sorted({b for b in ids if not 0 <= b < num_blocks})
        if bad:
            return f"block ids {bad[:5]} out of range 0..{num_blocks - 1}"
    if len(set(ids)) != len(ids):
        return "a block id named twice"
    return None


def _finite(v) -> bool:
    return isinstance(v, Real) and math.isfinite(v)


def _values_error(per: dict) -> str | None:
    for field, values in per.items():
        for v in values:
            if not (_finite(v) or (isinstance(v, list) and all(_finite(x) for x in v))):
                shown = repr(v) if len(repr(v)) <= 20 else repr(v)[:17] + "..."
                return f"per-sample {field!r} holds {shown}, not a finite number"
    return None


def _shape_error(rec, tasks: dict | None, num_blocks=None) -> str | None:
    """Why `rec` is not a record this store can use, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    kind = rec.get("type")
    if kind in ("work", "done"):
        return None
    if kind == "plan":
        ok = isinstance(rec.get("sets"), list) and all(_ids(s) for s in rec["sets"])
        if not ok:
            return "a plan without a list of block-id lists"
        return next((f"a plan set {why}" for s in rec["sets"] if (why := _out_of_range(s, num_blocks))), None)
    if kind not in (None, "part"):
        return f"unknown record type {kind!r}"
    if not _ids(rec.get("removed")):
        return "'removed' is not a list of block ids"
    why = _out_of_range(rec["removed"], num_blocks)
    if why:
        return f"'removed' names {why}"
    if not isinstance(rec.get("task"), str) or (tasks is not None and rec["task"] not in tasks):
        return f"unknown task {rec.get('task')!r}"
    per = rec.get("per_sample")
    if not isinstance(per, dict) or not per or not all(isinstance(v, list) for v in per.values()):
        return "'per_sample' is not a mapping of lists"
    lengths = {len(v) for v in per.values()}
    if kind == "part":
        samples = rec.get("samples")
        if not _ids(samples) or lengths != {len(samples)}:
            return "a part whose 'samples' do not match its per-sample lists"
    else:
        n = tasks.get(rec["task"], {}).get("n") if tasks else None
        if len(lengths) != 1 or (isinstance(n, int) and lengths != {n}):
            return "per-sample lists of the wrong length"
        if not isinstance(rec.get("value"), Real) or isinstance(rec.get("value"), bool):
            return "'value' is not a number"
    return _values_error(per)


def key_of(removed: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(int(b) for b in removed))


def column(values: list) -> np.ndarray:
    """Per-sample values as an array; samples that hold lists (per-choice fields) as an object array."""
    if values and isinstance(values[0], list):
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    return np.asarray(values)


_NO_SAMPLES = np.zeros(0, dtype=np.int64)


class Store:
    def __init__(self, directory: Path, settings: dict, extra: dict | None = None, readonly: bool = False,
                 content: dict | None = None):
        """Open (or create) the store in `directory` for `settings`.

        `settings` are what the scores depend on, and the search that produced them; `extra`
        (versions, timestamps) is recorded but not compared. `content`: hashes of the model and of
        each task's data (`{"model": str | None, "tasks": {name: str}}`), compared with the run's
        (refused when they differ; recorded when the run has none). `readonly`: never write (reports).
        """
        self.dir = Path(directory)
        self.settings = settings
        self.run_id = fingerprint(settings)
        self.readonly = readonly
        self.results: dict[tuple[tuple[int, ...], str], dict] = {}
        self.work: list[dict] = []
        self.parts: dict[tuple[tuple[int, ...], str], list[dict]] = {}
        self.planned: list[tuple[int, ...]] = []
        # (candidate, task) -> (sample indices, ascending; {per-sample field: values at them}):
        # what the records hold, as arrays (a whole record: every sample; else its parts merged)
        self._columns: dict[tuple[tuple[int, ...], str], tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        self.done = False
        self.tracked = False  # records carry run fingerprints (older stores cannot say if they finished)
        self.skipped: list[str] = []
        run_file = self.dir / RUN_FILE
        results_file = self.dir / RESULTS_FILE
        if run_file.exists():
            try:
                stored = json.loads(run_file.read_text(encoding="utf-8"))["settings"]
            except (ValueError, KeyError, TypeError):
                raise StoreError(f"{run_file} is corrupt; use a new --out directory") from None
            if not isinstance(stored, dict):
                raise StoreError(f"{run_file} is corrupt; use a new --out directory")
            refuse_other_settings(self.dir, stored, settings)
            if content is not None:
                info = self.run_info
                refuse_changed_content(self.dir, info.get("content"), content, "resume")
                merged = merge_content(info.get("content"), content)
                if merged != info.get("content") and not readonly:
                    self.set_info("content", merged)
            self._load()
        elif results_file.exists():
            # run.json is gone: the records may say whose they are
            self._load(adopt=True)
            atomic_write_json(run_file, {"settings": settings, **(extra or {}), **({"content": content} if content else {})})
            print(f"blockprune: warning: {run_file} was missing; rebuilt it from results.jsonl, whose "
                  f"{len(self.results)} records were all scored under these settings", file=sys.stderr)
        else:
            stray = sorted(p.name for p in self.dir.iterdir() if p.name != LOCK_FILE) if self.dir.is_dir() else []
            if stray:
                raise StoreError(f"--out {self.dir} is not empty and is not a blockprune run directory "
                                 f"(holds {', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}); "
                                 "give a new or empty directory")
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_file, {"settings": settings, **(extra or {}), **({"content": content} if content else {})})

    @classmethod
    def open_existing(cls, directory: Path) -> "Store":
        """Open a finished or interrupted run for reading (reports)."""
        return cls(directory, cls.existing_settings(directory), readonly=True)

    @staticmethod
    def existing_settings(directory: Path) -> dict:
        """The settings of a run directory's run.json (StoreError when it is not a run directory);
        results.jsonl is not read."""
        run_file = Path(directory) / RUN_FILE
        if not Path(directory).is_dir():
            raise StoreError(f"{directory} is not a directory")
        if not run_file.exists():
            raise StoreError(f"{directory} is not a blockprune run directory (no {RUN_FILE})")
        try:
            settings = json.loads(run_file.read_text(encoding="utf-8"))["settings"]
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{run_file} is corrupt") from None
        except OSError as exc:
            raise StoreError(f"cannot read {run_file}: {exc.strerror or exc}") from None
        if not isinstance(settings, dict) or not isinstance(settings.get("tasks", {}), dict):
            raise StoreError(f"{run_file} is corrupt")
        return settings

    @property
    def run_info(self) -> dict:
        return json.loads((self.dir / RUN_FILE).read_text(encoding="utf-8"))

    def set_info(self, key: str, value) -> None:
        """Record `value` under `key` in run.json beside the settings (never part of them: a run
        resumed on other hardware is the same run)."""
        if self.readonly:
            raise StoreError(f"{self.dir}: the store was opened for reading")
        if key == "settings":
            raise ValueError("the settings of a run are fixed")
        info = self.run_info
        info[key] = value
        atomic_write_json(self.dir / RUN_FILE, info)

    def _load(self, adopt: bool = False) -> None:
        """Index results.jsonl. `adopt`: run.json is missing, so every record must carry this
        run's fingerprint (else the store is refused: nothing says what the records were scored under)."""
        path = self.dir / RESULTS_FILE
        if not path.exists():
            return
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
        good_end = raw.rfind(b"\n") + 1  # a torn last line (no newline) is dropped
        if good_end < len(raw) and not self.readonly:
            with open(path, "r+b") as f:
                f.truncate(good_end)
        tasks = self.settings.get("tasks") if isinstance(self.settings.get("tasks"), dict) else None
        num_blocks = self.settings.get("num_blocks")
        if isinstance(num_blocks, int) and self.settings.get("units", "blocks") != "blocks":
            num_blocks *= 2  # a search by halves: unit ids 0..2L-1 (blockprune.models.units)
        for lineno, line in enumerate(raw[:good_end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._skip(path, lineno, "not valid JSON")
                continue
            why = _shape_error(rec, tasks, num_blocks)
            if why is None and rec.get("run", self.run_id if not adopt else None) != self.run_id:
                if adopt:
                    raise StoreError(f"{self.dir} has {RESULTS_FILE} but no {RUN_FILE}, and its line {lineno} was not "
                                     "scored under these settings; restore run.json or use a new --out directory")
                why = f"scored under other settings (run {rec.get('run')}, this run is {self.run_id})"
            if why is not None:
                if adopt:
                    raise StoreError(f"{self.dir} has {RESULTS_FILE} but no {RUN_FILE}, and its line {lineno} is "
                                     f"unusable ({why}); use a new --out directory")
                self._skip(path, lineno, why)
                continue
            self._index(rec)

    def _skip(self, path: Path, lineno: int, why: str) -> None:
        msg = f"{path}:{lineno}: skipped a record ({why}); its candidate is scored again on resume"
        self.skipped.append(msg)
        if msg not in _WARNED:  # a report opens the store several times: say it once
            _WARNED.add(msg)
            print(f"blockprune: warning: {msg}", file=sys.stderr)

    def _index(self, rec: dict) -> None:
        kind = rec.get("type")
        self.tracked = self.tracked or "run" in rec
        if kind == "work":
            self.work.append(rec)
        elif kind == "plan":
            self.planned.extend(key_of(s) for s in rec["sets"])
        elif kind == "done":
            self.done = True
        elif kind == "part":
            key = (key_of(rec["removed"]), rec["task"])
            self.parts.setdefault(key, []).append(rec)
            if key not in self.results:
                self._add_part(key, rec)
        else:
            key = (key_of(rec["removed"]), rec["task"])
            self.results[key] = rec
            per = rec["per_sample"]
            n = len(next(iter(per.values())))
            self._columns[key] = (np.arange(n), {f: column(v) for f, v in per.items()})

    def _add_part(self, key, rec: dict) -> None:
        """Merge a part's samples into the (candidate, task)'s columns (a sample scored twice: the later part's)."""
        idx = np.asarray([int(i) for i in rec["samples"]], dtype=np.int64)
        fields = {f: column(v) for f, v in rec["per_sample"].items()}
        if key in self._columns:
            old_idx, old = self._columns[key]
            idx = np.concatenate([old_idx, idx])
            fields = {f: np.concatenate([old[f], v]) for f, v in fields.items() if f in old}
        # the last occurrence of each sample, in ascending sample order
        rev = idx[::-1]
        uniq, first = np.unique(rev, return_index=True)
        pick = len(idx) - 1 - first
        self._columns[key] = (uniq, {f: v[pick] for f, v in fields.items()})

    def columns(self, removed: Iterable[int], task: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(sample indices, ascending; {per-sample field: array of its values at them}) of everything
        stored for (candidate, task): all samples when it has a whole record; none when nothing."""
        return self._columns.get((key_of(removed), task), (_NO_SAMPLES, {}))

    def has(self, removed: Iterable[int], task: str) -> bool:
        return (key_of(removed), task) in self.results

    def get(self, removed: Iterable[int], task: str) -> dict:
        return self.results[(key_of(removed), task)]

    def append(self, records: list[dict]) -> None:
        """Persist records (one line each), then index them. Already-stored ones are skipped."""
        if self.readonly:
            raise StoreError(f"{self.dir}: the store was opened for reading")
        fresh = [{**r, "run": self.run_id} for r in records
                 if r.get("type") in ("work", "part", "plan", "done") or (key_of(r["removed"]), r["task"]) not in self.results]
        if not fresh:
            return
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in fresh)
        with open(self.dir / RESULTS_FILE, "a", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        for r in fresh:
            # records hold JSON values only (lists, not tuples or numpy types), so what is indexed is
            # what a reader of the file gets back: resumed and fresh runs agree
            self._index(r)
        _kill_point(len(fresh))

    def plan(self, sets: Iterable[Iterable[int]]) -> None:
        """Record the sets a search step is about to score (a report can then name the missing ones)."""
        keys = [key_of(s) for s in sets]
        new = [list(k) for k in dict.fromkeys(keys) if k not in set(self.planned)]
        if new:
            self.append([{"type": "plan", "sets": new}])

    def finish(self) -> None:
        if not self.done:
            self.append([{"type": "done"}])

    def missing(self) -> list[tuple[int, ...]]:
        """Planned sets with no whole record on some task and no racing part either (never scored)."""
        tasks = list(self.settings.get("tasks", {}))
        out = []
        for k in dict.fromkeys(self.planned):
            if any((k, t) not in self.results and (k, t) not in self.parts for t in tasks):
                out.append(k)
        return out

    def candidates(self) -> list[tuple[int, ...]]:
        """Candidates with a whole record for at least one task."""
        return sorted({k for k, _ in self.results}, key=lambda k: (len(k), k))

    def partial_candidates(self) -> list[tuple[int, ...]]:
        """Candidates scored on only some samples (eliminated by racing, or interrupted)."""
        return sorted({k for k, t in self.parts if (k, t) not in self.results}, key=lambda k: (len(k), k))

    def samples_of(self, removed: Iterable[int], task: str) -> dict[int, dict]:
        """{sample index: {per-sample field: value}} of everything stored for (candidate, task)
        (a view of `columns`, for tests and callers that want one sample at a time)."""
        idx, per = self.columns(removed, task)
        return {int(i): {f: v[j] for f, v in per.items()} for j, i in enumerate(idx.tolist())}
