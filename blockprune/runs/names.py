"""How a run names its units (#32): a block `17`, or block 17's attention half `17a` and MLP half
`17m` (unit ids 2b and 2b+1 in the store and the JSON); parsing the names users write (`--sets`,
`--protect`, `export --remove`). The models (blockprune.models.units), the store, the search and
the reports all read them from here."""

from __future__ import annotations

from typing import Sequence

UNITS = ("blocks", "attention", "mlp", "sublayers")
KINDS = ("a", "m")  # a unit's suffix: attention, MLP


def unit_name(unit: int, units: str) -> str:
    """`17` for a block, `17a` / `17m` for block 17's attention / MLP half."""
    return str(unit) if units == "blocks" else f"{unit // 2}{KINDS[unit % 2]}"


def fmt_units(removed: Sequence[int], units: str) -> str:
    """A removal set as reports write it: [17, 18] or [17a, 22a, 19m]."""
    return "[" + ", ".join(unit_name(u, units) for u in sorted(removed)) + "]"


def parse_unit(text: str, units: str, num_blocks: int | None) -> int:
    """`17a` -> 34, `17m` -> 35 (halves); `17` -> 17 (blocks). ValueError (one line) otherwise;
    `num_blocks` None: the range is checked later (once the model is loaded)."""
    text = text.strip()
    if units == "blocks":
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a block id (--units blocks; 17a / 17m name halves with --units sublayers)")
        if num_blocks is not None and int(text) >= num_blocks:
            raise ValueError(f"block {text} does not exist: the model has blocks 0..{num_blocks - 1}")
        return int(text)
    if len(text) < 2 or text[-1] not in KINDS or not text[:-1].isdigit():
        raise ValueError(f"{text!r} is not a half (e.g. 17a for block 17's attention, 17m for its MLP)")
    block = int(text[:-1])
    if num_blocks is not None and block >= num_blocks:
        raise ValueError(f"unit {text!r} names block {block}, but the model has blocks 0..{num_blocks - 1}")
    return 2 * block + KINDS.index(text[-1])


def parse_removal(tokens: Sequence) -> tuple[str, list[int]]:
    """What `export --remove` names: block ids (`4,13`: ("blocks", [4, 13])), or halves as soon as one
    token names a half (`17a,22a,19`: ("sublayers", [34, 38, 39, 44]): a bare block id then means both
    of its halves). ValueError (one line) for anything else."""
    texts = [str(t).strip() for t in tokens if str(t).strip()]
    if not any(t[-1:] in KINDS for t in texts):
        bad = [t for t in texts if not t.isdigit()]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a block id (e.g. 4,13) or a half (e.g. 17a,22m)")
        return "blocks", sorted({int(t) for t in texts})
    out: set[int] = set()
    for t in texts:
        if t.isdigit():
            out |= {2 * int(t), 2 * int(t) + 1}
        else:
            out.add(parse_unit(t, "sublayers", None))
    return "sublayers", sorted(out)


def protected_units(units: str, num_blocks: int) -> list[int]:
    """The halves a search by `units` never removes: the MLP halves for attention, and vice versa."""
    if units == "attention":
        return [2 * b + 1 for b in range(num_blocks)]
    if units == "mlp":
        return [2 * b for b in range(num_blocks)]
    return []
