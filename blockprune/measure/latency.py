"""Latency of the dense model vs the model without some blocks, measured as inference is served.

For each backend (PyTorch eager, onnxruntime on the exported decoder with past) and batch size,
every variant (dense, and each removal set) runs the same greedy generation many times:

* **prefill** (time to first token): one forward over the `prompt_len` prompt tokens that fills the
  KV cache and gives the first new token (PyTorch: `logits_to_keep=1`, the LM head only at the last
  position; the ONNX graph has no such input and computes logits at every prompt position);
* **decode**: `gen_len - 1` further steps of one token each with the cache (the first token
  belongs to the prefill), greedy argmax, no early stop at EOS; every step is timed, and the
  per-token statistics are over all steps of all timed runs (robust to bursts of load from other
  processes, which hit some steps of a run, not all); the mean step time of each run is kept too;
* decode tokens/s = batch / median step time; end to end = batch x gen_len / median(prefill + decode).

`warmup` untimed runs per variant, then `reps` timed runs, interleaved: repetition r runs the
variants in order, r+1 in reverse (A B B A ...), so slow drift of a shared machine hits all alike.
Statistics: min, median, p90, max, mean. Speedup = the median over repetitions of the paired ratio
dense run r / pruned run r (adjacent in time, so slow drift cancels; for decode, of the runs' median
step times), with its min and max, next to the ideal L / (L - k) and to the plain ratio of the
medians. The load average before
and after is recorded: other processes on the machine show there.
On CUDA every timed region ends with `torch.cuda.synchronize()`.

Memory: on CUDA the peak of `torch.cuda.max_memory_allocated()` over a variant's timed runs. On CPU
there is no per-model peak: reported are the weights' bytes, the KV cache's bytes at the end of the
generation (both exact, per variant) and the process's peak resident set size (`ru_maxrss`: the
whole process, all variants and the Python runtime, monotone over its life).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import models, versions
from ..export.discovery import ExportNotFound, find_decoder as _find_decoder, find_genai as _find_genai
from .generation import GenaiGeneration, OrtGeneration, TorchGeneration
from ..report.latency import LATENCY_FILE, MARKDOWN_FILE, PLOT_FILE, markdown, pareto_front, plot  # noqa: F401

BACKENDS = ("torch", "onnxruntime", "genai")
# the timed generations' names before #22 (bench/ and older callers)
TorchRunner, OrtRunner, GenaiRunner = TorchGeneration, OrtGeneration, GenaiGeneration
# Settings used after a search (a few seconds per set on SmolLM2 on 2 CPU cores).
REPORT_SETTINGS = {"prompt_len": 64, "gen_len": 16, "warmup": 1, "reps": 5}


class BenchError(Exception):
    """Bad benchmark input (one-line message)."""


# ---- validation -------------------------------------------------------------------------------
def check_settings(backends: Sequence[str], batches: Sequence[int], prompt_len: int, gen_len: int, warmup: int,
                   reps: int) -> None:
    """Checks that need no model (BenchError)."""
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        raise BenchError(f"unknown backend(s) {', '.join(bad) or '(none)'}: choose from {', '.join(BACKENDS)}")
    if not batches or any(b < 1 for b in batches):
        raise BenchError(f"batch sizes must be at least 1, got {list(batches)}")
    if prompt_len < 1:
        raise BenchError(f"--prompt-len must be at least 1, got {prompt_len}")
    if gen_len < 2:
        raise BenchError(f"--gen-len must be at least 2 (the first token is the prefill's), got {gen_len}")
    if reps < 1:
        raise BenchError(f"--reps must be at least 1, got {reps}")
    if warmup < 0:
        raise BenchError(f"--warmup must be at least 0, got {warmup}")


def max_positions(bm: models.BlockModel) -> int | None:
    cfg = bm.model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_lengths(bm: models.BlockModel, prompt_len: int, gen_len: int) -> None:
    limit = max_positions(bm)
    if limit is not None and prompt_len + gen_len > limit:
        raise BenchError(f"--prompt-len + --gen-len = {prompt_len + gen_len} exceeds the model's {limit} positions")


def _check_sets(bm: models.BlockModel, sets: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    out = []
    for removed in sets:
        key = tuple(sorted({int(b) for b in removed}))
        if not key:
            raise BenchError("give at least one block to remove (the dense model is always measured)")
        try:
            models.prune(bm, key, check_only=True)
        except models.ModelError as exc:
            raise BenchError(str(exc)) from None
        if key not in out:
            out.append(key)
    return out


def find_decoder(directory: str | Path, bm: models.BlockModel, removed: Sequence[int]) -> Path:
    """`export.discovery.find_decoder`, refused as a BenchError."""
    try:
        return _find_decoder(directory, bm, removed)
    except ExportNotFound as exc:
        raise BenchError(str(exc)) from None


def find_genai(directory: str | Path, bm: models.BlockModel, removed: Sequence[int]) -> Path:
    """`export.discovery.find_genai`, refused as a BenchError."""
    try:
        return _find_genai(directory, bm, removed)
    except ExportNotFound as exc:
        raise BenchError(str(exc)) from None


# ---- ONNX exports -----------------------------------------------------------------------------
def _check_onnx_dirs(onnx_dirs: dict | None, bm: models.BlockModel, sets: list[tuple[int, ...]],
                     backend: str = "onnxruntime") -> dict:
    onnx_dirs = onnx_dirs or {}
    graphs = {}
    fmt, find = ("onnx --kv-cache", find_decoder) if backend == "onnxruntime" else ("genai", find_genai)
    for key in [(), *sets]:
        directory = onnx_dirs.get(key)
        if directory is None:
            what = "the dense model (--onnx-dense)" if not key else f"blocks {list(key)} removed (--onnx)"
            raise BenchError(f"{backend} needs an export of {what}: blockprune export --model {bm.name} "
                             f"--remove {','.join(map(str, key)) or repr('')} --format {fmt} --out DIR")
        graphs[key] = find(directory, bm, key)
    return graphs


# ---- measuring --------------------------------------------------------------------------------
def _stats(values: Sequence[float], scale: float = 1.0) -> dict:
    v = np.asarray(values, dtype=float) * scale
    return {"min": float(v.min()), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "max": float(v.max()), "mean": float(v.mean()), "n": int(v.size)}


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _prompt(vocab: int, batch: int, prompt_len: int, seed: int = 0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    return gen.integers(0, vocab, size=(batch, prompt_len), dtype=np.int64)


IMAGE_SIDE = 336  # an image-text model's prompt holds a random image of this size (its processor resizes it)


def _image_prompt(bm: models.BlockModel, batch: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """(ids [batch, P], the image inputs of its prefill) of an image-text model's prompt: a random
    IMAGE_SIDE square image and a question, as its processor builds them; the prefill then runs
    the vision tower too."""
    from PIL import Image

    from ..models.vision import forward_inputs
    from ..tasks.image_task import prompt_of
    from ..tasks.request import Media

    pixels = np.random.default_rng(seed).integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    text, prompt = prompt_of(bm.processor, "What is in the image? Describe it in detail.", image)
    media = [Media(key="bench", prompt=prompt, text=text, image=image)] * batch
    return np.asarray([prompt] * batch, dtype=np.int64), forward_inputs(bm.processor, media, len(prompt), "right",
                                                                         bm.device, bm.dtype)


def _measure(generations: dict, ids: np.ndarray, gen_len: int, warmup: int, reps: int, device: torch.device,
             progress=None) -> dict:
    """Interleaved runs of every timed generation: {key: {"runs": [...], "tokens": first tokens, "consistent": bool, ...}}."""
    keys = list(generations)
    out = {k: {"runs": [], "tokens": None, "consistent": True, "peak_allocated": 0} for k in keys}
    for r in range(warmup + reps):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            if device.type == "cuda" and r >= warmup:
                torch.cuda.reset_peak_memory_stats(device)
            run = generations[k](ids, gen_len)
            rec = out[k]
            if rec["tokens"] is None:
                rec["tokens"] = run["tokens"]
            elif not np.array_equal(rec["tokens"], run["tokens"]):
                rec["consistent"] = False
            if r >= warmup:
                rec["runs"].append(run)
                if device.type == "cuda":
                    rec["peak_allocated"] = max(rec["peak_allocated"], torch.cuda.max_memory_allocated(device))
        if progress:
            progress(r + 1, warmup + reps)
    return out


def _variant_name(removed: Sequence[int]) -> str:
    return "dense" if not removed else "-" + ",".join(map(str, removed))


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    if hasattr(os, "getloadavg"):
        out["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return out


def bench_sets(bm: models.BlockModel, sets: Sequence[Sequence[int]], backends: Sequence[str] = ("torch",),
               batches: Sequence[int] = (1,), prompt_len: int = 128, gen_len: int = 64, warmup: int = 2,
               reps: int = 10, onnx_dirs: dict | None = None, keep_tokens: bool = False, log=None) -> dict:
    """Dense vs each removal set in `sets` (the dense model measured once, interleaved with all).

    `onnx_dirs` maps () (dense) and each set (a sorted tuple) to its export directory; needed for
    the onnxruntime backend. Returns the result dict (see `write`).
    """
    backends = list(dict.fromkeys(backends))
    batches = list(dict.fromkeys(int(b) for b in batches))
    check_settings(backends, batches, prompt_len, gen_len, warmup, reps)
    _check_lengths(bm, prompt_len, gen_len)
    keys = _check_sets(bm, sets)
    graphs = _check_onnx_dirs(onnx_dirs, bm, keys) if "onnxruntime" in backends else {}
    genai_dirs = _check_onnx_dirs(onnx_dirs, bm, keys, "genai") if "genai" in backends else {}
    device = bm.device
    L = bm.block_count
    variants = {(): bm}
    for key in keys:
        variants[key] = models.prune(bm, key)  # blocks, or halves of a UnitModel (their weights gone)
        got, want = len(models.find_blocks(variants[key].model)[1]), models.blocks_left(bm, key)
        if got != want:  # the copy really lost the blocks
            raise BenchError(f"pruned copy has {got} blocks, expected {want}")
    vocab = bm.model.get_input_embeddings().num_embeddings
    result = {
        "schema": 1, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": bm.name, "num_blocks": L, "device": str(device), "dtype": str(bm.dtype).replace("torch.", ""),
        "machine": _machine(), "versions": versions(),
        "settings": {"backends": backends, "batches": batches, "prompt_len": prompt_len, "gen_len": gen_len,
                     "warmup": warmup, "reps": reps, "order": "interleaved: A B ... then reversed, per repetition",
                     "prompt": "random token ids, seed 0; greedy argmax, no stop at EOS"},
        "memory_note": ("CUDA: peak torch.cuda.max_memory_allocated over the timed runs" if device.type == "cuda" else
                        "CPU: weights and final KV cache bytes per variant (exact); process_peak_rss is the whole "
                        "process's peak resident set (all variants loaded, monotone), not a per-model figure"),
        "results": [], "speedups": [],
    }
    for backend in backends:
        if backend == "torch":
            generations = {k: TorchGeneration(v.model) for k, v in variants.items()}
            if bm.image_text:  # its prompt holds an image: the prefill runs the vision tower
                images = {b: _image_prompt(bm, b) for b in batches}
        elif backend == "genai":
            generations = {k: GenaiGeneration(genai_dirs[k]) for k in variants}
            result["genai"] = {"models": {_variant_name(k): str(g) for k, g in genai_dirs.items()}, "precision": "fp32"}
            for k, r in generations.items():
                if r.num_layers != L - len(k):
                    raise BenchError(f"{genai_dirs[k]} has {r.num_layers} layers, expected {L - len(k)}")
        else:
            generations = {k: OrtGeneration(graphs[k], device) for k in variants}
            result.setdefault("onnxruntime", {"providers": generations[()].providers, "intra_op_num_threads": generations[()].threads,
                                              "graphs": {_variant_name(k): str(g) for k, g in graphs.items()}})
            for k, r in generations.items():
                if r.num_layers != L - len(k):
                    raise BenchError(f"{graphs[k]} has {r.num_layers} layers of past, expected {L - len(k)}")
        for batch in batches:
            if log:
                log(f"{backend}, batch {batch}: {len(generations)} variants x ({warmup} warm-up + {reps}) runs "
                    f"of {prompt_len} + {gen_len} tokens")
            ids = _prompt(vocab, batch, prompt_len)
            if backend == "torch" and bm.image_text:
                ids, image_inputs = images[batch]
                for g in generations.values():
                    g.prefill_inputs = image_inputs
                result["settings"]["prompt"] = (f"a random {IMAGE_SIDE}x{IMAGE_SIDE} image and a question, the "
                                                f"processor's prompt of {ids.shape[1]} tokens; greedy argmax, no stop "
                                                "at EOS")
            measured = _measure(generations, ids, gen_len, warmup, reps, device)
            rows = {}
            for k, m in measured.items():
                prefill = [x["prefill"] for x in m["runs"]]
                steps = [t for x in m["runs"] for t in x["steps"]]  # every decode step of every run
                per_run = [float(np.mean(x["steps"])) for x in m["runs"]]
                e2e = [x["prefill"] + sum(x["steps"]) for x in m["runs"]]
                row = {
                    "backend": backend, "batch": batch, "variant": _variant_name(k), "removed": list(k), "k": len(k),
                    "kept_blocks": L - len(k),
                    "prefill_ms": _stats(prefill, 1e3),
                    "decode_ms_per_token": _stats(steps, 1e3),
                    "decode_ms_per_token_run_mean": _stats(per_run, 1e3),
                    "decode_tokens_per_s": batch / float(np.median(steps)),
                    "e2e_tokens_per_s": batch * gen_len / float(np.median(e2e)),
                    "tokens_identical_across_runs": m["consistent"],
                    "memory": {"weights_mib": generations[k].weights_bytes / 2**20,
                               "kv_cache_mib": m["runs"][-1]["kv_bytes"] / 2**20},
                }
                if device.type == "cuda" and backend == "torch":
                    row["memory"]["peak_allocated_mib"] = m["peak_allocated"] / 2**20
                row["memory"]["process_peak_rss_mib"] = _peak_rss_mib()
                if keep_tokens:
                    row["tokens"] = m["tokens"].tolist()
                if backend in ("onnxruntime", "genai"):
                    torch_row = next((r for r in result["results"] if r["backend"] == "torch" and r["batch"] == batch
                                      and r["removed"] == list(k)), None)
                    if torch_row is not None and "_tokens" in torch_row:
                        row["token_agreement_with_torch"] = float(np.mean(np.asarray(torch_row["_tokens"]) == m["tokens"]))
                row["_tokens"] = m["tokens"]
                rows[k] = row
                result["results"].append(row)
            dense = measured[()]["runs"]
            for k in keys:
                ideal = L / (L - len(k))
                s = {"backend": backend, "batch": batch, "removed": list(k), "k": len(k), "ideal": ideal}
                for phase, med in (("prefill", "prefill_ms"), ("decode", "decode_ms_per_token")):
                    speed = rows[()][med]["median"] / rows[k][med]["median"]
                    if phase == "prefill":
                        paired = [d["prefill"] / p["prefill"] for d, p in zip(dense, measured[k]["runs"])]
                    else:  # per run: median step time, dense over pruned (the runs are adjacent in time)
                        paired = [float(np.median(d["steps"]) / np.median(p["steps"])) for d, p in zip(dense, measured[k]["runs"])]
                    s[phase] = float(np.median(paired))  # the headline: drift between runs cancels
                    s[f"{phase}_paired"] = _stats(paired)
                    s[f"{phase}_ratio_of_medians"] = speed
                    s[f"{phase}_fraction_of_ideal"] = s[phase] / ideal
                    s[f"{phase}_fraction_of_ideal_gain"] = (s[phase] - 1) / (ideal - 1)
                result["speedups"].append(s)
    for row in result["results"]:
        row.pop("_tokens", None)
    if hasattr(os, "getloadavg"):
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def bench(model: str | models.BlockModel, removed: Sequence[int] | Sequence[Sequence[int]],
          backends: Sequence[str] = ("torch",), batches: Sequence[int] = (1,), prompt_len: int = 128, gen_len: int = 64,
          warmup: int = 2, reps: int = 10, onnx_dirs: dict | None = None, device: str | None = None,
          dtype: torch.dtype = torch.float32, keep_tokens: bool = False, threads: int | None = None, log=None) -> dict:
    """Dense vs `model` without the `removed` blocks (one set, or a list of sets measured together).

    onnxruntime needs `onnx_dirs={"dense": DIR, "pruned": DIR}` (a list of DIRs, one per set, for several sets).
    `threads` sets torch's (and onnxruntime's) thread count for the measurement only; default: as it is.
    """
    sets = [list(x) for x in removed] if removed and not isinstance(removed[0], (int, np.integer)) else [list(removed)]
    check_settings(list(backends), list(batches), prompt_len, gen_len, warmup, reps)
    onnx_dirs = {k: v for k, v in (onnx_dirs or {}).items() if v}
    dirs = {}
    if "onnxruntime" in backends or "genai" in backends:
        pruned = onnx_dirs.get("pruned")
        pruned = [pruned] if isinstance(pruned, (str, Path)) else list(pruned or [])
        for name, flag, given in (("pruned", "--onnx", pruned), ("dense", "--onnx-dense", [onnx_dirs.get("dense")])):
            if not all(given) or not given:
                which = " and ".join(b for b in ("onnxruntime", "genai") if b in backends)
                raise BenchError(f"{which} needs the {name} model's export ({flag} DIR: an export directory written by "
                                 "`blockprune export --format onnx --kv-cache` or `--format genai`)")
            for d in given:
                if not Path(d).is_dir():
                    raise BenchError(f"{flag} {d}: no such directory")
        if len(pruned) != len(sets):
            raise BenchError(f"give one --onnx export per removal set ({len(sets)} sets, {len(pruned)} exports)")
        dirs = {(): onnx_dirs["dense"], **{tuple(sorted({int(b) for b in x})): d for x, d in zip(sets, pruned)}}
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be at least 1, got {threads}")
    bm = model if isinstance(model, models.BlockModel) else models.load(model, device=device, dtype=dtype)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return bench_sets(bm, sets, backends, batches, prompt_len, gen_len, warmup, reps, dirs, keep_tokens, log)
    finally:
        torch.set_num_threads(before)


# ---- output -----------------------------------------------------------------------------------
def write(result: dict, out: str | Path) -> list[Path]:
    """latency.json, latency.md and latency.png into `out` (`bench --out`): a new or empty directory,
    or an earlier `bench --out` one (`outputs.claim`), locked while written; all three are written in
    full before any is replaced, so an error or a full disk leaves the old ones."""
    from ..runs import outputs, rundir

    shown = Path(out)
    out = outputs.claim(out, "bench")
    with rundir.lock(out, "write latency files in", marker=LATENCY_FILE):
        outputs.claim(out, "bench")  # again, now that no one else can write it
        with rundir.TempDir(out) as tmp:
            png = tmp.file(PLOT_FILE)
            png.parent.mkdir(exist_ok=True)
            plot(result, png)
            rundir.chmod_like_user(png)
            texts = {LATENCY_FILE: json.dumps(result, indent=2, sort_keys=False) + "\n", MARKDOWN_FILE: markdown(result)}
            for name, text in texts.items():
                rundir.chmod_like_user(tmp.write_text(name, text))
            tmp.commit_files(out, [PLOT_FILE, *texts])
    return [shown / LATENCY_FILE, shown / MARKDOWN_FILE, shown / PLOT_FILE]


# ---- after a search: the report's measured speedups -------------------------------------------
def bench_run(directory: str | Path, bm: models.BlockModel, tolerance: float, progress: bool = True,
              settings: dict | None = None, analysis: dict | None = None, recs: dict | None = None,
              plain: dict | None = None) -> dict:
    """Bench the sets the report names (`report.latency_sets`: PyTorch, batch 1, short settings) into
    DIR/latency.json. `analysis`, `recs` (the recommendations at `tolerance`): the run's, when the
    caller has them already; `plain`: a healed run's OUT/plain analysis."""
    from .. import report
    from ..runs.store import atomic_write_json

    settings = {**REPORT_SETTINGS, **(settings or {})}
    sets = report.latency_sets(directory, tolerance, analysis, recs, plain=plain)
    log = (lambda msg: print(f"latency: {msg}", file=sys.stderr, flush=True)) if progress else None
    start = time.perf_counter()
    result = bench_sets(bm, sets, backends=("torch",), batches=(1,), log=log, **settings)
    result["seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_json(Path(directory) / LATENCY_FILE, result)
    return result


