"""Where blockprune may write: one owner for "may I write here?".

`claim(out, kind, inputs=...)` is asked by every command before it loads anything: search and demo
(kind "run"), export ("export"), `bench --out` ("bench") and `report --replaced-system --out`
("replaced-report"). It resolves the path (`~`, `.`, `..`, symbolic links: what is written is the
link's target, never the link replaced), and refuses in one line, writing nothing:

* a file, a path under a file, a dangling symbolic link or a link loop, an unwritable place;
* a directory that is, or holds, an input of the command (the model, the task files, the replaced
  system's root, the cache of the embedded model);
* a directory holding files blockprune did not write: only a new or empty directory (a leftover
  lock file or temporary folder of ours counts as empty), or an earlier artifact of the same kind,
  is accepted. A search resumes its own run directory; a bench or replaced-system report rewrites its own
  three files; an export replaces an earlier export of the same request (of another request only
  with `force`) and only when every file in it is one its manifest lists: a user's file inside an
  export directory is never deleted, with or without `force`. A search run is never replaced.

How it is written (the run-directory lock, temporary folders swapped in whole): `blockprune.runs.rundir`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

LOCK_FILE = ".blockprune.lock"
TMP_PREFIX = ".blockprune-tmp-"
TMP_MARKER = ".blockprune-tmp"
PROBE_PREFIX = ".blockprune-probe-"

RUN_MARKERS = ("run.json", "results.jsonl")
# a run directory's held-out check: written by blockprune.measure.heldout, read by the report
VALIDATION_FILE = "validation.json"
COSTS_FILE = "costs.json"  # each unit's measured costs (blockprune.measure.costs)
EXPORT_MANIFEST = "export_manifest.json"
# what each kind of output directory holds (its own files); the first one identifies it
KIND_FILES = {
    "bench": ("latency.json", "latency.md", "latency.png"),
    "replaced-report": ("pruning_recommendations.json", "cross_dataset_analysis.json", "REPORT.md", "REPORT.zh.md"),
}
KIND_NAMES = {"run": "a search run directory", "export": "a blockprune export", "bench": "a `blockprune bench --out` directory",
              "replaced-report": "a `blockprune report --replaced-system` directory"}


class PathError(Exception):
    """An output path that cannot be used (one-line message)."""


def os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def _link_problem(p: Path) -> str | None:
    """'a dangling symbolic link (to X)' / 'a symbolic link loop' for a link that leads nowhere."""
    try:
        p.stat()
        return None
    except FileNotFoundError:
        return f"a dangling symbolic link (to {os.readlink(p)}, which does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"unreadable: {os_reason(exc)}"


def real(path: str | Path) -> Path:
    """`path` with `~` expanded, absolute, every symbolic link and `.`/`..` resolved (as far as it exists)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_out(path: str | Path, what: str = "--out") -> Path:
    """Refuse, in one line, an output directory that cannot be created or written. Writes nothing.
    Returns the resolved path (a symbolic link's target)."""
    shown = path
    path = Path(os.path.expanduser(str(path)))
    if path.is_symlink():
        problem = _link_problem(path)
        if problem:
            raise PathError(f"{what} {shown} is {problem}")
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {shown} is a file, not a directory")
    base = _first_existing(path.absolute())
    if base.is_symlink() and _link_problem(base):
        raise PathError(f"{what} {shown} is under {base}, which is {_link_problem(base)}")
    if not base.is_dir():
        raise PathError(f"{what} {shown} is under {base}, which is a file, not a directory")
    try:  # the only honest writability test: make something, then remove it
        probe = tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=base)
        os.rmdir(probe)
    except OSError as exc:
        raise PathError(f"{what} {shown}: cannot write in {base}: {os_reason(exc)}") from None
    return real(path)


# ---- what a directory holds ----------------------------------------------------------------------
_ATOMIC_TMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}$")  # store.atomic_write_text's mkstemp names


def _ours(entry: Path, names: Iterable[str] = ()) -> bool:
    """Left by blockprune and safe to ignore: the lock file, a temporary folder of ours, a probe,
    a half-written temporary copy of one of `names`."""
    name = entry.name
    if entry.is_symlink():
        return False
    if name == LOCK_FILE:
        return entry.is_file()
    if name.startswith(TMP_PREFIX):
        return entry.is_dir() and (entry / TMP_MARKER).is_file()
    if name.startswith(PROBE_PREFIX):
        return entry.is_dir() and not any(entry.iterdir())
    m = _ATOMIC_TMP.match(name)
    return bool(m and m.group(1) in set(names) and entry.is_file())


def _listing(names: list[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown[:3]) + (", ..." if len(shown) > 3 else "")


def contents(directory: Path, names: Iterable[str] = ()) -> list[Path]:
    """The entries of `directory` that are not blockprune's leftovers (empty for a new directory)."""
    if not directory.is_dir():
        return []
    names = list(names)
    return [e for e in directory.iterdir() if not _ours(e, names)]


def is_empty_dir(path: Path) -> bool:
    """No entries but blockprune's leftovers (a lock file, a stale temporary folder)."""
    return Path(path).is_dir() and not contents(Path(path))


def is_run(directory: Path) -> bool:
    """A run directory blockprune wrote: its run.json a plain file, or (run.json lost) its
    results.jsonl a plain file whose first record carries a run fingerprint. A folder holding a
    results.jsonl of anyone else's, or links named like them, is not one."""
    directory = Path(directory)
    run_file, results = directory / RUN_MARKERS[0], directory / RUN_MARKERS[1]
    if os.path.lexists(run_file):
        return run_file.is_file() and not run_file.is_symlink()
    if results.is_symlink() or not results.is_file():
        return False
    try:
        with open(results, "rb") as f:
            first = json.loads(f.readline(1 << 20) or b"null")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and isinstance(first.get("run"), str)


def _has_run_marker(directory: Path) -> bool:
    """Something named like a run's files is there (ours or not)."""
    return any(os.path.lexists(Path(directory) / m) for m in RUN_MARKERS)


PLAIN_DIR = "plain"  # a healed run's plain baseline: OUT/plain, a run directory of its own


def check_plain(out: Path, shown: str | Path) -> None:
    """OUT/plain is reserved for a healed run's plain baseline: absent, empty, or the baseline
    blockprune wrote there (a run whose run.json says `baseline_of: ".."`). A link, a file or a
    folder of the user's is refused in one line, before anything is loaded or written."""
    p = Path(out) / PLAIN_DIR
    if not os.path.lexists(p):
        return
    where = Path(str(shown)) / PLAIN_DIR
    hint = ("; plain/ is reserved for the plain baseline of a healed run: move it away, or pass --no-plain-baseline "
            "(nothing was written)")
    if p.is_symlink():
        raise PathError(f"{where} is a symbolic link (to {os.readlink(p)}), not the plain baseline blockprune "
                        f"writes{hint}")
    if not p.is_dir():
        raise PathError(f"{where} is a file, not the plain baseline's folder{hint}")
    found = contents(p)
    if not found:
        return
    info = _load_json(p / RUN_MARKERS[0])
    if is_run(p) and (info is None or (isinstance(info, dict) and info.get("baseline_of") == "..")):
        return
    raise PathError(f"{where} holds files blockprune did not write ({_listing([e.name for e in found])}){hint}")


def _load_json(path: Path):
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def export_foreign(directory: Path) -> tuple[dict | None, list[str]]:
    """(manifest or None, files under `directory` its manifest does not list: not blockprune's)."""
    manifest = _load_json(directory / EXPORT_MANIFEST)
    listed = set()
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), list):
        listed = {f.get("path") for f in manifest["files"] if isinstance(f, dict)}
    else:
        manifest = None
    foreign = []
    for entry in contents(directory):
        if entry.name == EXPORT_MANIFEST and manifest is not None:
            continue
        if entry.is_dir() and not entry.is_symlink():
            for p in entry.rglob("*"):
                if (p.is_symlink() or not p.is_dir()) and str(p.relative_to(directory)) not in listed:
                    foreign.append(str(p.relative_to(directory)))
        elif entry.name not in listed or entry.is_symlink():
            foreign.append(entry.name)
    return manifest, foreign


def _kind_foreign(directory: Path, kind: str) -> list[str]:
    names = KIND_FILES[kind]
    entries = contents(directory, names)
    anchor = _load_json(directory / names[0])
    ok = isinstance(anchor, dict) and (("speedups" in anchor) if kind == "bench" else ("blockprune_view" in anchor))
    return [e.name + ("/" if e.is_dir() else "") for e in entries
            if not (ok and e.name in names and e.is_file() and not e.is_symlink())]


def cache_root() -> Path:
    env = os.environ.get("BLOCKPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "blockprune"


def spec_paths(spec: str) -> list[str]:
    """The local path a task or model spec names (`jsonl:PATH`, `kl:jsonl:PATH#16`, a directory ...), if any."""
    parts = str(spec).split(":")
    for i in range(len(parts)):
        tail = ":".join(parts[i:])
        for cand in (tail, tail.split("#")[0], tail.split("@")[0]):
            if cand and os.path.lexists(os.path.expanduser(cand)):
                return [cand]
    return []


def claim(out: str | Path, kind: str, inputs: Iterable[tuple[str, str | Path]] = (), force: bool = False,
          what: str = "--out", same: Callable[[dict], bool] | None = None) -> Path:
    """May this command write its `kind` of output into `out`? Refuses in one line (PathError) and
    writes nothing; returns the resolved directory to write. `inputs`: (what it is, path) pairs the
    output must neither be nor hold. For exports, `same(manifest)` says whether the export already
    there is of the same request (replaced without `force`)."""
    shown = out
    target = check_out(out, what)
    for label, path in inputs:
        if path is None or not os.path.lexists(os.path.expanduser(str(path))):
            continue
        inp = real(path)
        if inp == target:
            raise PathError(f"{what} {shown} is {label} ({path}); blockprune never writes over its inputs: "
                            "give a new directory")
        if target in inp.parents:
            raise PathError(f"{what} {shown} holds {label} ({path}); blockprune never writes over its inputs: "
                            "give a new directory")
        # a folder inside the model or the cache changes it (the replaced system's files are read by
        # name: its report goes to ROOT/analysis by design)
        if inp in target.parents and inp.is_dir() and kind != "replaced-report":
            raise PathError(f"{what} {shown} is inside {label} ({path}); blockprune never writes into its inputs: "
                            "give a directory outside it")
    if kind == "export":
        cwd = real(os.getcwd())
        if target == cwd or target in cwd.parents:
            raise PathError(f"{what} {shown} is the current directory{'' if target == cwd else ' (or holds it)'}; "
                            f"an export replaces its directory whole: give a new one (e.g. {what} pruned)")
    if not target.is_dir() or not contents(target, KIND_FILES.get(kind, ())):
        return target
    if kind == "run":
        if is_run(target):
            return target
        stray = [e.name + (" (a symbolic link)" if e.is_symlink() else "") for e in contents(target)]
        raise PathError(f"{what} {shown} is not empty and is not a blockprune run directory "
                        f"(holds {_listing(stray)}); give a new or empty directory")
    if is_run(target) or _has_run_marker(target):
        sub = {"export": "export", "bench": "latency", "replaced-report": "analysis"}[kind]
        raise PathError(f"{what} {shown} is a search run directory; write into a new directory "
                        f"(e.g. {Path(str(shown)) / sub})")
    if kind == "export":
        manifest, foreign = export_foreign(target)
        if manifest is None:
            raise PathError(f"{what} {shown} is not empty and not a blockprune export (holds "
                            f"{_listing([e.name for e in contents(target)])}); give a new directory "
                            "(--force replaces only an earlier blockprune export)")
        if foreign:
            raise PathError(f"{what} {shown} holds files blockprune did not write ({_listing(foreign)}); "
                            "--force replaces only an earlier blockprune export: move them out or give a new directory")
        if force or (same is not None and same(manifest)):
            return target
        raise PathError(f"{what} {shown} is an export of another request; give a new directory, or --force to replace it")
    foreign = _kind_foreign(target, kind)
    if foreign:
        raise PathError(f"{what} {shown} is not empty and is not {KIND_NAMES[kind]} (holds files blockprune did not "
                        f"write: {_listing(foreign)}); give a new or empty directory")
    return target


def search_inputs(model: str, tasks: Iterable[str]) -> list[tuple[str, str]]:
    """What a search reads and its run directory must neither be nor hold."""
    found = [("the model", p) for p in spec_paths(model)]
    found += [(f"the task file of {spec}", p) for spec in tasks for p in spec_paths(spec)]
    return [*found, ("blockprune's cache", str(cache_root()))]
