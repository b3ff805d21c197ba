"""A half-pruned model (attention and MLP halves removed) as ONNX graphs whose KV cache exists only
for the layers that keep their attention, verified in onnxruntime token for token.

Route: the model is written as blockprune's DeciLM / Nemotron-NAS checkpoint (`export.decilm`: an
attention-free layer has no weights and no cache slot; slots are numbered over the layers that keep
attention), reloaded through transformers' remote code, and traced with the dynamo exporter by
export/onnx.py's own wrappers (`LogitsGraph`, `DecoderWithPastGraph` given the number of cache
slots instead of the number of layers). The graphs are therefore the code a user's DeciLM
checkpoint runs, and no per-layer `NoAttention` placeholder reaches the cache.

Files written by `export(bm, removed_units, out_dir)`:

* `model.onnx`: `input_ids, attention_mask -> logits` (dynamic batch and sequence).
* `decoder_with_past.onnx` (with `kv_cache`): `input_ids, attention_mask, position_ids,
  past_key_values.{i}.key, past_key_values.{i}.value -> logits, present.{i}.key, present.{i}.value`
  for i = 0..A-1, A = the number of kept attention halves: slot i is the i-th kept attention in
  block order. `attention_mask` covers past + new tokens; a past of length 0 is a prefill.
* `kv_cache_layers.json`: which original block (and which DeciLM layer) each slot belongs to, e.g.
  `{"slot": 0, "block": 1, "layer": 1, "past": [...], "present": [...]}`; the same list is in the
  returned dict under `cache_slots`.

`verify(bm, removed_units, out_dir)` runs both graphs in onnxruntime (CPUExecutionProvider) against
the original model with the removed halves skipped (`hf.masked_logits` on `unit_model(bm,
"sublayers")`), on shapes other than the export's: logits within `atol` (1e-4 float32) on plain
rows and on a left-padded row (valid positions only); the decoder's past inputs must be exactly one
key/value pair per kept attention (names and count) and match `kv_cache_layers.json`; then greedy
decoding through the decoder (prefill from an empty past, then one token per step, each step's
`present.*` fed back as the next `past_key_values.*`, a left-padded row included) must give the
masked model's greedy tokens, token for token, with each step's logits within `atol` of the masked
model's full recompute. Structure errors raise `ExportError`, value or token mismatches
`hf.ParityError` (one line each).

ONNX Runtime GenAI (read in onnxruntime-genai 0.18.0 as installed, onnxruntime_genai/models/, and in
microsoft/onnxruntime-genai at a0c04eb, https://github.com/microsoft/onnxruntime-genai/blob/a0c04eb1313b886c963e415bbd974748cb89a4eb/):
its model builder cannot produce such a model; its runtime can run one. The builder picks one class per
`config.architectures[0]` (`create_model`, src/python/py/models/builder.py:477-595; installed builder.py:676-806)
and has no DeciLM / nemotron-nas entry (`NemotronForCausalLM` is the homogeneous Nemotron family): run
on a checkpoint written by export/decilm.py (`--extra_options hf_remote=true`, a tokenizer beside it),
0.18.0 stops at builder.py:806, "NotImplementedError: The <dir> model is not currently supported.". Its layers are alike: `make_layer`
(builders/base.py:4888-4898; installed :6090-6106) always emits attention then MLP, and past/present
names are made for every layer (base.py:188-189, 228-229); the only per-layer variation is
`layer_types` (installed base.py:96-100, 555-562: KV names only for full/sliding-attention layers,
other types being LFM2 conv or Qwen3.5 linear-attention layers with their own state), none of which
is "no attention" or "no MLP". genai_config.json (`make_genai_config`, base.py:1011-1048) names the
cache by templates (`past_key_values.%d.key`, `present.%d.key`) and one `num_hidden_layers`,
`num_key_value_heads`, `head_size`; but the runtime's `DefaultKeyValueCache` discovers which layer
indices have KV inputs from the graph's input names, sparse indices allowed, and overrides
`num_hidden_layers` with their count (src/models/kv_cache.cpp:281-335), and takes per-layer KV heads
and head size from the graph's input shapes (kv_cache.cpp:~350-415). So a config can describe these
graphs (a differing count of KV caches, even differing shapes) without listing layers. Checked once
by hand, not shipped: `decoder_with_past.onnx` of [0m, 2a, 3m] on the 6-block test model with a
hand-written genai_config.json (type llama, the templates above, num_hidden_layers 3 or 6) ran in
onnxruntime-genai 0.18.0 with the masked model's greedy tokens on two prompts. This module writes no
GenAI config.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from blockprune.models import BlockModel, unit_model
from blockprune.models.units import UnitModel, fmt_units

from . import decilm
from . import onnx as ox
from .hf import ParityError, masked_logits
from .onnx import DECODER_FILE, LOGITS_FILE, ExportError

MAP_FILE = "kv_cache_layers.json"
PROVIDERS = ("CPUExecutionProvider",)


# ---- which slot is which layer ---------------------------------------------------------------------
def cache_slots(num_blocks: int, removed: Sequence[int]) -> list[dict]:
    """One entry per kept attention, in block order: its slot, its original block, its DeciLM layer
    (blocks with both halves removed are dropped from the checkpoint), its input and output names."""
    out = []
    for layer, (block, attn, _) in enumerate(decilm.kept_layers(num_blocks, removed)):
        if attn:
            i = len(out)
            out.append({"slot": i, "block": block, "layer": layer,
                        "past": [f"past_key_values.{i}.key", f"past_key_values.{i}.value"],
                        "present": [f"present.{i}.key", f"present.{i}.value"]})
    return out


@contextlib.contextmanager
def _checkpoint(bm: BlockModel, removed: list[int], out_dir: Path, decilm_dir: str | Path | None):
    """The DeciLM checkpoint to trace: `decilm_dir` as given (already written), else one written into
    a temporary folder inside `out_dir` and removed afterwards."""
    if decilm_dir is not None:
        config = Path(decilm_dir) / "config.json"
        blocks = json.loads(config.read_text()).get("block_configs") if config.exists() else None
        pattern = [(not b["attention"]["no_op"], not b["ffn"]["no_op"]) for b in blocks or []]
        if pattern != [(a, f) for _, a, f in decilm.kept_layers(bm.num_blocks, removed)]:
            raise ExportError(f"{decilm_dir} is not the DeciLM checkpoint of {bm.name} without "
                              f"{fmt_units(removed, 'sublayers')} (its block_configs differ)")
        yield Path(decilm_dir)
        return
    with tempfile.TemporaryDirectory(prefix=".decilm-", dir=out_dir) as tmp:
        decilm.write(bm, removed, tmp)
        yield Path(tmp)


def export_decoder(model: torch.nn.Module, slots: int, out_dir: str | Path, opset: int | None = None,
                   external_data_threshold: int = ox.EXTERNAL_DATA_THRESHOLD) -> Path:
    """onnx.py's decoder with past for a model whose cache has `slots` layers (one per kept attention)."""
    return ox.export_decoder_with_past(model, out_dir, opset, external_data_threshold, num_layers=slots,
                                       what="decoder with past (kept attention only)")


def export(bm: BlockModel, removed_units: Sequence[int], out_dir: str | Path, kv_cache: bool = True,
           decilm_dir: str | Path | None = None, opset: int | None = None,
           external_data_threshold: int = ox.EXTERNAL_DATA_THRESHOLD) -> dict:
    """Write `model.onnx` (and with `kv_cache` `decoder_with_past.onnx`, past/present only for the
    kept attention halves) of `bm` without `removed_units` into `out_dir`, plus `kv_cache_layers.json`.

    `bm`: the model by blocks or its `UnitModel`; `removed_units`: 2b = block b's attention, 2b+1 its
    MLP. `decilm_dir`: an already written DeciLM checkpoint of the same removal (`decilm.write`), traced
    as it is; without it one is written into a temporary folder inside `out_dir`. Returns what was
    written (files, cache slots and the blocks they belong to, KV-cache bytes per token, seconds).
    One-line ExportError for a model or removal the DeciLM layout cannot hold or the exporter cannot trace.
    """
    start = time.perf_counter()
    bm = bm.base if isinstance(bm, UnitModel) else bm
    removed = decilm.check_units(bm, removed_units)
    decilm.check_family(bm)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slots = cache_slots(bm.num_blocks, removed)
    with _checkpoint(bm, removed, out_dir, decilm_dir) as directory:
        model = decilm.reload(directory, bm)
        files = [ox.export_logits(model, out_dir, opset, external_data_threshold).name]
        if kv_cache:
            files.append(export_decoder(model, len(slots), out_dir, opset, external_data_threshold).name)
    (out_dir / MAP_FILE).write_text(json.dumps({"removed_units": fmt_units(removed, "sublayers"),
                                                "attention_layers": len(slots), "cache_slots": slots}, indent=2) + "\n")
    files.append(MAP_FILE)
    layers = decilm.kept_layers(bm.num_blocks, removed)
    return {"layout": "decilm (nemotron-nas) traced by torch.onnx.export(dynamo=True)",
            "removed_units": fmt_units(removed, "sublayers"), "layers": len(layers),
            "attention_layers": len(slots), "ffn_layers": sum(f for _, _, f in layers), "kv_cache": kv_cache,
            "cache_slots": slots,
            "kv_cache_bytes_per_token": {"dense": decilm.kv_bytes_per_token(bm, bm.num_blocks),
                                         "exported": decilm.kv_bytes_per_token(bm, len(slots)),
                                         "dtype": str(bm.dtype).removeprefix("torch.")},
            "files": sorted(files + [p.name for p in out_dir.glob("*.onnx.data")]),
            "export_seconds": round(time.perf_counter() - start, 2)}


# ---- verification ------------------------------------------------------------------------------------
def _session(path: Path, providers: Sequence[str]):
    import onnxruntime as ort

    if not path.exists():
        raise ExportError(f"{path.name} is missing from {path.parent}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error, in one line
        raise ExportError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _run(session, feed: dict, path: Path) -> dict[str, np.ndarray]:
    try:
        got = session.run(None, feed)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnxruntime fails to run {path.name}: {_first_line(exc)}") from None
    return dict(zip([o.name for o in session.get_outputs()], got))


def next_past(outputs: dict[str, np.ndarray], slots: int) -> dict[str, np.ndarray]:
    """The next step's past inputs: each `present.{i}.*` output fed back as `past_key_values.{i}.*`."""
    return dict(zip(ox.past_names(slots), (outputs[n] for n in ox.present_names(slots))))


def _empty_past(session, slots: int, batch: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Zero-length past tensors shaped as the graph declares (heads and head size are static dims)."""
    shapes = {i.name: i.shape for i in session.get_inputs()}
    out = {}
    for name in ox.past_names(slots):
        _, heads, _, size = shapes[name]
        if not (isinstance(heads, int) and isinstance(size, int)):
            raise ExportError(f"{DECODER_FILE}: {name} has no fixed head count and head size ({shapes[name]})")
        out[name] = np.zeros((batch, heads, 0, size), dtype=dtype)
    return out


def _np_dtype(bm: BlockModel) -> np.dtype:
    if bm.dtype == torch.bfloat16:
        raise ExportError("onnxruntime verification needs a float32 or float16 model, not bfloat16")
    return np.float16 if bm.dtype == torch.float16 else np.float32


def _rows(vocab: int, seed: int = 0) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, shape, generator=g).numpy() for shape in ((2, 9), (1, 17))]


def _check_logits(bm, um, removed, path: Path, providers, atol: float) -> dict:
    session = _session(path, providers)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (["input_ids", "attention_mask"], ["logits"]):
        raise ExportError(f"{path.name}: inputs {names[0]} and outputs {names[1]}, expected "
                          "['input_ids', 'attention_mask'] -> ['logits']")
    worst, seen = 0.0, []
    vocab = bm.head.weight.shape[0]
    rows = _rows(vocab)
    short = rows[1][:, :11]  # a left-padded row: 3 pads, then this row; batched with a full one
    padded = np.concatenate([rows[1][:, :14], np.concatenate([np.zeros((1, 3), np.int64), short], 1)])
    cases = [(r, np.ones_like(r), [r[i] for i in range(len(r))]) for r in rows]
    mask = np.ones_like(padded)
    mask[1, :3] = 0
    cases.append((padded, mask, [padded[0], short[0]]))
    for ids, mask, plain in cases:
        (got,) = _run(session, {"input_ids": ids, "attention_mask": mask}, path).values()
        if got.shape != (*ids.shape, vocab):
            raise ExportError(f"{path.name}: logits of shape {list(got.shape)} for input {list(ids.shape)}, "
                              f"expected {[*ids.shape, vocab]}")
        for r, tokens in enumerate(plain):
            want = masked_logits(um, torch.from_numpy(tokens[None]).to(bm.device), removed)[0].cpu().numpy()
            have = got[r][mask[r].astype(bool)].astype(np.float32)
            diff = float(np.abs(have - want).max())
            if not diff <= atol:
                raise ParityError(f"{path.name} (onnxruntime) differs from the masked model: max abs logit diff "
                                  f"{diff:.3g} > {atol:g} at input shape {list(ids.shape)}, row {r}"
                                  f"{' (left-padded)' if not mask[r].all() else ''}")
            worst = max(worst, diff)
        seen.append(list(ids.shape))
    return {"inputs": names[0], "outputs": names[1], "max_abs_diff": worst, "atol": atol, "shapes": seen,
            "left_padded_row": True, "providers": session.get_providers()}


def _check_decoder(bm, um, removed, path: Path, slots: list[dict], providers, atol: float, np_dtype,
                   new_tokens: int) -> dict:
    n = len(slots)
    session = _session(path, providers)
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    past = [x for x in inputs if x.startswith("past_key_values.")]
    if len(past) != 2 * n:
        raise ExportError(f"{path.name} has {len(past) // 2} past key/value pairs ({len(past)} inputs), expected {n} "
                          "(one per kept attention)")
    want_in = ["input_ids", "attention_mask", "position_ids", *ox.past_names(n)]
    want_out = ["logits", *ox.present_names(n)]
    if inputs != want_in or outputs != want_out:
        raise ExportError(f"{path.name}: inputs {inputs} and outputs {outputs}, expected {want_in} -> {want_out}")
    mapped = path.with_name(MAP_FILE)
    recorded = json.loads(mapped.read_text()).get("cache_slots") if mapped.exists() else None
    if recorded != slots:
        what = "is missing" if recorded is None else "does not map the slots to the kept attention blocks"
        raise ExportError(f"{MAP_FILE} {what} (expected blocks {[s['block'] for s in slots]})")

    vocab = bm.head.weight.shape[0]
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, vocab, (k,), generator=g).numpy() for k in (7, 5)]  # row 1 left-padded by 2
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
            **_empty_past(session, n, len(prompts), np_dtype)}
    sequences = [list(p) for p in prompts]
    worst, steps = 0.0, []
    for step in range(new_tokens):
        got = _run(session, feed, path)
        length = feed["input_ids"].shape[1]
        old = feed["past_key_values.0.key"].shape[2] if n else 0
        for name in ox.present_names(n):
            want_past = feed[name.replace("present.", "past_key_values.")].shape
            if got[name].shape != (want_past[0], want_past[1], old + length, want_past[3]):
                raise ExportError(f"{path.name}: {name} has shape {list(got[name].shape)} after a past of {old} and "
                                  f"{length} new tokens")
        for r, seq in enumerate(sequences):
            want = masked_logits(um, torch.tensor([seq], device=bm.device), removed)[0, -1].cpu().numpy()
            have = got["logits"][r, -1].astype(np.float32)
            diff = float(np.abs(have - want).max())
            worst = max(worst, diff)
            if not diff <= atol:
                raise ParityError(f"{path.name} (onnxruntime, KV cache) differs from the masked model at decode step "
                                  f"{step} (past {old}), row {r}: max abs logit diff {diff:.3g} > {atol:g}")
            seq.append(int(have.argmax()))
        steps.append({"past_sequence_length": int(old), "input_ids": list(feed["input_ids"].shape)})
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], 1)
        feed = {"input_ids": np.array([[s[-1]] for s in sequences], np.int64), "attention_mask": mask,
                "position_ids": positions[:, -1:] + 1 + step, **next_past(got, n)}
    # the masked model's own greedy decoding, a full recompute per token, row by row
    for r, p in enumerate(prompts):
        want = decilm.greedy_masked(um, torch.from_numpy(p)[None].to(bm.device), removed, new_tokens)[0].tolist()
        have = sequences[r][len(p):]
        if have != want:
            agree = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), len(want))
            raise ParityError(f"greedy decoding through {path.name} (onnxruntime, KV cache) differs from the masked "
                              f"model's on row {r}: {agree}/{new_tokens} tokens agree before the first difference")
    return {"inputs": inputs, "outputs": outputs, "kv_cache_slots": n, "slot_blocks": [s["block"] for s in slots],
            "greedy_tokens": new_tokens, "rows": len(prompts), "left_padded_row": True, "token_agreement": 1.0,
            "max_abs_diff": worst, "atol": atol, "steps": len(steps), "providers": session.get_providers()}


@torch.inference_mode()
def verify(bm: BlockModel, removed_units: Sequence[int], out_dir: str | Path, atol: float | None = None,
           new_tokens: int = 8, providers: Sequence[str] = PROVIDERS) -> dict:
    """Check `out_dir`'s graphs in onnxruntime against the masked model (see the module doc): logits
    within `atol` (1e-4 float32, 2e-2 float16 by default) and, when `decoder_with_past.onnx` is there,
    its past inputs (one pair per kept attention) and greedy decoding through the KV cache token for
    token. ExportError (structure) or ParityError (values, tokens), one line."""
    start = time.perf_counter()
    bm = bm.base if isinstance(bm, UnitModel) else bm
    removed = decilm.check_units(bm, removed_units)
    np_dtype = _np_dtype(bm)
    atol = atol if atol is not None else (1e-4 if bm.dtype == torch.float32 else 2e-2)
    out_dir = Path(out_dir)
    um = unit_model(bm, "sublayers")
    result = {"removed_units": fmt_units(removed, "sublayers"),
              "onnx_logits": _check_logits(bm, um, removed, out_dir / LOGITS_FILE, providers, atol)}
    if (out_dir / DECODER_FILE).exists():
        slots = cache_slots(bm.num_blocks, removed)
        result["onnx_decoder_with_past"] = _check_decoder(bm, um, removed, out_dir / DECODER_FILE, slots, providers,
                                                          atol, np_dtype, new_tokens)
    return {**result, "seconds": round(time.perf_counter() - start, 2)}
