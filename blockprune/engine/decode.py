"""Greedy generation of many removal sets in one batch: rows are (candidate, prompt).

Every block runs only on the rows whose candidate keeps it, with a KV cache held only for those
rows (`BlockCache`); a row that stops (EOS, a stop string the caller checks, its token limit)
leaves the batch. Work is shared the way the scoring engine's trie shares it: at block l, rows
whose inputs are identical -- the same prompt, the same tokens generated so far, the same kept
(and healed) blocks up to l -- are one row. The block runs once for them and its output and its
keys and values are copied to every row of the group. In the prefill that is the trie of kept
prefixes; in decoding it keeps sharing for as long as candidates agree on the tokens (most do, for
the first tokens of most prompts).

Each step's per-block arguments (attention masks per layer type, rotary embeddings, positions) come
from the model's own forward, recorded as `BlockModel.prelude` records them, with left-padded
prompts, a 2D padding mask and a cache object that only reports the length already cached; so
sliding windows, Gemma's local/global rotary embeddings and the like are the model's own. The
blocks are the model's modules called with a cache of ours (`BlockCache.update`), as the HF
attention calls a `Cache`. Greedy and deterministic: in fp32 each candidate's tokens are those of
`generate()` on the physically pruned (and healed) model, which tests/test_decode.py checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..models.adapter import BlockModel, select_rows


@dataclass
class Generated:
    tokens: list[list[list[int]]]  # [candidate][prompt] -> generated ids (EOS excluded)
    block_rows: int = 0  # block evaluations run (one per row group per block per step)
    naive_block_rows: int = 0  # what one row per (candidate, prompt) would have run
    steps: int = 0


class BlockCache:
    """Keys and values of one block for its rows: [rows, kv_heads, capacity, head_dim].

    Before each call the decoder sets `write` (the cache rows of every row of the call's groups)
    and `inverse` (each of them -> its group) and `read` (one cache row per group); `update`
    writes the groups' new keys and values to all their rows and returns the groups' histories."""

    def __init__(self, rows: int, capacity: int):
        self.rows, self.capacity = rows, capacity
        self.k = self.v = None
        self.length = 0
        self.write = self.inverse = self.read = None

    def update(self, key, value, layer_idx=None, kwargs=None, cache_kwargs=None):
        n, heads, q, dim = key.shape
        if self.k is None:
            self.k = key.new_zeros((self.rows, heads, self.capacity, dim))
            self.v = value.new_zeros((self.rows, heads, self.capacity, dim))
        end = self.length + q
        self.k[self.write, :, self.length : end] = key[self.inverse]
        self.v[self.write, :, self.length : end] = value[self.inverse]
        return self.k[self.read, :, :end], self.v[self.read, :, :end]

    def keep_rows(self, rows: torch.Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]
        self.rows = len(rows)

    # what HF code may ask of a cache besides update
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    is_compileable = False


class _LengthCache:
    """Reports `length` cached tokens on every layer, holding none (for the model's mask code)."""

    def __init__(self, num_layers: int, length: int):
        from transformers import DynamicCache

        self.cache = DynamicCache()
        if length:
            z = torch.zeros(1, 1, length, 1)
            for i in range(num_layers):
                self.cache.update(z, z, i)


def step_arguments(bm: BlockModel, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None,
                   past: int, media=None) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """(block 0's input, each block's (args, kwargs)) of one forward of `ids` [R, q] after `past`
    cached tokens, recorded from the model's own forward (the blocks themselves do not run).
    `media`: the rows' images (an image-text model's left-padded prompts, `past` 0)."""
    cache = _LengthCache(bm.num_blocks, past).cache
    extra = {}
    if media is not None:
        from ..models.vision import forward_inputs

        extra = forward_inputs(bm.processor, media, ids.shape[1], "left", bm.device, bm.dtype)
    records = bm.record_blocks(lambda: bm.model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                                                cache=cache, use_cache=True, **extra))
    args0, kwargs0 = records[0]
    hidden = args0[0] if args0 else kwargs0["hidden_states"]
    out = []
    for args, kwargs in records:  # the length cache, passed by keyword or position: ours goes there
        kwargs = {k: (CACHE if v is cache else v) for k, v in kwargs.items() if k not in ("hidden_states", "use_cache")}
        out.append((tuple(CACHE if a is cache else a for a in args[1:]), kwargs))
    return hidden, out


CACHE = object()  # where a block's recorded arguments held the cache


def _with_cache(args: tuple, kwargs: dict, cache) -> tuple[tuple, dict]:
    return (tuple(cache if a is CACHE else a for a in args),
            {k: (cache if v is CACHE else v) for k, v in kwargs.items()})


def _rope_model(bm: BlockModel):
    """The inner model of a family with 3-D rotary positions (Qwen2-VL's `get_rope_index`, which
    keeps each prompt's `rope_deltas` from the prefill), else None."""
    inner = getattr(bm.model, "model", None)
    return inner if hasattr(inner, "get_rope_index") and hasattr(inner, "rope_deltas") else None


def _ids(keys: np.ndarray) -> np.ndarray:
    """Dense integer ids of the rows of a 2D key array (equal rows, equal ids)."""
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


@torch.inference_mode()
def generate(bm: BlockModel, prompts: Sequence[Sequence[int]], codes: np.ndarray, max_new_tokens: Sequence[int] | int,
             eos: Sequence[int] = (), stop: Callable[[int, int, list[int]], bool] | None = None, heal=None,
             max_rows: int | None = None, media=None) -> Generated:
    """Greedy continuations of every prompt under every candidate's codes (blockprune.healing.heal codes;
    a keep-mask works too). `stop(candidate, prompt, tokens)`: True ends that row (a stop string);
    EOS and `max_new_tokens` (per prompt, or one for all) end it too. Rows are processed in chunks of
    whole prompts (every candidate of a prompt together, so they share) of at most `max_rows` rows.
    `media`: per prompt, the image it holds (an image-text model; `prompts[p]` is then its
    processor's ids): the prefill, vision tower included, runs once per prompt for all candidates."""
    from .trie import as_codes

    codes = as_codes(codes)
    num_cands, num_prompts = len(codes), len(prompts)
    limits = np.broadcast_to(np.asarray(max_new_tokens, dtype=np.int64), (num_prompts,))
    out = Generated(tokens=[[[] for _ in range(num_prompts)] for _ in range(num_cands)])
    if num_cands == 0 or num_prompts == 0:
        return out
    per_chunk = max(1, (max_rows or num_cands * num_prompts) // num_cands)
    order = sorted(range(num_prompts), key=lambda p: -len(prompts[p]))  # similar lengths pad less
    for start in range(0, num_prompts, per_chunk):
        _generate_chunk(bm, prompts, order[start : start + per_chunk], codes, limits, set(eos), stop, heal, out, media)
    return out


def _generate_chunk(bm, prompts, chunk, codes, limits, eos, stop, heal, out: Generated, media=None) -> None:
    device = bm.device
    num_cands, num_blocks = codes.shape
    cand = np.repeat(np.arange(num_cands), len(chunk))  # row -> candidate
    prm = np.tile(np.asarray(chunk), num_cands)  # row -> prompt
    width = max(len(prompts[p]) for p in chunk)
    gen_max = int(max(limits[p] for p in chunk))
    capacity = width + gen_max
    pad = bm.eos_token_id or 0
    ids = np.full((len(cand), width), pad, dtype=np.int64)
    mask2d = np.zeros((len(cand), capacity), dtype=np.int64)
    for r, p in enumerate(prm):
        n = len(prompts[p])
        ids[r, width - n :] = prompts[p]
        mask2d[r, width - n : width] = 1
    lengths = np.array([len(prompts[p]) for p in prm])
    # prefix ids per block: rows with equal codes[:l+1] (and the same history) share block l
    prefix = np.stack([_ids(codes[:, : l + 1]) for l in range(num_blocks)], axis=1)  # [C, L]
    history = prm.copy()  # rows with the same prompt and the same tokens so far: one history id
    caches: dict[tuple[int, int], BlockCache] = {}
    slots: dict[tuple[int, int], np.ndarray] = {}  # (block, code) -> rows (of the live batch) it holds, in order
    for layer in range(num_blocks):
        for code in np.unique(codes[:, layer]):
            if code < 0:
                continue
            rows = np.flatnonzero(codes[cand, layer] == code)
            caches[(layer, int(code))] = BlockCache(len(rows), capacity)
            slots[(layer, int(code))] = rows
    live = np.arange(len(cand))  # rows still generating (indices into cand/prm)
    step, past = 0, 0
    tokens_t = torch.from_numpy(ids).to(device)
    slot = np.searchsorted(np.asarray(sorted(chunk)), prm)  # row -> its prompt's place in the prefill's batch
    rope = _rope_model(bm)
    deltas = None
    while len(live):
        q = tokens_t.shape[1]
        positions = np.maximum(mask2d[live, : past + q].cumsum(-1) - 1, 0)[:, past:]
        if past == 0:  # the prefill: one row per prompt (its image through the vision tower once), then
            first = np.unique(slot, return_index=True)[1]  # every candidate's row takes its prompt's arguments
            rows_p = torch.from_numpy(first).to(device)
            pos_p = torch.from_numpy(positions[first]).to(device)
            images = [media[p] for p in sorted(chunk)] if media is not None else None
            if rope is not None:
                rope.rope_deltas = None  # the model's own 3-D positions from its image grids, not a stale state
            hidden, block_args = step_arguments(bm, tokens_t.index_select(0, rows_p),
                                                torch.from_numpy(mask2d[first, :q]).to(device),
                                                None if (rope is not None and images is not None) else pos_p, 0, images)
            if rope is not None and rope.rope_deltas is not None:
                deltas = rope.rope_deltas.reshape(-1).cpu().numpy()
            expand = torch.from_numpy(slot[live]).to(device)
            hidden = hidden.index_select(0, expand)
            block_args = [(select_rows(a, len(first), expand), select_rows(k, len(first), expand)) for a, k in block_args]
        else:
            pos = torch.from_numpy(positions).to(device)
            if deltas is not None:  # 3-D rotary positions: text after the prompt, shifted by its image's delta
                pos = (pos + torch.from_numpy(deltas[slot[live]]).to(device)[:, None])[None].expand(3, -1, -1)
            attn = torch.from_numpy(mask2d[live, : past + q]).to(device)
            hidden, block_args = step_arguments(bm, tokens_t, attn, pos, past)
        hidden = hidden.clone()
        for layer in range(num_blocks):
            args, kwargs = block_args[layer]
            for code in np.unique(codes[cand[live], layer]):
                if code < 0:
                    continue
                key = (layer, int(code))
                cache, held = caches[key], slots[key]
                # held[i] = live row index; those are exactly the live rows of this (block, code)
                groups = _ids(np.stack([history[live[held]], prefix[cand[live[held]], layer]], axis=1))
                _, first = np.unique(groups, return_index=True)
                rep = torch.from_numpy(held[first]).to(device)
                cache.write = torch.arange(len(held), device=device)
                cache.inverse = torch.from_numpy(groups).to(device)
                cache.read = torch.from_numpy(first).to(device)
                cache.length = past
                x = hidden.index_select(0, rep)
                a, k = _with_cache(select_rows(args, len(live), rep), select_rows(kwargs, len(live), rep), cache)
                if code and heal is not None:
                    with heal.applied(layer, int(code)):
                        y = bm.blocks[layer](x, *a, **k)
                else:
                    y = bm.blocks[layer](x, *a, **k)
                y = y[0] if isinstance(y, (tuple, list)) else y
                hidden[torch.from_numpy(held).to(device)] = y.to(hidden.dtype)[cache.inverse]
                out.block_rows += len(first)
                out.naive_block_rows += len(held)
        logits = bm.head(bm.normed(hidden[:, -1]))
        if bm.logit_softcap is not None:
            logits = torch.tanh(logits / bm.logit_softcap) * bm.logit_softcap
        nxt = logits.argmax(-1).cpu().numpy()
        past += q
        step += 1
        done = np.zeros(len(live), dtype=bool)
        for i, r in enumerate(live):
            t = int(nxt[i])
            c, p = int(cand[r]), int(prm[r])
            if t in eos:
                done[i] = True
                continue
            out.tokens[c][p].append(t)
            if len(out.tokens[c][p]) >= limits[p] or (stop is not None and stop(c, p, out.tokens[c][p])):
                done[i] = True
        out.steps += 1
        # the next step's history ids: same history and same token -> same id
        history = history.copy()
        history[live] = _ids(np.stack([history[live], nxt], axis=1)) + history.max() + 1
        mask2d[live, past] = 1
        if done.any():
            keep = ~done
            kept_rows = live[keep]
            for key, held in slots.items():
                stay = np.isin(live[held], kept_rows)
                caches[key].keep_rows(torch.from_numpy(np.flatnonzero(stay)).to(device))
                slots[key] = held[stay]
            remap = -np.ones(len(live), dtype=np.int64)
            remap[keep] = np.arange(keep.sum())
            for key in slots:
                slots[key] = remap[slots[key]]
            live = kept_rows
            nxt = nxt[keep]
        tokens_t = torch.from_numpy(nxt[:, None].astype(np.int64)).to(device)
