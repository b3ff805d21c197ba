"""Load a model by embedded name, local directory, GGUF file or hub id, and wrap it for the engine.

`load(spec)` refuses in one line what blockprune cannot drive (an unreadable config or checkpoint,
missing or unexpected weights, an encoder-decoder) and, by default, runs the load-time parity check
(`blockprune.models.parity`). The block-list adapter it returns (`BlockModel`, `wrap`, `find_blocks`,
`remove_blocks`, ...) is `blockprune.models.adapter`; its names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .adapter import (BLOCK_PATHS, FINAL_NORM_NAMES, LAYER_INDEX_KEYS, PER_LAYER_CONFIG_KEYS, BlockModel, Prelude,
                      arch_of, find_blocks, one_line, remove_blocks, weights_bytes, without_blocks, wrap)
from .parity import check_parity  # noqa: F401
from .sources import EMBEDDED, ModelError, check_device, from_gguf, quiet_transformers, resolve  # noqa: F401




def _read_config(spec: str, path: str):
    """The model's config, refused in one line when it cannot be one blockprune drives."""
    import json

    from transformers import AutoConfig

    local = Path(path) / "config.json"
    if local.is_file():
        try:
            raw = json.loads(local.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelError(f"cannot load model {spec!r}: {local} is not readable JSON ({one_line(exc)})") from None
        if not isinstance(raw, dict):
            raise ModelError(f"cannot load model {spec!r}: {local} holds a JSON {type(raw).__name__}, not an object "
                             "of config entries")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any config transformers refuses: one line
        raise ModelError(f"cannot load model {spec!r}: its config: {one_line(exc)}") from None
    kind = getattr(config, "model_type", "") or type(config).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"cannot load model {spec!r}: {kind} is an encoder-decoder model; blockprune drives decoder-only "
                         "language models (a causal LM, or a VLM's text tower)")
    return config


def _shape_mismatches(path: str, config) -> str:
    """'N of another shape (name [checkpoint] vs [config], ...)' from the safetensors headers, or ''."""
    try:
        from safetensors import safe_open
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
        bad = []
        for f in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    shape = tuple(st.get_slice(key).get_shape())
                    if key in expected and expected[key] != shape:
                        bad.append(f"{key} {list(shape)} in the checkpoint, {list(expected[key])} by the config")
    except Exception:  # noqa: BLE001 - only a better message; the caller has one anyway
        return ""
    return f"{len(bad)} of another shape ({'; '.join(bad[:2])}{', ...' if len(bad) > 2 else ''})" if bad else ""


def _check_loading_info(spec: str, model: torch.nn.Module, info: dict | None, config) -> None:
    """Weights the checkpoint lacks (randomly initialised) or has beyond the model are an error:
    a config whose num_hidden_layers disagrees with the checkpoint silently drops or invents blocks."""
    if not info:
        return
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(k[0]) if isinstance(k, (tuple, list)) else str(k) for k in info.get("mismatched_keys") or ())
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)):
        if keys:
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})")
    text = getattr(config, "get_text_config", lambda: config)()
    layers = next((getattr(text, k) for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
                   if isinstance(getattr(text, k, None), int)), None)
    hint = (f"; does config.json's layer count ({layers}) match the checkpoint's blocks?"
            if layers is not None and any(any(c.isdigit() for c in k) for k in missing + unexpected) else "")
    raise ModelError(f"cannot load model {spec!r}: its weights do not match its config: {'; '.join(parts)} "
                     f"weight(s){hint}")


def load(spec: str, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
         parity: bool = True, processor=None) -> BlockModel:
    """Load a model by embedded name, local directory, GGUF file or hub id, and wrap it.

    Refused in one line: a config or checkpoint transformers cannot read, missing or unexpected
    weights, an encoder-decoder, and (`parity`, see check_parity) a model that is not causal or
    whose dense log-probs the engine does not reproduce. An image-text model (its config holds a
    vision config) is loaded with its processor (`processor`: one built already, else
    AutoProcessor's); its text tower's blocks are the units (blockprune.models.vision)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from .vision import is_image_text, load_processor

    quiet_transformers()
    device = check_device(device)
    path = resolve(spec)
    if path.lower().endswith(".gguf") and Path(path).is_file():
        model, tokenizer = from_gguf(Path(path), dtype)
        model.to(device)
        bm = wrap(model, tokenizer, spec)
        bm.meta["gguf"] = str(Path(path).resolve())  # the source a GGUF export copies blocks from
        if parity:
            bm.meta["parity"] = check_parity(bm)
        return bm
    config = _read_config(spec, path)
    image_text = is_image_text(config)
    if image_text:
        processor = processor if processor is not None else load_processor(spec, path)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise ModelError(f"cannot load model {spec!r}: its processor ({type(processor).__name__}) has no tokenizer")
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - any tokenizer transformers refuses: one line, all of it
            raise ModelError(f"cannot load the tokenizer of model {spec!r}: {one_line(exc)}") from None
    try:
        try:
            if image_text:  # a VLM: drive its text tower, its processor's images through its own forward
                model, info = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, output_loading_info=True)
            else:
                model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
        except ValueError as exc:
            if "Unrecognized configuration class" not in str(exc):
                raise
            try:
                model, info = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, output_loading_info=True)
            except ValueError as vlm_exc:
                if "Unrecognized configuration class" not in str(vlm_exc):
                    raise
                raise ModelError(f"cannot load model {spec!r}: transformers has no causal-LM (or image-text-to-text) "
                                 f"class for model type {getattr(config, 'model_type', '?')!r}; blockprune drives "
                                 "decoder-only language models") from None
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, empty or corrupt weights, impossible sizes: one line
        if "ignore_mismatched_sizes" in str(exc):  # its own report of which ones went to the (silenced) log
            raise ModelError(f"cannot load model {spec!r}: its weights do not match its config: "
                             f"{_shape_mismatches(path, config) or 'weights of other shapes than config.json gives'}"
                             " (does config.json's vocab_size or hidden size match the checkpoint?)") from None
        hint = " (a weights file is truncated or corrupt)" if type(exc).__name__ == "SafetensorError" else ""
        raise ModelError(f"cannot load model {spec!r}: {one_line(exc)}{hint}") from None
    _check_loading_info(spec, model, info, config)
    model.to(device)
    bm = wrap(model, tokenizer, spec, processor=processor if image_text else None)
    if spec in EMBEDDED:  # converted from a registry GGUF: a GGUF export copies blocks from that file
        from .. import data

        directory, filename = data.smollm2_gguf()
        bm.meta["gguf"] = str(Path(directory) / filename)
    if parity:
        bm.meta["parity"] = check_parity(bm)
    return bm
