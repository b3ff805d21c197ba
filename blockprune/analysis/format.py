"""How blockprune writes a figure in its tables and reports: a drop (`pct`), a removal set
(`fmt_set`), a Markdown table cell (`cell`).

A run searched by halves (`--units sublayers`, blockprune.models.units) writes its sets by name,
`[17a, 22a, 19m]`: the report writer names its units once (`with naming(units)`) and every
`fmt_set` below it follows."""

import contextvars
from contextlib import contextmanager

from ..runs.names import unit_name

_UNITS = contextvars.ContextVar("blockprune_units", default="blocks")


@contextmanager
def naming(units: str | None):
    """Within: removal sets are written as `units` names them (None / "blocks": block ids)."""
    token = _UNITS.set(units or "blocks")
    try:
        yield
    finally:
        _UNITS.reset(token)


def units_named() -> str:
    return _UNITS.get()


def pct(x: float) -> str:
    """A drop as the reports write it: 8.33%."""
    return f"{100 * x:.2f}%"


def cell(text) -> str:
    """Text for a Markdown table cell: on one line, its pipes escaped (a bare `|` splits the cell,
    inside backticks too)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def fmt_set(removed) -> str:
    """A removal set as the reports write it: [17, 18], or by halves [17a, 22a, 19m]."""
    units = _UNITS.get()
    return "[" + ", ".join(str(b) if units == "blocks" else unit_name(int(b), units) for b in removed) + "]"


def set_names(removed) -> list[str]:
    """A removal set's units by name, for JSON: ["17a", "22a"] (block ids as strings for blocks)."""
    return [unit_name(int(b), _UNITS.get()) for b in removed]
