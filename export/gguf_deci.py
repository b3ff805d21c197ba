"""GGUF for llama.cpp of a Llama-family model with attention and MLP halves removed (#32): arch `deci`.

llama.cpp's `deci` architecture (Nemotron-51B / -253B) lets each layer lack its attention or its FFN:
per-layer arrays `deci.attention.head_count`, `deci.attention.head_count_kv` and
`deci.feed_forward_length` say what layer N has, and only its tensors are in the file. What the
vendored llama.cpp of llama-cpp-python 0.3.36 does with each combination (src/models/deci.cpp;
checked by running it, tests/test_export_gguf_deci.py):

* head_count > 0, head_count_kv > 0, n_ff > 0: a Llama block (deci.cpp:119-141, 150-175).
* head_count 0 (attention-free): the FFN reads the layer's input, no attention tensors, no KV
  (deci.cpp:107-109, 152-155): an attention half removed, exactly.
* head_count > 0, head_count_kv 0 ("linear attention"): `x + wo @ attn_norm(x)` (deci.cpp:115-118).
* n_ff 0: the whole layer is skipped, `continue` before `inpL = cur` (deci.cpp:147-149): a layer
  that keeps its attention but has no FFN LOSES its attention output.
* the head size and n_rot are read only when LAYER 0 has heads (llama-model.cpp:1435-1457,
  `hparams.n_head()` is layer 0's): an attention-free first layer gives every attention layer a
  head size of 0 and the file does not load.

So the file has one layer per block with a half kept (a block with both halves removed is dropped,
the others renumbered 0..n-1), and the two combinations llama.cpp mishandles are written with
exact zeros (`pad=True`, the default), which add exactly 0 to the residual stream:
* a block that keeps its attention but not its MLP: a zero FFN PAD_FF wide (gate, up, down all
  zero; ffn_norm ones), so n_ff = PAD_FF and the attention output is kept;
* a first layer without attention: "linear attention" with a zero output matrix (attn_norm ones).
`pad=False` refuses such a set in one line instead. The tokenizer is the source GGUF's (`tokenizer.*`
copied) or, for a Hugging Face model, what export.gguf.write_from_hf writes from its tokenizer.json.

Verified with llama.cpp itself (llama-cpp-python, `make llama-cpp`): its logits on fixed token
rows (f32 KV cache) against `masked_logits` of the unit model with the halves masked, and greedy
decoding through its KV cache, each step's logits within atol and its token the reference's argmax
(atol relative to the logits' size: see verify). Weights are written f32 (norms included).
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import time
import types
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .hf import ParityError, masked_logits
from .onnx import ExportError

ARCH = "deci"
HF_ARCHS = ("llama", "mistral")
OUTTYPES = ("f32",)  # f16: llama.cpp rounds the activations to f16 too (1.27 off on SmolLM2 without 0a): not verifiable
RTOL = 1e-3  # verify's default atol: RTOL * max(1, the largest reference logit); see verify
LLAMA_LAYOUT = ("self_attn", "input_layernorm", "mlp", "post_attention_layernorm")  # the modules written
PAD_FF = 32  # width of the zero FFN a layer keeping only its attention gets (a multiple of 32: any GGML block)
INSTALL = "run `make llama-cpp` (builds llama-cpp-python's wheel once into $BLOCKPRUNE_CACHE/wheels, installs it into .venv)"


def _base(bm):
    from blockprune.models.units import UnitModel

    return bm.base if isinstance(bm, UnitModel) else bm


def _names(units: Sequence[int]) -> str:
    from blockprune.models.units import fmt_units

    return fmt_units(units, "sublayers")


def check_units(bm, removed_units) -> list[int]:
    """The removed halves as sorted unit indices (2b: block b's attention, 2b+1: its MLP); ExportError otherwise."""
    n = 2 * _base(bm).num_blocks
    out = set()
    for u in removed_units:
        if isinstance(u, bool) or not isinstance(u, numbers.Integral):
            raise ExportError(f"unit {u!r} is not a half's index (an int: 2b is block b's attention, 2b+1 its MLP)")
        if not 0 <= int(u) < n:
            raise ExportError(f"unit {int(u)} out of range: the model has halves 0..{n - 1} ({n // 2} blocks)")
        out.add(int(u))
    if len(out) == n:
        raise ExportError("cannot export a model with every half removed")
    return sorted(out)


def plan(num_blocks: int, removed: Sequence[int], pad: bool = True) -> list[dict]:
    """The file's layers: {"block", "attention", "mlp", "pad"} (pad: None, "zero_ffn" or
    "zero_linear_attention"); ExportError (one line) for a set llama.cpp would run wrongly when not `pad`."""
    removed = set(removed)
    layers = []
    for b in range(num_blocks):
        attention, mlp = 2 * b not in removed, 2 * b + 1 not in removed
        if not (attention or mlp):
            continue  # both halves removed: the block is dropped
        padding = None
        if attention and not mlp:
            padding = "zero_ffn"
            why = (f"block {b} keeps its attention but not its MLP ({b}m removed): llama.cpp's deci graph skips a "
                   "layer whose feed_forward_length is 0 whole, its attention output lost (src/models/deci.cpp)")
        elif not attention and not layers:
            padding = "zero_linear_attention"
            why = (f"the first layer kept (block {b}) has no attention ({b}a removed): llama.cpp reads the head size "
                   "only when layer 0 has heads, so every attention layer would get head size 0 (src/llama-model.cpp)")
        if padding and not pad:
            raise ExportError(f"deci GGUF: {why}; export with pad=True (exact zero tensors keep it)")
        layers.append({"block": b, "attention": attention, "mlp": mlp, "pad": padding})
    return layers


def _config(base):
    cfg = base.model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _check_model(base) -> dict:
    """The Llama-family facts the file needs; ExportError (one line) for a model it cannot hold."""
    from blockprune.models.units import layout_of

    cfg = _config(base)
    kind = getattr(cfg, "model_type", None)
    if kind not in HF_ARCHS:
        raise ExportError(f"deci GGUF: architecture {kind!r} is not supported (supported: {', '.join(HF_ARCHS)})")
    if kind == "mistral" and getattr(cfg, "sliding_window", None):
        raise ExportError("deci GGUF: llama.cpp's deci graph has no sliding-window attention (this Mistral has "
                          f"sliding_window={cfg.sliding_window})")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ExportError(f"deci GGUF: llama.cpp's deci FFN is SwiGLU (silu); this model's is {cfg.hidden_act!r}")
    if base.logit_softcap or base.post_norm is not None or getattr(base.head, "bias", None) is not None:
        raise ExportError("deci GGUF: the model's head has a softcap, a post-norm or a bias llama.cpp's deci graph lacks")
    for i, block in enumerate(base.blocks):
        layout = layout_of(block)
        if (layout is None or (layout.attn, layout.attn_pre, layout.mlp, layout.mlp_pre) != LLAMA_LAYOUT
                or layout.attn_post or layout.mlp_post
                or not all(hasattr(block.self_attn, f"{x}_proj") for x in "qkvo")
                or not all(hasattr(block.mlp, f"{x}_proj") for x in ("gate", "up", "down"))):
            raise ExportError(f"deci GGUF: block {i} ({type(block).__name__}) is not a Llama pre-norm block")
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope = params.get("rope_type", params.get("type", "default"))
    if rope not in ("default", "linear", "llama3"):
        raise ExportError(f"deci GGUF: rope scaling {rope!r} is not supported (default, linear, llama3)")
    heads = cfg.num_attention_heads
    return {"cfg": cfg, "n_head": heads, "n_kv": getattr(cfg, "num_key_value_heads", None) or heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, "rope": rope, "rope_params": params,
            "theta": float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (its converter's permute; biases too)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_factors(params: dict, head_dim: int, theta: float) -> np.ndarray:
    """rope_freqs of a llama3-scaled rope (llama.cpp's conversion/deci.py)."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor, low = params.get("factor", 8.0), params.get("low_freq_factor", 1.0)
    high, old = params.get("high_freq_factor", 4.0), params.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


_TOKENIZERS: dict = {}  # {key of a tokenizer's files: its fields}: read once per process (GGUFReader takes seconds)


def _cached(key, read) -> list[tuple]:
    if key not in _TOKENIZERS:
        while len(_TOKENIZERS) >= 4:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[key] = read()
    return _TOKENIZERS[key]


def _gguf_fields(path: Path) -> list[tuple]:
    """[(name, value, type, sub_type)] of the `tokenizer.*` keys of the GGUF at `path`."""
    import gguf

    out = []
    for f in gguf.GGUFReader(path).fields.values():
        if f.name.startswith("tokenizer."):
            vtype = f.types[0]
            out.append((f.name, f.contents(), vtype, f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None))
    return out


def _tokenizer_fields(base, hf_dir: Path | None) -> tuple[list[tuple], str]:
    """The `tokenizer.*` keys to write, and where they came from."""
    import hashlib

    from .gguf import write_from_hf

    source = base.meta.get("gguf")
    if source and Path(source).is_file():
        stat = Path(source).stat()
        key = ("gguf", str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns)
        return _cached(key, lambda: _gguf_fields(Path(source))), f"copied from the source GGUF {Path(source).name}"
    with tempfile.TemporaryDirectory() as tmp:
        if hf_dir is None:
            if not hasattr(base.tokenizer, "save_pretrained"):
                raise ExportError(f"deci GGUF: the model's tokenizer ({type(base.tokenizer).__name__}) is neither a "
                                  "GGUF's nor a Hugging Face tokenizer with a tokenizer.json")
            hf_dir = Path(tmp) / "tokenizer"
            base.tokenizer.save_pretrained(hf_dir)
        digest = hashlib.sha256(str(_config(base).vocab_size).encode())
        for f in sorted(Path(hf_dir).glob("*.json")):
            digest.update(f.name.encode() + f.read_bytes())

        def read() -> list[tuple]:
            header = types.SimpleNamespace(config=_config(base), state_dict=dict)  # no tensors: metadata only
            write_from_hf(header, Path(hf_dir), Path(tmp) / "tokenizer.gguf", "f32")
            return _gguf_fields(Path(tmp) / "tokenizer.gguf")

        return _cached(("hf", digest.hexdigest()), read), "written from the tokenizer.json as export.gguf.write_from_hf does"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _tensors(base, layers: list[dict], facts: dict) -> list[tuple[str, np.ndarray]]:
    n_embd = facts["cfg"].hidden_size
    embed, head = base.model.get_input_embeddings().weight, base.head.weight
    out = [("token_embd.weight", _np(embed)), ("output_norm.weight", _np(base.final_norm.weight))]
    if head.data_ptr() != embed.data_ptr():
        out.append(("output.weight", _np(head)))  # tied: llama.cpp reuses token_embd
    if facts["rope"] == "llama3":
        out.append(("rope_freqs.weight", _llama3_factors(facts["rope_params"], facts["head_dim"], facts["theta"])))
    for i, layer in enumerate(layers):
        block, p = base.blocks[layer["block"]], f"blk.{i}."
        if layer["attention"]:
            attn = block.self_attn
            out.append((p + "attn_norm.weight", _np(block.input_layernorm.weight)))
            for short, proj, heads in (("q", attn.q_proj, facts["n_head"]), ("k", attn.k_proj, facts["n_kv"]),
                                       ("v", attn.v_proj, None), ("output", attn.o_proj, None)):
                for kind in ("weight", "bias"):
                    t = getattr(proj, kind, None)
                    if t is not None:
                        out.append((f"{p}attn_{short}.{kind}", _np(t) if heads is None else _permute(_np(t), heads)))
        elif layer["pad"] == "zero_linear_attention":
            out += [(p + "attn_norm.weight", np.ones(n_embd, np.float32)),
                    (p + "attn_output.weight", np.zeros((n_embd, n_embd), np.float32))]
        if layer["mlp"]:
            out.append((p + "ffn_norm.weight", _np(block.post_attention_layernorm.weight)))
            for short in ("gate", "up", "down"):
                proj = getattr(block.mlp, f"{short}_proj")
                out += [(f"{p}ffn_{short}.{kind}", _np(getattr(proj, kind)))
                        for kind in ("weight", "bias") if getattr(proj, kind, None) is not None]
        elif layer["pad"] == "zero_ffn":
            out += [(p + "ffn_norm.weight", np.ones(n_embd, np.float32)),
                    (p + "ffn_gate.weight", np.zeros((PAD_FF, n_embd), np.float32)),
                    (p + "ffn_up.weight", np.zeros((PAD_FF, n_embd), np.float32)),
                    (p + "ffn_down.weight", np.zeros((n_embd, PAD_FF), np.float32))]
    return out


def write(bm, removed_units: Sequence[int], out_path: Path, outtype: str = "f32", pad: bool = True,
          hf_dir: Path | None = None) -> dict:
    """Write `bm` (a Llama-family BlockModel by blocks, or its unit model) without the `removed_units`
    halves as a GGUF of arch `deci` at `out_path`; returns what was written. `hf_dir`: a directory
    with the tokenizer.json to write (default: the source GGUF's tokenizer, else `bm.tokenizer` saved)."""
    import gguf

    start = time.perf_counter()
    base = _base(bm)
    if outtype not in OUTTYPES:
        raise ExportError(f"unknown deci GGUF type {outtype!r}: choose {', '.join(OUTTYPES)} (with f16 weights llama.cpp "
                          "rounds the activations to f16 too, so the file could not be checked against the model)")
    removed = check_units(base, removed_units)
    facts = _check_model(base)
    layers = plan(base.num_blocks, removed, pad)
    tok, tok_from = _tokenizer_fields(base, hf_dir)
    vocab = base.model.get_input_embeddings().weight.shape[0]
    n_tokens = next((len(v) for n, v, *_ in tok if n == "tokenizer.ggml.tokens"), None)
    if n_tokens != vocab:
        raise ExportError(f"deci GGUF: the tokenizer lists {n_tokens} tokens, the embedding has {vocab} rows")
    cfg, n_embd = facts["cfg"], facts["cfg"].hidden_size
    head_count = [facts["n_head"] if (l["attention"] or l["pad"] == "zero_linear_attention") else 0 for l in layers]
    head_count_kv = [facts["n_kv"] if l["attention"] else 0 for l in layers]
    ffn = [cfg.intermediate_size if l["mlp"] else PAD_FF if l["pad"] == "zero_ffn" else 0 for l in layers]
    w = gguf.GGUFWriter(Path(out_path), ARCH)
    w.add_name(f"{base.name} without {_names(removed)}")
    w.add_context_length(int(base.max_positions or 2048))
    w.add_embedding_length(n_embd)
    w.add_block_count(len(layers))
    w.add_feed_forward_length(ffn)
    w.add_head_count(head_count)
    w.add_head_count_kv(head_count_kv)
    w.add_key_length(facts["head_dim"])
    w.add_value_length(facts["head_dim"])
    w.add_rope_dimension_count(facts["head_dim"])
    w.add_rope_freq_base(facts["theta"])
    if facts["rope"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(facts["rope_params"]["factor"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, value, vtype, sub in tok:
        w.add_key_value(name, value, vtype, sub_type=sub)
    tensors = _tensors(base, layers, facts)
    for name, data in tensors:
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": ARCH, "removed_units": _names(removed), "block_count": len(layers),
            "layers_blocks": [l["block"] for l in layers],
            "dropped_blocks": [b for b in range(base.num_blocks) if 2 * b in removed and 2 * b + 1 in removed],
            "head_count": head_count, "head_count_kv": head_count_kv, "feed_forward_length": ffn,
            "padded": [{"layer": i, "block": l["block"], "pad": l["pad"]} for i, l in enumerate(layers) if l["pad"]],
            "tensors": len(tensors), "outtype": outtype, "tokenizer": tok_from,
            "write_seconds": round(time.perf_counter() - start, 2)}


# ---- verification with llama.cpp itself ------------------------------------------------------------
def open_llama(path: Path, n_ctx: int = 128):
    """llama.cpp (llama-cpp-python) on `path`, all logits kept, an f32 KV cache; ExportError if absent."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(f"verifying a deci GGUF needs llama-cpp-python, which is not installed: {INSTALL}") from None
    try:
        return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, verbose=False,
                               n_threads=min(4, os.cpu_count() or 1), type_k=llama_cpp.GGML_TYPE_F32,
                               type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False)
    except Exception as exc:  # noqa: BLE001 - llama.cpp's refusal, one line
        raise ExportError(f"llama.cpp cannot load {Path(path).name}: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def llama_logits(llm, ids: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits [len(ids), vocab] for one token row, from an empty cache."""
    llm.reset()
    llm.eval([int(t) for t in ids])
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@torch.inference_mode()
def verify(bm, removed_units: Sequence[int], path: Path, atol: float | None = None, new_tokens: int = 8) -> dict:
    """Run `path` with llama.cpp: logits on fixed token rows and each greedy step (through its KV
    cache) within `atol` of the half-pruned model's (`masked_logits` of the unit model), and every
    greedy token the reference's argmax (a tie within atol allowed); ParityError otherwise.

    atol (default RTOL * max(1, the largest reference logit)): llama.cpp and PyTorch sum in other
    orders, and a set that leaves the model ill-conditioned magnifies that. Observed, f32:
    tiny Llamas 3e-7 (logits ~1); SmolLM2-135M (logits ~34) 7e-5 without [17a, 22a] or [17m], 6e-3
    without [0a], where PyTorch's f32 is the one off (float64 reference: llama.cpp 6e-4 from it,
    PyTorch f32 5.7e-3), so the default there is 3.4e-2."""
    from blockprune.models.units import unit_model

    start = time.perf_counter()
    base = _base(bm)
    removed = check_units(base, removed_units)
    llm = open_llama(path)
    try:
        um = unit_model(base, "sublayers")
        vocab = base.head.weight.shape[0]
        if llm.n_vocab() != vocab:
            raise ParityError(f"llama.cpp reads a vocabulary of {llm.n_vocab()} tokens from {Path(path).name}, the "
                              f"model has {vocab}")
        ids = torch.randint(3, vocab, (3, 12), generator=torch.Generator().manual_seed(0))
        want = masked_logits(um, ids.to(base.device), removed).cpu().numpy()
        atol = RTOL * max(1.0, float(np.abs(want).max())) if atol is None else atol
        diff = max(float(np.abs(llama_logits(llm, row.tolist()) - w).max()) for row, w in zip(ids, want))
        if not diff <= atol:
            raise ParityError(f"llama.cpp's logits of {Path(path).name} differ from the half-pruned model's "
                              f"(removed {_names(removed)}): max abs diff {diff:.3g} > {atol:.3g}")
        same = steps = 0
        step_diff = 0.0
        for row in ids:
            prompt = row[:5].tolist()
            llm.reset()
            llm.eval(prompt)
            seq, got = list(prompt), []
            for _ in range(new_tokens):
                logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
                got.append(logits)
                seq.append(int(np.argmax(logits)))
                llm.eval([seq[-1]])
            wants = masked_logits(um, torch.tensor([seq[:-1]], device=base.device), removed)[0, len(prompt) - 1:]
            for k, (g, w) in enumerate(zip(got, wants.cpu().numpy())):
                step_diff = max(step_diff, float(np.abs(g - w).max()))
                token = seq[len(prompt) + k]
                if w[token] < w.max() - atol:
                    raise ParityError(f"llama.cpp's greedy token {k + 1} ({token}) of {Path(path).name} is not the "
                                      f"half-pruned model's ({int(w.argmax())}) (removed {_names(removed)})")
                same += int(token == int(w.argmax()))
                steps += 1
        if not step_diff <= atol:
            raise ParityError(f"llama.cpp's logits of {Path(path).name} through its KV cache differ from the "
                              f"half-pruned model's: max abs diff {step_diff:.3g} > {atol:.3g}")
    finally:
        llm.close()
    return {"reader": "llama.cpp (llama-cpp-python, f32 KV cache)", "reference": "the unit model, removed halves masked",
            "logits_max_abs_diff": diff, "greedy_logits_max_abs_diff": step_diff, "atol": atol,
            "greedy_tokens_identical": f"{same}/{steps}", "verify_seconds": round(time.perf_counter() - start, 2)}
