"""Each decoding step's block arguments, from the model's own forward (blockprune.engine.decode).

`step_arguments` records one forward's per-block arguments (masks per layer type, rotary
embeddings, positions) with a cache that only reports its length; `StepSpans` records one forward
of the next SPAN steps and hands each step its slice, checked against the model's own arguments at
the span's first and last step (where the check fails every step records its own forward).
"""

from __future__ import annotations

import torch

from ..models.adapter import BlockModel, cache_kwarg, select_rows

SPAN = 32  # decoding steps whose block arguments come from one recorded forward (`StepSpans`)
SPAN_ELEMENTS = 1 << 24  # a span's masks hold rows x span x keys elements each: at most this many

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
    extra[cache_kwarg(bm.model) or "past_key_values"] = cache  # 5.17 names it so
    records = bm.record_blocks(lambda: bm.model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                                                use_cache=True, **extra))
    args0, kwargs0 = records[0]
    hidden = args0[0] if args0 else kwargs0["hidden_states"]
    out = []
    for args, kwargs in records:  # the length cache, passed by keyword or position: ours goes there
        kwargs = {k: (CACHE if v is cache else v) for k, v in kwargs.items() if k not in ("hidden_states", "use_cache")}
        out.append((tuple(CACHE if a is cache else a for a in args[1:]), kwargs))
    return hidden, out


CACHE = object()  # where a block's recorded arguments held the cache


def with_cache(args: tuple, kwargs: dict, cache) -> tuple[tuple, dict]:
    return (tuple(cache if a is CACHE else a for a in args),
            {k: (cache if v is CACHE else v) for k, v in kwargs.items()})


def rope_model(bm: BlockModel):
    """The inner model of a family with 3-D rotary positions (Qwen2-VL's `get_rope_index`, which
    keeps each prompt's `rope_deltas` from the prefill), else None."""
    inner = getattr(bm.model, "model", None)
    return inner if hasattr(inner, "get_rope_index") and hasattr(inner, "rope_deltas") else None


def _static_rope(model: torch.nn.Module) -> bool:
    """Whether every rotary embedding is a function of the position alone (not "dynamic" NTK or
    "longrope", whose frequencies follow the longest position of the call)."""
    for module in model.modules():
        kind = getattr(module, "rope_type", None)
        for k in (kind.values() if isinstance(kind, dict) else [kind]):
            if isinstance(k, str) and ("dynamic" in k or k == "longrope"):
                return False
    return True


class _NoPlan(Exception):
    """The span's recorded arguments cannot stand for the model's own per-step ones."""


class _Slice:
    """A per-step tensor of the span's record: its query dimensions at the step, its key dimensions
    up to the step's key length; a tensor without either is the same at every step."""

    __slots__ = ("keys", "query", "tensor")

    def __init__(self, tensor: torch.Tensor, query: list[int], keys: list[int]):
        self.tensor, self.query, self.keys = tensor, query, keys

    def at(self, j: int, kv: int) -> torch.Tensor:
        if not self.query and not self.keys:
            return self.tensor
        index = [slice(None)] * self.tensor.dim()
        for d in self.query:
            index[d] = slice(j, j + 1)
        for d in self.keys:
            index[d] = slice(0, kv)
        return self.tensor[tuple(index)]


class _Same:
    """A non-tensor argument (the cache's place, None, a flag), the same at both ends of the span."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _plan(first, last, span_rec, past: int, span: int, checks: list, memo: dict):
    """The plan of a step's arguments over a span of `span` steps from `past`: `first` and `last`
    are the model's own arguments at its first and last step, `span_rec` one forward of all its
    tokens. Tensors: a dimension of size 1 at both ends and `span` in the record is the query's, one
    of `past` + 1 at the first step and `past + span` at the last and in the record the keys'; the
    record's slices at both ends must equal the model's own (appended to `checks`, compared on the
    device at once). Anything else must be the same object or value at both ends (a mask the model
    leaves out at the first step but not at the last is no plan)."""
    if isinstance(first, torch.Tensor):
        seen = memo.get((id(first), id(last), id(span_rec)))
        if seen is not None:
            return seen
        if not (isinstance(last, torch.Tensor) and isinstance(span_rec, torch.Tensor)
                and first.dtype == last.dtype == span_rec.dtype and first.dim() == last.dim() == span_rec.dim()):
            raise _NoPlan
        query, keys = [], []
        for d, (a, b, c) in enumerate(zip(first.shape, last.shape, span_rec.shape)):
            if a == b == c:
                continue
            if a == b == 1 and c == span:
                query.append(d)
            elif a == past + 1 and b == c == past + span:
                keys.append(d)
            else:
                raise _NoPlan
        leaf = _Slice(span_rec, query, keys)
        checks.append((leaf.at(0, past + 1), first))
        checks.append((leaf.at(span - 1, past + span), last))
        memo[(id(first), id(last), id(span_rec))] = leaf
        return leaf
    if isinstance(first, (tuple, list)):
        if type(first) is not type(last) or not isinstance(span_rec, (tuple, list)) or not (
                len(first) == len(last) == len(span_rec)):
            raise _NoPlan
        items = [_plan(a, b, c, past, span, checks, memo) for a, b, c in zip(first, last, span_rec)]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    if isinstance(first, dict):
        if not (isinstance(last, dict) and isinstance(span_rec, dict) and first.keys() == last.keys() == span_rec.keys()):
            raise _NoPlan
        return {k: _plan(first[k], last[k], span_rec[k], past, span, checks, memo) for k in first}
    if isinstance(last, torch.Tensor):
        raise _NoPlan
    try:
        same = first is last or bool(first == last)
    except Exception:  # noqa: BLE001 - an object without a plain equality: not the same
        same = False
    if not same:
        raise _NoPlan
    return _Same(first)


def _at(plan, j: int, kv: int):
    if isinstance(plan, _Slice):
        return plan.at(j, kv)
    if isinstance(plan, _Same):
        return plan.value
    if isinstance(plan, (tuple, list)):
        items = [_at(p, j, kv) for p in plan]
        return type(plan)(*items) if hasattr(plan, "_fields") else type(plan)(items)
    return {k: _at(p, j, kv) for k, p in plan.items()}


def _keep_rows(plan, batch: int, rows: torch.Tensor, seen: dict | None = None):
    """The plan for the rows `rows` of its `batch` (rows that stopped have left)."""
    seen = {} if seen is None else seen
    if isinstance(plan, _Slice):
        if id(plan) not in seen:
            seen[id(plan)] = _Slice(select_rows(plan.tensor, batch, rows), plan.query, plan.keys)
        return seen[id(plan)]
    if isinstance(plan, _Same):
        return plan
    if isinstance(plan, (tuple, list)):
        items = [_keep_rows(p, batch, rows, seen) for p in plan]
        return type(plan)(*items) if hasattr(plan, "_fields") else type(plan)(items)
    return {k: _keep_rows(p, batch, rows, seen) for k, p in plan.items()}


def identical(a, b) -> bool:
    """Exactly the same arguments (tests: CHECK_EVERY_STEP)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    return a is b or a == b


class StepSpans:
    """Each decoding step's (block 0's input, block arguments). A span of up to SPAN steps is
    recorded at its first step: the model's own forward of that step (which the step uses), of
    the span's last step and of all its tokens at once; when the record's slices equal the model's
    own arguments at both ends, and the model's input embedding of the step's tokens equals its
    block-0 input, the span's further steps take the slices and embed their tokens (no forward).
    Masks of bounded windows and padding, rotary embeddings and positions are functions of the
    positions alone, so equal at both ends means equal throughout. A family whose block-0 input is
    not its embedding (GPT-2's added positions), or whose rotary frequencies follow the length,
    records every step; a span that fails otherwise (a mask dropped at one end only) is retried at
    the next span."""

    def __init__(self, bm: BlockModel, enabled: bool):
        self.bm = bm
        embed = bm.model.get_input_embeddings() if hasattr(bm.model, "get_input_embeddings") else None
        self.embed = embed if enabled and embed is not None and _static_rope(bm.model) else None
        self.plan = None
        self.start = self.span = self.retry = self.batch = 0

    def sliced(self, step: int) -> bool:
        return self.plan is not None and step - self.start < self.span

    def span_for(self, step: int, remaining: int, rows: int, past: int) -> int:
        """How many steps to record at `step` (1: this one only)."""
        if self.embed is None or step < self.retry:
            return 1
        span = min(SPAN, remaining)
        while span > 1 and rows * span * (past + span) > SPAN_ELEMENTS:
            span //= 2
        return max(1, span)

    def keep(self, rows: torch.Tensor, count: int) -> None:
        if self.plan is not None:
            self.plan = _keep_rows(self.plan, self.batch, rows)
            self.batch = count

    def at(self, step: int, tokens: torch.Tensor, past: int):
        return self.embed(tokens), _at(self.plan, step - self.start, past + 1)

    def record(self, step: int, span: int, past: int, tokens, first, last, span_rec) -> None:
        """Take the span [step, step + span) from these records when they agree (else: no plan)."""
        self.plan = None
        hidden, args = first
        checks: list = []
        try:
            plan = _plan(args, last[1], span_rec[1], past, span, checks, {})
        except _NoPlan:
            self.retry = step + span
            return
        embedded = self.embed(tokens)
        if embedded.shape != hidden.shape or embedded.dtype != hidden.dtype or not bool((embedded == hidden).all()):
            self.embed = None  # the block-0 input is more than the embedding: every step records
            return
        agree = torch.stack([(a == b).all() if a.shape == b.shape else a.new_zeros((), dtype=torch.bool)
                             for a, b in checks]).all() if checks else True
        if not bool(agree):
            self.retry = step + span
            return
        self.plan, self.start, self.span, self.batch = plan, step, span, tokens.shape[0]
