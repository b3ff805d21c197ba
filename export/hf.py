"""The pruned model as a Hugging Face checkpoint, verified on every export.

Writing: the blocks are deleted physically (`blockprune.models.remove_blocks`: `layer_idx`
renumbered, the layer count set, per-layer config lists such as `layer_types` filtered), then
safetensors weights, config, generation config and tokenizer are saved.

Verifying: the directory is reloaded with plain `AutoModelForCausalLM.from_pretrained` and must
give (1) the logits of the original model with those blocks skipped (the masked model, run block
by block through the adapter, not through the pruned copy) within `atol`, and (2) the same greedy
`generate()` tokens with the KV cache as a full recompute without it.

Healing (`healed_copy`): the maps of a `blockprune.healing.heal.Healing` are folded into a copy of the
model (the blocks before the removed runs get new output-projection weights; every other tensor
and the tokenizer are shared with the caller's model, which is never changed), and that copy is
what every format is written and verified from.
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch

from blockprune.models import BlockModel, remove_blocks


class ParityError(Exception):
    """An export whose outputs do not match the model it came from."""


@torch.inference_mode()
def masked_logits(bm: BlockModel, input_ids: torch.Tensor, removed: Sequence[int], media=None) -> torch.Tensor:
    """Logits of the original model with `removed` blocks skipped (`media`: each row's image)."""
    prelude = bm.prelude(input_ids, media=media)
    hidden = prelude.hidden
    rows = torch.arange(input_ids.shape[0], device=hidden.device)
    for layer in range(bm.num_blocks):
        if layer not in set(removed):
            hidden = bm.run_block(layer, hidden, prelude, rows)
    logits = bm.head(bm.normed(hidden)).float()
    if bm.logit_softcap:
        logits = torch.tanh(logits / bm.logit_softcap) * bm.logit_softcap
    return logits


def copy_sharing(bm: BlockModel, fresh: Iterable[torch.nn.Module] = ()) -> BlockModel:
    """A deep copy of `bm` whose parameters and buffers are the caller's own tensors except those of
    the `fresh` modules (new tensors, safe to change); the tokenizer is shared too."""
    own = {id(t) for m in fresh for t in itertools.chain(m.parameters(), m.buffers())}
    memo = {id(bm.tokenizer): bm.tokenizer}
    for t in itertools.chain(bm.model.parameters(), bm.model.buffers()):
        if id(t) not in own:
            memo[id(t)] = t
    return copy.deepcopy(bm, memo)


def healed_copy(bm: BlockModel, healing, removed: Sequence[int], maps: dict | None = None) -> tuple[BlockModel, list[dict]]:
    """`bm` with `healing`'s maps for the runs of `removed` folded into the blocks before them (a
    copy: `copy_sharing`), and the runs (`healing.runs`), each healed one naming the tensor its map
    was folded into (`folded_into`: the module path in the unpruned model, block numbering as before)."""
    from blockprune.healing import heal

    maps = healing.maps_for(removed) if maps is None else maps
    projections = {b: heal.projection(bm.blocks[b]) for b in maps}
    folded = copy_sharing(bm, [m for _, m in projections.values()])
    heal.fold_into(folded, maps)
    runs = []
    for run in healing.runs(removed):
        run = dict(run)
        if run["after"] in projections:
            block = run["after"] // 2 if bm.block_count != bm.num_blocks else run["after"]  # a half's block
            run["folded_into"] = f"{bm.block_path}.{block}.{projections[run['after']][0]}"
        runs.append(run)
    return folded, runs


def save(bm: BlockModel, removed: Sequence[int], directory: Path) -> BlockModel:
    """Write the pruned checkpoint into `directory` (which must exist); returns the pruned model."""
    cfg = bm.model.config
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) and removed:
        # GPT-2 scales attention by 1/(layer_idx + 1) with the same index that addresses the KV
        # cache: a renumbered checkpoint would change the scale, a non-renumbered one the cache.
        raise ParityError("GPT-2 with scale_attn_by_inverse_layer_idx=True cannot be saved pruned: its attention "
                          "scale depends on the original layer index")
    pruned = remove_blocks(bm, removed)
    pruned.model.save_pretrained(directory, safe_serialization=True)
    # an image-text model ships its processor (tokenizer, image processor, chat template); the vision tower is untouched
    saver = bm.processor if bm.processor is not None else bm.tokenizer
    if saver is not None and hasattr(saver, "save_pretrained"):
        saver.save_pretrained(directory)
    user_modes(Path(directory))
    return pruned


def user_modes(directory: Path) -> None:
    """transformers writes model.safetensors 0600: give the saved files the mode open() gives
    under the user's umask (0644 under 022), as every other file blockprune writes."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o666 & ~mask)


@torch.inference_mode()
def verify(bm: BlockModel, removed: Sequence[int], directory: Path, atol: float = 1e-5, new_tokens: int = 8) -> dict:
    """Reload `directory` with plain transformers and check it against the masked model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    start = time.perf_counter()
    config = AutoConfig.from_pretrained(directory)
    auto = AutoModelForImageTextToText if bm.image_text else AutoModelForCausalLM  # the family's own class
    reloaded = auto.from_pretrained(directory, dtype=bm.dtype).to(bm.device).eval()
    kept = bm.num_blocks - len(set(removed))
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = next((getattr(text_config, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(text_config, k)), None)
    if layers != kept:
        raise ParityError(f"reloaded config has {layers} layers, expected {kept}")
    vocab = bm.head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 11), generator=g).to(bm.device)
    expected = masked_logits(bm, ids, removed)
    got = reloaded(input_ids=ids, use_cache=False).logits.float()
    diff = (got - expected).abs().max().item()
    if not diff <= atol:
        raise ParityError(f"reloaded checkpoint differs from the masked model: max abs diff {diff:.3g} > {atol:g}")
    prompt = ids[:1, :5]
    eos = getattr(reloaded.generation_config, "eos_token_id", None)
    cached = reloaded.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                               eos_token_id=None, pad_token_id=eos if isinstance(eos, int) else None)
    seq = prompt
    for _ in range(new_tokens):  # full recompute, no cache
        nxt = reloaded(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    if not torch.equal(cached, seq):
        raise ParityError("greedy generate() with the KV cache differs from a full recompute")
    out = {"logits_max_abs_diff": diff, "atol": atol, "generate_kv_cache_equals_recompute": True,
           "generated_tokens": new_tokens, "layers": kept}
    if bm.image_text:
        out.update(_verify_image(bm, removed, reloaded, atol, new_tokens))
    return {**out, "seconds": round(time.perf_counter() - start, 2)}


def _verify_image(bm: BlockModel, removed: Sequence[int], reloaded, atol: float, new_tokens: int) -> dict:
    """An image-text export on a prompt with an image: the reloaded model's logits against the
    masked model's (the image through the same vision tower), and its generate() running."""
    import numpy as np
    from PIL import Image

    from blockprune.models.vision import forward_inputs, processor_batch
    from blockprune.tasks.image_task import prompt_of
    from blockprune.tasks.request import Media

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    text, prompt = prompt_of(bm.processor, "Describe the image.", image)
    media = [Media(key="verify", prompt=prompt, text=text, image=image)]
    ids = torch.tensor([prompt], device=bm.device)
    expected = masked_logits(bm, ids, removed, media=media)
    extra = forward_inputs(bm.processor, media, ids.shape[1], "right", bm.device, bm.dtype)
    got = reloaded(input_ids=ids, use_cache=False, **extra).logits.float()
    diff = (got - expected).abs().max().item()
    if not diff <= atol:
        raise ParityError(f"the reloaded image-text checkpoint differs from the masked model on a prompt with an image: "
                          f"max abs diff {diff:.3g} > {atol:g}")
    inputs = {k: (v.to(bm.device) if isinstance(v, torch.Tensor) else v)
              for k, v in processor_batch(bm.processor, media, "left").items()}
    eos = getattr(reloaded.generation_config, "eos_token_id", None)
    generated = reloaded.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=eos if isinstance(eos, int) else bm.eos_token_id)
    return {"image_logits_max_abs_diff": diff, "image_generate_tokens": int(generated.shape[1] - ids.shape[1])}
