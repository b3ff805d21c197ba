"""Where blockprune may write: one owner for "may I write here?", the run-directory lock, and
temporary folders that are swapped in whole and reclaimed when a killed process left them.

`claim(out, kind, inputs=...)` is asked by every command before it loads anything: search and demo
(kind "run"), export ("export"), `bench --out` ("bench") and `report --from-seed --out`
("seed-report"). It resolves the path (`~`, `.`, `..`, symbolic links: what is written is the
link's target, never the link replaced), and refuses in one line, writing nothing:

* a file, a path under a file, a dangling symbolic link or a link loop, an unwritable place;
* a directory that is, or holds, an input of the command (the model, the task files, the seed
  root, the cache of the embedded model);
* a directory holding files blockprune did not write: only a new or empty directory (a leftover
  lock file or temporary folder of ours counts as empty), or an earlier artifact of the same kind,
  is accepted. A search resumes its own run directory; a bench or seed report rewrites its own
  three files; an export replaces an earlier export of the same request (of another request only
  with `force`) and only when every file in it is one its manifest lists: a user's file inside an
  export directory is never deleted, with or without `force`. A search run is never replaced.

A run directory has one writer at a time. `lock(dir)` takes an exclusive `flock` on
`dir/.blockprune.lock` (released by the kernel when the process ends, however it ends), opened
without following symbolic links and refused unless it is a plain file of its own (not a link,
not a directory or device, not a hard link to another file), and writes the holder's pid into it.

`TempDir(parent)` is a folder `.blockprune-tmp-XXXXXXXX` (a fixed-length name, whatever the
output's name is) holding a marker file that its process keeps `flock`ed. Whatever is built in
`tmp.new` is swapped in whole by `tmp.commit(final)` (an atomic exchange where the file system
offers one), so a failed, interrupted or killed command leaves the old state or the complete new
one. A folder whose marker is no longer locked was left by a killed process; the next command
writing beside it reclaims it (`reclaim`). Files are written with the user's umask
(`chmod_like_user`), as `open()` would, not 0600.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

LOCK_FILE = ".blockprune.lock"
TMP_PREFIX = ".blockprune-tmp-"
TMP_MARKER = ".blockprune-tmp"
PROBE_PREFIX = ".blockprune-probe-"

RUN_MARKERS = ("run.json", "results.jsonl")
EXPORT_MANIFEST = "export_manifest.json"
# what each kind of output directory holds (its own files); the first one identifies it
KIND_FILES = {
    "bench": ("latency.json", "latency.md", "latency.png"),
    "seed-report": ("pruning_recommendations.json", "cross_dataset_analysis.json", "REPORT.md", "REPORT.zh.md"),
}
KIND_NAMES = {"run": "a search run directory", "export": "a blockprune export", "bench": "a `blockprune bench --out` directory",
              "seed-report": "a `blockprune report --from-seed` directory"}


class PathError(Exception):
    """An output path that cannot be used (one-line message)."""


def os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_like_user(path: str | Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the mode open()/mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


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
    return any((Path(directory) / m).exists() or (Path(directory) / m).is_symlink() for m in RUN_MARKERS)


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
        stray = [e.name for e in contents(target)]
        raise PathError(f"{what} {shown} is not empty and is not a blockprune run directory "
                        f"(holds {_listing(stray)}); give a new or empty directory")
    if is_run(target):
        sub = {"export": "export", "bench": "latency", "seed-report": "analysis"}[kind]
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


# ---- directories made on the way -----------------------------------------------------------------
def make_dirs(path: Path) -> list[Path]:
    """mkdir -p that returns the directories it created (deepest last)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            pass
    return made


def remove_made(made: list[Path]) -> None:
    """Remove the directories `make_dirs` created if they are (still) empty, deepest first."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            break


# ---- the lock ------------------------------------------------------------------------------------
def holder(directory: Path) -> str | None:
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 64).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    return text or None


def _open_lock(path: Path, purpose: str, directory: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathError(f"{path} is a symbolic link, not blockprune's lock file; remove it "
                            f"(nothing was written) and {purpose} {directory} again") from None
        if exc.errno == errno.EISDIR:
            raise PathError(f"{path} is a directory, not blockprune's lock file; remove it and {purpose} "
                            f"{directory} again") from None
        raise PathError(f"cannot {purpose} {directory}: {os_reason(exc)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        why = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a hard link to another file ({st.st_nlink} names)"
        raise PathError(f"{path} is {why}, not blockprune's lock file; remove it and {purpose} {directory} again")
    return fd


@contextmanager
def lock(directory: str | Path, purpose: str = "write", marker: str = "run.json") -> Iterator[Path]:
    """Hold the run directory's write lock (creating the directory) for the block's duration.
    If the block made no run (no `marker` file), the directory is left as it was found: the lock
    file removed, the directory and the parents this created too if they are empty."""
    shown = Path(directory)
    directory = real(directory)
    had_lock = os.path.lexists(directory / LOCK_FILE)
    try:
        made = make_dirs(directory)
    except OSError as exc:
        raise PathError(f"cannot {purpose} {shown}: {os_reason(exc)}") from None
    try:
        fd = _open_lock(directory / LOCK_FILE, purpose, shown)
    except BaseException:
        remove_made(made)
        raise
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PathError(f"cannot lock {shown}: {os_reason(exc)}") from None
            pid = holder(directory) or "unknown"
            raise PathError(f"{shown} is being written by another blockprune process (pid {pid}); "
                            f"wait for it to finish or stop it before you {purpose} it") from None
        locked = True
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield directory
    finally:
        try:
            if locked and not had_lock and not (directory / marker).exists():
                (directory / LOCK_FILE).unlink()  # no run was made: leave no trace
                if made and not any(directory.iterdir()):
                    remove_made(made)
        except OSError:
            pass
        os.close(fd)  # releases the lock; otherwise the file stays (removing it would race another taker)


# ---- temporary folders, swapped in whole -----------------------------------------------------------
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove_tree(path: Path) -> None:
    """Remove `path` (a folder of ours, or a link where one was swapped out), quietly."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def reclaim(parent: Path) -> list[Path]:
    """Remove the temporary folders of ours in `parent` whose process is gone (marker not locked);
    where a killed swap had moved the old state aside and not put the new one in, put it back."""
    removed = []
    try:
        candidates = [p for p in Path(parent).iterdir() if p.name.startswith(TMP_PREFIX)]
    except OSError:
        return removed
    for d in candidates:
        if d.is_symlink() or not d.is_dir():
            continue
        try:
            fd = os.open(d / TMP_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # not ours (no marker), or unreadable: left alone
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process is still running
            try:
                info = json.loads(os.read(fd, 65536).decode("utf-8"))
                target = Path(info["target"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                target = None
            if target is not None and (d / "old").is_dir() and not os.path.lexists(target):
                os.replace(d / "old", target)  # killed between the two renames of a swap: the old state back
            remove_tree(d)
            removed.append(d)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


class TempDir:
    """A temporary folder of ours in `parent`: build in `.new`, stage files with `.file(name)`,
    then `commit`; `close` removes what is left. A killed process's folder is reclaimed by the
    next `TempDir` in the same parent."""

    def __init__(self, parent: str | Path, target: str | Path | None = None):
        self.parent = Path(parent)
        reclaim(self.parent)
        self.root = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.parent))
        self._fd = None
        try:
            chmod_like_user(self.root, directory=True)
            self._fd = os.open(self.root / TMP_MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.write(self._fd, json.dumps({"pid": os.getpid(), "target": str(target) if target else None}).encode())
            self.new = self.root / "new"
            self.new.mkdir()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "TempDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file(self, name: str) -> Path:
        return self.root / "files" / name

    def write_text(self, name: str, text: str) -> Path:
        """Stage a whole file (flushed to disk) to be renamed into place by `commit_files`."""
        path = self.file(name)
        path.parent.mkdir(exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return path

    def commit(self, final: str | Path, source: Path | None = None) -> None:
        """Swap `source` (default `.new`) into `final` whole; what `final` held is removed with this folder."""
        source = Path(source or self.new)
        final = Path(final)
        if not os.path.lexists(final):
            os.rename(source, final)
        elif not _exchange(source, final):
            os.rename(final, self.root / "old")  # (no atomic exchange here: reclaim() puts it back if killed now)
            os.rename(source, final)

    def commit_files(self, directory: str | Path, names: Iterable[str]) -> list[Path]:
        """Rename the staged files into `directory` (renames need no space: all were written first)."""
        out = []
        for name in names:
            os.replace(self.file(name), Path(directory) / name)
            out.append(Path(directory) / name)
        return out

    def close(self) -> None:
        if getattr(self, "root", None) is None:
            return
        for name in ("new", "old", "files"):
            p = self.root / name
            if os.path.lexists(p):
                remove_tree(p)
        (self.root / TMP_MARKER).unlink(missing_ok=True)
        try:
            self.root.rmdir()
        except OSError:
            shutil.rmtree(self.root, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.root = None


def write_files(directory: str | Path, texts: dict[str, str], plots: Callable[[Path], None] | None = None,
                plots_name: str = "plots") -> list[Path]:
    """Write every file of `texts` (and a `plots` folder built by `plots(dir)`) into `directory`:
    all are written in full first, then renamed into place, so a full disk or an error leaves the
    old files as they were."""
    directory = Path(directory)
    with TempDir(directory) as tmp:
        if plots is not None:
            chmod_like_user(tmp.new, directory=True)
            plots(tmp.new)
        for name, text in texts.items():
            chmod_like_user(tmp.write_text(name, text))
        if plots is not None:
            tmp.commit(directory / plots_name)
        return tmp.commit_files(directory, texts)


def search_inputs(model: str, tasks: Iterable[str]) -> list[tuple[str, str]]:
    """What a search reads and its run directory must neither be nor hold."""
    found = [("the model", p) for p in spec_paths(model)]
    found += [(f"the task file of {spec}", p) for spec in tasks for p in spec_paths(spec)]
    return [*found, ("blockprune's cache", str(cache_root()))]
