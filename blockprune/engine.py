"""Masked, batched scoring of many removal candidates in one pass.

The engine sees only `Request`s (a token sequence and the position from which its tokens are
scored) and keep-masks (candidate x block). For every (candidate, request) it returns the summed
log-probability of the scored tokens and whether greedy decoding reproduces all of them.

How the work is shared. Rows are (trie node, request). Candidates that agree on blocks 0..l have
the same hidden state after block l, so at each block the engine keeps one row set per distinct
mask prefix (a trie node). At block l a node whose candidates all keep l runs the block once for
all of them (in place); a node whose candidates all skip it does nothing; a node whose
candidates disagree forks: the skipping part keeps the current rows and the keeping part gets
freshly computed rows appended. Skipped blocks cost a row nothing. The LM head runs only at scored
positions, through the chunked scoring head (never a rows x vocabulary logit matrix).

KL to the dense model (`score(..., kl=True)`): the all-keep mask joins every candidate group, so
the dense model is one more path of the trie (sharing each candidate's kept prefix). At scoring
time every node's positions are compared with the dense node's at the same positions by the KL
head, which streams over the vocabulary for both distributions in one pass over the weight.

Memory: candidates are grouped and requests chunked so that the resident hidden states of a chunk
fit half of the memory budget; block inputs run in micro-batches sized from the other half.
`Work` counts block-row evaluations against a naive one-forward-per-candidate loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import packing
from .kernels import kl_head, scoring_head
from .models import BlockModel
from .request import Request


@dataclass
class Work:
    """Work run vs a naive loop (one plain forward per candidate and request, full logits).

    block_rows: one block applied to one row (a packed row holds several requests);
    block_tokens: the same counted in tokens, padding included; head_positions: LM-head positions.
    """

    block_rows: int = 0
    naive_block_rows: int = 0
    block_tokens: int = 0
    naive_block_tokens: int = 0
    head_positions: int = 0
    naive_head_positions: int = 0
    reused_block_rows: int = 0  # block rows not run because stored states were reused (StateCache)

    def add(self, other: "Work") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    @property
    def block_ratio(self) -> float:
        return self.block_rows / self.naive_block_rows if self.naive_block_rows else 0.0

    def as_dict(self) -> dict:
        token_ratio = self.block_tokens / self.naive_block_tokens if self.naive_block_tokens else 0.0
        return {**asdict(self), "block_ratio": round(self.block_ratio, 4), "token_ratio": round(token_ratio, 4)}


@dataclass
class Scores:
    logprob: np.ndarray  # [C, R] float64: sum of log p(token) over scored tokens
    greedy: np.ndarray  # [C, R] bool: every scored token is the argmax
    work: Work
    kl: np.ndarray | None = None  # [C, R] float64: sum over scored positions of KL(dense || candidate)


def default_budget(device: torch.device) -> int:
    """Bytes the engine may hold: 60% of free GPU memory, or 3 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    return 3 * 2**30


def trie_block_rows(masks: np.ndarray) -> int:
    """Block evaluations per request for these keep-masks: distinct kept prefixes summed over blocks."""
    total = 0
    num_blocks = masks.shape[1]
    for layer in range(num_blocks):
        prefixes = {row[: layer + 1].tobytes() for row in masks if row[layer]}
        total += len(prefixes)
    return total


class StateCache:
    """Hidden states of rows at block boundaries, kept across scoring calls (reuse across steps).

    Key: (row, keep-mask prefix m[:l]) -> the row's hidden state at the input of block l under that
    prefix. A beam child that removes block j from parent P has P's prefix up to block j, so it
    starts at block j from P's stored state instead of recomputing P's blocks 0..j-1. Within one
    call the prefix trie already shares those blocks; the cache saves them across calls (racing
    rounds, candidate groups, the next beam step). Memory-bounded: least recently stored or used
    entries go first; `retain(masks)` drops everything not on those masks' paths (the search calls
    it with the candidates still in the race, then with the beam).
    """

    def __init__(self, max_bytes: int):
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.entries: "OrderedDict[tuple[bytes, bytes], torch.Tensor]" = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: tuple[bytes, bytes]) -> torch.Tensor | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: tuple[bytes, bytes], value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        self.entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()

    def retain(self, masks: np.ndarray) -> None:
        paths = [np.asarray(m, dtype=bool).tobytes() for m in masks]
        for key in [k for k in self.entries if not any(p.startswith(k[1]) for p in paths)]:
            value = self.entries.pop(key)
            self.bytes -= value.numel() * value.element_size()


def row_key(row: packing.Row) -> bytes:
    """Identity of a row's content (tokens, positions, packing segments)."""
    return np.asarray([len(row.tokens), *row.tokens, *row.positions, *row.segment], dtype=np.int64).tobytes()


class Engine:
    def __init__(self, model: BlockModel, budget_bytes: int | None = None, max_batch: int = 64,
                 cpu_micro_tokens: int = 2048, pack: bool = True, max_packed_len: int = 512,
                 head_positions: int = 4096, fused: bool | None = None, reuse_bytes: int | None = None):
        self.model = model
        self.pack = pack
        self.max_packed_len = max_packed_len
        self.head_positions = head_positions  # scored positions per scoring-head call
        self._packing_limit: int | bool | None = None
        self.cpu_micro_tokens = cpu_micro_tokens
        self.budget = budget_bytes or default_budget(model.device)
        self.max_batch = max_batch
        cfg = model.model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.hidden_size = model.head.weight.shape[1]
        self.intermediate = getattr(cfg, "intermediate_size", None) or 4 * self.hidden_size
        self.heads = getattr(cfg, "num_attention_heads", None) or max(1, self.hidden_size // 64)
        self.elem = torch.finfo(model.dtype).bits // 8
        # states kept across calls: by default a sixth of the budget (0 turns reuse off)
        reuse = self.budget // 6 if reuse_bytes is None else reuse_bytes
        self.cache = StateCache(reuse) if reuse > 0 else None
        # Blocks run in place on the rows that keep them: fused Triton gather+norm / residual-add
        # kernels where blockprune.fused supports the model (auto: on CUDA), else the HF block whole.
        from . import fused as fused_mod

        runner = fused_mod.runner_for(model, fused)
        self.fused = runner is not None
        self.run_inplace = runner or model.run_block_inplace

    # ---- memory planning ------------------------------------------------------------------
    def _state_bytes(self, length: int) -> int:
        # resident rows, the block output, and the copy made when rows fork
        return 3 * length * self.hidden_size * self.elem

    def _activation_bytes(self, length: int) -> int:
        per_token = (10 * self.hidden_size + 3 * self.intermediate) * 4
        return length * per_token + self.heads * length * length * 4

    def packing_limit(self) -> int | None:
        """Longest packed row, or None when packing is off for this model.

        Packing needs the model to honour a custom 4D mask and position ids; that is checked once
        numerically (packed vs plain log-probs). Rows never exceed a sliding window, so windowed
        blocks see exactly what they would see unpacked.
        """
        if self._packing_limit is False:
            return None
        if self._packing_limit is None:
            cfg = self.model.model.config
            cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
            window = getattr(cfg, "sliding_window", None)
            limit = min(self.max_packed_len, window) if isinstance(window, int) and window > 0 else self.max_packed_len
            self._packing_limit = limit if self.pack and self._packing_matches(limit) else False
        return self._packing_limit or None

    @torch.inference_mode()
    def _packing_matches(self, limit: int) -> bool:
        vocab = self.model.head.weight.shape[0]
        rng = np.random.default_rng(0)
        ctx = tuple(int(t) for t in rng.integers(0, vocab, size=max(1, min(6, limit // 3))))
        reqs = [Request(ctx + tuple(int(t) for t in rng.integers(0, vocab, size=3)), len(ctx)) for _ in range(2)]
        keep = np.ones((1, self.model.num_blocks), dtype=bool)
        try:
            packed = self._score_rows(packing.pack(reqs, limit), len(reqs), keep, None)[0]
        except Exception:  # noqa: BLE001 - a model that rejects custom masks simply runs unpacked
            return False
        plain = self._score_rows(packing.pack(reqs, None), len(reqs), keep, None)[0]
        return bool(np.allclose(packed, plain, rtol=1e-4, atol=1e-4))

    def row_tokens(self, requests: Sequence[Request]) -> int:
        """Tokens of the rows the requests become (choices sharing a context are packed into one)."""
        return sum(len(r) for r in packing.pack(requests, self.packing_limit()))

    def plan(self, rows: Sequence[packing.Row], num_candidates: int) -> tuple[int, list[list[int]]]:
        """(candidates per group, row chunks) so one chunk's states fit half the budget."""
        if not rows:
            return max(1, num_candidates), []
        half = self.budget // 2
        longest = max(len(r) for r in rows)
        group = max(1, min(num_candidates, half // self._state_bytes(longest)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        chunks: list[list[int]] = []
        current: list[int] = []
        for i in order:
            length = len(rows[current[0]]) if current else len(rows[i])
            full = len(current) >= self.max_batch or group * (len(current) + 1) * self._state_bytes(length) > half
            # rows are padded to the chunk's longest: start a new chunk before padding passes 1/3
            if current and (full or len(rows[i]) * 3 < length * 2):
                chunks.append(current)
                current = []
            current.append(i)
        if current:
            chunks.append(current)
        return group, chunks

    @staticmethod
    def _rows_of(node_ids: list[int], batch: int, sample_of_row: torch.Tensor) -> torch.Tensor:
        """Row ids of these trie nodes (node n holds rows n*batch .. n*batch + batch - 1)."""
        nodes_t = torch.tensor(node_ids, device=sample_of_row.device, dtype=torch.long)
        return (nodes_t[:, None] * batch + sample_of_row[None, :]).reshape(-1)

    def retain(self, keep: np.ndarray) -> None:
        """Keep stored states only on these keep-masks' paths (see StateCache)."""
        if self.cache is not None:
            self.cache.retain(np.asarray(keep, dtype=bool).reshape(-1, self.model.num_blocks))

    def _cached_starts(self, keys: list[bytes], masks: np.ndarray) -> np.ndarray:
        """Per candidate, the longest mask prefix whose states are stored for every row (0 = none)."""
        starts = np.zeros(len(masks), dtype=int)
        if self.cache is None or not len(self.cache):
            return starts
        for c, mask in enumerate(masks):
            for layer in range(len(mask) - 1, 0, -1):  # states are stored up to the last block's input
                prefix = mask[:layer].tobytes()
                if all((k, prefix) in self.cache.entries for k in keys):
                    starts[c] = layer
                    break
        return starts

    @staticmethod
    def _restore(states: list[torch.Tensor], length: int, like: torch.Tensor) -> torch.Tensor:
        rows = torch.zeros((len(states), length, like.shape[-1]), dtype=like.dtype, device=like.device)
        for j, state in enumerate(states):
            rows[j, : state.shape[0]] = state.to(like.device)
        return rows

    def _store(self, keys: list[bytes], rows: list[packing.Row], prefix: bytes, hidden: torch.Tensor, first: int) -> None:
        """Store one node's rows under `prefix`: one copy for the node, each row a view of it."""
        missing = [j for j, k in enumerate(keys) if (k, prefix) not in self.cache.entries]
        if not missing:
            return
        copy = hidden.index_select(0, torch.tensor(missing, device=hidden.device) + first)
        for i, j in enumerate(missing):
            self.cache.put((keys[j], prefix), copy[i, : len(rows[j])])

    # ---- scoring --------------------------------------------------------------------------
    @torch.inference_mode()
    def score(
        self,
        requests: Sequence[Request],
        keep: np.ndarray,
        progress: Callable[[int], None] | None = None,
        kl: bool = False,
    ) -> Scores:
        """Score every request under every keep-mask row (True = block runs).

        `progress(n)` is called after each block with the tokens it processed (padding included).
        With `kl`, also the summed KL(p_dense || p_candidate) over each request's scored positions
        (the dense mask is added to each candidate group when it is not already there).
        """
        keep = np.asarray(keep, dtype=bool)
        num_cands, num_blocks = keep.shape
        if num_blocks != self.model.num_blocks:
            raise ValueError(f"masks have {num_blocks} blocks, the model has {self.model.num_blocks}")
        logprob = np.zeros((num_cands, len(requests)), dtype=np.float64)
        greedy = np.zeros((num_cands, len(requests)), dtype=bool)
        kl_sum = np.zeros((num_cands, len(requests)), dtype=np.float64) if kl else None
        work = Work()
        if num_cands == 0 or not requests:
            return Scores(logprob, greedy, work, kl_sum)
        rows = packing.pack(requests, self.packing_limit())
        group_size, chunks = self.plan(rows, num_cands + int(kl))
        group_size = max(1, group_size - int(kl))  # room for the dense path
        dense = np.ones((1, num_blocks), dtype=bool)
        # Lexicographic order puts candidates with shared prefixes in the same group.
        order = sorted(range(num_cands), key=lambda c: keep[c].tobytes(), reverse=True)
        for g in range(0, num_cands, group_size):
            cands = np.array(order[g : g + group_size])
            masks = keep[cands]
            if kl and not masks.all(axis=1).any():
                masks = np.concatenate([masks, dense])
            for chunk in chunks:
                lp, gr, w, kls = self._score_rows([rows[i] for i in chunk], len(requests), masks, progress, kl)
                logprob[cands] += lp[: len(cands)]
                greedy[cands] |= gr[: len(cands)]
                if kl:
                    kl_sum[cands] += kls[: len(cands)]
                work.add(w)
        return Scores(logprob, greedy, work, kl_sum)

    def _score_rows(self, rows: list[packing.Row], num_requests: int, masks: np.ndarray, progress, kl: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, Work, np.ndarray | None]:
        """One chunk of rows under every mask. Returns [C, num_requests] arrays that are zero
        (False) for requests not in these rows; with `kl` the summed KL to the dense mask's node
        (which `masks` must contain)."""
        model = self.model
        device = model.device
        batch = len(rows)
        length = max(len(r) for r in rows)
        pad = model.eos_token_id or 0
        ids = torch.full((batch, length), pad, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r.tokens)
        extra = {}
        if any(r.packed for r in rows):
            positions = torch.zeros((batch, length), dtype=torch.long)
            for j, r in enumerate(rows):
                positions[j, : len(r)] = torch.tensor(r.positions)
                positions[j, len(r):] = torch.arange(len(r), length)
            eager = getattr(model.model.config, "_attn_implementation", "sdpa") == "eager"
            mask = packing.attention_mask(rows, length, model.dtype if eager else None)
            extra = {"position_ids": positions.to(device), "attention_mask": mask.to(device)}
        prelude = model.prelude(ids, **extra)
        hidden = prelude.hidden  # rows of node n: n*batch .. (n+1)*batch-1
        keys = [row_key(r) for r in rows] if self.cache is not None else []
        starts = self._cached_starts(keys, masks)
        nodes: list[np.ndarray] = [np.flatnonzero(starts == 0)]
        # candidates whose states are stored join at the block where their stored prefix ends
        waiting: dict[int, dict[bytes, list[int]]] = {}
        for c in np.flatnonzero(starts > 0):
            waiting.setdefault(int(starts[c]), {}).setdefault(masks[c, : starts[c]].tobytes(), []).append(int(c))
        # take the stored states now: storing new ones during the pass may evict them
        reusing = bool(waiting)
        held = {prefix: [self.cache.get((k, prefix)) for k in keys] for groups in waiting.values() for prefix in groups}
        sample_of_row = torch.arange(batch, device=device)
        micro = max(1, (self.budget // 2) // self._activation_bytes(length))
        if device.type == "cpu":  # CPU caches prefer ~2k tokens per call over one huge batch
            micro = min(micro, max(1, self.cpu_micro_tokens // length))
        num_requests_here = sum(len(r.scored) for r in rows)
        request_tokens = sum(len(p) + int(p[0]) + 1 for r in rows for _, p, _ in r.scored)
        work = Work(naive_block_rows=int(masks.sum()) * num_requests_here,
                    naive_block_tokens=int(masks.sum()) * request_tokens)

        for layer in range(model.num_blocks):
            for prefix, cands in waiting.pop(layer, {}).items():
                hidden = torch.cat([hidden, self._restore(held.pop(prefix), length, hidden)])
                nodes.append(np.array(cands))
            in_place: list[int] = []  # nodes whose candidates all keep this block
            forks: list[tuple[int, np.ndarray]] = []  # (node, candidates that keep it)
            for n, cands in enumerate(nodes):
                if len(cands) == 0:
                    continue
                kept = masks[cands, layer]
                if kept.all():
                    in_place.append(n)
                elif kept.any():
                    forks.append((n, cands[kept]))
                    nodes[n] = cands[~kept]
            if not in_place and not forks:
                continue
            if forks:  # the keeping part of a fork gets a copy of the node's rows, then runs in place
                fork_rows = self._rows_of([n for n, _ in forks], batch, sample_of_row)
                in_place.extend(range(len(nodes), len(nodes) + len(forks)))
                nodes.extend(c for _, c in forks)
                hidden = torch.cat([hidden, hidden.index_select(0, fork_rows)])
            idx = self._rows_of(in_place, batch, sample_of_row)
            self.run_inplace(layer, hidden, idx, prelude, micro)
            work.block_rows += len(idx)
            work.block_tokens += len(idx) * length
            if progress is not None:
                progress(len(idx) * length)
            if self.cache is not None and layer + 1 < model.num_blocks:
                for n in in_place:  # states at the input of block layer+1, under each node's prefix
                    self._store(keys, rows, masks[nodes[n][0], : layer + 1].tobytes(), hidden, n * batch)

        if reusing:  # what the trie alone would have run, less what ran
            work.reused_block_rows = trie_block_rows(masks) * batch - work.block_rows
        # Scoring: only at positions that predict a scored token.
        pos_row, pos_t, targets, pos_req = [], [], [], []
        for j, r in enumerate(rows):
            for req, predict, tgt in r.scored:
                pos_row.append(np.full(len(predict), j))
                pos_t.append(predict)
                targets.append(tgt)
                pos_req.append(np.full(len(predict), req))
                work.naive_head_positions += len(masks) * (len(predict) + int(predict[0]) + 1)  # whole sequence
        pos_row_t = torch.from_numpy(np.concatenate(pos_row)).to(device)
        pos_t_t = torch.from_numpy(np.concatenate(pos_t)).to(device)
        targets_t = torch.from_numpy(np.concatenate(targets)).to(device)
        req_ids = np.unique(np.concatenate(pos_req))
        seg_of_pos = torch.from_numpy(np.searchsorted(req_ids, np.concatenate(pos_req))).to(device)
        num_pos, num_seg = len(pos_t_t), len(req_ids)
        # nodes left empty (every candidate restored from stored states, or moved to a fork) score nothing
        live = [n for n, cands in enumerate(nodes) if len(cands)]
        live_t = torch.tensor(live, dtype=torch.long, device=device)
        lp_node = torch.zeros((len(nodes), num_seg), dtype=torch.float64, device=device)
        miss_node = torch.zeros((len(nodes), num_seg), dtype=torch.long, device=device)
        kl_node = torch.zeros((len(nodes), num_seg), dtype=torch.float64, device=device) if kl else None
        head_chunk = max(1, self.head_positions // num_pos)
        head = dict(bias=getattr(model.head, "bias", None), softcap=model.logit_softcap)
        if kl:  # the dense model's normed states at the scored positions, shared by every node
            is_dense = masks.all(axis=1)
            dense_node = next(n for n, cands in enumerate(nodes) if is_dense[cands].any())
            dense_h = model.normed(hidden[dense_node * batch + pos_row_t, pos_t_t])
            dense_index = torch.arange(num_pos, device=device)
        for n0 in range(0, len(live), head_chunk):
            node_ids = live_t[n0 : n0 + head_chunk]
            h = hidden[(node_ids[:, None] * batch + pos_row_t[None, :]).reshape(-1), pos_t_t.repeat(len(node_ids))]
            targets_rep = targets_t.repeat(len(node_ids))
            if kl:
                kls, lse, tgt, is_max = kl_head(model.normed(h), dense_h, model.head.weight, targets_rep,
                                                dense_index=dense_index.repeat(len(node_ids)), **head)
            else:
                lse, tgt, is_max = scoring_head(model.normed(h), model.head.weight, targets_rep, **head)
            local = torch.arange(len(node_ids), device=device)
            seg = (local[:, None] * num_seg + seg_of_pos[None, :]).reshape(-1)
            if kl:
                flat_kl = torch.zeros(len(node_ids) * num_seg, dtype=torch.float64, device=device)
                flat_kl.index_add_(0, seg, kls.double())
                kl_node[node_ids] = flat_kl.view(len(node_ids), num_seg)
            flat_lp = torch.zeros(len(node_ids) * num_seg, dtype=torch.float64, device=device)
            flat_lp.index_add_(0, seg, (tgt - lse).double())
            flat_miss = torch.zeros(len(node_ids) * num_seg, dtype=torch.long, device=device)
            flat_miss.index_add_(0, seg, (~is_max).long())
            lp_node[node_ids] = flat_lp.view(len(node_ids), num_seg)
            miss_node[node_ids] = flat_miss.view(len(node_ids), num_seg)
        work.head_positions = len(live) * num_pos

        logprob = np.zeros((len(masks), num_requests))
        greedy = np.zeros((len(masks), num_requests), dtype=bool)
        kl_out = np.zeros((len(masks), num_requests)) if kl else None
        lp_np, miss_np = lp_node.cpu().numpy(), miss_node.cpu().numpy()
        kl_np = kl_node.cpu().numpy() if kl else None
        for n, cands in enumerate(nodes):
            logprob[np.ix_(cands, req_ids)] = lp_np[n]
            greedy[np.ix_(cands, req_ids)] = miss_np[n] == 0
            if kl:
                kl_out[np.ix_(cands, req_ids)] = kl_np[n]
        if kl:  # the dense model against itself: exactly 0, not the rounding of two equal log-sum-exps
            kl_out[masks.all(axis=1)] = 0.0
        return logprob, greedy, work, kl_out
