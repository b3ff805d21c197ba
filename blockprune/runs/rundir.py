"""How blockprune writes: the run-directory lock, and temporary folders that are swapped in whole
and reclaimed when a killed process left them.

Whether a command may write into a directory at all (`claim`) is `blockprune.runs.outputs`; its names
are re-exported here for the callers that use them as `rundir.claim`.

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
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .outputs import (EXPORT_MANIFEST, KIND_FILES, KIND_NAMES, LOCK_FILE, PLAIN_DIR, PROBE_PREFIX, RUN_MARKERS,
                      TMP_MARKER, TMP_PREFIX, PathError, cache_root, check_out, check_plain, claim, contents,
                      export_foreign, is_empty_dir, is_run, os_reason, real, search_inputs, spec_paths)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_like_user(path: str | Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the mode open()/mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


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
