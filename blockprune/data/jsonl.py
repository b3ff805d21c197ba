"""JSONL files of rows (task files, image task files): read with every refusal one line naming FILE:LINE."""

from __future__ import annotations

import json
from pathlib import Path

from .cache import DataError


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped), each a dict with its line number under "_line";
    a one-line DataError naming FILE:LINE for anything that is not UTF-8 JSON objects, or no rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"jsonl task file not found: {path}")
    rows = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    for lineno, data in enumerate(raw.splitlines(), 1):
        try:
            line = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {exc.start + 1})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply to be a task row") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise DataError(f"{path}:{lineno}: unreadable JSON value ({' '.join(str(exc).split())[:120]})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: a row must be a JSON object")
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # "\ud800": a lone surrogate, which no tokenizer can encode
            raise DataError(f"{path}:{lineno}: a string holds a lone UTF-16 surrogate (an escape such as \\ud800 "
                            "without its pair), which is not text") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply to be a task row") from None
        row["_line"] = lineno
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: empty task file")
    return rows
