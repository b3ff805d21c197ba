"""Block-list adapters: load a Hugging Face model and run its blocks one at a time.

A `BlockModel` exposes what the engine needs and nothing else:

* `prelude(input_ids)` runs the model's own forward up to the first block and records, for every
  block, the exact extra arguments the model passes to it (rotary embeddings, causal masks that
  may differ per block type, position ids). Nothing model-specific is re-implemented: the blocks
  are called with what the model itself would pass them.
* `run_block(l, hidden, prelude, rows)` runs block `l` on a subset of rows; `rows[i]` names the
  sample whose per-sample arguments (masks, positions) row `i` uses.
* `head_weight`, `final_norm`, `logit_softcap` for the scoring head.

Blocks are found by known attribute paths (decoder LMs, VLM text towers, GPT-2, GPT-NeoX, OPT),
then by the largest ModuleList of identical modules.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .sources import EMBEDDED, ModelError, check_device, from_gguf, quiet_transformers, resolve  # noqa: F401


# Where the block list lives, relative to the loaded model, in the order tried.
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 1-3 text, Phi-3, SmolLM
    "model.language_model.layers",  # VLMs in transformers 5 (Gemma 3, Qwen2-VL, LLaVA, ...)
    "language_model.model.layers",
    "model.text_model.layers",
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.layers",
)
# Names of the final norm in the module that holds the block list.
FINAL_NORM_NAMES = ("norm", "ln_f", "norm_f", "final_layer_norm", "final_layernorm", "final_norm")  # norm_f: Mamba, MPT



def arch_of(model: nn.Module) -> str:
    """The architecture, as a user would name it: the config's model_type and the class."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    return f"{kind} ({type(model).__name__})" if kind else type(model).__name__


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _parent_path(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (attribute path, ModuleList) of the model's transformer blocks."""
    for path in BLOCK_PATHS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path, blocks
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1:
            if len({type(m) for m in mod}) == 1 and (best is None or len(mod) > len(best[1])):
                best = (name, mod)
    if best is None:
        raise ModelError(f"{arch_of(model)}: no block list found (expected one of {', '.join(BLOCK_PATHS)}, or a "
                         "ModuleList of identical blocks); blockprune drives decoder LMs block by block")
    return best


@dataclass
class Prelude:
    """What a chunk of sequences looks like at the input of block 0."""

    hidden: torch.Tensor  # [B, T, D] input of block 0
    block_args: list[tuple[tuple, dict]]  # per block: positional args after hidden, kwargs
    batch: int


class _Captured(Exception):
    pass


def _select_rows(obj: Any, batch: int, rows: torch.Tensor) -> Any:
    """Index every per-sample tensor (leading dim == batch > 1) by `rows`; others broadcast."""
    if isinstance(obj, torch.Tensor):
        if batch > 1 and obj.dim() >= 2 and obj.shape[0] == batch:
            return obj.index_select(0, rows)
        return obj
    if isinstance(obj, tuple):
        return tuple(_select_rows(o, batch, rows) for o in obj)
    if isinstance(obj, list):
        return [_select_rows(o, batch, rows) for o in obj]
    if isinstance(obj, dict):
        return {k: _select_rows(v, batch, rows) for k, v in obj.items()}
    return obj


@dataclass
class BlockModel:
    model: nn.Module  # the *ForCausalLM (or VLM) module
    tokenizer: Any
    name: str
    block_path: str
    blocks: nn.ModuleList
    final_norm: nn.Module | None
    head: nn.Module  # output embedding (weight [V, D], optional bias)
    post_norm: nn.Module | None = None  # e.g. OPT's project_out, applied after the final norm
    logit_softcap: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def max_positions(self) -> int | None:
        """Tokens one sequence may hold (the config's position limit), None when it states none."""
        cfg = self.model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def eos_token_id(self) -> int | None:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        return eos

    # ---- running blocks -------------------------------------------------------------------
    @torch.inference_mode()
    def prelude(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> Prelude:
        """Run the model up to block 0 and record every block's extra arguments.

        Sequences are right-padded; with a causal mask the valid positions never see padding, so
        by default no padding mask is passed (it also lets SDPA take its causal fast path). Packed
        rows pass their own position ids and 4D mask (see blockprune.packing).
        """
        extra = {}
        if position_ids is not None:
            extra["position_ids"] = position_ids
        if attention_mask is not None:
            extra["attention_mask"] = attention_mask
        records: list[tuple[tuple, dict]] = []
        last = len(self.blocks) - 1

        def recorder(index: int):
            def fake_forward(*args, **kwargs):
                records.append((args, kwargs))
                if index == last:
                    raise _Captured
                return args[0] if args else kwargs["hidden_states"]

            return fake_forward

        for i, block in enumerate(self.blocks):
            block.forward = recorder(i)
        try:
            self.model(input_ids=input_ids.to(self.device), use_cache=False, **extra)
        except _Captured:
            pass
        except Exception as exc:  # noqa: BLE001 - any model: say which, in one line
            text = str(exc).strip()
            raise ModelError(f"{self.name} ({arch_of(self.model)}): its forward fails on text-only input before "
                             f"the last block: {type(exc).__name__}: {text.splitlines()[0] if text else ''}") from None
        finally:
            for block in self.blocks:
                del block.forward  # back to the class's forward
        if len(records) != len(self.blocks):
            raise ModelError(f"{self.name} ({arch_of(self.model)}): its forward called {len(records)} of its "
                             f"{len(self.blocks)} blocks; blockprune needs each block called once per forward, in order")
        args0, kwargs0 = records[0]
        hidden = args0[0] if args0 else kwargs0["hidden_states"]
        block_args = []
        for args, kwargs in records:
            kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            block_args.append((tuple(args[1:]), kwargs))
        return Prelude(hidden=hidden, block_args=block_args, batch=input_ids.shape[0])

    @torch.inference_mode()
    def run_block(self, index: int, hidden: torch.Tensor, prelude: Prelude, rows: torch.Tensor) -> torch.Tensor:
        """Block `index` on `hidden` [R, T, D]; row i uses sample rows[i]'s arguments."""
        args, kwargs = prelude.block_args[index]
        rows = rows.to(hidden.device)
        out = self.blocks[index](
            hidden, *_select_rows(args, prelude.batch, rows), **_select_rows(kwargs, prelude.batch, rows)
        )
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.inference_mode()
    def run_block_inplace(self, index: int, hidden: torch.Tensor, idx: torch.Tensor, prelude: Prelude,
                          micro: int) -> None:
        """hidden[idx] = block(hidden[idx]), `micro` rows per call; row r uses sample r % prelude.batch.

        The plain path: gather the rows, call the HF block whole, write the rows back. The fused
        path (blockprune.fused) does the same with Triton gather+norm and residual-add kernels.
        """
        for s in range(0, len(idx), micro):
            part = idx[s : s + micro]
            out = self.run_block(index, hidden.index_select(0, part), prelude, part % prelude.batch)
            hidden.index_copy_(0, part, out.to(hidden.dtype))  # some blocks return fp32 from bf16 input

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm (and projection) applied to hidden states before the LM head."""
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if self.post_norm is not None:
            hidden = self.post_norm(hidden)
        return hidden


def wrap(model: nn.Module, tokenizer: Any, name: str) -> BlockModel:
    """Build the adapter for an already-loaded model."""
    path, blocks = find_blocks(model)
    parent = _get(model, _parent_path(path)) if _parent_path(path) else model
    final_norm = next((getattr(parent, n) for n in FINAL_NORM_NAMES if isinstance(getattr(parent, n, None), nn.Module)), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise ModelError(f"{name} ({arch_of(model)}): no output embedding (LM head) found")
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    model.eval()
    return BlockModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        block_path=path,
        blocks=blocks,
        final_norm=final_norm,
        head=head,
        post_norm=getattr(parent, "project_out", None),
        logit_softcap=float(softcap) if softcap else None,
    )


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's whole message on one line (transformers' often continue on the next)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_config(spec: str, path: str):
    """The model's config, refused in one line when it cannot be one blockprune drives."""
    import json

    from transformers import AutoConfig

    local = Path(path) / "config.json"
    if local.is_file():
        try:
            raw = json.loads(local.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelError(f"cannot load model {spec!r}: {local} is not readable JSON ({_one_line(exc)})") from None
        if not isinstance(raw, dict):
            raise ModelError(f"cannot load model {spec!r}: {local} holds a JSON {type(raw).__name__}, not an object "
                             "of config entries")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any config transformers refuses: one line
        raise ModelError(f"cannot load model {spec!r}: its config: {_one_line(exc)}") from None
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


def _check_loading_info(spec: str, model: nn.Module, info: dict | None, config) -> None:
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
         parity: bool = True) -> BlockModel:
    """Load a model by embedded name, local directory, GGUF file or hub id, and wrap it.

    Refused in one line: a config or checkpoint transformers cannot read, missing or unexpected
    weights, an encoder-decoder, and (`parity`, see check_parity) a model that is not causal or
    whose dense log-probs the engine does not reproduce."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any tokenizer transformers refuses: one line, all of it
        raise ModelError(f"cannot load the tokenizer of model {spec!r}: {_one_line(exc)}") from None
    try:
        try:
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
        except ValueError as exc:
            if "Unrecognized configuration class" not in str(exc):
                raise
            from transformers import AutoModelForImageTextToText  # a VLM: drive its text tower

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
        raise ModelError(f"cannot load model {spec!r}: {_one_line(exc)}{hint}") from None
    _check_loading_info(spec, model, info, config)
    model.to(device)
    bm = wrap(model, tokenizer, spec)
    if spec in EMBEDDED:  # converted from a registry GGUF: a GGUF export copies blocks from that file
        from . import data

        directory, filename = data.smollm2_gguf()
        bm.meta["gguf"] = str(Path(directory) / filename)
    if parity:
        bm.meta["parity"] = check_parity(bm)
    return bm


def weights_bytes(model: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, tied tensors counted once."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


@contextmanager
def without_blocks(bm: BlockModel, removed: Sequence[int]):
    """Temporarily take blocks out of the model's block list (no copy) for plain forwards without a
    KV cache: the naive reference loop of tests and benchmarks. `remove_blocks` makes a real copy."""
    parent_path, attr = bm.block_path.rsplit(".", 1) if "." in bm.block_path else ("", bm.block_path)
    parent = _get(bm.model, parent_path) if parent_path else bm.model
    full = getattr(parent, attr)
    gone = set(removed)
    setattr(parent, attr, nn.ModuleList([b for i, b in enumerate(full) if i not in gone]))
    cfg = bm.model.config
    old = cfg.num_hidden_layers
    cfg.num_hidden_layers = len(full) - len(gone)
    try:
        yield
    finally:
        setattr(parent, attr, full)
        cfg.num_hidden_layers = old


# ---- physical removal -------------------------------------------------------------------------
# Per-layer lists in configs that must follow the kept blocks.
# Config entries with one value per block: filtered to the kept blocks.
PER_LAYER_CONFIG_KEYS = ("layer_types", "sliding_window_pattern_list", "layers_block_type", "attention_layers",
                         "no_rope_layers", "block_configs", "num_key_value_heads_per_layer", "mlp_layer_types")
# Config entries listing block indices (Qwen-MoE's dense layers, LFM2's full-attention layers, Llama 4's
# MoE layers, ...): the kept ones, renumbered.
LAYER_INDEX_KEYS = ("mlp_only_layers", "full_attn_idxs", "moe_layers", "attn_layer_indices", "hybrid_layer_ids")


def _per_layer_config(cfg, num_blocks: int, kept: list[int]) -> None:
    """Keep a config's per-layer description true of the kept blocks, renumbered 0..len(kept)-1."""
    new_of = {old: new for new, old in enumerate(kept)}
    done = set()
    step = getattr(cfg, "decoder_sparse_step", None)
    if isinstance(step, int) and step > 1 and getattr(cfg, "num_experts", 0):
        # Qwen-MoE: block l is sparse when (l + 1) % step == 0 and l is not in mlp_only_layers; renumbering
        # breaks the period, so say it per layer: every block sparse except the listed dense ones
        dense_before = set(getattr(cfg, "mlp_only_layers", None) or [])
        dense = [l for l in range(num_blocks) if l in dense_before or (l + 1) % step != 0]
        cfg.mlp_only_layers = [new_of[l] for l in dense if l in new_of]
        cfg.decoder_sparse_step = 1
        done.add("mlp_only_layers")
    k = getattr(cfg, "first_k_dense_replace", None)
    if isinstance(k, int) and k > 0:  # DeepSeek: the first k blocks are dense, a prefix before and after
        cfg.first_k_dense_replace = sum(1 for l in kept if l < k)
    for key in PER_LAYER_CONFIG_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)) and len(value) == num_blocks:
            setattr(cfg, key, type(value)(value[i] for i in kept))
    for key in LAYER_INDEX_KEYS:
        value = getattr(cfg, key, None)
        if key not in done and isinstance(value, (list, tuple)) and all(isinstance(i, int) for i in value):
            setattr(cfg, key, type(value)(new_of[i] for i in value if i in new_of))


def remove_blocks(bm: BlockModel, removed: Sequence[int], check_only: bool = False) -> BlockModel | None:
    """A deep copy of the model with the blocks in `removed` physically deleted.

    Renumbers each remaining attention's `layer_idx` (KV-cache slots), sets the config's layer
    count and filters per-layer config lists (stale `layer_types` silently change sliding-window
    masks). `check_only` validates the block ids (ModelError) without copying anything.
    """
    import copy

    removed_set = set(int(i) for i in removed)
    bad = sorted(i for i in removed_set if not 0 <= i < bm.num_blocks)
    if bad:
        raise ModelError(f"block ids {bad} out of range 0..{bm.num_blocks - 1}")
    if len(removed_set) >= bm.num_blocks:
        raise ModelError(f"cannot remove all {bm.num_blocks} blocks")
    if check_only:
        return None
    kept = [i for i in range(bm.num_blocks) if i not in removed_set]
    model = copy.deepcopy(bm.model)
    parent_path, attr = bm.block_path.rsplit(".", 1) if "." in bm.block_path else ("", bm.block_path)
    parent = _get(model, parent_path) if parent_path else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList([old[i] for i in kept]))
    for new_idx, block in enumerate(getattr(parent, attr)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        text = model.config.get_text_config()
        if text is not model.config:
            configs.append(text)
    for cfg in configs:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(cfg, key, None), int) and getattr(cfg, key) == bm.num_blocks:
                setattr(cfg, key, len(kept))
        _per_layer_config(cfg, bm.num_blocks, kept)
    out = wrap(model, bm.tokenizer, bm.name)
    out.meta = {**bm.meta, "removed": sorted(removed_set), "kept": kept}
    return out


# ---- the load-time parity check -------------------------------------------------------------------
# Two short sentences the tokenizer turns into real token sequences (with its leading specials, as
# every request starts): the engine's dense log-probs on them must be the model's own forward's.
PARITY_TEXTS = ("The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
                "It was the best of times, it was the worst of times; it was the age of wisdom.")
PARITY_TOKENS = 24  # tokens per sequence at most
# Tolerated difference of a sequence's summed log-probability, per scored token, by dtype: fp32 runs
# the same operations batched differently (about 1e-7 apart); half precision rounds the logits the
# model's forward returns, and a deep model's blocks differently ordered in it (4e-3 apart on
# SmolLM2 in bfloat16 on a CPU). A missing final norm costs far more than either (0.2-3 nats/token).
PARITY_ATOL = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_PARITY_ATOL = 0.3
# A causal model's logits at a position do not move when later tokens change (relative to the
# logits' size; a few bfloat16 steps at |logit| ~ 30 in half precision).
CAUSAL_ATOL = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_CAUSAL_ATOL = 2e-2


def _parity_sequences(bm: BlockModel) -> list[list[int]]:
    vocab = bm.head.weight.shape[0]
    seqs = []
    for text in PARITY_TEXTS:
        try:
            ids = [int(i) for i in bm.tokenizer(text).input_ids]
        except Exception:  # noqa: BLE001 - a tokenizer that cannot: ids of our own below
            ids = []
        seqs.append([i for i in ids if 0 <= i < vocab][:PARITY_TOKENS])
    if any(len(s) < 6 for s in seqs):
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (PARITY_TOKENS, PARITY_TOKENS - 7)]
    return seqs


@torch.inference_mode()
def _own_logits(bm: BlockModel, ids: list[int]) -> torch.Tensor:
    """The model's own forward on one sequence: logits [T, V] in float64."""
    try:
        out = bm.model(input_ids=torch.tensor([ids], device=bm.device), use_cache=False)
    except Exception as exc:  # noqa: BLE001 - any model: say which, in one line
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): its own forward fails on text-only input: "
                         f"{_one_line(exc)}") from None
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape[:2]) != (1, len(ids)):
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): its forward returns no logits per position; "
                         "blockprune drives causal language models")
    return logits[0].double()


@torch.inference_mode()
def _blockwise_logprobs(bm: BlockModel, seqs: list[list[int]]) -> list[float]:
    """Summed log-probs of each sequence's tokens 1.. as the engine computes a dense row: the
    sequences right-padded into one batch, the prelude, every block through the same in-place
    runner, the final norm and the scoring head."""
    from . import fused
    from .kernels import scoring_head

    longest = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (longest - len(s)) for s in seqs], device=bm.device)
    prelude = bm.prelude(ids)
    hidden = prelude.hidden.clone()
    rows = torch.arange(len(seqs), device=hidden.device)
    run = fused.runner_for(bm, None) or bm.run_block_inplace  # as the engine picks it
    for layer in range(bm.num_blocks):
        run(layer, hidden, rows, prelude, len(seqs))
    out = []
    for i, s in enumerate(seqs):
        h = bm.normed(hidden[i, : len(s) - 1])
        targets = torch.tensor(s[1:], device=h.device)
        lse, tgt, _ = scoring_head(h, bm.head.weight, targets, bias=getattr(bm.head, "bias", None),
                                   softcap=bm.logit_softcap)
        out.append(float((tgt.double() - lse.double()).sum()))
    return out


def check_parity(bm: BlockModel) -> dict:
    """Refuse a model the engine would score wrongly, before any task is scored.

    On two short real token sequences: (1) the model is causal (a position's logits do not move
    when later tokens change: a bidirectional encoder such as BERT is refused); (2) the engine's
    dense log-probs equal the model's own forward's (a final norm, a projection or block arguments
    the adapter does not reproduce would make every score wrong). Returns what was measured.
    """
    seqs = _parity_sequences(bm)
    vocab = bm.head.weight.shape[0]
    ids = seqs[0]
    half = len(ids) // 2
    altered = ids[:half] + [(t + 1 + vocab // 2) % vocab for t in ids[half:]]
    a, b = _own_logits(bm, ids)[:half], _own_logits(bm, altered)[:half]
    leak = float((a - b).abs().max()) / (1.0 + float(a.abs().max()))
    if not leak <= CAUSAL_ATOL.get(bm.dtype, HALF_CAUSAL_ATOL):
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}) is not a causal decoder: its outputs at a position change "
                         "when later tokens change (a bidirectional encoder, such as BERT); blockprune scores causal "
                         "language models")
    own = []
    for s in seqs:
        lp = torch.log_softmax(_own_logits(bm, s), -1)
        own.append(float(lp[:-1].gather(1, torch.tensor(s[1:], device=lp.device)[:, None]).sum()))
    try:
        got = _blockwise_logprobs(bm, seqs)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any model: say which, in one line
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): blockprune cannot run its blocks one at a time: "
                         f"{_one_line(exc)}") from None
    per_token = max(abs(float(g) - o) / (len(s) - 1) for g, o, s in zip(got, own, seqs))
    atol = PARITY_ATOL.get(bm.dtype, HALF_PARITY_ATOL)
    if not per_token <= atol:
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): blockprune's dense log-probs differ from the model's own "
                         f"forward by {per_token:.3g} nats/token on a test sentence (tolerance {atol:g}), so every "
                         "score would be wrong: the adapter does not reproduce this architecture (its final norm, a "
                         "projection or its blocks' arguments)")
    return {"sequences": len(seqs), "tokens": sum(len(s) for s in seqs), "max_diff_per_token": per_token,
            "tolerance": atol, "causal_leak": leak}
