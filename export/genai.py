"""ONNX Runtime GenAI models of the pruned checkpoint, built by onnxruntime-genai's own model builder.

blockprune writes no graph here: `python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p
fp32|int4 -e cpu` turns the verified pruned HF checkpoint into `model.onnx` + `genai_config.json`
+ tokenizer files, which `onnxruntime_genai.Model(OUT)` serves as they are.

Verified by generating: greedy decoding with `onnxruntime_genai` on fixed prompts against greedy
`generate()` of the pruned checkpoint in transformers. fp32 must give identical tokens; int4 (weights
quantised to 4 bits) states its agreement (prompts identical, and the share of generated tokens
before the first difference).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

from .onnx import ExportError

PRECISIONS = ("fp32", "int4")
PROMPTS = ("The capital of France is", "To be, or not to be,", "def fibonacci(n):",
           "Once upon a time there was", "1, 2, 3, 4,")


def build(hf_dir: Path, out: Path, precision: str = "fp32") -> dict:
    """Run the builder on `hf_dir` into `out` (which must not exist); one-line ExportError on failure."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown GenAI precision {precision!r}: choose {', '.join(PRECISIONS)}")
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        raise ExportError("--format genai needs onnxruntime-genai: pip install 'blockprune[onnx]'") from None
    start = time.perf_counter()
    cache = out.parent / f".{out.name}-cache"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0 or not (out / "genai_config.json").exists():
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        raise ExportError(f"onnxruntime-genai's builder rejected the model ({precision}): "
                          f"{lines[-1].strip() if lines else f'exit {proc.returncode}'}")
    return {"precision": precision, "builder": "onnxruntime_genai.models.builder", "execution_provider": "cpu",
            "build_seconds": round(time.perf_counter() - start, 2)}


def greedy_genai(model_dir: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    out = []
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new_tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        out.append(list(gen.get_sequence(0))[len(ids):])
    return out


@torch.inference_mode()
def greedy_hf(model, prompts: list[list[int]], new_tokens: int, eos) -> list[list[int]]:
    out = []
    for ids in prompts:
        x = torch.tensor([ids], device=model.device)
        seq = model.generate(x, max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos if isinstance(eos, int) else (eos[0] if eos else None))
        out.append(seq[0, len(ids):].tolist())
    return out


def _trim(tokens: list[int], eos: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS (runtimes differ in what they pad after it)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def verify(pruned_model, tokenizer, model_dir: Path, precision: str, new_tokens: int = 16) -> dict:
    """Greedy tokens of the GenAI model vs greedy generate() of the pruned model on PROMPTS."""
    start = time.perf_counter()
    prompts = [list(tokenizer(p).input_ids) for p in PROMPTS]
    eos_cfg = getattr(pruned_model.generation_config, "eos_token_id", None)
    eos = set(eos_cfg if isinstance(eos_cfg, (list, tuple)) else [eos_cfg] if eos_cfg is not None else [])
    want = [_trim(t, eos) for t in greedy_hf(pruned_model, prompts, new_tokens, eos_cfg)]
    try:
        got = [_trim(t, eos) for t in greedy_genai(model_dir, prompts, new_tokens)]
    except Exception as exc:  # noqa: BLE001 - the runtime's own error, in one line
        text = str(exc).strip()
        raise ExportError(f"onnxruntime-genai could not run the {precision} model: "
                          f"{text.splitlines()[0] if text else type(exc).__name__}") from None
    same = sum(g == w for g, w in zip(got, want))
    agreed = total = 0
    for g, w in zip(got, want):
        total += len(w)
        for a, b in zip(g, w):
            if a != b:
                break
            agreed += 1
    result = {"prompts": len(prompts), "prompts_identical": same, "tokens_before_first_difference": agreed,
              "tokens_generated": total, "token_agreement": round(agreed / total, 4) if total else None,
              "new_tokens": new_tokens, "verify_seconds": round(time.perf_counter() - start, 2)}
    if precision == "fp32" and same != len(prompts):
        bad = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        raise ExportError(f"the fp32 GenAI model's greedy tokens differ from the pruned checkpoint's on prompt "
                          f"{PROMPTS[bad]!r} ({same}/{len(prompts)} prompts identical)")
    return result
