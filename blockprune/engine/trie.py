"""The trie walk of one scoring pass, planned on the host before any block runs.

Rows are (trie node, request): candidates that agree on blocks 0..l share node rows after block
l. `plan_trie` walks the keep-masks block by block and says, per block, which nodes fork (their
keeping candidates get a copy of the rows in a new node's slot) and which nodes run the block, and
where candidates join from stored states (`StateCache`). Everything the device needs from the
plan is indices, uploaded once per chunk (`upload`, pinned and non-blocking on CUDA); the results
come back in one copy (`to_host`). No host synchronisation inside the block loop.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import packing


def trie_block_rows(codes: np.ndarray) -> int:
    """Block evaluations per request for these codes (or keep-masks): distinct run prefixes summed
    over blocks (a block runs once per distinct prefix that keeps it, healed or not)."""
    codes = as_codes(codes)
    total = 0
    for layer in range(codes.shape[1]):
        total += len({row[: layer + 1].tobytes() for row in codes if row[layer] >= 0})
    return total


def as_codes(masks: np.ndarray) -> np.ndarray:
    """Keep-masks as codes (-1 skipped, 0 run as is); codes (blockprune.healing.heal) pass through."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return np.where(masks, 0, -1).astype(np.int16)
    return masks.astype(np.int16, copy=False)


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

    def retain(self, codes: np.ndarray) -> None:
        paths = [row.tobytes() for row in as_codes(codes)]
        for key in [k for k in self.entries if not any(p.startswith(k[1]) for p in paths)]:
            value = self.entries.pop(key)
            self.bytes -= value.numel() * value.element_size()


def row_key(row: packing.Row) -> bytes:
    """Identity of a row's content (tokens, positions, packing segments, and the image its prompt
    holds: image tokens are the same ids whatever the picture)."""
    key = np.asarray([len(row.tokens), *row.tokens, *row.positions, *row.segment], dtype=np.int64).tobytes()
    return key + (row.media.key.encode() if row.media is not None else b"")



@dataclass
class Step:
    """One block of a trie walk: nodes forked (src -> new dst) and nodes that run the block, each
    with its code (0: as it is; n > 0: healed for the n removed blocks after it)."""

    fork_src: list[int]
    fork_dst: list[int]
    run: list[int]
    codes: list[int] = None

    def __post_init__(self):
        if self.codes is None:
            self.codes = [0] * len(self.run)

    def by_code(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for n, code in zip(self.run, self.codes):
            out.setdefault(int(code), []).append(n)
        return out


@dataclass
class TriePlan:
    """The whole trie walk of one chunk, planned on the host before any block runs.

    nodes[n]: the candidates whose rows node n holds at the end; steps[l]: block l's forks and runs;
    restores: (layer, node, prefix) for candidates that start from stored states at that layer."""

    nodes: list[np.ndarray]
    steps: list[Step]
    restores: list[tuple[int, int, bytes]]

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def live(self) -> list[int]:
        """Nodes that still hold candidates (the others moved to forks or were restored)."""
        return [n for n, cands in enumerate(self.nodes) if len(cands)]

    def dense_node(self, codes: np.ndarray) -> int:
        """The live node of the all-keep mask (KL's reference)."""
        dense = (as_codes(codes) == 0).all(axis=1)
        return next(n for n in self.live if dense[self.nodes[n]].any())


def plan_trie(masks: np.ndarray, starts: np.ndarray) -> TriePlan:
    """Walk the codes' (or keep-masks') prefix trie block by block (see the module doc). At each
    block a node's candidates split by code: the skipping ones (or else the first code's) stay in
    the node, every other code's get a copy of the rows in a new node; each running node runs the
    block with its code. Candidates with starts[c] > 0 join at block starts[c] from stored
    states, one node per stored prefix."""
    codes = as_codes(masks)
    num_blocks = codes.shape[1]
    nodes: list[np.ndarray] = [np.flatnonzero(starts == 0)]
    waiting: dict[int, dict[bytes, list[int]]] = {}
    for c in np.flatnonzero(starts > 0):
        waiting.setdefault(int(starts[c]), {}).setdefault(codes[c, : starts[c]].tobytes(), []).append(int(c))
    steps, restores = [], []
    for layer in range(num_blocks):
        for prefix, cands in waiting.pop(layer, {}).items():
            restores.append((layer, len(nodes), prefix))
            nodes.append(np.array(cands))
        run, run_codes, src, forked, fork_codes = [], [], [], [], []
        for n, cands in enumerate(nodes):
            if len(cands) == 0:
                continue
            here = codes[cands, layer]
            values = np.unique(here)
            stay = -1 if values[0] == -1 else int(values[0])  # np.unique sorts: -1 first
            if stay >= 0:
                run.append(n)
                run_codes.append(stay)
            for value in values:
                if value == stay:
                    continue
                src.append(n)
                forked.append(cands[here == value])
                fork_codes.append(int(value))
            nodes[n] = cands[here == stay]
        dst = list(range(len(nodes), len(nodes) + len(forked)))
        nodes.extend(forked)
        steps.append(Step(src, dst, run + dst, run_codes + fork_codes))
    return TriePlan(nodes, steps, restores)


@dataclass
class ChunkIndex:
    """What `_upload_plan` put on the device (one tensor, sliced into `views`) and what it measured."""

    views: dict[str, torch.Tensor]
    req_ids: np.ndarray
    num_positions: int
    num_requests: int
    request_tokens: int
    batch: int
    length: int


def node_rows(nodes: Sequence[int], batch: int) -> np.ndarray:
    """Row ids of these trie nodes (node n holds rows n*batch .. n*batch + batch - 1)."""
    return (np.asarray(nodes, dtype=np.int64)[:, None] * batch + np.arange(batch)[None, :]).reshape(-1)


def runs_of(indices: Sequence[int]) -> list[list[int]]:
    """Sorted ints as maximal runs of consecutive values: [0, 1, 3] -> [[0, 1], [3]]."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def upload(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on `device`: on CUDA from pinned memory without blocking the host."""
    host = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    if device.type != "cuda":
        return host.to(device)
    if torch.cuda.is_available():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def upload_parts(parts: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Integer host arrays on `device` in one copy (`upload`), as views of their own shapes."""
    flat = upload(np.concatenate([np.asarray(p, dtype=np.int64).ravel() for p in parts]), device)
    views, offset = [], 0
    for p in parts:
        views.append(flat[offset : offset + np.size(p)].view(np.shape(p)))
        offset += np.size(p)
    return views


def to_host(sums: torch.Tensor) -> list[np.ndarray]:
    """The pass's per-node sums as numpy arrays: one device-to-host copy."""
    return list(sums.cpu().numpy()) + [None] * (3 - len(sums))
