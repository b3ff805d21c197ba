"""The seam between tasks and the engine: a token sequence, where its scored tokens start, and,
for an image-text model, the image its prompt holds (`Media`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Media:
    """An image and the prompt that holds it, as the model's processor builds them.

    `prompt` is the processor's token ids of `text` with `image` (its image tokens expanded), the
    start of every request of the sample; `key` is the identity of the image and its prompt: two
    requests share work (packing, the trie's state cache, decoding's prefix) only when their tokens
    and their keys agree, since image tokens are the same ids whatever the picture."""

    key: str
    prompt: tuple[int, ...]
    text: str = field(compare=False, repr=False)  # the rendered prompt (chat template applied)
    image: Any = field(compare=False, repr=False)  # a PIL image, fully loaded


@dataclass(frozen=True)
class Request:
    """Score tokens[score_from:] given everything before them (score_from >= 1)."""

    tokens: tuple[int, ...]
    score_from: int
    media: Media | None = None  # the image its tokens start with (image-text models)

    def __post_init__(self):
        if not 1 <= self.score_from < len(self.tokens):
            raise ValueError(f"score_from={self.score_from} outside 1..{len(self.tokens) - 1}")
        if self.media is not None and tuple(self.tokens[: len(self.media.prompt)]) != self.media.prompt:
            raise ValueError("a request with an image must start with its prompt's tokens")

    @property
    def num_scored(self) -> int:
        return len(self.tokens) - self.score_from


def media_key(media: Media | None) -> str:
    return media.key if media is not None else ""
