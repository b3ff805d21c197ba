"""A run's identity: the fingerprint of its settings, the content hashes of what it read (model
and task data), and, when a run directory is opened with other ones, a one-line StoreError naming
what differs (`heal.ridge 0.01 (the run) vs 0.5 (now)`). blockprune.runs.store binds a run
directory to it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"


class StoreError(Exception):
    """A run directory that cannot be used (corrupt, or created with other settings)."""


def refuse_other_settings(directory: Path, stored: dict, settings: dict, skip=()) -> None:
    """One line when the run in `directory` was made with other settings (`skip`: keys not compared),
    naming what differs: `ridge 0.01 (the run) vs 0.5 (now)`."""
    diff = sorted(k for k in set(stored) | set(settings) if k not in skip and stored.get(k) != settings.get(k))
    if diff:
        said = [d for k in diff for d in _differences(k, stored.get(k, _ABSENT), settings.get(k, _ABSENT))]
        shown = "; ".join(said[:3]) + (f"; and {len(said) - 3} more" if len(said) > 3 else "")
        raise StoreError(f"{directory} holds a run with different settings ({shown}); "
                         "rerun with the same settings to resume, or use a new --out directory")


_ABSENT = object()


def _short(value) -> str:
    if value is _ABSENT or value is None:
        return "none"
    if isinstance(value, dict) and "method" in value:  # a setting group named by its method (heal: linear)
        return str(value["method"])
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(key: str, old, new) -> list[str]:
    """What differs under `key`, leaf by leaf where both sides are dicts (e.g. `heal.ridge`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        subs = sorted(k for k in set(old) | set(new) if old.get(k, _ABSENT) != new.get(k, _ABSENT))
        return [d for k in subs for d in _differences(f"{key}.{k}", old.get(k, _ABSENT), new.get(k, _ABSENT))]
    return [f"{key} {_short(old)} (the run) vs {_short(new)} (now)"]


def stored_settings(directory: Path) -> dict | None:
    """The settings of the run in `directory` (None: no readable run.json)."""
    try:
        stored = json.loads((Path(directory) / RUN_FILE).read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stored if isinstance(stored, dict) else None


def fingerprint(settings: dict) -> str:
    """A short identity of a run's settings (as stored in JSON)."""
    canonical = json.dumps(json.loads(json.dumps(settings)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def content_changes(stored: dict | None, now: dict | None) -> list[str]:
    """What differs between a run's recorded content hashes and the ones measured now (only what
    both have: a hash not recorded, or not measurable now, cannot be compared)."""
    if not isinstance(stored, dict) or not isinstance(now, dict):
        return []
    changed = []
    if isinstance(stored.get("model"), str) and isinstance(now.get("model"), str) and stored["model"] != now["model"]:
        changed.append(f"the model (content {stored['model'][:8]}, now {now['model'][:8]})")
    old_tasks = stored.get("tasks") if isinstance(stored.get("tasks"), dict) else {}
    for name, digest in (now.get("tasks") or {}).items():
        old = old_tasks.get(name)
        if isinstance(old, str) and isinstance(digest, str) and old != digest:
            changed.append(f"the data of task {name} (content {old[:8]}, now {digest[:8]})")
    return changed


def refuse_changed_content(directory: Path, stored: dict | None, now: dict | None, doing: str) -> None:
    """StoreError (one line) when the model or a task's data changed since the run was scored."""
    changed = content_changes(stored, now)
    if changed:
        tail = ("resuming would mix old and new scores: restore them, or use a new --out directory" if doing == "resume"
                else "its held-out scores would not be of the searched model and data: restore them, or search again")
        raise StoreError(f"{directory} was scored on other content: {'; '.join(changed[:3])} changed since the "
                         f"search; {tail}")


def merge_content(stored: dict | None, now: dict) -> dict:
    """The run's content hashes with what it lacks filled in from `now`."""
    base = dict(stored) if isinstance(stored, dict) else {}
    if not isinstance(base.get("model"), str) and isinstance(now.get("model"), str):
        base["model"] = now["model"]
    tasks = dict(base.get("tasks")) if isinstance(base.get("tasks"), dict) else {}
    for name, digest in (now.get("tasks") or {}).items():
        if isinstance(digest, str) and not isinstance(tasks.get(name), str):
            tasks[name] = digest
    base["tasks"] = tasks
    return base
