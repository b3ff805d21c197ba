"""Units finer than a block: each decoder block as its attention half and its MLP half (#32).

`unit_model(bm, "sublayers")` is a BlockModel whose "blocks" are the 2L halves, in order: unit 2b
is block b's attention half (pre-norm, attention, any post-norm, residual add), unit 2b+1 its MLP
half. Everything built on blocks (the engine's keep-masks and trie, racing, the store, decoding,
healing) then works on halves unchanged: a row can skip one half and run the other, and the trie
forks at half-block points. The halves are the model's own modules, called as the block calls them:
the attention receives exactly the arguments the block's forward passes it (recorded from the
model's own forward, as for blocks). A family's block is split by the first LAYOUTS entry whose
modules it has, and the split is checked once numerically against the block itself: a family whose
block cannot be split that way (a parallel attention/MLP block, an unknown layout) is refused in one
line. Names: `17a` (block 17's attention), `17m` (its MLP), `17` (a whole block).

`--units attention` / `mlp` search the 2L halves with the other kind protected.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .adapter import BlockModel, arch_of, attention_kwargs, find_blocks, remove_blocks, wrap
from .sources import ModelError

# how units are named and parsed (17a, 17m) lives below every package that writes or reads them
from ..runs.names import KINDS, UNITS, fmt_units, parse_removal, parse_unit, protected_units, unit_name  # noqa: F401


@dataclass(frozen=True)
class Layout:
    """The modules of a block's two halves, by attribute name (None: absent)."""

    attn: str
    attn_pre: str
    attn_post: str | None
    mlp: str
    mlp_pre: str
    mlp_post: str | None


# the first layout whose modules a block has (the sandwich one first: it names more)
LAYOUTS = (
    Layout("self_attn", "input_layernorm", "post_attention_layernorm", "mlp", "pre_feedforward_layernorm",
           "post_feedforward_layernorm"),  # Gemma 2/3: a norm after each half too
    Layout("self_attn", "input_layernorm", None, "mlp", "post_attention_layernorm", None),  # Llama, Qwen, Mistral, OLMoE
    Layout("attn", "ln_1", None, "mlp", "ln_2", None),  # GPT-2
)


def layout_of(block: nn.Module) -> Layout | None:
    for layout in LAYOUTS:
        names = [n for n in dataclasses.astuple(layout) if n is not None]
        if all(isinstance(getattr(block, n, None), nn.Module) for n in names):
            return layout
    return None


class Half(nn.Module):
    """One half of a block: `hidden + post(core(pre(hidden)))`, the block's own modules. The attention
    half gets the arguments the block's forward passes its attention (bound from the block's
    recorded arguments); the MLP half needs none."""

    def __init__(self, block: nn.Module, layout: Layout, attention: bool):
        super().__init__()
        self.attention = attention
        names = (layout.attn_pre, layout.attn, layout.attn_post) if attention else \
            (layout.mlp_pre, layout.mlp, layout.mlp_post)
        # registered under the block's own names, so a projection is found where the block has it
        # (`self_attn.o_proj`, `mlp.down_proj`) and healing folds into the half's own output
        for name in names:
            if name is not None:
                self.add_module(name, getattr(block, name))
        self.pre, self.core, self.post = names
        object.__setattr__(self, "_signature", inspect.signature(type(block).forward))

    def pre_norm(self) -> nn.Module:
        """The half's own pre-norm module (the fused runner replaces it with its gather+norm kernel)."""
        return getattr(self, self.pre)

    def add(self, x: torch.Tensor, args: tuple = (), kwargs: dict | None = None) -> torch.Tensor:
        """What the half adds to the residual stream, given its pre-normed rows `x`: the sublayer
        (the attention with the block's arguments bound), then any post-norm."""
        if self.attention:
            x = getattr(self, self.core)(hidden_states=x, **attention_kwargs(self._signature, args, kwargs or {}))
            x = x[0] if isinstance(x, (tuple, list)) else x
        else:
            x = getattr(self, self.core)(x)
        if self.post is not None:
            x = getattr(self, self.post)(x)
        return x

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden + self.add(self.pre_norm()(hidden), args, kwargs)


@dataclass
class UnitModel(BlockModel):
    """A BlockModel whose blocks are halves (see the module doc); `base` is the model by blocks."""

    base: BlockModel | None = None
    units: str = "sublayers"

    def record_blocks(self, forward) -> list[tuple[tuple, dict]]:
        """The real blocks' arguments, each given to both of its halves."""
        records = self.base.record_blocks(forward)
        return [records[u // 2] for u in range(len(self.blocks))]

    @property
    def block_count(self) -> int:
        return self.base.num_blocks


def unit_model(bm: BlockModel, units: str = "sublayers") -> BlockModel:
    """`bm` by the units a search removes: itself for "blocks", else its 2L halves (checked)."""
    if units not in UNITS:
        raise ModelError(f"unknown --units {units!r}: choose one of {', '.join(UNITS)}")
    if units == "blocks":
        return bm
    halves = []
    for i, block in enumerate(bm.blocks):
        layout = layout_of(block)
        if layout is None:
            raise ModelError(f"{bm.name} ({arch_of(bm.model)}): block {i} ({type(block).__name__}) cannot be split into "
                             "an attention half and an MLP half (its modules are not a known pre-norm layout); search "
                             "--units blocks")
        halves += [Half(block, layout, attention=True), Half(block, layout, attention=False)]
    fields = {f.name: getattr(bm, f.name) for f in dataclasses.fields(BlockModel)}
    um = UnitModel(**{**fields, "blocks": nn.ModuleList(halves), "meta": dict(bm.meta)}, base=bm, units=units)
    problem = check_split(um)
    if problem:
        raise ModelError(f"{bm.name} ({arch_of(bm.model)}): its blocks cannot be split into halves exactly: {problem}; "
                         "search --units blocks")
    return um


@torch.inference_mode()
def check_split(um: UnitModel, rows: int = 2, length: int = 9) -> str | None:
    """None when each block equals its attention half then its MLP half on random tokens (recorded
    arguments), else what differs."""
    base = um.base
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.head.weight.shape[0], (rows, length), generator=gen).to(base.device)
    prelude = base.prelude(ids)
    idx = torch.arange(rows, device=base.device)
    hidden = prelude.hidden
    tol = 1e-5 if base.dtype == torch.float32 else 2e-2
    for b in range(base.num_blocks):
        want = base.run_block(b, hidden, prelude, idx)
        args, kwargs = prelude.block_args[b]
        got = um.blocks[2 * b + 1](um.blocks[2 * b](hidden, *args, **kwargs))
        scale = want.float().abs().max().clamp_min(1.0)
        diff = ((got.float() - want.float()).abs().max() / scale).item()  # one device read per block
        if not diff <= tol:
            return f"block {b}: halves differ from the block by {diff:.2g} (relative)"
        hidden = want
    return None


# ---- physical removal -----------------------------------------------------------------------------
class NoAttention(nn.Module):
    """A removed attention half in a physically pruned model: adds nothing and holds no weights. Its
    layer of the KV cache holds one number per token (keys and values of width 1, where a kept layer
    holds 2 x kv_heads x head_dim), so the cache still counts the sequence's length there:
    transformers reads the length and the masks' sizes from layer 0 and from the first layer of each
    attention type, which may be a removed one (an empty layer would read as length 0)."""

    def __init__(self, layer_idx: int | None):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states=None, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("layer_past")))
        if cache is not None and self.layer_idx is not None:
            cache = getattr(cache, "self_attention_cache", cache)  # GPT-2's encoder-decoder cache
            mark = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(mark, mark, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NoMLP(nn.Module):
    """A removed MLP half: adds nothing, holds no weights."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


def remove_units(bm: BlockModel, removed: Sequence[int], check_only: bool = False) -> BlockModel | None:
    """A copy of `bm` (by blocks) without the `removed` halves, for plain transformers: a block with
    both halves removed is deleted (`remove_blocks`), a removed half's modules (norms included) are
    replaced by NoAttention / NoMLP (no weights; no KV bytes)."""
    removed = sorted({int(u) for u in removed})
    bad = [u for u in removed if not 0 <= u < 2 * bm.num_blocks]
    if bad:
        raise ModelError(f"units {fmt_units(bad, 'sublayers')} out of range: the model has blocks 0..{bm.num_blocks - 1}")
    if len(removed) >= 2 * bm.num_blocks:
        raise ModelError("cannot remove every unit")
    if check_only:
        return None
    whole = [b for b in range(bm.num_blocks) if 2 * b in removed and 2 * b + 1 in removed]
    pruned = remove_blocks(bm, whole)  # renumbers the kept blocks' layer_idx and per-layer config lists
    new_of = {old: new for new, old in enumerate(b for b in range(bm.num_blocks) if b not in set(whole))}
    blocks = find_blocks(pruned.model)[1]
    for u in removed:
        if u // 2 in whole:
            continue
        block = blocks[new_of[u // 2]]
        layout = layout_of(block)
        core, pre, post = (layout.attn, layout.attn_pre, layout.attn_post) if u % 2 == 0 else \
            (layout.mlp, layout.mlp_pre, layout.mlp_post)
        old = getattr(block, core)
        setattr(block, core, NoAttention(getattr(old, "layer_idx", new_of[u // 2])) if u % 2 == 0 else NoMLP())
        for norm in (pre, post):
            if norm is not None:
                setattr(block, norm, nn.Identity())
    kept_attn = sum(1 for block in blocks if not isinstance(getattr(block, layout_of(block).attn), NoAttention))
    out = wrap(pruned.model, bm.tokenizer, bm.name, processor=bm.processor)
    out.meta = {**bm.meta, "removed_units": removed, "attention_kept": kept_attn}
    return out


def prune(bm: BlockModel, removed: Sequence[int], check_only: bool = False) -> BlockModel | None:
    """The model without `removed`: units of a UnitModel (halves), else blocks (`check_only`: the
    ids checked, ModelError, nothing copied)."""
    if isinstance(bm, UnitModel):
        return remove_units(bm.base, removed, check_only)
    return remove_blocks(bm, removed, check_only)


def blocks_left(bm: BlockModel, removed: Sequence[int]) -> int:
    """How many decoder blocks the pruned copy keeps (a block goes when both its halves do)."""
    if isinstance(bm, UnitModel):
        return bm.block_count - sum(1 for b in range(bm.block_count) if 2 * b in removed and 2 * b + 1 in removed)
    return bm.num_blocks - len(set(removed))
