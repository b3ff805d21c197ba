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

import logging

import numpy as np
import torch

from . import packing
from .. import kernels
from ..kernels import kl_head, scoring_head
from ..models import BlockModel, Prelude
from ..models.fused import check_raised, device_error
from ..tasks.request import Request
from .trie import (ChunkIndex, StateCache, TriePlan, as_codes, node_rows, plan_trie, row_key, runs_of, to_host,
                   trie_block_rows, upload, upload_parts)

log = logging.getLogger("blockprune")


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
    generated: tuple | None = None  # generative tasks: (samples, [candidate][i] tokens), set by the runner


def packing_tolerance(dtype: torch.dtype) -> float:
    """Packed and plain log-probs of the self-check agree within this (relative and absolute): a few
    rounding units of the dtype, since the two layouts reduce in different orders (1e-4 in fp32;
    bf16 rounds at 2^-8, so 1e-4 would turn packing off on every bf16 model)."""
    return 1e-4 if torch.finfo(dtype).bits >= 32 else 4 * torch.finfo(dtype).eps


# What a model that cannot take a packed row (a 4D mask, position ids) raises: shape, type and
# "not implemented" errors. Anything else (a Triton compile error, ...) propagates, and so does a
# CUDA error among these (`fused.device_error`).
REJECTS_PACKED_ROW = (ValueError, TypeError, IndexError, KeyError, NotImplementedError, AssertionError, RuntimeError)


def default_budget(device: torch.device) -> int:
    """Bytes the engine may hold: 60% of free GPU memory, or 3 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    return 3 * 2**30


class Engine:
    def __init__(self, model: BlockModel, budget_bytes: int | None = None, max_batch: int = 64,
                 cpu_micro_tokens: int = 2048, pack: bool = True, max_packed_len: int = 512,
                 head_positions: int = 4096, fused: bool | None = None, reuse_bytes: int | None = None,
                 heal=None):
        self.model = model
        self.heal = heal  # blockprune.healing.heal.Healing: removed runs are scored healed (None: plain)
        self.pack = pack
        self.max_packed_len = max_packed_len
        self.head_positions = head_positions  # scored positions per scoring-head call
        self._packing_limit: int | bool | None = None
        self.packing_note = "packing off (--no-pack)" if not pack else None
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
        # kernels where blockprune.models.fused supports the model (auto: on CUDA), else the HF block whole.
        from ..models import fused as fused_mod

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
        # two choices that share one packed row within `limit` (a sliding window can make it 5):
        # the second's tokens are queries that must not see the first's
        second = max(1, min(3, limit - 2))
        first = max(1, min(3, limit - 1 - second))
        ctx = tuple(int(t) for t in rng.integers(0, vocab, size=max(1, min(6, limit - first - second))))
        reqs = [Request(ctx + tuple(int(t) for t in rng.integers(0, vocab, size=n)), len(ctx)) for n in (first, second)]
        keep = np.ones((1, self.model.num_blocks), dtype=bool)
        try:
            packed = self._score_rows(packing.pack(reqs, limit), len(reqs), keep, None)[0]
        except REJECTS_PACKED_ROW as exc:  # a model that rejects custom masks simply runs unpacked
            if device_error(exc):  # not a rejection: the CUDA context is unusable now
                raise check_raised("the packing check", self.model.name, exc) from exc
            self.packing_note = f"packing off: the model rejects a packed row ({type(exc).__name__})"
            log.info("%s: %s", self.model.name, self.packing_note)
            return False
        plain = self._score_rows(packing.pack(reqs, None), len(reqs), keep, None)[0]
        tol = packing_tolerance(self.model.dtype)
        ok = bool(np.allclose(packed, plain, rtol=tol, atol=tol))
        worst = float(np.max(np.abs(packed - plain)))
        self.packing_note = (f"packing {'on' if ok else 'off'}: packed vs plain log-probs differ by {worst:.3g} "
                             f"(tolerance {tol:g} for {str(self.model.dtype).replace('torch.', '')})")
        (log.info if ok else log.warning)("%s: %s", self.model.name, self.packing_note)
        return ok

    def info(self) -> dict:
        """How this engine runs, for run.json and the bench rows."""
        return {"device": str(self.model.device), "dtype": str(self.model.dtype).replace("torch.", ""),
                "fused": self.fused, "fused_reason": self.model.meta.get("fused_reason"),
                "kernels": kernels.backend(), "packing_limit": self.packing_limit(), "packing": self.packing_note}

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

    def codes(self, keep: np.ndarray) -> np.ndarray:
        """The keep-masks as the trie walks them: -1 skipped, 0 run as is, n > 0 run healed for
        the n removed blocks after it (blockprune.healing.heal; plain scoring has no n > 0)."""
        keep = np.asarray(keep, dtype=bool).reshape(-1, self.model.num_blocks)
        return self.heal.codes(keep) if self.heal is not None else as_codes(keep)

    def retain(self, keep: np.ndarray) -> None:
        """Keep stored states only on these keep-masks' paths (see StateCache)."""
        if self.cache is not None:
            self.cache.retain(self.codes(keep))

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

    def _store(self, keys: list[bytes], rows: list[packing.Row], prefix: bytes, hidden: torch.Tensor, first: int) -> None:
        """Store one node's rows under `prefix`: one copy per run of missing rows, each row a view
        of it. Slices only: no index tensor is uploaded."""
        missing = [j for j, k in enumerate(keys) if (k, prefix) not in self.cache.entries]
        for run in runs_of(missing):
            copy = hidden[first + run[0] : first + run[-1] + 1].clone()
            for i, j in enumerate(run):
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
        codes = self.codes(keep)
        dense = np.zeros((1, num_blocks), dtype=codes.dtype)
        # Lexicographic order puts candidates with shared prefixes in the same group.
        order = sorted(range(num_cands), key=lambda c: codes[c].tobytes(), reverse=True)
        for g in range(0, num_cands, group_size):
            cands = np.array(order[g : g + group_size])
            masks = codes[cands]
            if kl and not (masks == 0).all(axis=1).any():
                masks = np.concatenate([masks, dense])
            for chunk in chunks:
                lp, gr, w, kls = self._score_rows([rows[i] for i in chunk], len(requests), masks, progress, kl)
                logprob[cands] += lp[: len(cands)]
                greedy[cands] |= gr[: len(cands)]
                if kl:
                    kl_sum[cands] += kls[: len(cands)]
                work.add(w)
        return Scores(logprob, greedy, work, kl_sum)

    def generate(self, prompts, keep: np.ndarray, max_new_tokens, eos=(), stop=None, media=None):
        """Greedy continuations of `prompts` under every keep-mask (healed with this engine's
        healing): blockprune.engine.decode, rows in chunks that fit half the memory budget.
        `media`: per prompt, the image it holds (an image-text model)."""
        from . import decode

        codes = self.codes(keep)
        cfg = self.model.model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        kv_dim = 2 * (getattr(cfg, "num_key_value_heads", None) or self.heads) * (
            getattr(cfg, "head_dim", None) or self.hidden_size // self.heads)
        longest = max(len(p) for p in prompts) + int(np.max(max_new_tokens)) if len(prompts) else 1
        per_row = int((codes >= 0).sum(axis=1).max(initial=1)) * longest * kv_dim * self.elem
        max_rows = max(len(codes), (self.budget // 2) // max(1, per_row))
        return decode.generate(self.model, prompts, codes, max_new_tokens, eos=eos, stop=stop, heal=self.heal,
                               max_rows=max_rows, media=media)

    def _score_rows(self, rows: list[packing.Row], num_requests: int, masks: np.ndarray, progress, kl: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, Work, np.ndarray | None]:
        """One chunk of rows under every mask. Returns [C, num_requests] arrays that are zero
        (False) for requests not in these rows; with `kl` the summed KL to the dense mask's node
        (which `masks` must contain). `masks`: codes (see `codes`) or keep-masks.

        Four phases: plan the trie walk on the host (`plan_trie`), upload every index it needs in
        one copy (`_upload_plan`), run the blocks on preallocated rows (`_run_blocks`), score the
        live nodes (`_score_nodes`), and bring the per-node sums back in one copy."""
        masks = as_codes(masks)
        keys = [row_key(r) for r in rows] if self.cache is not None else []
        starts = self._cached_starts(keys, masks)
        plan = plan_trie(masks, starts)
        prelude, index = self._upload_plan(rows, plan, masks)
        kept = int((masks >= 0).sum())
        work = Work(naive_block_rows=kept * index.num_requests,
                    naive_block_tokens=kept * index.request_tokens,
                    naive_head_positions=len(masks) * index.request_tokens)  # every position, every candidate
        # take the stored states now: storing new ones during the pass may evict them
        held = {prefix: [self.cache.get((k, prefix)) for k in keys] for _, _, prefix in plan.restores}
        hidden = self._run_blocks(rows, plan, prelude, index, held, keys, masks, work, progress)
        if plan.restores:  # what the trie alone would have run, less what ran
            work.reused_block_rows = trie_block_rows(masks) * len(rows) - work.block_rows
        sums = self._score_nodes(hidden, plan, index, masks, kl)
        work.head_positions = len(plan.live) * index.num_positions
        lp_np, miss_np, kl_np = to_host(sums)
        logprob = np.zeros((len(masks), num_requests))
        greedy = np.zeros((len(masks), num_requests), dtype=bool)
        kl_out = np.zeros((len(masks), num_requests)) if kl else None
        for i, n in enumerate(plan.live):
            cands = plan.nodes[n]
            logprob[np.ix_(cands, index.req_ids)] = lp_np[i]
            greedy[np.ix_(cands, index.req_ids)] = miss_np[i] == 0
            if kl:
                kl_out[np.ix_(cands, index.req_ids)] = kl_np[i]
        if kl:  # the dense model against itself: exactly 0, not the rounding of two equal log-sum-exps
            kl_out[(masks == 0).all(axis=1)] = 0.0
        return logprob, greedy, work, kl_out

    def _upload_plan(self, rows: list[packing.Row], plan: "TriePlan", masks: np.ndarray) -> tuple[Prelude, "ChunkIndex"]:
        """The chunk's tokens, positions and every index of the pass in one host-to-device copy
        (pinned, non-blocking on CUDA), then the prelude. The packing mask is the only other upload."""
        model, device = self.model, self.model.device
        batch, length = len(rows), max(len(r) for r in rows)
        ids = np.full((batch, length), model.eos_token_id or 0, dtype=np.int64)
        positions = np.zeros((batch, length), dtype=np.int64)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = r.tokens
            positions[j, : len(r)] = r.positions
            positions[j, len(r):] = np.arange(len(r), length)
        # scoring: only the positions that predict a scored token
        pos_row, pos_t, targets, pos_req = [], [], [], []
        request_tokens = 0
        for j, r in enumerate(rows):
            for req, predict, tgt in r.scored:
                pos_row.append(np.full(len(predict), j))
                pos_t.append(predict)
                targets.append(tgt)
                pos_req.append(np.full(len(predict), req))
                request_tokens += len(predict) + int(predict[0]) + 1
        pos_req_np = np.concatenate(pos_req)
        req_ids = np.unique(pos_req_np)
        pos_row_np, pos_t_np = np.concatenate(pos_row), np.concatenate(pos_t)
        parts = {"ids": ids, "positions": positions, "pos_row": pos_row_np, "pos_t": pos_t_np,
                 "targets": np.concatenate(targets), "seg": np.searchsorted(req_ids, pos_req_np),
                 "live": np.asarray(plan.live, dtype=np.int64)}
        for layer, step in enumerate(plan.steps):
            if step.fork_src:
                parts[f"src{layer}"] = node_rows(step.fork_src, batch)
                parts[f"dst{layer}"] = node_rows(step.fork_dst, batch)
            for code, nodes in step.by_code().items():
                parts[f"run{layer}_{code}"] = node_rows(nodes, batch)
        views = dict(zip(parts, upload_parts(list(parts.values()), device)))
        extra = {}
        if any(r.packed for r in rows):
            eager = getattr(model.model.config, "_attn_implementation", "sdpa") == "eager"
            mask = packing.attention_mask(rows, length, model.dtype if eager else None)
            extra = {"position_ids": views["positions"], "attention_mask": upload(mask, device)}
        if rows[0].media is not None:  # an image-text model's prompts: its images go through its own forward
            extra["media"] = [r.media for r in rows]
        prelude = model.prelude(views["ids"], **extra)
        index = ChunkIndex(views=views, req_ids=req_ids, num_positions=len(pos_t_np),
                           num_requests=sum(len(r.scored) for r in rows), request_tokens=request_tokens,
                           batch=batch, length=length)
        return prelude, index

    def _run_blocks(self, rows, plan: "TriePlan", prelude: Prelude, index: "ChunkIndex", held: dict, keys, masks,
                    work: Work, progress) -> torch.Tensor:
        """Every block on the rows that keep it, in place: node n owns rows n*batch .. (n+1)*batch-1
        of one preallocated tensor; a fork copies its node's rows into the new node's slot."""
        batch, length, model = index.batch, index.length, self.model
        first = prelude.hidden
        hidden = first.new_empty((plan.num_nodes * batch, length, first.shape[-1]))
        hidden[:batch] = first
        micro = max(1, (self.budget // 2) // self._activation_bytes(length))
        if model.device.type == "cpu":  # CPU caches prefer ~2k tokens per call over one huge batch
            micro = min(micro, max(1, self.cpu_micro_tokens // length))
        restores = {}
        for layer, node, prefix in plan.restores:
            restores.setdefault(layer, []).append((node, prefix))
        for layer, step in enumerate(plan.steps):
            for node, prefix in restores.get(layer, ()):
                slot = hidden[node * batch : (node + 1) * batch]
                slot.zero_()
                for j, state in enumerate(held.pop(prefix)):
                    slot[j, : state.shape[0]] = state
            if step.fork_src:
                hidden.index_copy_(0, index.views[f"dst{layer}"], hidden.index_select(0, index.views[f"src{layer}"]))
            if not step.run:
                continue
            for code in step.by_code():
                idx = index.views[f"run{layer}_{code}"]
                if code:
                    with self.heal.applied(layer, code):
                        self.run_inplace(layer, hidden, idx, prelude, micro)
                else:
                    self.run_inplace(layer, hidden, idx, prelude, micro)
            work.block_rows += len(step.run) * batch
            work.block_tokens += len(step.run) * batch * length
            if progress is not None:
                progress(len(step.run) * batch * length)
            if self.cache is not None and layer + 1 < model.num_blocks:
                for n in step.run:  # states at the input of block layer+1, under each node's prefix
                    self._store(keys, rows, masks[plan.nodes[n][0], : layer + 1].tobytes(), hidden, n * batch)
        return hidden

    def _score_nodes(self, hidden: torch.Tensor, plan: "TriePlan", index: "ChunkIndex", masks: np.ndarray,
                     kl: bool) -> torch.Tensor:
        """[3 or 2, live nodes, requests] float64 on the device: summed log-prob, greedy misses and
        (with kl) KL to the dense node, per live node and request of the chunk."""
        model, device, batch = self.model, self.model.device, index.batch
        v = index.views
        num_pos, num_seg = index.num_positions, len(index.req_ids)
        live = v["live"]
        out = torch.zeros((3 if kl else 2, len(plan.live), num_seg), dtype=torch.float64, device=device)
        head_chunk = max(1, self.head_positions // num_pos)
        head = dict(bias=getattr(model.head, "bias", None), softcap=model.logit_softcap)
        if kl:  # the dense model's side, once per chunk: its normed states (and log-sum-exp, expectation)
            dense_node = plan.dense_node(masks)
            dense_h = model.normed(hidden[dense_node * batch + v["pos_row"], v["pos_t"]])
            if model.logit_softcap is None:
                dense_lse, dense_mean = kernels.dense_expectation(dense_h, model.head.weight, head["bias"])
        for n0 in range(0, len(plan.live), head_chunk):
            node_ids = live[n0 : n0 + head_chunk]
            count = len(node_ids)
            h = model.normed(hidden[(node_ids[:, None] * batch + v["pos_row"][None, :]).reshape(-1),
                                    v["pos_t"].repeat(count)])
            targets_rep = v["targets"].repeat(count)
            seg = (torch.arange(count, device=device)[:, None] * num_seg + v["seg"][None, :]).reshape(-1)
            if kl and model.logit_softcap is not None:  # tanh breaks linearity: both sides per tile
                kls, lse, tgt, is_max = kl_head(h, dense_h.repeat(count, 1), model.head.weight, targets_rep, **head)
            else:
                lse, tgt, is_max = scoring_head(h, model.head.weight, targets_rep, **head)
                if kl:
                    kls = kernels.kl_from_expectation(h.view(count, num_pos, -1), dense_h, lse.view(count, num_pos),
                                                      dense_lse, dense_mean).reshape(-1)
            values = [tgt - lse, (~is_max).to(torch.float64)] + ([kls] if kl else [])
            for k, value in enumerate(values):
                flat = torch.zeros(count * num_seg, dtype=torch.float64, device=device)
                flat.index_add_(0, seg, value.double())
                out[k, n0 : n0 + count] = flat.view(count, num_seg)
        return out
