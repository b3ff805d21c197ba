"""Shared-prefix packing: requests with the same context run as one row.

A multiple-choice sample makes one request per choice, all with the same context. Packed, the
row is `context + choice_1 + choice_2 + ...`; each choice's tokens see the whole context and
their own earlier tokens (not the other choices), and take the positions they would have had
alone (`len(context) + i`). Position ids and a per-row attention mask make this exact: every
scored log-prob equals the unpacked one up to float rounding.

Rows that hold a single request are plain causal sequences. A request holding an image (an
image-text model's prompt) is never packed: its model builds its own masks and positions over the
image tokens (bidirectional image blocks, 3-D rotary positions), which a packing mask would undo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..tasks.request import Media, Request


@dataclass
class Row:
    tokens: list[int]
    positions: list[int]
    segment: list[int]  # -1 = shared context; s >= 0 = the s-th continuation in this row
    # one entry per request: (request index, positions whose logits predict, target tokens)
    scored: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    media: Media | None = None  # the image its prompt holds (never packed)

    @property
    def packed(self) -> bool:
        return len(self.scored) > 1

    def __len__(self) -> int:
        return len(self.tokens)


def plain_row(index: int, r: Request) -> Row:
    n = len(r.tokens)
    row = Row(list(r.tokens), list(range(n)), [-1] * n, media=r.media)
    row.scored.append((index, np.arange(r.score_from - 1, n - 1), np.asarray(r.tokens[r.score_from:])))
    return row


def pack(requests: Sequence[Request], max_len: int | None) -> list[Row]:
    """Rows for `requests`: those sharing a context are packed (up to `max_len` tokens a row);
    `max_len=None` disables packing."""
    if max_len is None:
        return [plain_row(i, r) for i, r in enumerate(requests)]
    groups: dict[tuple[int, ...], list[int]] = {}
    rows: list[Row] = []
    for i, r in enumerate(requests):
        if r.media is not None:
            rows.append(plain_row(i, r))
        else:
            groups.setdefault(r.tokens[: r.score_from], []).append(i)
    for ctx, members in groups.items():
        if len(members) == 1:
            rows.append(plain_row(members[0], requests[members[0]]))
            continue
        p = len(ctx)
        row = None
        for i in members:
            cont = list(requests[i].tokens[p:])
            if row is None or len(row) + len(cont) > max_len:
                if row is not None:
                    rows.append(row)
                row = Row(list(ctx), list(range(p)), [-1] * p)
            start = len(row)
            seg = len(row.scored)
            row.tokens += cont
            row.positions += list(range(p, p + len(cont)))
            row.segment += [seg] * len(cont)
            # the first continuation token is predicted by the context's last token
            predict = np.array([p - 1] + list(range(start, start + len(cont) - 1)))
            row.scored.append((i, predict, np.asarray(cont)))
        rows.append(row)
    return rows


def attention_mask(rows: Sequence[Row], length: int, additive_dtype: torch.dtype | None) -> torch.Tensor:
    """[B, 1, T, T] mask: key k is visible to query q iff k <= q and k is context or in q's segment.
    Padding forms its own segment. Boolean (True = attend), or additive when a dtype is given."""
    seg = torch.full((len(rows), length), -2, dtype=torch.long)
    for j, row in enumerate(rows):
        seg[j, : len(row)] = torch.tensor(row.segment)
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    causal = (k <= q)[None]
    visible = causal & ((seg[:, None, :] == -1) & (seg[:, :, None] != -2) | (seg[:, None, :] == seg[:, :, None]))
    visible = visible[:, None]
    if additive_dtype is None:
        return visible
    out = torch.zeros(visible.shape, dtype=additive_dtype)
    return out.masked_fill(~visible, torch.finfo(additive_dtype).min)
