"""Output directories a user names: checked before any work, locked while written, never clobbered.

A run directory has one writer at a time. `lock(dir)` takes an exclusive `flock` on
`dir/.blockprune.lock` (released by the kernel when the process ends, however it ends) and writes
the holder's pid into it, so a second search, a `validate` or a `report` on the same directory
gets a one-line error naming that pid instead of interleaving records or overwriting a finished
report with a partial one.

`check_out(path)` answers, before a model is loaded, whether `path` can become a directory we
write: not a file, not under a file, on a writable file system (probed by creating and removing a
temporary directory, which is the only test root and read-only mounts both answer truthfully).
Files are written with the user's umask (`chmod_like_user`), as `open()` would, not 0600.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".blockprune.lock"


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


def check_out(path: str | Path, what: str = "--out") -> Path:
    """Refuse, in one line, an output directory that cannot be created or written. Writes nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {path} is a file, not a directory")
    base = _first_existing(path.absolute())
    if not base.is_dir():
        raise PathError(f"{what} {path} is under {base}, which is a file, not a directory")
    try:  # the only honest writability test: make something, then remove it
        probe = tempfile.mkdtemp(prefix=".blockprune-probe-", dir=base)
        os.rmdir(probe)
    except OSError as exc:
        raise PathError(f"{what} {path}: cannot write in {base}: {os_reason(exc)}") from None
    return path


def holder(directory: Path) -> str | None:
    try:
        text = (Path(directory) / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


@contextmanager
def lock(directory: str | Path, purpose: str = "write", marker: str = "run.json") -> Iterator[Path]:
    """Hold the run directory's write lock (creating the directory) for the block's duration.
    If the block made no run (no `marker` file), the directory is left as it was found: the lock
    file removed, the directory too if this created it and it is empty."""
    directory = Path(directory)
    created = not directory.exists()
    had_lock = (directory / LOCK_FILE).exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise PathError(f"cannot {purpose} {directory}: {os_reason(exc)}") from None
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PathError(f"cannot lock {directory}: {os_reason(exc)}") from None
            pid = holder(directory) or "unknown"
            raise PathError(f"{directory} is being written by another blockprune process (pid {pid}); "
                            f"wait for it to finish or stop it before you {purpose} it") from None
        locked = True
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield directory
    finally:
        try:
            if locked and not had_lock and not (directory / marker).exists():
                (directory / LOCK_FILE).unlink()  # no run was made: leave no trace
                if created and not any(directory.iterdir()):
                    directory.rmdir()
        except OSError:
            pass
        os.close(fd)  # releases the lock; otherwise the file stays (removing it would race another taker)


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())
