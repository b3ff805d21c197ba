"""Block-list adapters: run a Hugging Face model's blocks one at a time, and take blocks out.

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

Loading a model (and the parity check that refuses one the engine would score wrongly) is
`blockprune.models`; physical removal (`remove_blocks`) is here.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
import inspect
from typing import Any, Sequence

import torch
from torch import nn

from .sources import ModelError


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


class Captured(Exception):
    pass


def select_rows(obj: Any, batch: int, rows: torch.Tensor) -> Any:
    """Index every per-sample tensor (leading dim == batch > 1) by `rows`; others broadcast."""
    if isinstance(obj, torch.Tensor):
        if batch > 1 and obj.dim() >= 2 and obj.shape[0] == batch:
            return obj.index_select(0, rows)
        return obj
    if isinstance(obj, tuple):
        return tuple(select_rows(o, batch, rows) for o in obj)
    if isinstance(obj, list):
        return [select_rows(o, batch, rows) for o in obj]
    if isinstance(obj, dict):
        return {k: select_rows(v, batch, rows) for k, v in obj.items()}
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
    processor: Any = None  # an image-text model's processor (blockprune.models.vision); None for text models

    @property
    def image_text(self) -> bool:
        """An image-text model whose prompts can hold images (its text tower's blocks are the units)."""
        return self.processor is not None

    @property
    def num_blocks(self) -> int:
        """The units a keep-mask has a column for: the blocks (a UnitModel's: its halves)."""
        return len(self.blocks)

    @property
    def block_count(self) -> int:
        """The model's own decoder blocks (a UnitModel's num_blocks counts halves)."""
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
    def record_blocks(self, forward) -> list[tuple[tuple, dict]]:
        """Every block's (args, kwargs) of one call of `forward()` (the model's own forward), the
        blocks replaced by recorders that pass their input on; the last one ends the forward."""
        records: list[tuple[tuple, dict]] = []
        last = len(self.blocks) - 1

        def recorder(index: int):
            def fake_forward(*args, **kwargs):
                records.append((args, kwargs))
                if index == last:
                    raise Captured
                return args[0] if args else kwargs["hidden_states"]

            return fake_forward

        for i, block in enumerate(self.blocks):
            block.forward = recorder(i)
        try:
            forward()
        except Captured:
            pass
        finally:
            for block in self.blocks:
                del block.forward  # back to the class's forward
        return records

    @torch.inference_mode()
    def prelude(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, media=None) -> Prelude:
        """Run the model up to block 0 and record every block's extra arguments.

        Sequences are right-padded; with a causal mask the valid positions never see padding, so
        by default no padding mask is passed (it also lets SDPA take its causal fast path). Packed
        rows pass their own position ids and 4D mask (see blockprune.engine.packing). `media`: per
        row, the image its prompt holds (an image-text model): the model's own forward then runs
        its vision tower on them and builds its masks and positions (blockprune.models.vision).
        """
        extra = {}
        if position_ids is not None:
            extra["position_ids"] = position_ids
        if attention_mask is not None:
            extra["attention_mask"] = attention_mask
        if media is not None:
            from .vision import forward_inputs

            extra.update(forward_inputs(self.processor, media, input_ids.shape[1], "right", self.device, self.dtype))
        try:
            records = self.record_blocks(lambda: self.model(input_ids=input_ids.to(self.device), use_cache=False,
                                                            **extra))
        except Exception as exc:  # noqa: BLE001 - any model: say which, in one line
            text = str(exc).strip()
            what = "its prompts with images" if media is not None else "text-only input"
            raise ModelError(f"{self.name} ({arch_of(self.model)}): its forward fails on {what} before "
                             f"the last block: {type(exc).__name__}: {text.splitlines()[0] if text else ''}") from None
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
            hidden, *select_rows(args, prelude.batch, rows), **select_rows(kwargs, prelude.batch, rows)
        )
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.inference_mode()
    def run_block_inplace(self, index: int, hidden: torch.Tensor, idx: torch.Tensor, prelude: Prelude,
                          micro: int) -> None:
        """hidden[idx] = block(hidden[idx]), `micro` rows per call; row r uses sample r % prelude.batch.

        The plain path: gather the rows, call the HF block whole, write the rows back. The fused
        path (blockprune.models.fused) does the same with Triton gather+norm and residual-add kernels.
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


def wrap(model: nn.Module, tokenizer: Any, name: str, processor: Any = None) -> BlockModel:
    """Build the adapter for an already-loaded model (`processor`: an image-text model's)."""
    path, blocks = find_blocks(model)
    if processor is not None and (path not in BLOCK_PATHS or any(w in path for w in ("vision", "visual"))):
        # the fallback (the largest list of identical modules) could be the vision tower's layers
        raise ModelError(f"{name} ({arch_of(model)}): the text tower's blocks were not found (expected one of "
                         f"{', '.join(p for p in BLOCK_PATHS if 'language' in p or 'text' in p)}); blockprune prunes "
                         f"an image-text model's text tower only, and {path} may be its vision encoder")
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
        processor=processor,
    )


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's whole message on one line (transformers' often continue on the next)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
LAYER_INDEX_KEYS = ("mlp_only_layers", "full_attn_idxs", "moe_layers", "attn_layer_indices", "hybrid_layer_ids",
                    "rope_scaling_layers")  # Molmo2: the blocks with scaled rotary embeddings


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
    for name, value in list(vars(parent).items()):  # per-block lists the text model built (Molmo2's rope_types)
        if not name.startswith("_") and isinstance(value, (list, tuple)) and len(value) == bm.num_blocks:
            setattr(parent, name, type(value)(value[i] for i in kept))
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
    out = wrap(model, bm.tokenizer, bm.name, processor=bm.processor)
    out.meta = {**bm.meta, "removed": sorted(removed_set), "kept": kept}
    return out


def attention_kwargs(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """What a block's forward (`signature`: its unbound forward's) passes to its attention besides
    hidden_states: every argument the block received as recorded (defaults included), **kwargs
    spread out. The fused runner and the attention half both call the attention this way."""
    bound = signature.bind(None, None, *args, **kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for p in list(signature.parameters.values())[2:]:  # skip self and hidden_states
        if p.name not in bound.arguments:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            out.update(bound.arguments[p.name])
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            out[p.name] = bound.arguments[p.name]
    return out


def cache_kwarg(model: torch.nn.Module) -> str | None:
    """The forward argument that takes a KV cache: `cache` (transformers 5.2x) or `past_key_values`
    (5.17, the lent card's), or None. A model takes an unknown keyword silently and makes a cache of
    its own, so calling it with the wrong name gives wrong masks and positions, not an error."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def output_cache(output):
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
