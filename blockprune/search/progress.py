"""Progress bars: tqdm's bar on a terminal; elsewhere (`make demo > demo.log`, a pipe, a CI log) a
plain line when a bar starts, every LOG_INTERVAL seconds and when it ends, never a carriage return."""

from __future__ import annotations

import sys

LOG_INTERVAL = 30.0  # seconds between two lines of a bar off a terminal


class _Lines:
    """A file for tqdm off a terminal: each refresh it writes becomes one plain line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(total: float, desc: str, unit: str = "tok"):
    """A tqdm bar on stderr for `total` units of work."""
    from tqdm import tqdm

    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, leave=False, dynamic_ncols=True, file=stream)
    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, leave=True, file=_Lines(stream), ascii=True,
                ncols=100, mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL)
