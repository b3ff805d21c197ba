"""Images for image tasks: opening one safely (`open_image`: fully decoded RGB, or a one-line
`DataError` for a missing file, a file that is no image, a truncated image or one too large), its
identity (`image_key`: a hash of the file's bytes) and the JSONL rows that name images
(`read_image_rows`), in two layouts:

* vqa      `{"image": str, "question": str, "answers": [str, ...]}`
* caption  `{"image": str, "captions": [str, ...]}`

both with optional `"max_new_tokens"` (an integer from 1 to MAX_NEW_TOKENS) and `"until"` (a stop
string or a list of them). Image paths are relative to the JSONL file's folder (absolute ones are
allowed); every image is opened and decoded when the rows are read, so a bad one is refused before
any model loads.

The JSON lines are read by blockprune.data.jsonl (the reader of every task file)."""

from __future__ import annotations

import hashlib
import struct
import warnings
from pathlib import Path

from .cache import DataError, one_line
from .jsonl import read_jsonl

MAX_PIXELS = 8192 * 8192  # a larger image is refused (width x height)
MAX_NEW_TOKENS = 1024  # as blockprune.tasks.gen_task.MAX_NEW_LIMIT
# the formats open_image reads (PIL's others, EPS above all, which runs Ghostscript, are refused)
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
KINDS = {"vqa": "answers", "caption": "captions"}  # row layout -> its list of reference strings
ASKS = {"vqa": "question", "caption": None}  # row layout -> the text it asks (None: the image alone)

# what PIL's decoders raise on damaged data besides OSError
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)


def _show(path) -> str:
    """A path as messages show it: as is, or quoted when it holds control characters (one line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def open_image(path, where: str):
    """The image at ``path`` as a fully loaded PIL RGB image; a DataError ("WHERE: image PATH ...") if it
    is missing, a directory, not an image (of FORMATS), truncated or damaged, or larger than MAX_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    name = _show(p)
    if p.is_dir():
        raise DataError(f"{where}: image {name} is a directory, not an image file")
    if not p.exists():
        raise DataError(f"{where}: image {name} not found")
    if not p.is_file():
        raise DataError(f"{where}: image {name} is not a regular file")
    too_big = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=FORMATS) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"{where}: image {name} is too large ({width}x{height} pixels, more than "
                                    f"{MAX_PIXELS:,})")
                im.load()  # decodes every pixel: a truncated file raises OSError here
                return im.convert("RGB")
    except too_big as exc:
        raise DataError(f"{where}: image {name} is too large ({one_line(str(exc))[:120]})") from None
    except UnidentifiedImageError:
        raise DataError(f"{where}: image {name} is not an image (none of {', '.join(FORMATS)})") from None
    except PermissionError as exc:
        raise DataError(f"{where}: cannot read image {name}: {exc.strerror or exc}") from None
    except _DECODE_ERRORS as exc:
        why = one_line(str(exc))[:120] or type(exc).__name__
        if "truncated" in why:
            raise DataError(f"{where}: image {name} is truncated ({why})") from None
        raise DataError(f"{where}: image {name} is damaged or unreadable ({why})") from None


def image_key(path) -> str:
    """The image's identity: a short sha256 of the file's bytes (the same picture under two names has one key)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read image {_show(path)}: {exc.strerror or exc}") from None
    return digest.hexdigest()[:16]


def _strings(row: dict, key: str, layout: str, where: str) -> list[str]:
    """The row's non-empty list of strings under ``key`` (its references: answers or captions)."""
    if key not in row:
        raise DataError(f"{where}: a {layout} row without \"{key}\" (a non-empty list of strings)")
    value = row[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: \"{key}\" must be a non-empty list of strings, not {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: \"{key}\" is empty (it needs at least one string)")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise DataError(f"{where}: \"{key}\"[{i}] is not a non-empty string")
    return value


def check_row(row: dict, layout: str, where: str) -> dict:
    """The row's fields, validated; `until` becomes a list."""
    image = row.get("image")
    if "image" not in row:
        raise DataError(f"{where}: a {layout} row without \"image\" (the path of an image file)")
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: \"image\" must be a non-empty string (a path)")
    asks = ASKS[layout]
    if asks is not None:
        if asks not in row:
            raise DataError(f"{where}: a {layout} row without \"{asks}\" (a string)")
        if not isinstance(row[asks], str) or not row[asks].strip():
            raise DataError(f"{where}: \"{asks}\" must be a non-empty string")
    fields = dict(row)
    fields[KINDS[layout]] = _strings(row, KINDS[layout], layout, where)
    if "max_new_tokens" in row:
        limit = row["max_new_tokens"]
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_NEW_TOKENS:
            raise DataError(f"{where}: \"max_new_tokens\" must be an integer from 1 to {MAX_NEW_TOKENS}")
    if "until" in row:
        until = [row["until"]] if isinstance(row["until"], str) else row["until"]
        if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
            raise DataError(f"{where}: \"until\" must be a stop string or a list of non-empty stop strings")
        fields["until"] = until
    return fields


def read_image_rows(path, layout: str) -> list[dict]:
    """The rows of an image task's JSONL file, validated, each image opened (`open_image`) and hashed once.

    ``layout`` is "vqa" or "caption"; the file is read by `jsonl.read_jsonl`. Each row comes back
    as its fields plus {"id": "<line>", "image": absolute Path, "key": image_key, "where": "FILE:LINE"}."""
    if layout not in KINDS:
        raise DataError(f"unknown image row layout {layout!r}; known: {', '.join(KINDS)}")
    path = Path(path)
    folder = path.absolute().parent
    keys: dict[Path, str] = {}  # each image is opened and hashed once, however many rows name it
    out = []
    for row in read_jsonl(path):
        line = row.pop("_line", None)
        if line is None:
            raise DataError(f"{_show(path)}: the reader gave a row without its line number")
        where = f"{_show(path)}:{line}"
        fields = check_row(row, layout, where)
        try:
            image = (folder / fields["image"]).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
            raise DataError(f"{where}: image {_show(fields['image'])} is not a usable path "
                            f"({one_line(str(exc))})") from None
        if image not in keys:
            with open_image(image, where):  # decoded here, so a bad image stops the run before a model loads
                pass
            keys[image] = image_key(image)
        out.append({**fields, "id": f"{line}", "image": image, "key": keys[image], "where": where})
    return out
