"""How blockprune writes a figure in its tables and reports: a drop (`pct`), a removal set
(`fmt_set`), a Markdown table cell (`cell`)."""


def pct(x: float) -> str:
    """A drop as the reports write it: 8.33%."""
    return f"{100 * x:.2f}%"


def cell(text) -> str:
    """Text for a Markdown table cell: on one line, its pipes escaped (a bare `|` splits the cell,
    inside backticks too)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def fmt_set(removed) -> str:
    """A removal set as the reports write it: [17, 18]."""
    return "[" + ", ".join(str(b) for b in removed) + "]"
