"""Repairing the cut: one closed-form linear map per removed run of blocks, folded into the weights.

Deleting blocks i+1..i+n leaves block i+n+1 reading block i's output where it used to read block
i+n's. Block i's output is `Y_i + M_i`: the residual stream plus its MLP's output projection
`M_i`. The map T (hidden x hidden) minimising `|| Y_i + M_i T - H_{i+n} ||^2` over calibration
tokens (all from the dense model) is a ridge least-squares solve, `T = (MᵀM + λI)⁻¹ Mᵀ(H_{i+n} -
Y_i)`, and `M_i T` is what block i's output projection computes with its weight multiplied by T
(ReplaceMe's fold). So the healed model has exactly the plain pruned model's modules and cost.

The statistics come from one dense pass over the calibration windows (`Healing.fit`): per block
i, `MᵀM` and, for every run length n up to `max_run`, `Mᵀ(H_{i+n} - Y_i)`, each batch's product in
float32 (on the model's device) summed over batches in float64, streaming over tokens (memory O(hidden²) per (i, n), never tokens x hidden beyond one
batch). Each T is solved on first use and cached. A block folds only where its projection's
output is added to the residual as it is: checked numerically (a perturbation of the projection's
output must come out of the block unchanged), so an MLP whose output passes through a norm
(Gemma's post-feedforward norm) or a scale stays plain, and so does a run starting at block 0.

The engine scores healed candidates in the same pass as the others (`codes`: per candidate and
block, -1 skipped, 0 run as is, n > 0 run with the fold of the n removed blocks after it; the trie
forks where codes differ), with the folded weight swapped in for that block's call (`folded`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..models.adapter import BlockModel

log = logging.getLogger("blockprune")

METHODS = ("none", "linear")
DEFAULT_RIDGE = 1e-2  # times the mean eigenvalue of MᵀM (bench/results/heal_calibration.md)
# The output projection of a block's MLP, by the names architectures give it (searched in order).
# An attention half (blockprune.models.units) folds into its attention's output projection: those
# names come last, so a whole block still folds into its MLP's (checked numerically either way).
PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h", "mlp.w2", "mlp.fc_out",
               "feed_forward.down_proj", "feed_forward.w2", "fc2", "mlp.linear_fc2",
               "self_attn.o_proj", "attn.c_proj", "self_attn.dense", "self_attn.out_proj")


class HealError(ValueError):
    """Healing that cannot be done as asked (one-line message)."""


def check_ridge(ridge, heal: str) -> float | None:
    """--ridge: a finite number >= 0, given only with --heal linear; None -> DEFAULT_RIDGE when healing."""
    if ridge is None:
        return DEFAULT_RIDGE if heal != "none" else None
    if heal == "none":
        raise HealError("--ridge is the ridge of --heal linear's fit; give --heal linear too")
    if isinstance(ridge, bool) or not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge >= 0):
        raise HealError(f"--ridge must be a finite number >= 0, not {ridge}")
    return float(ridge)


def projection(block: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of a block's MLP output projection: a Linear or GPT-2's Conv1D."""
    modules = dict(block.named_modules())
    for name in PROJECTIONS:
        module = modules.get(name)
        if module is not None and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
            return name, module
    return None


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # GPT-2: y = x W + b, W [in, out]


def fold_weight(module: nn.Module, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The projection's (weight, bias) with T folded in: y' = y T (computed in float64)."""
    w = module.weight.detach().double()
    t = t.double().to(w.device)
    b = getattr(module, "bias", None)
    if _is_conv1d(module):
        new_w = w @ t  # [in, out] @ [out, out]
    else:
        new_w = t.T @ w  # Linear [out, in]: (x Wᵀ) T = x (Tᵀ W)ᵀ
    new_b = None if b is None else b.detach().double() @ t
    dtype = module.weight.dtype
    return new_w.to(dtype), None if new_b is None else new_b.to(dtype)


@contextlib.contextmanager
def swapped(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
    """Run `module` with these weight and bias tensors, then put its own back."""
    old_w, old_b = module._parameters["weight"], module._parameters.get("bias")
    module._parameters["weight"] = weight
    if bias is not None:
        module._parameters["bias"] = bias
    try:
        yield
    finally:
        module._parameters["weight"] = old_w
        if bias is not None:
            module._parameters["bias"] = old_b


def foldable(bm: BlockModel, index: int, rows: int = 2, length: int = 8) -> str | None:
    """None when block `index`'s projection output reaches the block output unchanged (so a fold
    of T into it is `Y + M T`), else why not. Checked numerically on random input."""
    block = bm.blocks[index]
    found = projection(block)
    if found is None:
        return "no MLP output projection found"
    name, module = found
    gen = torch.Generator().manual_seed(index)
    vocab = bm.head.weight.shape[0]
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    prelude = bm.prelude(ids.to(bm.device))
    with torch.inference_mode():
        hidden = prelude.hidden
        for i in range(index):  # the block's real input distribution, roughly
            hidden = bm.run_block(i, hidden, prelude, torch.arange(rows, device=bm.device))
        delta = {}

        def perturb(_m, _inp, out):
            d = torch.randn(out.shape, generator=gen).to(out.device, out.dtype) * out.float().std().clamp_min(1e-3).to(out.dtype)
            delta["d"] = d
            return out + d

        base = bm.run_block(index, hidden, prelude, torch.arange(rows, device=bm.device)).float()
        handle = module.register_forward_hook(perturb)
        try:
            moved = bm.run_block(index, hidden, prelude, torch.arange(rows, device=bm.device)).float()
        finally:
            handle.remove()
    change, d = moved - base, delta["d"].float()
    err = float((change - d).norm() / d.norm())
    tol = 1e-3 if bm.dtype == torch.float32 else 5e-2
    if err > tol:
        return f"its {name} output does not reach the residual as it is (a norm or scale after it)"
    return None


def codes_of(keep: np.ndarray) -> np.ndarray:
    """Per candidate and block: -1 skipped, else the number of removed blocks right after it."""
    keep = np.asarray(keep, dtype=bool)
    codes = np.where(keep, 0, -1).astype(np.int16)
    run = np.zeros(len(keep), dtype=np.int16)
    for layer in range(keep.shape[1] - 1, -1, -1):
        codes[:, layer] = np.where(keep[:, layer], run, -1)
        run = np.where(keep[:, layer], 0, run + 1)
    return codes


def runs_of(removed: Iterable[int]) -> list[dict]:
    """Maximal runs of consecutive removed blocks: [{"after": block before the run, "blocks": [...]}]."""
    out: list[dict] = []
    for b in sorted(set(int(b) for b in removed)):
        if out and out[-1]["blocks"][-1] == b - 1:
            out[-1]["blocks"].append(b)
        else:
            out.append({"after": b - 1, "blocks": [b]})
    return out


def fmt_run(blocks: Sequence[int]) -> str:
    blocks = list(blocks)
    return f"[{blocks[0]}]" if len(blocks) == 1 else f"[{blocks[0]}..{blocks[-1]}]"


def plain_codes(keep: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(keep, dtype=bool), 0, -1).astype(np.int16)


@dataclass
class Stats:
    """Float64 sums over calibration tokens: gram[i] = MᵢᵀMᵢ, cross[i][n] = Mᵢᵀ(H_{i+n} - Yᵢ)."""

    gram: dict[int, np.ndarray] = field(default_factory=dict)
    cross: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    tokens: int = 0


def solve(gram: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
    """argmin_T ||M T - R||² + λ||T||², λ = ridge x mean eigenvalue of MᵀM (float64)."""
    d = gram.shape[0]
    lam = ridge * float(np.trace(gram)) / d
    return np.linalg.solve(gram + lam * np.eye(d), cross)


class Healing:
    """The fitted statistics of one model and calibration set, and the maps solved from them."""

    def __init__(self, bm: BlockModel, stats: Stats, max_run: int, ridge: float = DEFAULT_RIDGE,
                 calibration: dict | None = None, unfoldable: dict[int, str] | None = None,
                 fold_cache: int = 48):
        self.bm = bm
        self.stats = stats
        self.max_run = max_run
        self.ridge = ridge
        self.calibration = calibration or {}
        self.unfoldable = dict(unfoldable or {})  # block -> why it stays plain
        self._maps: dict[tuple[int, int], torch.Tensor] = {}
        self._folds: "OrderedDict[tuple[int, int], tuple]" = OrderedDict()
        self._fold_cache = fold_cache
        self.seconds = 0.0  # the dense pass (and later, the solves)
        self.calibration_windows = None  # the blockprune.healing.calibration.Calibration it was fitted on, when known

    # ---- fitting --------------------------------------------------------------------------
    @classmethod
    @torch.inference_mode()
    def fit(cls, bm: BlockModel, windows: Sequence[Sequence[int]], max_run: int, ridge: float = DEFAULT_RIDGE,
            calibration: dict | None = None, skip: int = 1, batch_tokens: int = 4096,
            progress=None) -> "Healing":
        """One dense pass over the calibration windows (tokens before `skip` in each are context
        only: the first token's activations are outliers that would dominate the fit)."""
        import time

        start = time.perf_counter()
        num_blocks = bm.num_blocks
        unfoldable = {i: why for i in range(num_blocks) if (why := foldable(bm, i)) is not None}
        max_run = max(0, min(max_run, num_blocks - 1))
        stats = Stats()
        length = max(len(w) for w in windows)
        per_batch = max(1, batch_tokens // length)
        projections = [projection(b) for b in bm.blocks]
        # one batch's products in float32 (the model's matmuls), summed over batches in float64
        grams: dict[int, torch.Tensor] = {}
        sums: dict[tuple[int, int], torch.Tensor] = {}
        for s in range(0, len(windows), per_batch):
            part = windows[s : s + per_batch]
            ids = np.full((len(part), length), bm.eos_token_id or 0, dtype=np.int64)
            valid = np.zeros((len(part), length), dtype=bool)
            for j, w in enumerate(part):
                ids[j, : len(w)] = w
                valid[j, skip : len(w)] = True
            prelude = bm.prelude(torch.from_numpy(ids).to(bm.device))
            sel = torch.from_numpy(valid.reshape(-1)).to(bm.device)
            rows = torch.arange(len(part), device=bm.device)
            hidden = prelude.hidden
            recent: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (block, M, Y) still needed
            for i in range(num_blocks):
                captured = {}
                handle = None
                if i not in unfoldable:
                    def grab(_m, _inp, out, _c=captured):
                        _c["m"] = out
                    handle = projections[i][1].register_forward_hook(grab)
                try:
                    hidden = bm.run_block(i, hidden, prelude, rows)
                finally:
                    if handle is not None:
                        handle.remove()
                h = hidden.reshape(-1, hidden.shape[-1])[sel].float()
                for j, m, y in recent:  # runs j+1..i end here: n = i - j
                    key = (j, i - j)
                    sums[key] = sums.get(key, 0) + (m.T @ (h - y)).double()
                recent = [(j, m, y) for j, m, y in recent if i - j < max_run]
                if "m" in captured and max_run > 0 and i + 1 < num_blocks:
                    m = captured["m"].reshape(-1, hidden.shape[-1])[sel].float()
                    grams[i] = grams.get(i, 0) + (m.T @ m).double()
                    recent.append((i, m, h - m))
            stats.tokens += int(valid.sum())
            if progress is not None:
                progress(len(part))
        stats.gram = {i: g.cpu().numpy() for i, g in grams.items()}
        stats.cross = {k: c.cpu().numpy() for k, c in sums.items()}
        healing = cls(bm, stats, max_run, ridge, calibration, unfoldable)
        healing.seconds = time.perf_counter() - start
        return healing

    @property
    def maps_solved(self) -> int:
        return len(self._maps)

    # ---- maps -----------------------------------------------------------------------------
    def can_heal(self, block: int, n: int) -> bool:
        return n > 0 and block not in self.unfoldable and (block, n) in self.stats.cross

    def map(self, block: int, n: int) -> torch.Tensor:
        """T for the run of n removed blocks after `block` (float64, on the model's device)."""
        key = (block, n)
        if key not in self._maps:
            if not self.can_heal(block, n):
                raise HealError(f"no healing map for blocks {block + 1}..{block + n} after block {block}")
            import time

            start = time.perf_counter()
            t = solve(self.stats.gram[block], self.stats.cross[key], self.ridge)
            self.seconds += time.perf_counter() - start
            self._maps[key] = torch.from_numpy(t).to(self.bm.device)
        return self._maps[key]

    def folded(self, block: int, n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None]:
        """(projection module, folded weight, folded bias) of `block` healing n blocks (cached)."""
        key = (block, n)
        if key not in self._folds:
            module = projection(self.bm.blocks[block])[1]
            self._folds[key] = (module, *fold_weight(module, self.map(block, n)))
            while len(self._folds) > self._fold_cache:
                self._folds.popitem(last=False)
        self._folds.move_to_end(key)
        return self._folds[key]

    @contextlib.contextmanager
    def applied(self, block: int, n: int):
        """Block `block` runs healed for n removed blocks after it (n = 0: as it is)."""
        if n <= 0:
            yield
            return
        module, w, b = self.folded(block, n)
        with swapped(module, w, b):
            yield

    # ---- candidates -----------------------------------------------------------------------
    def codes(self, keep: np.ndarray) -> np.ndarray:
        """codes_of(keep) with runs that cannot heal (block 0 removed first, an unfoldable block)
        set to 0; a run longer than the fitted statistics is an error, never silently plain."""
        codes = codes_of(keep)
        for c, layer in zip(*np.nonzero(codes > 0)):
            n = int(codes[c, layer])
            if layer in self.unfoldable:
                codes[c, layer] = 0
            elif n > self.max_run:
                raise HealError(f"a run of {n} removed blocks after block {layer}: healing was fitted for runs "
                                f"of at most {self.max_run}")
        return codes

    def runs(self, removed: Iterable[int]) -> list[dict]:
        """The removed set's runs: {"after", "blocks", "healed", "why"} (why a run stays plain)."""
        out = runs_of(removed)
        for run in out:
            after = run["after"]
            why = ("it starts at block 0: no block before it to fold into" if after < 0
                   else self.unfoldable.get(after))
            run["healed"] = why is None
            if why:
                run["why"] = why
        return out

    def maps_for(self, removed: Iterable[int]) -> dict[int, torch.Tensor]:
        """{block: T} of the folds a removed set gets (runs that stay plain are absent)."""
        return {r["after"]: self.map(r["after"], len(r["blocks"])) for r in self.runs(removed) if r["healed"]}

    def describe(self) -> dict:
        return {"method": "linear", "ridge": self.ridge, "tokens": self.stats.tokens, "max_run": self.max_run,
                **({"calibration": self.calibration} if self.calibration else {}),
                "plain_blocks": {str(k): v for k, v in sorted(self.unfoldable.items())}}


def fold_into(bm: BlockModel, maps: dict[int, torch.Tensor]) -> None:
    """Fold each T into its block's projection in place (before the blocks are deleted)."""
    for block, t in maps.items():
        module = projection(bm.blocks[block])[1]
        w, b = fold_weight(module, t)
        with torch.no_grad():
            module.weight.copy_(w)
            if b is not None:
                module.bias.copy_(b)
