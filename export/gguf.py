"""GGUF for llama.cpp: the source GGUF without the removed blocks, tensors copied as they are.

When the model came from a GGUF file (the embedded default does), the pruned file is that file
minus the removed blocks: every kept tensor keeps its bytes and its quantisation (no
requantisation loss), `blk.N.*` tensors are renumbered 0..kept-1, `<arch>.block_count` is set and
every per-layer metadata array (`<arch>.*` arrays with one entry per block) is filtered. The
`gguf` library (llama.cpp's own Python package) reads and writes the file.

Verified with a reader that is not ours: transformers' GGUF loader dequantises the written file,
whose logits must equal the pruned model's (the source dequantised the same way, blocks masked)
and whose greedy tokens on fixed prompts must be identical.

Healed (`replace`): the output projection of each block a map was folded into
(`blk.N.ffn_down.weight`, N the block's number before renumbering, and its bias if it has one) is
written with the folded values, quantised to the source tensor's own type where the `gguf`
library can quantise it (`gguf.quants.quantize`: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, ...;
not the K- and IQ-types), else F16; every other tensor is copied byte for byte. The reference it
is verified against is the folded model with those tensors rounded through the same type (so
atol stays 1e-4); how far the rounding moves it from the unrounded folded model is stated.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Sequence

import torch

from .onnx import ExportError

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")


FALLBACK = "F16"  # the type a folded tensor is written at when the gguf library cannot quantise the source's


def _linear_layout(module) -> bool:
    return type(module).__name__ != "Conv1D"  # GPT-2's Conv1D holds [in, out]; GGUF (and Linear) [out, in]


def folded_tensors(bm, blocks: Sequence[int]) -> dict[str, "np.ndarray"]:
    """{source GGUF tensor name: float32 values} of the folded output projections of `blocks`
    (names before renumbering; arrays [out, in] as the reader's dequantised tensors are shaped)."""
    from blockprune.healing import heal

    out = {}
    for b in blocks:
        _, module = heal.projection(bm.blocks[b])
        w = module.weight.detach().float().cpu()
        out[f"blk.{b}.ffn_down.weight"] = (w if _linear_layout(module) else w.T).contiguous().numpy()
        if getattr(module, "bias", None) is not None:
            out[f"blk.{b}.ffn_down.bias"] = module.bias.detach().float().cpu().numpy()
    return out


def _encode(values, qtype):
    """(array to write, its type, why not the source's type or None): `qtype` where gguf can quantise it, else F16."""
    import gguf
    import numpy as np

    values = np.ascontiguousarray(values, dtype=np.float32)
    try:
        return gguf.quants.quantize(values, qtype), qtype, None
    except (NotImplementedError, ValueError) as exc:  # no quantiser in this gguf version, or a shape it cannot block
        why = f"the gguf library cannot quantise {qtype.name}" + (f" ({exc})" if str(exc) else "")
        return values.astype(np.float16), gguf.GGMLQuantizationType.F16, why


def stored(values, type_name: str):
    """`values` (float32, [out, in]) as a tensor of that GGUF type holds them, read back by gguf's dequantiser."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[type_name]
    data = np.ascontiguousarray(values, dtype=np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype).reshape(data.shape).astype(np.float32)


def as_stored(bm, blocks: Sequence[int], replace: dict, rewritten: list[dict]):
    """A copy of `bm` whose folded projections hold what the written file holds (the reference a
    healed GGUF is verified against); every other tensor shared with `bm`."""
    from blockprune.healing import heal

    from .hf import copy_sharing

    kinds = {r["tensor"]: r["type"] for r in rewritten}
    modules = {b: heal.projection(bm.blocks[b])[1] for b in blocks}
    ref = copy_sharing(bm, modules.values())
    with torch.no_grad():
        for b in blocks:
            module = heal.projection(ref.blocks[b])[1]
            w = torch.from_numpy(stored(replace[f"blk.{b}.ffn_down.weight"], kinds[f"blk.{b}.ffn_down.weight"]))
            module.weight.copy_(w if _linear_layout(module) else w.T)
            if f"blk.{b}.ffn_down.bias" in replace:
                bias = replace[f"blk.{b}.ffn_down.bias"]
                module.bias.copy_(torch.from_numpy(stored(bias, kinds[f"blk.{b}.ffn_down.bias"])))
    return ref


def write_pruned(source: Path, removed: Sequence[int], out: Path, replace: dict | None = None) -> dict:
    """Copy `source` into `out` without the `removed` blocks; returns what was written. `replace`:
    {source tensor name: float32 values} written instead of those tensors' bytes (healing), each at
    its source type where gguf can quantise it, else F16."""
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
    replace = dict(replace or {})
    by_name = {t.name: t for t in reader.tensors}
    for name, values in replace.items():
        t = by_name.get(name)
        if t is None:
            raise ExportError(f"GGUF {source.name}: no tensor {name} to write the healing map's fold into")
        if BLOCK_TENSOR.match(name) and int(BLOCK_TENSOR.match(name).group(1)) in removed:
            raise ExportError(f"GGUF {source.name}: {name} belongs to a removed block")
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists ne0 (the row length) first
        if tuple(values.shape) != shape:
            raise ExportError(f"GGUF {source.name}: {name} is {list(shape)}, the folded projection {list(values.shape)}")
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
    copied = []  # (data, its endianness: the source's for copied bytes, native for rewritten ones)
    rewritten = []
    types = set()
    for t in reader.tensors:
        m = BLOCK_TENSOR.match(t.name)
        if m and int(m.group(1)) in removed:
            continue
        name = f"blk.{new_of[int(m.group(1))]}.{m.group(2)}" if m else t.name
        if t.name in replace:
            data, qtype, why = _encode(replace[t.name], t.tensor_type)
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, qtype)
            copied.append((data, None))
            rewritten.append({"tensor": t.name, "written_as": name, "source_type": t.tensor_type.name,
                              "type": qtype.name, **({"why": why} if why else {})})
            types.add(qtype.name)
            continue
        writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        copied.append((t.data, reader.endianess))
        types.add(t.tensor_type.name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data, endianness in copied:
        writer.write_tensor_data(data, tensor_endianess=endianness)
    writer.close()
    info = {"source": source.name, "architecture": arch, "block_count": len(kept), "tensors": len(copied),
            "tensor_types": sorted(types), "per_layer_metadata_filtered": filtered, "requantised": bool(rewritten),
            "write_seconds": round(time.perf_counter() - start, 2)}
    if replace:
        info["rewritten"] = rewritten  # the folded projections; every other tensor's bytes are the source's
    return info


@torch.inference_mode()
def verify(bm, removed: Sequence[int], path: Path, atol: float = 1e-4, new_tokens: int = 12, unrounded=None) -> dict:
    """Reload `path` with transformers' GGUF reader; logits and greedy tokens vs the masked model.
    `unrounded` (healed: `bm` is the folded model with the rewritten tensors rounded as the file
    holds them): how far the file is from the folded model before that rounding, stated."""
    from blockprune.models.sources import from_gguf

    from .hf import masked_logits

    start = time.perf_counter()
    try:
        model, _ = from_gguf(path, torch.float32, tokenizer=False)  # the weights' check: no vocabulary needed
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
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    prompts = [torch.tensor([list(bm.tokenizer(p).input_ids)], device=bm.device) for p in PROMPTS]
    got = [model.generate(x, **kw) for x in prompts]
    same = sum(int(torch.equal(g, pruned.generate(x, **kw))) for g, x in zip(got, prompts))
    if same != len(PROMPTS):
        raise ExportError(f"the written GGUF's greedy tokens differ from the pruned model's on "
                          f"{len(PROMPTS) - same} of {len(PROMPTS)} prompts")
    info = {"reader": "transformers GGUF loader (dequantised)", "logits_max_abs_diff": diff, "atol": atol,
            "greedy_prompts_identical": f"{same}/{len(PROMPTS)}", "new_tokens": new_tokens}
    if unrounded is not None:
        info["reference"] = ("the folded pruned model with the rewritten tensors rounded through their GGUF type "
                             "(gguf's own quantiser)")
        info["logits_max_abs_diff_vs_unrounded"] = (model(input_ids=ids).logits.float()
                                                    - masked_logits(unrounded, ids, removed)).abs().max().item()
        folded = remove_blocks(unrounded, removed).model
        same_unrounded = sum(int(torch.equal(g, folded.generate(x, **kw))) for g, x in zip(got, prompts))
        info["greedy_prompts_identical_vs_unrounded"] = f"{same_unrounded}/{len(PROMPTS)}"
    info["verify_seconds"] = round(time.perf_counter() - start, 2)
    return info


# ---- from a Hugging Face checkpoint (llama-family) -------------------------------------------------
HF_ARCHS = {"llama": "llama", "mistral": "llama"}  # model_type -> the GGUF architecture llama.cpp runs
OUTTYPES = ("f32", "f16", "q8_0")


def _permute(w, n_head: int):
    """llama.cpp's rotary layout for q/k rows (what its converter does; transformers' reader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_from_hf(model, hf_dir: Path, out: Path, outtype: str = "f16") -> dict:
    """Write the (pruned) HF `model` as a GGUF llama.cpp runs: its config as llama metadata, the
    tokenizer of `hf_dir` (GPT-2-style BPE), weights as f32 / f16 / q8_0 (norms stay f32)."""
    import json

    import gguf
    import numpy as np

    start = time.perf_counter()
    cfg = model.config
    arch = HF_ARCHS.get(getattr(cfg, "model_type", None))
    if arch is None:
        raise ExportError(f"GGUF from a Hugging Face checkpoint: architecture {getattr(cfg, 'model_type', None)!r} is not "
                          f"supported (supported: {', '.join(HF_ARCHS)}; a model loaded from a GGUF file exports any)")
    if outtype not in OUTTYPES:
        raise ExportError(f"unknown GGUF type {outtype!r}: choose {', '.join(OUTTYPES)}")
    try:
        vocab = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExportError(f"GGUF from a Hugging Face checkpoint needs a tokenizer.json in {hf_dir}") from None
    if vocab.get("model", {}).get("type") != "BPE":
        raise ExportError("GGUF from a Hugging Face checkpoint: only BPE (GPT-2-style) tokenizers are supported")
    n_layers, n_head = cfg.num_hidden_layers, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    w = gguf.GGUFWriter(out, arch)
    w.add_name(str(getattr(cfg, "name_or_path", "") or "blockprune-pruned"))
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(rope))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_file_type(ftype[outtype])
    # tokenizer: the BPE vocabulary by id, added special tokens as control tokens, merges and ids from the files
    tokens = {i: t for t, i in vocab["model"]["vocab"].items()}
    control = set()
    for added in vocab.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        if added.get("special"):
            control.add(added["id"])
    size = max(cfg.vocab_size, max(tokens) + 1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([tokens.get(i, f"[PAD{i}]") for i in range(size)])
    w.add_token_types([gguf.TokenType.CONTROL if i in control else gguf.TokenType.NORMAL if i in tokens
                       else gguf.TokenType.UNUSED for i in range(size)])
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=size).add_to_gguf(w, quiet=True)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, n_layers)
    state = model.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False)
    written = 0
    for name, tensor in state.items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output.weight
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ExportError(f"GGUF from a Hugging Face checkpoint: no llama.cpp name for tensor {name}")
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if data.ndim == 1 or outtype == "f32":
            w.add_tensor(gname, data.astype(np.float32))
        elif outtype == "f16":
            w.add_tensor(gname, data.astype(np.float16))
        else:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        written += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"source": "hf checkpoint", "architecture": arch, "block_count": n_layers, "tensors": written,
            "outtype": outtype, "write_seconds": round(time.perf_counter() - start, 2)}


def _round_trip(weight: torch.Tensor, outtype: str) -> torch.Tensor:
    """What the GGUF file holds for a 2-D weight, dequantised: the reference its reader must match."""
    import gguf

    if outtype == "f32":
        return weight
    if outtype == "f16":
        return weight.half().float()
    data = weight.detach().float().cpu().numpy()
    q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
    back = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(data.shape)
    return torch.from_numpy(back.copy()).to(weight.device)


@torch.inference_mode()
def verify_from_hf(model, tokenizer, path: Path, outtype: str, atol: float = 1e-4, new_tokens: int = 12) -> dict:
    """Reload a GGUF written from `model` with transformers' GGUF reader and compare it with `model`
    whose weights are rounded as the file rounds them (logits <= atol, greedy tokens identical);
    also states how far the rounding moves it from `model` itself."""
    import copy

    from blockprune.models.sources import from_gguf

    from .genai import PROMPTS

    start = time.perf_counter()
    try:
        loaded, gguf_tok = from_gguf(path, torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"transformers cannot read the written GGUF: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    loaded = loaded.to(model.device).eval()
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        if p.ndim == 2:
            p.data = _round_trip(p.data, outtype)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 11), generator=g).to(model.device)
    diff = (loaded(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
    if not diff <= atol:
        raise ExportError(f"the written GGUF's logits differ from the pruned model with {outtype} weights: max abs "
                          f"diff {diff:.3g} > {atol:g}")
    for p in PROMPTS:
        if list(gguf_tok(p).input_ids) != list(tokenizer(p).input_ids):
            raise ExportError(f"the written GGUF's tokenizer encodes {p!r} differently from the checkpoint's")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    same = same_unrounded = 0
    for p in PROMPTS:
        x = torch.tensor([list(tokenizer(p).input_ids)], device=model.device)
        got = loaded.generate(x, **kw)
        same += int(torch.equal(got, ref.generate(x, **kw)))
        same_unrounded += int(torch.equal(got, model.generate(x, **kw)))
    if same != len(PROMPTS):
        raise ExportError(f"the written GGUF's greedy tokens differ from the pruned model with {outtype} weights on "
                          f"{len(PROMPTS) - same} of {len(PROMPTS)} prompts")
    unrounded = (loaded(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
    return {"reader": "transformers GGUF loader (dequantised)", "logits_max_abs_diff_vs_rounded_weights": diff,
            "atol": atol, "greedy_prompts_identical": f"{same}/{len(PROMPTS)}", "tokenizer_identical": True,
            "logits_max_abs_diff_vs_unrounded": unrounded,
            "greedy_prompts_identical_vs_unrounded": f"{same_unrounded}/{len(PROMPTS)}",
            "new_tokens": new_tokens, "verify_seconds": round(time.perf_counter() - start, 2)}
