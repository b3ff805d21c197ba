"""Greedy generation of many removal sets in one batch: rows are (candidate, prompt).

Every block runs only on the rows whose candidate keeps it, with a KV cache held only for those
rows (`BlockCache`); a row that stops (EOS, a stop string the caller checks, its token limit)
leaves the batch. Work is shared the way the scoring engine's trie shares it: at block l, rows
whose inputs are identical -- the same prompt, the same tokens generated so far, the same kept
(and healed) blocks up to l -- are one group. The block runs once for a group and its output is
copied to every row of the group; its keys and values are kept once per group (a cache slot). In
the prefill that is the trie of kept prefixes; in decoding it keeps sharing for as long as
candidates agree on the tokens (most do, for the first tokens of most prompts). A group whose rows
then disagree splits: its history is copied to the new groups' slots once, at that step; otherwise
the cache is written in place and read as views, never gathered.

Each step's per-block arguments (attention masks per layer type, rotary embeddings, positions) come
from the model's own forward, recorded as `BlockModel.prelude` records them, with left-padded
prompts, a 2D padding mask and a cache object that only reports the length already cached; so
sliding windows, Gemma's local/global rotary embeddings and the like are the model's own. In
decoding one forward of the next SPAN tokens (dummy ids: masks and rotary embeddings do not depend
on them) is recorded, checked against the model's own arguments at the span's first and last step,
and each step takes its slice (`StepSpans`): a step's input is then the model's input embedding of
its tokens. Where the check fails (a family whose input is not its embedding alone, a mask that
the model drops for some lengths only, a rotary embedding that depends on the length) every step
records its own forward, as before. The blocks are the model's modules called with a cache of ours
(`BlockCache.update`), as the HF attention calls a `Cache`.

Per step the host plans every block's groups (numpy) and sends what the device needs -- gather and
scatter indices of groups that are not one row each, new slots of split groups, positions -- in
one copy (`_Upload`, the scoring engine's pinned non_blocking upload); the next tokens stay on the device, the only
download is their ids. Greedy and deterministic: in fp32 each candidate's tokens are those of
`generate()` on the physically pruned (and healed) model, which tests/test_decode.py checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..models.adapter import BlockModel, select_rows
from .steps import identical, StepSpans, rope_model, with_cache, step_arguments
from .trie import upload_parts

CHECK_EVERY_STEP = False  # tests: also record every sliced step and require the model's own arguments


@dataclass
class Generated:
    tokens: list[list[list[int]]]  # [candidate][prompt] -> generated ids (EOS excluded)
    block_rows: int = 0  # block evaluations run (one per row group per block per step)
    naive_block_rows: int = 0  # what one row per (candidate, prompt) would have run
    steps: int = 0
    preludes: int = 0  # forwards of the model recorded for block arguments (the rest were sliced)


class BlockCache:
    """Keys and values of one block for its row groups: [slots, kv_heads, capacity, head_dim].

    Before each call the decoder sets `groups` (the call's groups are slots 0..groups-1, in the
    order of the call's rows) and `length` (tokens already cached). `update` writes the groups' new
    keys and values in place and returns views of their histories; `copy_slots` gives a split
    group's new slots the history of its parent (once, at the step it splits)."""

    def __init__(self, rows: int, capacity: int):
        self.rows, self.capacity = rows, capacity  # rows: the most groups there can be
        self.k = self.v = None
        self.length = 0
        self.groups = 0

    def update(self, key, value, layer_idx=None, kwargs=None, cache_kwargs=None):
        n, heads, q, dim = key.shape
        if self.k is None:
            self.k = key.new_zeros((self.rows, heads, self.capacity, dim))
            self.v = value.new_zeros((self.rows, heads, self.capacity, dim))
        end = self.length + q
        self.k[:n, :, self.length : end] = key
        self.v[:n, :, self.length : end] = value
        return self.k[:n, :, :end], self.v[:n, :, :end]

    def copy_slots(self, dst: torch.Tensor, src: torch.Tensor, length: int) -> None:
        if self.k is not None and length and len(dst):
            self.k[dst, :, :length] = self.k[src, :, :length]
            self.v[dst, :, :length] = self.v[src, :, :length]

    # what HF code may ask of a cache besides update
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    is_compileable = False


def _ids(keys: np.ndarray) -> np.ndarray:
    """Dense integer ids of the rows of a 2D key array (equal rows, equal ids)."""
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def _regroup(old: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Rows that held slots `old` regroup by `key` (the same old slot and key: one group) ->
    (each row's slot, slots in use, copy destinations, copy sources). A group keeps its parent's
    slot when it is the parent's first group and the slot is below the new count; the others (a
    split's further groups, groups above the count when groups ended) take the free slots below it,
    with their parent's history copied there. Free slots are never parents: no copy reads one."""
    gid = _ids(np.stack([old, key], axis=1))
    count = int(gid.max()) + 1
    parent = np.empty(count, dtype=np.int64)
    parent[gid] = old
    firsts = np.unique(parent, return_index=True)[1]  # groups are sorted by parent
    slot = np.full(count, -1, dtype=np.int64)
    stay = firsts[parent[firsts] < count]
    slot[stay] = parent[stay]
    free = np.setdiff1d(np.arange(count), slot[stay], assume_unique=True)
    moved = np.flatnonzero(slot < 0)
    slot[moved] = free
    return slot[gid], count, free, parent[moved]


class _Upload:
    """A step's host index arrays, sent to the device in one copy (`trie.upload_parts`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.parts: list[np.ndarray] = []

    def add(self, array) -> int:
        self.parts.append(np.asarray(array, dtype=np.int64))
        return len(self.parts) - 1

    def send(self) -> list[torch.Tensor]:
        parts, self.parts = self.parts, []
        return upload_parts(parts, self.device) if parts else []


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
    # prefix ids per block: rows with equal codes[:l+1] (and the same history) share block l
    prefix = np.stack([_ids(codes[:, : l + 1]) for l in range(num_blocks)], axis=1)  # [C, L]
    history = prm.copy()  # rows with the same prompt and the same tokens so far: one history id
    caches: dict[tuple[int, int], BlockCache] = {}
    held: dict[tuple[int, int], np.ndarray] = {}  # (block, code) -> rows (of the live batch) it holds, in order
    slot_of: dict[tuple[int, int], np.ndarray] = {}  # (block, code) -> each held row's cache slot (its group's)
    for layer in range(num_blocks):
        for code in np.unique(codes[:, layer]):
            if code < 0:
                continue
            rows = np.flatnonzero(codes[cand, layer] == code)
            caches[(layer, int(code))] = BlockCache(len(rows), capacity)
            held[(layer, int(code))] = rows
    live = np.arange(len(cand))  # rows still generating (indices into cand/prm)
    step, past = 0, 0
    slot = np.searchsorted(np.asarray(sorted(chunk)), prm)  # row -> its prompt's place in the prefill's batch
    rope = rope_model(bm)
    deltas = None
    upload = _Upload(device)
    prelude = StepSpans(bm, enabled=rope is None and media is None)
    next_tokens = kept = None  # the last step's argmax ids (device); rows of it still live (host)
    while len(live):
        q = width if past == 0 else 1
        # -- host: every (block, code)'s groups for this step, and what the device needs of them
        plans = {}
        for key, cache in caches.items():
            h = held[key]
            if not len(h):
                continue
            if past == 0:
                slots = _ids(np.stack([history[live[h]], prefix[cand[live[h]], key[0]]], axis=1))
                count, dst, src = int(slots.max()) + 1, (), ()
            else:
                slots, count, dst, src = _regroup(slot_of[key], history[live[h]])
            slot_of[key] = slots
            one_each = count == len(h) and bool((slots == np.arange(count)).all())
            if one_each and len(h) == len(live):  # every live row, each its own group, in order: no indexing
                plans[key] = (count, None, None, None, None)
                continue
            rep = np.empty(count, dtype=np.int64)
            rep[slots] = h  # any row of a group: their inputs are the same
            plans[key] = (count, upload.add(rep), upload.add(h), None if one_each else upload.add(slots),
                          (upload.add(dst), upload.add(src)) if len(dst) else None)
        keep_at = upload.add(kept) if kept is not None else None
        positions = None
        span = 0
        if past == 0:  # the prefill: one row per prompt (its image through the vision tower once), then
            first = np.unique(slot, return_index=True)[1]  # every candidate's row takes its prompt's arguments
            positions = np.maximum(mask2d[first, :q].cumsum(-1) - 1, 0)
            pre = [upload.add(a) for a in (ids[first], positions, mask2d[first, :q], slot[live])]
        elif not prelude.sliced(step):
            span = prelude.span_for(step, gen_max - step, len(live), past)
            m = mask2d[live, : past + span].copy()
            m[:, past:] = 1  # rows that keep generating fill the span's columns
            positions = np.maximum(m.cumsum(-1) - 1, 0)[:, past:]
            pos = positions[:, :1]
            if deltas is not None:  # 3-D rotary positions: text after the prompt, shifted by its image's delta
                pos = pos + deltas[slot[live]][:, None]
            pre = [upload.add(a) for a in (pos, mask2d[live, : past + 1])]
            if span > 1:
                pre += [upload.add(a) for a in (positions[:, -1:], m, positions)]
        views = upload.send()
        # -- device
        if kept is not None:
            keep_t = views[keep_at]
            next_tokens = next_tokens.index_select(0, keep_t)
            if prelude.sliced(step):
                prelude.keep(keep_t, len(live))
            kept = None
        for key, (count, _, _, _, copies) in plans.items():
            cache = caches[key]
            cache.groups, cache.length = count, past
            if copies is not None:
                cache.copy_slots(views[copies[0]], views[copies[1]], past)
        if past == 0:
            tokens_p, pos_p, mask_p, expand = (views[i] for i in pre)
            images = [media[p] for p in sorted(chunk)] if media is not None else None
            if rope is not None:
                rope.rope_deltas = None  # the model's own 3-D positions from its image grids, not a stale state
            hidden, block_args = step_arguments(bm, tokens_p, mask_p,
                                                None if (rope is not None and images is not None) else pos_p, 0, images)
            out.preludes += 1
            if rope is not None and rope.rope_deltas is not None:
                deltas = rope.rope_deltas.reshape(-1).cpu().numpy()
            hidden = hidden.index_select(0, expand)
            block_args = [(select_rows(a, len(first), expand), select_rows(k, len(first), expand))
                          for a, k in block_args]
        else:
            tokens_t = next_tokens[:, None]
            if prelude.sliced(step):
                hidden, block_args = prelude.at(step, tokens_t, past)
                if CHECK_EVERY_STEP:
                    pos_t = torch.from_numpy(np.maximum(mask2d[live, : past + 1].cumsum(-1) - 1, 0)[:, past:]).to(device)
                    own = step_arguments(bm, tokens_t, torch.from_numpy(mask2d[live, : past + 1]).to(device), pos_t,
                                         past)
                    assert identical(hidden, own[0]) and identical(block_args, own[1]), f"step {step}"
            else:
                pos_t, attn_t = views[pre[0]], views[pre[1]]
                if deltas is not None:
                    pos_t = pos_t[None].expand(3, -1, -1)
                hidden, block_args = step_arguments(bm, tokens_t, attn_t, pos_t, past)
                out.preludes += 1
                if span > 1:
                    last_pos, m_t, span_pos = (views[i] for i in pre[2:])
                    last = step_arguments(bm, tokens_t, m_t, last_pos, past + span - 1)
                    span_rec = step_arguments(bm, tokens_t.expand(-1, span), m_t, span_pos, past)
                    out.preludes += 2
                    prelude.record(step, span, past, tokens_t, (hidden, block_args), last, span_rec)
        hidden = hidden.clone()
        for layer in range(num_blocks):
            args, kwargs = block_args[layer]
            for code in np.unique(codes[cand[live], layer]):
                if code < 0:
                    continue
                key = (layer, int(code))
                cache = caches[key]
                count, rep_at, held_at, slots_at, _ = plans[key]
                if rep_at is None:
                    x, a, k = hidden, args, kwargs
                else:
                    rep = views[rep_at]
                    x = hidden.index_select(0, rep)
                    a, k = select_rows(args, len(live), rep), select_rows(kwargs, len(live), rep)
                a, k = with_cache(a, k, cache)
                if code and heal is not None:
                    with heal.applied(layer, int(code)):
                        y = bm.blocks[layer](x, *a, **k)
                else:
                    y = bm.blocks[layer](x, *a, **k)
                y = (y[0] if isinstance(y, (tuple, list)) else y).to(hidden.dtype)
                if rep_at is None:
                    hidden = y
                else:
                    hidden.index_copy_(0, views[held_at], y if slots_at is None else y.index_select(0, views[slots_at]))
                out.block_rows += count
                out.naive_block_rows += len(held[key])
        logits = bm.head(bm.normed(hidden[:, -1]))
        if bm.logit_softcap is not None:
            logits = torch.tanh(logits / bm.logit_softcap) * bm.logit_softcap
        next_tokens = logits.argmax(-1)
        nxt = next_tokens.cpu().numpy()
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
            remap = -np.ones(len(live), dtype=np.int64)
            remap[keep] = np.arange(keep.sum())
            for key, h in held.items():
                stay = keep[h]
                held[key] = remap[h[stay]]
                if key in slot_of:
                    slot_of[key] = slot_of[key][stay]
            live = live[keep]
            kept = np.flatnonzero(keep)
