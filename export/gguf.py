"""GGUF for llama.cpp: the source GGUF without the removed blocks, tensors copied as they are.

When the model came from a GGUF file (the embedded default does), the pruned file is that file
minus the removed blocks: every kept tensor keeps its bytes and its quantisation (no
requantisation loss), `blk.N.*` tensors are renumbered 0..kept-1, `<arch>.block_count` is set and
every per-layer metadata array (`<arch>.*` arrays with one entry per block) is filtered. The
`gguf` library (llama.cpp's own Python package) reads and writes the file.

Verified with a reader that is not ours: transformers' GGUF loader dequantises the written file,
whose logits must equal the pruned model's (the source dequantised the same way, blocks masked)
and whose greedy tokens on fixed prompts must be identical.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Sequence

import torch

from .onnx import ExportError

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")


def write_pruned(source: Path, removed: Sequence[int], out: Path) -> dict:
    """Copy `source` into `out` without the `removed` blocks; returns what was written."""
    import gguf

    start = time.perf_counter()
    try:
        reader = gguf.GGUFReader(source)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read GGUF {source}: {exc}") from None
    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    count_field = reader.fields.get(f"{arch}.block_count") if arch else None
    if count_field is None:
        raise ExportError(f"GGUF {source.name}: architecture {arch!r} has no {arch}.block_count; cannot remove blocks")
    num_blocks = int(count_field.contents())
    removed = set(int(b) for b in removed)
    kept = [b for b in range(num_blocks) if b not in removed]
    new_of = {old: new for new, old in enumerate(kept)}
    block_ids = {int(m.group(1)) for t in reader.tensors if (m := BLOCK_TENSOR.match(t.name))}
    if block_ids != set(range(num_blocks)):
        raise ExportError(f"GGUF {source.name}: {arch} tensors name blocks {sorted(block_ids)[:5]}..., not "
                          f"blk.0..blk.{num_blocks - 1}; cannot remove blocks")
    writer = gguf.GGUFWriter(out, arch)
    filtered = []
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == f"{arch}.block_count":
            value = len(kept)
        elif (sub is not None and field.name.startswith(f"{arch}.") and isinstance(value, list)
              and len(value) == num_blocks):
            value = [value[i] for i in kept]  # one entry per block (per-layer head counts, window flags, ...)
            filtered.append(field.name)
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    copied = []
    for t in reader.tensors:
        m = BLOCK_TENSOR.match(t.name)
        if m and int(m.group(1)) in removed:
            continue
        name = f"blk.{new_of[int(m.group(1))]}.{m.group(2)}" if m else t.name
        writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        copied.append(t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in copied:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    quant = sorted({t.tensor_type.name for t in copied})
    return {"source": source.name, "architecture": arch, "block_count": len(kept), "tensors": len(copied),
            "tensor_types": quant, "per_layer_metadata_filtered": filtered, "requantised": False,
            "write_seconds": round(time.perf_counter() - start, 2)}


@torch.inference_mode()
def verify(bm, removed: Sequence[int], path: Path, atol: float = 1e-4, new_tokens: int = 12) -> dict:
    """Reload `path` with transformers' GGUF reader; logits and greedy tokens vs the masked model."""
    from blockprune.sources import from_gguf

    from .hf import masked_logits

    start = time.perf_counter()
    try:
        model, _ = from_gguf(path, torch.float32)
    except Exception as exc:  # noqa: BLE001 - the reader's own error, one line
        raise ExportError(f"transformers cannot read the written GGUF: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    model = model.to(bm.device).eval()
    layers = model.config.num_hidden_layers
    if layers != bm.num_blocks - len(set(removed)):
        raise ExportError(f"the written GGUF has {layers} blocks, expected {bm.num_blocks - len(set(removed))}")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, bm.head.weight.shape[0], (2, 11), generator=g).to(bm.device)
    diff = (model(input_ids=ids).logits.float() - masked_logits(bm, ids, removed)).abs().max().item()
    if not diff <= atol:
        raise ExportError(f"the written GGUF's logits differ from the pruned model's: max abs diff {diff:.3g} > {atol:g}")
    from blockprune.models import remove_blocks

    from .genai import PROMPTS

    pruned = remove_blocks(bm, removed).model  # equal to the masked model (the hf export checks it)
    same = 0
    for p in PROMPTS:
        x = torch.tensor([list(bm.tokenizer(p).input_ids)], device=bm.device)
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        same += int(torch.equal(model.generate(x, **kw), pruned.generate(x, **kw)))
    if same != len(PROMPTS):
        raise ExportError(f"the written GGUF's greedy tokens differ from the pruned model's on "
                          f"{len(PROMPTS) - same} of {len(PROMPTS)} prompts")
    return {"reader": "transformers GGUF loader (dequantised)", "logits_max_abs_diff": diff, "atol": atol,
            "greedy_prompts_identical": f"{same}/{len(PROMPTS)}", "new_tokens": new_tokens,
            "verify_seconds": round(time.perf_counter() - start, 2)}
