"""The seam between tasks and the engine: a token sequence and where its scored tokens start."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """Score tokens[score_from:] given everything before them (score_from >= 1)."""

    tokens: tuple[int, ...]
    score_from: int

    def __post_init__(self):
        if not 1 <= self.score_from < len(self.tokens):
            raise ValueError(f"score_from={self.score_from} outside 1..{len(self.tokens) - 1}")

    @property
    def num_scored(self) -> int:
        return len(self.tokens) - self.score_from
