"""Image-text models (VLMs): their processor, and their own forward's inputs for rows with images.

Only a VLM's text tower is pruned: its blocks are the candidates. The vision encoder and projector
are part of the prelude (`BlockModel.prelude`): the model's own forward runs them, merges the image
features into the text embeddings, builds its masks (Gemma 3's bidirectional image blocks) and
positions (Qwen2-VL's 3-D rotary positions), and the blocks' arguments are recorded from it, so
nothing of a family is re-implemented here. What this module adds is the batch: the rows of a
pass hold the prompts of different samples, each with its own image (`Media`), and
`forward_inputs` runs the family's processor on them together, as its own batching pads pixel
values, tiles and grids, then widens its per-token inputs (token type ids) from the prompts to the
rows' full length (the continuation after a prompt is text).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..tasks.request import Media
from .sources import ModelError

# per-token processor outputs besides the ids: widened to the rows' length, zero (text) beyond the prompt
_NOT_MODEL_INPUTS = ("input_ids", "attention_mask")


def is_image_text(config) -> bool:
    """An image-text model: its config holds a vision tower's config."""
    return getattr(config, "vision_config", None) is not None


def declares_image_text(path: str) -> bool:
    """A local model directory whose config.json holds a vision config (read without loading anything)."""
    import json
    from pathlib import Path

    try:
        raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("vision_config"), dict)


def load_processor(spec: str, path: str):
    """The model's processor (AutoProcessor), refused in one line when it cannot be built."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - a missing backend (torchvision), a broken config: one line
        text = " ".join(str(exc).split())[:300]
        raise ModelError(f"cannot load the processor of image-text model {spec!r}: {type(exc).__name__}: {text}") from None


def render(processor, question: str) -> str:
    """The prompt of one image and a question as the processor's chat template renders it (a user
    turn holding the image, then the text, and the assistant's generation prompt)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(processor, text: str, image) -> tuple[int, ...]:
    """The processor's token ids of one prompt with its image (image tokens expanded)."""
    out = processor(text=[text], images=[[image]], return_tensors="pt")
    return tuple(int(t) for t in out["input_ids"][0])


def processor_batch(processor, media: Sequence[Media], side: str) -> dict:
    """The processor on the rows' prompts and images together, padded on `side`."""
    tokenizer = getattr(processor, "tokenizer", None)
    old = getattr(tokenizer, "padding_side", None)
    try:
        if tokenizer is not None:
            tokenizer.padding_side = side
        return dict(processor(text=[m.text for m in media], images=[[m.image] for m in media], padding=True,
                              return_tensors="pt"))
    finally:
        if tokenizer is not None and old is not None:
            tokenizer.padding_side = old


def forward_inputs(processor, media: Sequence[Media], length: int, side: str, device, dtype) -> dict:
    """The model's forward inputs besides `input_ids` for rows holding `media` (one per row): image
    inputs as the processor batches them; per-token ones (token type ids ...) widened to `length`.
    `side`: where the rows are padded ("right": each row starts with its prompt; "left": each
    prompt ends at column `length`). A processor whose batch tokenizes a prompt otherwise than it
    did alone is refused (the rows' tokens came from it alone)."""
    batch = processor_batch(processor, media, side)
    ids = batch["input_ids"]
    width = ids.shape[1]
    out: dict[str, Any] = {}
    for j, m in enumerate(media):
        n = len(m.prompt)
        got = ids[j, :n] if side == "right" else ids[j, width - n:]
        if tuple(int(t) for t in got) != m.prompt:
            raise ModelError("the processor tokenizes a prompt in a batch otherwise than alone; blockprune needs the "
                             "same ids (a padding that changes the tokens?)")
    for key, value in batch.items():
        if key in _NOT_MODEL_INPUTS or value is None:
            continue
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == tuple(ids.shape):
            wide = value.new_zeros((len(media), length, *value.shape[2:]))
            for j, m in enumerate(media):
                n = len(m.prompt)
                if side == "right":
                    wide[j, :n] = value[j, :n]
                else:
                    wide[j, length - n:] = value[j, width - n:]
            value = wide
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        out[key] = value
    return out
