"""A half-pruned Llama-family model as a heterogeneous Hugging Face checkpoint (DeciLM / Nemotron-NAS layout).

Removing attention and MLP halves (units 2b and 2b+1, `blockprune.models.units`) leaves layers that
are no longer alike; a plain Llama checkpoint cannot hold them. This layout can: it is the one
NVIDIA's Nemotron-NAS models use (`model_type: "nemotron-nas"`, `architectures:
["DeciLMForCausalLM"]`), which vLLM serves natively (`vllm/model_executor/models/nemotron_nas.py`)
and transformers loads with `trust_remote_code=True`.

Layout written by `write(bm, removed_units, directory)`:

* `config.json`: the Llama fields plus `block_configs`, one per layer: `{"attention": {"no_op",
  "replace_with_linear": false, "n_heads_in_group"}, "ffn": {"no_op", "replace_with_linear": false,
  "ffn_mult"}}`. A block with both halves removed is not in the checkpoint at all: its layer is
  dropped and the later ones renumbered (vLLM and the code below load either form; dropping is
  smaller and simpler). `ffn_mult` is chosen so that vLLM's rule (2/3 of ffn_mult * hidden, rounded
  up to a multiple of 256) gives back the model's intermediate size; a model whose intermediate size
  no ffn_mult reproduces is refused. `auto_map` points AutoConfig and AutoModelForCausalLM at the
  two files of `decilm_code/` copied beside it (blockprune's own DeciLM code). Rotary settings are
  written as `rope_parameters` (transformers 5) and as the legacy `rope_theta` / `rope_scaling`.
* `model.safetensors`: Llama weight names (`model.layers.N.self_attn.q_proj.weight`, ...), the
  renumbered kept layers only; a removed half's weights, its pre-norm included, are absent.
* the generation config and the tokenizer files (when the tokenizer can save itself).

Verified by `verify(bm, removed_units, directory)`: the directory is reloaded with
`AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)` (no weight missing or
unexpected), its logits on fixed token rows must equal within `atol` those of the original model
with the removed halves skipped (`hf.masked_logits` on `unit_model(bm, "sublayers")`), the KV cache
of a forward must hold one layer per kept attention and report the forward's length, and greedy
`generate()` with the KV cache must give the same tokens as greedy decoding of the masked model. A
mismatch, or a checkpoint that fails to load or run: `ParityError` (one line).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch

from blockprune.models import BlockModel, unit_model
from blockprune.models.adapter import arch_of
from blockprune.models.units import UnitModel, fmt_units

from .hf import ParityError, user_modes, masked_logits
from .onnx import ExportError

CODE_DIR = Path(__file__).with_name("decilm_code")
CODE_FILES = ("configuration_decilm.py", "modeling_decilm.py")
WEIGHTS = "model.safetensors"
FAMILIES = ("llama", "mistral", "qwen2")
LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache",
                "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "attention_dropout",
                "pretraining_tp")
ATTENTION_PARTS = ("self_attn.", "input_layernorm.")
FFN_PARTS = ("mlp.", "post_attention_layernorm.")
TOP_LEVEL = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


# ---- what is kept --------------------------------------------------------------------------------
def check_units(bm: BlockModel, removed_units: Sequence[int]) -> list[int]:
    """The removed units, sorted and unique; one-line ExportError when one is out of range or all are."""
    total = 2 * bm.num_blocks
    removed = sorted({int(u) for u in removed_units})
    bad = [u for u in removed if not 0 <= u < total]
    if bad:
        raise ExportError(f"removed units {bad} are out of range: {bm.name} has units 0..{total - 1} "
                          "(2b: block b's attention, 2b+1: its MLP)")
    if len(removed) == total:
        raise ExportError(f"removing all {total} units of {bm.name} leaves no layer to export")
    return removed


def kept_layers(num_blocks: int, removed: Sequence[int]) -> list[tuple[int, bool, bool]]:
    """(source block, attention kept, MLP kept) of each layer of the checkpoint; a block with both
    halves removed is dropped."""
    gone = set(removed)
    layers = [(b, 2 * b not in gone, 2 * b + 1 not in gone) for b in range(num_blocks)]
    return [layer for layer in layers if layer[1] or layer[2]]


def vllm_intermediate_size(ffn_mult: float, hidden: int) -> int:
    """vLLM's (and Nemotron's) MLP width for `ffn_mult`: int(2 * ffn_mult * hidden / 3) rounded up to 256."""
    n = int(2 * ffn_mult * hidden / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


def ffn_mult_for(intermediate: int, hidden: int) -> float:
    """An ffn_mult that gives back `intermediate` by vLLM's rule; ExportError (one line) if none does."""
    exact = 3 * intermediate / (2 * hidden)
    candidates = [exact, *(round(exact, d) for d in range(1, 8)), 3 * (intermediate - 128) / (2 * hidden)]
    for mult in candidates:
        if mult > 0 and vllm_intermediate_size(mult, hidden) == intermediate:
            return mult
    raise ExportError(f"intermediate_size {intermediate} cannot be written as a DeciLM ffn_mult: vLLM's rule rounds "
                      f"2/3 * ffn_mult * hidden ({hidden}) up to a multiple of 256, and {intermediate} is not one")


def check_family(bm: BlockModel) -> None:
    """A Llama-family causal LM without sliding windows or dynamic rotary scaling, else ExportError."""
    cfg = bm.model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in FAMILIES or bm.image_text:
        raise ExportError(f"the DeciLM export takes a Llama-family causal LM ({', '.join(FAMILIES)}); "
                          f"{bm.name} is {arch_of(bm.model)}")
    if getattr(cfg, "sliding_window", None) is not None and (kind != "qwen2" or getattr(cfg, "use_sliding_window", False)):
        raise ExportError(f"{bm.name} uses sliding-window attention ({cfg.sliding_window}), which the DeciLM layout "
                          "cannot express")
    rope = rope_settings(cfg)
    if rope["rope_type"] in ("dynamic", "longrope"):
        raise ExportError(f"{bm.name}'s rotary scaling {rope['rope_type']!r} depends on the sequence length; the DeciLM "
                          "export supports default, linear, llama3 and yarn")


def rope_settings(cfg) -> dict:
    """The rotary settings, flat (`rope_type`, `rope_theta`, scaling fields), from the new or legacy fields."""
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params.setdefault("rope_theta", getattr(cfg, "rope_theta", None) or 10000.0)
    return params


# ---- the checkpoint ------------------------------------------------------------------------------
def layer_weights(bm: BlockModel, layers: Sequence[tuple[int, bool, bool]]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under Llama names: the kept halves of the kept layers, renumbered, and
    the embedding, final norm and (untied) head. ExportError for a tensor of no known part."""
    source = bm.model.state_dict()
    tied = bool(getattr(bm.model.config, "tie_word_embeddings", False))
    out: dict[str, torch.Tensor] = {}
    for name in TOP_LEVEL:
        if name in source and not (tied and name == "lm_head.weight"):
            out[name] = source[name]
    for new, (block, attn, ffn) in enumerate(layers):
        prefix = f"{bm.block_path}.{block}."
        for name, tensor in source.items():
            if not name.startswith(prefix):
                continue
            part = name[len(prefix):]
            if not part.startswith(ATTENTION_PARTS + FFN_PARTS):
                raise ExportError(f"{bm.name}: tensor {name} belongs to no attention or MLP half; the DeciLM export "
                                  "cannot place it")
            if (attn and part.startswith(ATTENTION_PARTS)) or (ffn and part.startswith(FFN_PARTS)):
                out[f"model.layers.{new}.{part}"] = tensor
    stray = [n for n in source if not n.startswith(f"{bm.block_path}.") and n not in TOP_LEVEL]
    if stray:
        raise ExportError(f"{bm.name}: tensor {stray[0]} is not part of a Llama layout; the DeciLM export cannot place it")
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def config_dict(bm: BlockModel, layers: Sequence[tuple[int, bool, bool]], ffn_mult: float) -> dict:
    """config.json: the source's Llama fields, the rotary settings, the biases the weights have, and
    one block config per kept layer."""
    cfg = bm.model.config
    group = cfg.num_attention_heads // (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    rope = rope_settings(cfg)
    legacy = {k: v for k, v in rope.items() if k != "rope_theta"}
    biased = {name.split(".")[-2] for name in bm.model.state_dict() if name.endswith(".bias")}  # q_proj, o_proj, ...
    blocks = [{"attention": {"no_op": not attn, "replace_with_linear": False, "n_heads_in_group": group},
               "ffn": {"no_op": not ffn, "replace_with_linear": False, "ffn_mult": ffn_mult}}
              for _, attn, ffn in layers]
    dtype = str(bm.dtype).removeprefix("torch.")
    return {"architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas",
            "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig",
                         "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM"},
            **{k: getattr(cfg, k) for k in LLAMA_FIELDS if getattr(cfg, k, None) is not None},
            "num_hidden_layers": len(layers), "attention_bias": "o_proj" in biased, "qkv_bias": "q_proj" in biased,
            "mlp_bias": "gate_proj" in biased, "rope_parameters": rope, "rope_theta": rope["rope_theta"],
            "rope_scaling": legacy if rope["rope_type"] != "default" else None, "dtype": dtype, "torch_dtype": dtype,
            "block_configs": blocks}


def kv_bytes_per_token(bm: BlockModel, attention_layers: int) -> int:
    cfg = bm.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return 2 * attention_layers * kv_heads * head_dim * torch.empty((), dtype=bm.dtype).element_size()


def notes_for(layers: Sequence[tuple[int, bool, bool]]) -> list[str]:
    """What a runtime should know about this layout."""
    _, attn, ffn = layers[0]
    if not attn and ffn:
        return ["the first layer has no attention but keeps its MLP: vLLM's nemotron_nas.py (fused residual, empty "
                "before the first attention) does not handle that layer; transformers with this code does"]
    return []


def write(bm: BlockModel, removed_units: Sequence[int], directory: str | Path) -> dict:
    """Write the DeciLM checkpoint of `bm` without `removed_units` into `directory` (made if missing);
    returns the manifest entry (layers, halves kept, KV-cache bytes per token, files)."""
    from safetensors.torch import save_file

    bm = bm.base if isinstance(bm, UnitModel) else bm
    removed = check_units(bm, removed_units)
    check_family(bm)
    ffn_mult = ffn_mult_for(bm.model.config.intermediate_size, bm.model.config.hidden_size)
    layers = kept_layers(bm.num_blocks, removed)
    weights, config = layer_weights(bm, layers), config_dict(bm, layers, ffn_mult)  # refusals before any write
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / WEIGHTS), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in CODE_FILES:
        shutil.copyfile(CODE_DIR / name, directory / name)
    if getattr(bm.model, "generation_config", None) is not None:
        bm.model.generation_config.save_pretrained(directory)
    if hasattr(bm.tokenizer, "save_pretrained"):
        bm.tokenizer.save_pretrained(directory)
    user_modes(directory)
    attention = sum(a for _, a, _ in layers)
    dropped = [b for b in range(bm.num_blocks) if {2 * b, 2 * b + 1} <= set(removed)]
    return {"layout": "decilm (nemotron-nas)", "removed_units": fmt_units(removed, "sublayers"),
            "layers": len(layers), "dropped_blocks": dropped,
            "attention_layers": attention, "ffn_layers": sum(f for _, _, f in layers), "ffn_mult": ffn_mult,
            "kv_cache_bytes_per_token": {"dense": kv_bytes_per_token(bm, bm.num_blocks),
                                         "exported": kv_bytes_per_token(bm, attention),
                                         "dtype": str(bm.dtype).removeprefix("torch.")},
            "files": sorted(p.name for p in directory.iterdir() if p.is_file()), "notes": notes_for(layers)}


# ---- verification --------------------------------------------------------------------------------
def reload(directory: str | Path, bm: BlockModel):
    """The checkpoint through transformers' own loading (remote code, local files only); ParityError
    (one line) when it does not load or a weight is missing or unexpected."""
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=True, local_files_only=True,
                                                           dtype=bm.dtype, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - the loader's own error, in one line
        text = str(exc).strip().splitlines()
        raise ParityError(f"the DeciLM checkpoint does not load: {text[0] if text else type(exc).__name__}") from None
    bad = sorted(info.get("missing_keys") or []) + sorted(info.get("unexpected_keys") or [])
    if bad:
        raise ParityError(f"the DeciLM checkpoint's weights do not match its config: {bad[0]} is "
                          f"{'missing' if bad[0] in (info.get('missing_keys') or []) else 'unexpected'}")
    return model.to(bm.device).eval()


@contextlib.contextmanager
def running(what: str):
    """A reloaded checkpoint that fails to run is a failed export: ParityError (one line)."""
    try:
        yield
    except ParityError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own error, in one line
        text = str(exc).strip().splitlines()
        raise ParityError(f"the DeciLM checkpoint fails {what}: {text[0] if text else type(exc).__name__}") from None


def logits_diff(model, um, rows: Sequence[torch.Tensor], removed: Sequence[int]) -> float:
    """Max |reloaded - masked| logit over the rows (no cache)."""
    with running("a forward pass"):
        got = [model(input_ids=ids, use_cache=False).logits.float() for ids in rows]
    return max((g - masked_logits(um, ids, removed)).abs().max().item() for g, ids in zip(got, rows))


def cache_of(model, ids: torch.Tensor) -> tuple[int, int]:
    """The layers of the KV cache a forward with use_cache allocates, and the length it reports."""
    with running("a forward pass with the KV cache"):
        cache = model(input_ids=ids, use_cache=True).cache
        return len(cache), cache.get_seq_length()


def greedy_cached(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy tokens of the reloaded model's own generate(), with its KV cache."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    with running("generate() with the KV cache"):
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False,
                             use_cache=True, eos_token_id=None, pad_token_id=eos if isinstance(eos, int) else None)
    return out[:, prompt.shape[1]:]


def greedy_masked(um, prompt: torch.Tensor, removed: Sequence[int], new_tokens: int) -> torch.Tensor:
    """Greedy tokens of the masked model, a full recompute per token."""
    seq = prompt
    for _ in range(new_tokens):
        seq = torch.cat([seq, masked_logits(um, seq, removed)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1]:]


@torch.inference_mode()
def verify(bm: BlockModel, removed_units: Sequence[int], directory: str | Path, atol: float = 1e-4,
           new_tokens: int = 6) -> dict:
    """Reload `directory` and check it against the masked model (see the module doc); ParityError on mismatch."""
    start = time.perf_counter()
    bm = bm.base if isinstance(bm, UnitModel) else bm
    removed = check_units(bm, removed_units)
    model = reload(directory, bm)
    um = unit_model(bm, "sublayers")
    g = torch.Generator().manual_seed(0)
    vocab = bm.head.weight.shape[0]
    rows = [torch.randint(3, vocab, shape, generator=g).to(bm.device) for shape in ((2, 9), (1, 17))]
    diff = logits_diff(model, um, rows, removed)
    if not diff <= atol:
        raise ParityError(f"the DeciLM checkpoint differs from the masked model: max abs logit diff {diff:.3g} > {atol:g}")
    attention = sum(a for _, a, _ in kept_layers(bm.num_blocks, removed))
    slots, length = cache_of(model, rows[0])
    if slots != attention:
        raise ParityError(f"the DeciLM checkpoint's KV cache has {slots} layers, expected {attention} "
                          "(one per kept attention)")
    if attention and length != rows[0].shape[1]:
        raise ParityError(f"the DeciLM checkpoint's KV cache reports {length} tokens after a forward of "
                          f"{rows[0].shape[1]}")
    prompt = rows[0][:, :5]
    got, want = greedy_cached(model, prompt, new_tokens), greedy_masked(um, prompt, removed, new_tokens)
    agreement = (got == want).float().mean().item() if got.shape == want.shape else 0.0
    if agreement < 1.0:
        raise ParityError(f"greedy generate() of the DeciLM checkpoint (KV cache) differs from the masked model's "
                          f"greedy tokens: {agreement:.0%} agree")
    return {"logits_max_abs_diff": diff, "atol": atol, "token_agreement": agreement, "generated_tokens": new_tokens,
            "kv_cache_layers": slots, "seconds": round(time.perf_counter() - start, 2)}
