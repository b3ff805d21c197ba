"""The pruned model as ONNX graphs, verified in onnxruntime against PyTorch.

Two graphs, both traced with the dynamo exporter (`torch.onnx.export(..., dynamo=True)`) from the
plain transformers `*ForCausalLM` that `blockprune.models.remove_blocks` returns:

* `model.onnx`: `input_ids, attention_mask -> logits`, dynamic batch and sequence.
* `decoder_with_past.onnx`: `input_ids, attention_mask, position_ids, past_key_values.{i}.key,
  past_key_values.{i}.value -> logits, present.{i}.key, present.{i}.value` for every kept layer
  i = 0..n-1 (the pruned model's renumbered layers); dynamic batch, sequence and past sequence.
  `attention_mask` covers past + new tokens. A past of length 0 is a prefill. Sliding-window
  layers keep their full history: they are masked, not trimmed, so every `present.{i}` is
  `past + sequence` long and a runtime can treat all layers alike.

Verification never reuses the export's example shapes: it runs the saved file in onnxruntime
(CUDA first when that provider is available, else CPU) on other batch sizes and lengths, with a
left-padded row, and compares output names, shapes and values with the PyTorch model: max
|onnx - torch| <= atol + rtol * max |torch| (1e-4 and 1e-5 by default; a real model's logits
reach tens, where float32 kernels, PyTorch's included, differ by ~1e-4). For the
decoder, a prefill from an empty past and ONE decode step (from the ONNX prefill's cache and from
a PyTorch cache) must match PyTorch's full recompute of the whole sequence. A mismatch raises
`ExportError` with a one-line message.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from blockprune.models import weights_bytes
from blockprune.models.adapter import cache_kwarg as adapter_cache_kwarg, output_cache

LOGITS_FILE = "model.onnx"
DECODER_FILE = "decoder_with_past.onnx"
# Weights above this size go to an external data file beside the graph (protobuf caps a single
# file at 2 GB).
EXTERNAL_DATA_THRESHOLD = int(1.5 * 2**30)

# Example shapes used while tracing. Verification uses other shapes, so a dimension that the
# tracer silently fixed to its example value shows up as a failure.
EXPORT_BATCH, EXPORT_SEQUENCE, EXPORT_PAST = 3, 5, 4


class ExportError(Exception):
    """A model that cannot be exported to ONNX, or an export whose outputs do not match PyTorch."""


# ---- helpers ----------------------------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _vocab_size(model: nn.Module) -> int:
    return model.get_input_embeddings().num_embeddings


def _num_layers(model: nn.Module) -> int:
    from blockprune.models import ModelError, find_blocks

    try:
        return len(find_blocks(model)[1])
    except ModelError as exc:
        raise ExportError(str(exc)) from None


def cache_kwarg(model: nn.Module) -> str:
    """The forward argument that takes a KV cache (models.adapter.cache_kwarg), or ExportError."""
    name = adapter_cache_kwarg(model)
    if name is None:
        raise ExportError(f"{type(model).__name__}.forward takes no `cache` (or `past_key_values`) argument: "
                          "no decoder with past can be exported")
    return name


def _cache_tensors(cache, num_layers: int, model_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys, values)] per layer of a transformers cache; ExportError if it has no such layout."""
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != num_layers:
        found = "no cache" if cache is None else f"{type(cache).__name__} with {len(layers or [])} layers"
        raise ExportError(f"{model_name}: expected a per-layer key/value cache for {num_layers} layers, got {found}")
    pairs = []
    for i, layer in enumerate(layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not (isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor) and keys.dim() == 4 == values.dim()):
            raise ExportError(f"{model_name}: cache layer {i} ({type(layer).__name__}) has no [batch, heads, seq, dim] "
                              "key/value tensors (recurrent or linear-attention layers cannot be exported with past)")
        pairs.append((keys, values))
    return pairs


def _empty_cache():
    """A cache of plain growing layers (no sliding-window trimming), filled by `update`."""
    from transformers import DynamicCache

    return DynamicCache()


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def _first_line(exc: BaseException) -> str:
    """The most specific one-line description of an exporter failure (innermost cause first)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _no_torchvision_notice(record: logging.LogRecord) -> bool:
    """Drop the exporter's 'torchvision is not installed' notices (no vision ops are exported)."""
    return "torchvision is not installed" not in record.getMessage()


def _export(wrapper: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: tuple, opset: int | None, external_data_threshold: int, what: str) -> Path:
    """Trace `wrapper` with the dynamo exporter and save it to `path`."""
    wrapper.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry_log.addFilter(_no_torchvision_notice)
    try:
        with warnings.catch_warnings():
            # Noise, not problems: the same named dimension on several inputs is intended, and
            # torch's own pytree deprecation is not ours to fix.
            warnings.filterwarnings("ignore", message=r".*axis name.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(wrapper, args, None, input_names=input_names, output_names=output_names,
                                        dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True,
                                        verbose=False)
    except Exception as exc:
        raise ExportError(f"{what}: torch.onnx.export failed for {type(wrapper.model).__name__}: "
                          f"{_first_line(exc)}") from exc
    finally:
        registry_log.removeFilter(_no_torchvision_notice)
    external = weights_bytes(wrapper.model) > external_data_threshold
    data_file = path.with_name(path.name + ".data")
    if data_file.exists():
        data_file.unlink()  # a stale weights file from an earlier export of the same name
    program.save(str(path), external_data=external)
    return path


# ---- graph 1: logits --------------------------------------------------------------------------
class LogitsGraph(nn.Module):
    """input_ids, attention_mask -> logits (no cache)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_logits(model: nn.Module, out_dir: str | Path, opset: int | None = None,
                  external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Path:
    """Export `input_ids, attention_mask -> logits` to `out_dir/model.onnx`; returns its path."""
    device = _device(model)
    input_ids = torch.randint(0, _vocab_size(model), (EXPORT_BATCH, EXPORT_SEQUENCE), device=device)
    attention_mask = torch.ones_like(input_ids)
    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    dims = {0: batch, 1: sequence}
    return _export(LogitsGraph(model), (input_ids, attention_mask), Path(out_dir) / LOGITS_FILE,
                   ["input_ids", "attention_mask"], ["logits"], (dims, dims), opset, external_data_threshold,
                   "logits graph")


# ---- graph 2: decoder with past ---------------------------------------------------------------
class DecoderWithPastGraph(nn.Module):
    """Flat past tensors in, logits and flat present tensors out, through a transformers cache."""

    def __init__(self, model: nn.Module, num_layers: int):
        super().__init__()
        self.model = model
        self.num_layers = num_layers
        self.cache_kwarg = cache_kwarg(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = _empty_cache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, **{self.cache_kwarg: cache})
        present = _cache_tensors(output_cache(output), self.num_layers, type(self.model).__name__)
        return (output.logits, *(t for pair in present for t in pair))


@torch.inference_mode()
def _probe_past(model: nn.Module, num_layers: int, batch: int, length: int) -> list[torch.Tensor]:
    """Past tensors of the model's own cache layout (heads, head dim, dtype per layer), zero-filled."""
    kwarg = cache_kwarg(model)
    ids = torch.zeros((1, 2), dtype=torch.long, device=_device(model))
    output = model(input_ids=ids, use_cache=True, **{kwarg: _empty_cache()})
    past = []
    for keys, values in _cache_tensors(output_cache(output), num_layers, type(model).__name__):
        for t in (keys, values):
            past.append(torch.zeros((batch, t.shape[1], length, t.shape[3]), dtype=t.dtype, device=t.device))
    return past


def export_decoder_with_past(model: nn.Module, out_dir: str | Path, opset: int | None = None,
                             external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, num_layers: int | None = None,
                             what: str = "decoder with past") -> Path:
    """Export the KV-cache decoder to `out_dir/decoder_with_past.onnx`; returns its path. `num_layers`:
    the cache's layers when they are not one per decoder layer (a DeciLM cache: one per kept attention)."""
    num_layers = _num_layers(model) if num_layers is None else num_layers
    wrapper = DecoderWithPastGraph(model, num_layers)  # checks the forward takes a cache
    device = _device(model)
    past = _probe_past(model, num_layers, EXPORT_BATCH, EXPORT_PAST)
    past = [torch.randn(t.shape, dtype=t.dtype, device=device) for t in past]
    input_ids = torch.randint(0, _vocab_size(model), (EXPORT_BATCH, EXPORT_SEQUENCE), device=device)
    attention_mask = torch.ones((EXPORT_BATCH, EXPORT_PAST + EXPORT_SEQUENCE), dtype=torch.long, device=device)
    position_ids = torch.arange(EXPORT_PAST, EXPORT_PAST + EXPORT_SEQUENCE, device=device).expand(EXPORT_BATCH, -1)
    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    past_sequence, total = torch.export.Dim("past_sequence_length"), torch.export.Dim("total_sequence_length")
    dynamic_shapes = ({0: batch, 1: sequence}, {0: batch, 1: total}, {0: batch, 1: sequence},
                      *([tuple({0: batch, 2: past_sequence} for _ in past)] if past else []))  # no cache: no pasts
    return _export(wrapper, (input_ids, attention_mask, position_ids, *past), Path(out_dir) / DECODER_FILE,
                   ["input_ids", "attention_mask", "position_ids", *past_names(num_layers)],
                   ["logits", *present_names(num_layers)], dynamic_shapes, opset, external_data_threshold, what)


# ---- verification -----------------------------------------------------------------------------
def _session(onnx_path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    providers: list = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        # TF32 matmuls (on by default in the CUDA provider) would hide real differences.
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    except Exception:
        if len(providers) == 1:
            raise
        # An onnxruntime without the use_tf32 option: its default settings, then.
        return ort.InferenceSession(str(onnx_path), sess_options=options,
                                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        raise ExportError("onnxruntime verification needs a float32 or float16 model, not bfloat16")
    return t.detach().cpu().numpy()


def _check_names(kind: str, found: Sequence[str], expected: Sequence[str], onnx_path: Path) -> None:
    if list(found) != list(expected):
        missing = [n for n in expected if n not in found]
        extra = [n for n in found if n not in expected]
        raise ExportError(f"{onnx_path.name}: {kind} names differ from the model's (missing {missing or 'none'}, "
                          f"unexpected {extra or 'none'})")


def _check_shape(name: str, got: np.ndarray, expected: Sequence[int], onnx_path: Path) -> None:
    if tuple(got.shape) != tuple(expected):
        raise ExportError(f"{onnx_path.name}: {name} has shape {list(got.shape)}, PyTorch gives {list(expected)}")


def _compare(got: np.ndarray, expected: np.ndarray, where: np.ndarray | None, atol: float, rtol: float
             ) -> tuple[float, float, bool]:
    """(max |got - expected|, tolerance, within it) over the positions in `where`.

    tolerance = atol + rtol * max |expected|: float32 rounding in a deep stack grows with the scale
    of the logits as a whole, not with each element (a 27-layer model with logits near 30 has
    PyTorch float32 itself ~1.4e-4 away from float64). A NaN fails.
    """
    got, expected = got.astype(np.float32), expected.astype(np.float32)
    if where is not None:
        got, expected = got[where], expected[where]
    if not expected.size:
        return 0.0, atol, True
    diff = float(np.abs(got - expected).max())
    tolerance = atol + rtol * float(np.abs(expected).max())
    return diff, tolerance, diff <= tolerance  # False for NaN


def _inputs(model: nn.Module, batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and a mask whose last row (when batch > 1) is left-padded by 2 tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, _vocab_size(model), (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    if batch > 1 and length > 2:
        mask[-1, :2] = 0
    return ids.to(_device(model)), mask.to(_device(model))


@torch.inference_mode()
def verify_logits(model: nn.Module, onnx_path: str | Path, shapes: Sequence[tuple[int, int]] = ((2, 7), (1, 13)),
                  atol: float = 1e-4, rtol: float = 1e-5) -> dict:
    """Run the logits graph in onnxruntime on `shapes` and compare with the PyTorch model.

    Values must satisfy max |onnx - torch| <= atol + rtol * max |torch| (rtol=0: plain atol).
    Positions that a left-padded row masks out entirely have no defined output and are skipped.
    """
    onnx_path = Path(onnx_path)
    session = _session(onnx_path)
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    _check_names("input", inputs, ["input_ids", "attention_mask"], onnx_path)
    _check_names("output", outputs, ["logits"], onnx_path)
    worst, seen = 0.0, []
    for n, (batch, length) in enumerate(shapes):
        ids, mask = _inputs(model, batch, length, seed=n)
        expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        (got,) = session.run(None, {"input_ids": _np(ids), "attention_mask": _np(mask)})
        _check_shape("logits", got, expected.shape, onnx_path)
        diff, tolerance, ok = _compare(got, _np(expected), _np(mask).astype(bool), atol, rtol)
        seen.append({"input_ids": [batch, length], "logits": list(got.shape), "max_abs_diff": diff,
                     "tolerance": tolerance})
        if not ok:
            raise ExportError(f"{onnx_path.name}: logits differ from PyTorch by up to {diff:.3g} > tolerance "
                              f"{tolerance:.3g} at input shape {[batch, length]}")
        worst = max(worst, diff)
    return {"inputs": inputs, "outputs": outputs, "max_abs_diff": worst, "shapes": seen,
            "providers": session.get_providers(), "atol": atol, "rtol": rtol, "ok": True}


@torch.inference_mode()
def verify_decoder(model: nn.Module, onnx_path: str | Path, atol: float = 1e-4, rtol: float = 1e-5,
                   batch: int = 2, prefill: int = 9) -> dict:
    """Check the decoder with past in onnxruntime against PyTorch's full recompute.

    1. prefill `prefill` tokens from an empty past (past length 0): logits vs PyTorch;
    2. ONE decode step from the ONNX prefill's `present` tensors, and one from a PyTorch cache of
       the same prefix: the new token's logits vs PyTorch on the whole sequence without a cache.
    The last row is left-padded; position ids follow the mask, as in `generate()`. Tolerance as in
    `verify_logits`.
    """
    onnx_path = Path(onnx_path)
    num_layers = _num_layers(model)
    session = _session(onnx_path)
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    _check_names("input", inputs, ["input_ids", "attention_mask", "position_ids", *past_names(num_layers)], onnx_path)
    _check_names("output", outputs, ["logits", *present_names(num_layers)], onnx_path)

    ids, mask = _inputs(model, batch, prefill + 1, seed=100)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    head = dict(input_ids=ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=positions[:, :prefill])
    step = dict(input_ids=ids[:, prefill:], attention_mask=mask, position_ids=positions[:, prefill:])
    seen, diffs = [], {}

    def run(name: str, feed: dict, past: list[np.ndarray], expected: torch.Tensor, where: np.ndarray | None) -> list:
        got = session.run(None, {**{k: _np(v) for k, v in feed.items()}, **dict(zip(past_names(num_layers), past))})
        _check_shape(f"{name} logits", got[0], expected.shape, onnx_path)
        new = feed["input_ids"].shape[1]
        for present_name, array, old in zip(present_names(num_layers), got[1:], past):
            _check_shape(f"{name} {present_name}", array, (*old.shape[:2], old.shape[2] + new, old.shape[3]), onnx_path)
        diff, tolerance, ok = _compare(got[0], _np(expected), where, atol, rtol)
        diffs[name] = diff
        seen.append({"step": name, "input_ids": list(feed["input_ids"].shape),
                     "past_sequence_length": int(past[0].shape[2]), "logits": list(got[0].shape), "max_abs_diff": diff,
                     "tolerance": tolerance})
        if not ok:
            raise ExportError(f"{onnx_path.name}: {name} logits differ from PyTorch by up to {diff:.3g} > "
                              f"tolerance {tolerance:.3g}")
        return got[1:]

    # 1. prefill from an empty past, against PyTorch on the prefix (padded-out positions skipped)
    empty_past = [_np(t) for t in _probe_past(model, num_layers, batch, 0)]
    prefix_logits = model(**head, use_cache=False).logits
    present = run("prefill", head, empty_past, prefix_logits, _np(head["attention_mask"]).astype(bool))
    # 2. one decode step, from the ONNX cache and from PyTorch's, against the full recompute
    full_logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    run("decode", step, present, full_logits[:, -1:], None)
    prefix = model(**head, use_cache=True, **{cache_kwarg(model): _empty_cache()})
    torch_past = [_np(t) for pair in _cache_tensors(output_cache(prefix), num_layers, type(model).__name__) for t in pair]
    run("decode_from_torch_cache", step, torch_past, full_logits[:, -1:], None)
    return {"inputs": inputs, "outputs": outputs, "kept_layers": num_layers, "max_abs_diff": max(diffs.values()),
            "prefill_max_abs_diff": diffs["prefill"],
            "decode_max_abs_diff": max(diffs["decode"], diffs["decode_from_torch_cache"]),
            "shapes": seen, "providers": session.get_providers(), "atol": atol, "rtol": rtol, "ok": True}
