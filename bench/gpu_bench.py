"""GPU benchmarks of issue 5: the kernels against the card's copy bandwidth and against materialised
logits, and the engine against the naive loop and dense-then-select. Run by bench/gpu.sh.

    python bench/gpu_bench.py --out DIR [--budget SECONDS]    # on a CUDA machine
    .venv/bin/python bench/gpu_bench.py --smoke --out /tmp/x  # tiny shapes on CPU (Triton interpreted)

Sections (each skipped when the time budget cannot fit it; results are written after every row):

1. copy: device-to-device copy bandwidth (the ceiling for the row ops).
2. ops: gather+pre-norm and residual-add at real shapes (bf16), Triton vs torch eager vs
   torch.compile of the same reference: GB/s and the fraction of copy bandwidth (target >= 0.8).
3. head: the fused scoring head vs materialised logits + cross-entropy at vocabularies 49152 and
   128256: time and peak memory (targets: peak <= 1/8, time <= 1.2x).
4. kl_head: the fused KL head (KL(dense || candidate) + the scoring-head outputs) vs materialised
   fp32 logits of both models + log_softmax, in the engine's layout (Q = positions / 8 dense rows,
   dense_index = arange(Q) repeated 8 times): time, peak memory and max |KL diff|; at most ~40 s.
5. headline: candidate-sample rows scored per second vs the fraction of blocks kept, for the engine
   (fused kernels; and its plain-block path), the naive one-forward-per-candidate loop and
   dense-then-select (every row through every block, masked), on a random SmolLM2-135M config.
6. beam: one width-16 beam step (children of 16 random 2-block sets) on a perplexity task and a
   multiple-choice task, engine vs the naive loop, on the SmolLM2-135M config and a ~1B Llama
   config (hidden 2048, 16 layers, intermediate 8192, vocabulary 128256); target >= 10x on ~1B.

Models are random-initialised from configs (no hub access needed), bf16 on the GPU. Writes
`gpu_bench.json` (card, versions, timestamp, every figure) and one CSV per section into --out.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
if not CUDA:  # CPU smoke run: Triton only through the interpreter, chosen before kernels import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402

from blockprune import kernels  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
TARGETS = {"ops_copy_fraction": 0.8, "head_peak_fraction": 1 / 8, "head_time_ratio": 1.2, "beam_speedup_1b": 10.0}


# ---- bookkeeping ----------------------------------------------------------------------------------
class Recorder:
    """Collects rows per section and rewrites gpu_bench.json and <section>.csv after every row."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"meta": meta, "targets": TARGETS, "notes": {}, "sections": {}}
        self.flush()

    def add(self, section: str, row: dict) -> None:
        self.data["sections"].setdefault(section, []).append(row)
        print(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        self.flush(section)

    def note(self, section: str, text: str) -> None:
        self.data["notes"][section] = text
        print(f"[{section}] {text}", flush=True)
        self.flush()

    def flush(self, section: str | None = None) -> None:
        self.data["meta"]["written"] = _now()
        tmp = self.out / ".gpu_bench.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.out / "gpu_bench.json")
        if section is not None:
            rows = self.data["sections"][section]
            keys: list[str] = []
            for r in rows:
                keys += [k for k in r if k not in keys]
            with open(self.out / f"{section}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(rows)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict:
    meta = {"timestamp": _now(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": "cpu", "argv": sys.argv[1:]}
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        meta.update(device=torch.cuda.get_device_name(0),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_GiB=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count)
    for name in ("triton", "transformers", "numpy"):
        try:
            meta[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - record what is missing, do not stop
            meta[name] = f"unavailable: {type(exc).__name__}"
    meta["kernels_backend"] = kernels.backend()
    try:
        import subprocess

        meta["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        meta["git"] = None
    return meta


class Clock:
    def __init__(self, budget: float):
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return self.end - time.monotonic()


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timeit(fn, min_time: float = 0.05, reps: int = 3, max_inner: int = 100) -> float:
    """Median seconds per call: one warm-up call (compiles), then `reps` timings of `inner` calls,
    `inner` chosen so one timing lasts about `min_time` (CUDA events on a GPU)."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, min(max_inner, int(min_time / one)))
    times = []
    for _ in range(reps):
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def peak_bytes(fn) -> int | None:
    """Memory allocated by one call above what was allocated before it (CUDA only)."""
    if not CUDA:
        return None
    sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    sync()
    del out
    return torch.cuda.max_memory_allocated() - base


def wall(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


# ---- 1-2: copy bandwidth and the row ops -----------------------------------------------------------
def bench_copy(rec: Recorder, smoke: bool) -> float:
    numel = 2**20 if smoke else 2**29  # 1 GiB of bf16 per buffer on a GPU
    src = torch.randn(numel, device=DEVICE).to(torch.bfloat16)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), min_time=0.05 if smoke else 0.2)
    gbs = 2 * src.numel() * src.element_size() / t / 1e9
    rec.add("copy", {"bytes": src.numel() * src.element_size(), "ms": t * 1e3, "GB/s": gbs})
    return gbs


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def bench_ops(rec: Recorder, smoke: bool, copy_gbs: float, clock: Clock) -> None:
    from blockprune.kernels.gather_norm_triton import gather_norm_triton
    from blockprune.kernels.residual_add_triton import residual_add_triton

    if smoke:
        shapes = [("tiny", 6, 8, 40, 4, torch.float32)]
    else:  # (name, rows, tokens, hidden, active rows, dtype)
        shapes = [("llama-1b", 128, 512, 2048, 96, torch.bfloat16),
                  ("smollm2-135m", 256, 512, 576, 192, torch.bfloat16)]
    for name, rows, seq, dim, active, dtype in shapes:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(rows, seq, dim, generator=g).to(DEVICE, dtype)
        idx = torch.randperm(rows, generator=g)[:active].sort().values.to(DEVICE)
        weight = torch.randn(dim, generator=g).to(DEVICE, dtype)
        out = torch.randn(active, seq, dim, generator=g).to(DEVICE, dtype)
        elem = hidden.element_size()
        moved = {"gather_norm": 2 * active * seq * dim * elem, "residual_add": 3 * active * seq * dim * elem}
        impls = {
            "gather_norm": {"triton": lambda: gather_norm_triton(hidden, idx, weight, None, 1e-5),
                            "eager": lambda: kernels.gather_norm_reference(hidden, idx, weight, None, 1e-5)},
            "residual_add": {"triton": lambda: residual_add_triton(hidden, idx, out),
                             "eager": lambda: kernels.residual_add_reference(hidden, idx, out)},
        }
        want_compile = CUDA and name == shapes[0][0]  # compile costs tens of seconds: the first shape only
        for op, variants in impls.items():
            if want_compile and clock.left() > 90:
                ref = kernels.gather_norm_reference if op == "gather_norm" else kernels.residual_add_reference
                comp = _compiled(ref)
                args = (hidden, idx, weight, None, 1e-5) if op == "gather_norm" else (hidden, idx, out)
                variants["compile"] = lambda comp=comp, args=args: comp(*args)
            if op == "gather_norm":  # the kernel must agree with the reference before it is timed
                err = (variants["triton"]().float() - variants["eager"]().float()).abs().max().item()
            else:
                a, b = hidden.clone(), hidden.clone()
                residual_add_triton(a, idx, out)
                kernels.residual_add_reference(b, idx, out)
                err = (a.float() - b.float()).abs().max().item()
            for impl, fn in variants.items():
                if clock.left() < 10:
                    rec.note("ops", "stopped early: time budget")
                    return
                try:
                    t = timeit(fn, min_time=0.02 if smoke else 0.1)
                except Exception as exc:  # noqa: BLE001 - e.g. torch.compile unavailable
                    error = f"{type(exc).__name__}: {exc}"[:300]
                    rec.add("ops", {"shape": name, "op": op, "impl": impl, "error": error})
                    continue
                gbs = moved[op] / t / 1e9
                meets = gbs / copy_gbs >= TARGETS["ops_copy_fraction"]
                rec.add("ops", {"shape": name, "op": op, "impl": impl, "rows": rows, "tokens": seq, "hidden": dim,
                                "active": active, "dtype": str(dtype).replace("torch.", ""), "ms": t * 1e3, "GB/s": gbs,
                                "copy_fraction": gbs / copy_gbs, "target": TARGETS["ops_copy_fraction"],
                                "meets_target": bool(meets) if impl == "triton" and CUDA else None,
                                "max_abs_diff_vs_reference": err})
        del hidden, out
        if CUDA:
            torch.cuda.empty_cache()


# ---- 3: scoring head --------------------------------------------------------------------------------
def materialised_head(hidden, weight, targets):
    """Without the fused head: full logits, cross-entropy and argmax."""
    logits = (hidden @ weight.T).float()
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return nll, logits.argmax(-1) == targets


def bench_head(rec: Recorder, smoke: bool, clock: Clock) -> None:
    from blockprune.kernels.scoring_head_triton import scoring_head_triton

    configs = [(16, 24, 97)] if smoke else [(4096, 576, 49152), (4096, 2048, 128256)]  # (positions, hidden, vocab)
    dtype = torch.float32 if smoke else torch.bfloat16
    for positions, dim, vocab in configs:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(positions, dim, generator=g).to(DEVICE, dtype)
        weight = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(DEVICE, dtype)
        targets = torch.randint(0, vocab, (positions,), generator=g).to(DEVICE)
        variants = {
            "triton": lambda: scoring_head_triton(hidden, weight, targets),
            "reference_chunked": lambda: kernels.scoring_head_reference(hidden, weight, targets),
            "materialised": lambda: materialised_head(hidden, weight, targets),
        }
        lse, tgt, _ = variants["triton"]()
        nll, _ = variants["materialised"]()
        err = ((lse - tgt) - nll).abs().max().item()
        measured = {}
        for impl, fn in variants.items():
            if clock.left() < 15:
                rec.note("head", "stopped early: time budget")
                return
            t = timeit(fn, min_time=0.02 if smoke else 0.2, reps=3)
            peak = peak_bytes(fn)
            measured[impl] = (t, peak)
            row = {"positions": positions, "hidden": dim, "vocab": vocab, "dtype": str(dtype).replace("torch.", ""),
                   "impl": impl, "ms": t * 1e3, "peak_MB": peak / 2**20 if peak is not None else None,
                   "logits_fp32_MB": positions * vocab * 4 / 2**20}
            if impl == "triton":
                row["max_nll_diff_vs_materialised"] = err
            rec.add("head", row)
        t_mat, p_mat = measured["materialised"]
        for impl in ("triton", "reference_chunked"):
            t, p = measured[impl]
            ratio = p / p_mat if (p is not None and p_mat) else None
            fast = t / t_mat <= TARGETS["head_time_ratio"]
            meets = fast and ratio is not None and ratio <= TARGETS["head_peak_fraction"]
            rec.add("head_vs_materialised", {
                "vocab": vocab, "impl": impl, "time_ratio": t / t_mat, "time_target": TARGETS["head_time_ratio"],
                "peak_fraction": ratio, "peak_target": TARGETS["head_peak_fraction"],
                "meets_targets": bool(meets) if ratio is not None else None})
        del hidden, weight
        if CUDA:
            torch.cuda.empty_cache()


# ---- 4: KL head -------------------------------------------------------------------------------------
KL_HEAD_SECONDS = 40.0  # the most this section may take of the budget
KL_HEAD_NODES = 8  # candidate positions per dense row, as in the engine's trie layout


def materialised_kl(hidden, dense_hidden, dense_index, weight):
    """Without the fused head: full fp32 logits for the candidate and for dense[dense_index],
    log_softmax of both, KL(p_dense || p_cand) = sum p_d (log p_d - log p_c)."""
    logp_c = torch.log_softmax((hidden @ weight.T).float(), -1)
    logp_d = torch.log_softmax((dense_hidden[dense_index] @ weight.T).float(), -1)
    return (logp_d.exp() * (logp_d - logp_c)).sum(-1)


def bench_kl_head(rec: Recorder, smoke: bool, clock: Clock) -> None:
    from blockprune.kernels.kl_head_triton import kl_head_triton

    deadline = time.monotonic() + KL_HEAD_SECONDS

    def out_of_time() -> bool:
        if clock.left() < 15 or deadline - time.monotonic() < 5:
            rec.note("kl_head", "stopped early: time budget")
            return True
        return False

    configs = [(16, 24, 97)] if smoke else [(4096, 576, 49152), (4096, 2048, 128256)]  # (positions, hidden, vocab)
    dtype = torch.float32 if smoke else torch.bfloat16
    for positions, dim, vocab in configs:
        if out_of_time():
            return
        num_dense = positions // KL_HEAD_NODES
        g = torch.Generator().manual_seed(0)
        dense = torch.randn(num_dense, dim, generator=g)
        dense_index = torch.arange(num_dense).repeat(KL_HEAD_NODES)  # node-major copies of the dense rows
        # candidates: the dense rows plus a perturbation, as a pruned model's hidden states would be
        hidden = (dense[dense_index] + 0.5 * torch.randn(positions, dim, generator=g)).to(DEVICE, dtype)
        dense = dense.to(DEVICE, dtype)
        dense_index = dense_index.to(DEVICE)
        weight = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(DEVICE, dtype)
        targets = torch.randint(0, vocab, (positions,), generator=g).to(DEVICE)
        variants = {
            "triton": lambda: kl_head_triton(hidden, dense, weight, targets, dense_index=dense_index),
            "reference_chunked": lambda: kernels.kl_head_reference(hidden, dense, weight, targets,
                                                                   dense_index=dense_index),
            "materialised": lambda: materialised_kl(hidden, dense, dense_index, weight),
        }
        kl = variants["triton"]()[0]
        kl_mat = variants["materialised"]()
        err = (kl - kl_mat).abs().max().item()
        mean_kl = kl_mat.mean().item()
        del kl, kl_mat
        measured = {}
        for impl, fn in variants.items():
            if out_of_time():
                return
            t = timeit(fn, min_time=0.02 if smoke else 0.2, reps=3)
            peak = peak_bytes(fn)
            measured[impl] = (t, peak)
            row = {"positions": positions, "dense_rows": num_dense, "hidden": dim, "vocab": vocab,
                   "dtype": str(dtype).replace("torch.", ""), "impl": impl, "ms": t * 1e3,
                   "peak_MB": peak / 2**20 if peak is not None else None,
                   "logits_fp32_MB": 2 * positions * vocab * 4 / 2**20}
            if impl == "triton":
                row.update(max_kl_diff_vs_materialised=err, mean_kl=mean_kl)
            rec.add("kl_head", row)
        t_mat, p_mat = measured["materialised"]
        for impl in ("triton", "reference_chunked"):
            t, p = measured[impl]
            rec.add("kl_head_vs_materialised", {
                "vocab": vocab, "impl": impl, "time_ratio": t / t_mat,
                "peak_fraction": p / p_mat if (p is not None and p_mat) else None,
                "max_kl_diff_vs_materialised": err if impl == "triton" else None})
        del hidden, dense, weight, variants
        if CUDA:
            torch.cuda.empty_cache()


# ---- models -----------------------------------------------------------------------------------------
class _Tok:
    eos_token_id = 0


def build_model(kind: str, smoke: bool):
    """A random-initialised Llama-architecture BlockModel on the device (bf16 on a GPU)."""
    import transformers

    from blockprune import models

    models.quiet_transformers()
    if smoke:
        cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=6,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    elif kind == "smollm2-135m":  # SmolLM2-135M's config values
        cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                       rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    else:  # ~1.2B Llama (Llama-3.2-1B-like shapes)
        cfg = transformers.LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                       num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                                       max_position_embeddings=8192,
                                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    dtype = torch.bfloat16 if CUDA else torch.float32
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    bm = models.wrap(model, _Tok(), kind if not smoke else f"tiny-{kind}")
    params = sum(p.numel() for p in model.parameters())
    return bm, params


@torch.inference_mode()
def naive_candidate(bm, requests, removed, batch: int = 64) -> np.ndarray:
    """One plain forward per batch of equal-length requests with full logits: per-request log-prob."""
    from blockprune import models

    out = np.zeros(len(requests))
    with models.without_blocks(bm, removed):
        for s in range(0, len(requests), batch):
            part = requests[s : s + batch]
            ids = torch.tensor([r.tokens for r in part], device=DEVICE)
            start = part[0].score_from
            assert all(len(r.tokens) == ids.shape[1] and r.score_from == start for r in part)
            logits = bm.model(input_ids=ids, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, start - 1 : -1], -1)
            lp = logp.gather(-1, ids[:, start:, None])[..., 0].double().sum(-1)
            out[s : s + len(part)] = lp.cpu().numpy()
    return out


@torch.inference_mode()
def dense_then_select(bm, requests, keep: np.ndarray, micro_rows: int = 64) -> np.ndarray:
    """Every (candidate, sample) row through every block, the output kept only where the candidate
    keeps the block (torch.where); the scoring head at the scored positions as the engine does."""
    ids = torch.tensor([r.tokens for r in requests], device=DEVICE)
    num_samples, seq = ids.shape
    start = requests[0].score_from
    prelude = bm.prelude(ids)
    hidden = prelude.hidden.repeat(len(keep), 1, 1)  # row c*R + s
    keep_rows = torch.from_numpy(np.repeat(keep, num_samples, axis=0)).to(DEVICE)
    sample = torch.arange(hidden.shape[0], device=DEVICE) % num_samples
    for layer in range(bm.num_blocks):
        for s in range(0, hidden.shape[0], micro_rows):
            sl = slice(s, s + micro_rows)
            out = bm.run_block(layer, hidden[sl], prelude, sample[sl])
            hidden[sl] = torch.where(keep_rows[sl, layer, None, None], out, hidden[sl])
    lp = torch.zeros(hidden.shape[0], dtype=torch.float64, device=DEVICE)
    targets = ids[:, start:]
    for s in range(0, hidden.shape[0], micro_rows):
        h = bm.normed(hidden[s : s + micro_rows, start - 1 : -1])
        rows = h.shape[0]
        lse, tgt, _ = kernels.scoring_head(h.reshape(-1, h.shape[-1]), bm.head.weight,
                                           targets[sample[s : s + rows]].reshape(-1),
                                           bias=getattr(bm.head, "bias", None), softcap=bm.logit_softcap)
        lp[s : s + rows] = (tgt - lse).double().view(rows, -1).sum(-1)
    return lp.view(len(keep), num_samples).cpu().numpy()


def ppl_requests(num: int, seq: int, vocab: int, seed: int):
    from blockprune.request import Request

    rng = np.random.default_rng(seed)
    return [Request(tuple(int(t) for t in rng.integers(1, vocab, seq)), 1) for _ in range(num)]


def mc_requests(questions: int, choices: int, ctx_len: int, choice_len: int, vocab: int, seed: int):
    from blockprune.request import Request

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(questions):
        ctx = tuple(int(t) for t in rng.integers(1, vocab, ctx_len))
        for _ in range(choices):
            out.append(Request(ctx + tuple(int(t) for t in rng.integers(1, vocab, choice_len)), ctx_len))
    return out


def random_masks(num_blocks: int, kept: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = np.zeros((count, num_blocks), dtype=bool)
    for c in range(count):
        keep[c, rng.choice(num_blocks, kept, replace=False)] = True
    return keep


def make_engine(bm, fused):
    """An Engine for one-pass figures: states kept across calls (when this engine has that) are
    off, so warm-up calls and earlier sections cannot make later calls cheaper."""
    import inspect

    from blockprune.engine import Engine

    extra = {"reuse_bytes": 0} if "reuse_bytes" in inspect.signature(Engine).parameters else {}
    return Engine(bm, fused=fused, **extra)


def _naive_rate(bm, requests, keep, cap_s: float) -> tuple[float, int, np.ndarray]:
    """(seconds per candidate, candidates timed, their scores); stops after cap_s."""
    naive_candidate(bm, requests[:2], [])  # warm-up
    sync()
    t0 = time.perf_counter()
    scores = []
    for c in range(len(keep)):
        scores.append(naive_candidate(bm, requests, np.flatnonzero(~keep[c]).tolist()))
        sync()
        if time.perf_counter() - t0 > cap_s:
            break
    return (time.perf_counter() - t0) / len(scores), len(scores), np.array(scores)


# ---- 5: headline ------------------------------------------------------------------------------------
def bench_headline(rec: Recorder, smoke: bool, clock: Clock) -> None:
    bm, params = build_model("smollm2-135m", smoke)
    vocab, num_blocks = bm.head.weight.shape[0], bm.num_blocks
    samples, seq, cands = (4, 16, 4) if smoke else (16, 128, 32)
    requests = ppl_requests(samples, seq, vocab, seed=1)
    fused_mode = True if smoke else None  # on CUDA auto picks the fused runner; the smoke run forces it
    engines = {"engine": make_engine(bm, fused_mode), "engine_plain_blocks": make_engine(bm, False)}
    for name, eng in engines.items():  # warm-up: kernels compile, the packing self-check runs
        eng.score(requests[:2], np.ones((2, num_blocks), dtype=bool))
    removed_counts = sorted({max(1, round(num_blocks * f)) for f in (0.05, 0.1, 0.2, 0.35, 0.5)})
    for r in removed_counts:
        if clock.left() < 20:
            rec.note("headline", "stopped early: time budget")
            break
        keep = random_masks(num_blocks, num_blocks - r, cands, seed=r)
        base = {"model": bm.name, "params_M": params / 1e6, "blocks": num_blocks,
                "kept_fraction": (num_blocks - r) / num_blocks, "candidates": cands, "samples": samples, "tokens": seq}
        engine_lp = None
        for name, eng in engines.items():
            holder = {}
            t = wall(lambda: holder.setdefault("s", eng.score(requests, keep)))
            scores = holder["s"]
            if name == "engine":
                engine_lp = scores.logprob
            rec.add("headline", {**base, "method": name, "fused": eng.fused, "seconds": t,
                                 "rows_per_s": cands * samples / t, "block_ratio": scores.work.block_ratio})
        cap = 3 if smoke else min(20.0, max(2.0, clock.left() / 10))
        per, timed, naive_lp = _naive_rate(bm, requests, keep, cap)
        holder = {}
        diff = float(np.abs(naive_lp - engine_lp[:timed]).max() / max(1.0, np.abs(naive_lp).max()))
        rec.add("headline", {**base, "method": "naive_loop", "seconds": per * cands, "candidates_timed": timed,
                             "rows_per_s": samples / per, "max_rel_diff_vs_engine": diff})
        t = wall(lambda: holder.__setitem__("d", dense_then_select(bm, requests, keep)))
        diff = float(np.abs(holder["d"] - engine_lp).max() / max(1.0, np.abs(engine_lp).max()))
        rec.add("headline", {**base, "method": "dense_then_select", "seconds": t, "rows_per_s": cands * samples / t,
                             "max_rel_diff_vs_engine": diff})
    del bm, engines
    if CUDA:
        torch.cuda.empty_cache()


# ---- 6: beam step -----------------------------------------------------------------------------------
def beam_children(num_blocks: int, width: int, k: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    parents: set[tuple[int, ...]] = set()
    while len(parents) < width:
        parents.add(tuple(sorted(int(b) for b in rng.choice(num_blocks, k, replace=False))))
    return sorted({tuple(sorted(p + (b,))) for p in parents for b in range(num_blocks) if b not in p})


def bench_beam(rec: Recorder, smoke: bool, clock: Clock, kind: str) -> None:
    bm, params = build_model(kind, smoke)
    vocab, num_blocks = bm.head.weight.shape[0], bm.num_blocks
    width = 4 if smoke else 16
    children = beam_children(num_blocks, width, 2, seed=0)
    keep = np.ones((len(children), num_blocks), dtype=bool)
    for i, c in enumerate(children):
        keep[i, list(c)] = False
    if smoke:
        tasks = {"ppl": ppl_requests(4, 16, vocab, 2), "mc": mc_requests(2, 4, 8, 3, vocab, 3)}
    else:
        tasks = {"ppl": ppl_requests(8, 128, vocab, 2), "mc": mc_requests(8, 4, 64, 8, vocab, 3)}
    eng = make_engine(bm, True if smoke else None)
    eng.score(tasks["ppl"][:2], keep[:2])  # warm-up
    eng.score(tasks["mc"][:4], keep[:2])
    base = {"model": bm.name, "params_M": params / 1e6, "blocks": num_blocks, "beam_width": width,
            "children": len(children), "fused": eng.fused}
    total_engine = total_naive = 0.0
    for task, reqs in tasks.items():
        holder = {}
        t_engine = wall(lambda: holder.__setitem__("s", eng.score(reqs, keep)))
        left = clock.left()
        cap = 3 if smoke else max(3.0, min(60.0, left / 4))
        per, timed, naive_lp = _naive_rate(bm, reqs, keep, cap)
        t_naive = per * len(children)  # extrapolated from `timed` children when the cap cut it short
        lp = holder["s"].logprob[:timed]
        diff = float(np.abs(naive_lp - lp).max() / max(1.0, np.abs(naive_lp).max()))
        total_engine += t_engine
        total_naive += t_naive
        rec.add("beam", {**base, "task": task, "requests": len(reqs), "engine_s": t_engine, "naive_s": t_naive,
                         "naive_children_timed": timed, "speedup": t_naive / t_engine,
                         "block_ratio": holder["s"].work.block_ratio, "max_rel_diff": diff})
    speedup = total_naive / total_engine
    row = {**base, "task": "both", "engine_s": total_engine, "naive_s": total_naive, "speedup": speedup}
    if kind == "llama-1b" and not smoke:
        row.update(target=TARGETS["beam_speedup_1b"], meets_target=bool(speedup >= TARGETS["beam_speedup_1b"]))
    rec.add("beam", row)
    del bm, eng
    if CUDA:
        torch.cuda.empty_cache()


# ---- main -------------------------------------------------------------------------------------------
def summarize(out: Path) -> str:
    """The figures that the issue's targets are about, from a gpu_bench.json."""
    data = json.loads((out / "gpu_bench.json").read_text())
    meta, sec = data["meta"], data["sections"]
    smoke = "  (smoke: tiny shapes, figures mean nothing)" if meta.get("smoke") else ""
    lines = [f"{meta.get('device')}  torch {meta.get('torch')}  triton {meta.get('triton')}  "
             f"transformers {meta.get('transformers')}  {meta.get('timestamp')}{smoke}"]
    for row in sec.get("copy", []):
        lines.append(f"copy bandwidth: {row['GB/s']:.0f} GB/s")
    for row in sec.get("ops", []):
        if "error" in row:
            lines.append(f"{row['op']:<13} {row['shape']:<13} {row['impl']:<8} error: {row['error']}")
        else:
            lines.append(f"{row['op']:<13} {row['shape']:<13} {row['impl']:<8} {row['ms']:8.3f} ms "
                         f"{row['GB/s']:8.0f} GB/s = {row['copy_fraction']:.0%} of copy (target >= 80%)")
    for row in sec.get("head_vs_materialised", []):
        peak = f"{row['peak_fraction']:.3f}" if row["peak_fraction"] is not None else "n/a"
        lines.append(f"head vocab {row['vocab']:<6} {row['impl']:<17} time x{row['time_ratio']:.2f} of matmul+CE "
                     f"(target <= 1.2), peak memory {peak} of it (target <= 0.125)")
    for row in sec.get("kl_head_vs_materialised", []):
        peak = f"{row['peak_fraction']:.3f}" if row["peak_fraction"] is not None else "n/a"
        diff = row.get("max_kl_diff_vs_materialised")
        lines.append(f"kl head vocab {row['vocab']:<6} {row['impl']:<17} time x{row['time_ratio']:.2f} of "
                     f"materialised KL, peak memory {peak} of it"
                     + (f", max |KL diff| {diff:.2e}" if diff is not None else ""))
    for row in sec.get("headline", []):
        lines.append(f"headline kept {row['kept_fraction']:.2f} {row['method']:<20} {row['rows_per_s']:10.1f} rows/s")
    for row in sec.get("beam", []):
        lines.append(f"beam {row['model']:<14} {row['task']:<4} engine {row['engine_s']:.2f}s "
                     f"naive {row['naive_s']:.2f}s speedup x{row['speedup']:.1f}"
                     + (" (target >= 10)" if "target" in row else ""))
    for key, text in data.get("notes", {}).items():
        lines.append(f"note {key}: {text}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/gpu"))
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for all sections (default 330)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU works; Triton interpreted)")
    ap.add_argument("--only", default="copy,ops,head,kl_head,headline,beam-smollm2,beam-1b",
                    help="comma-separated sections to run")
    ap.add_argument("--summarize", metavar="DIR", help="print the figures of an earlier run's gpu_bench.json")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(Path(args.summarize)))
        return 0
    if not CUDA and not args.smoke:
        print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
        return 2
    if args.smoke and not CUDA:
        os.environ.setdefault("BLOCKPRUNE_KERNELS", "triton")  # exercise the (interpreted) kernels
    clock = Clock(args.budget)
    rec = Recorder(Path(args.out), {**environment(), "smoke": args.smoke, "budget_s": args.budget})
    print(f"device: {rec.data['meta']['device']}  torch {torch.__version__}  budget {args.budget:.0f}s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    wanted = set(args.only.split(","))
    copy_gbs = [None]

    sections = [  # (name, seconds it needs at least, runner)
        ("copy", 5, lambda: copy_gbs.__setitem__(0, bench_copy(rec, args.smoke))),
        ("ops", 20, lambda: bench_ops(rec, args.smoke, copy_gbs[0] or float("nan"), clock)),
        ("head", 20, lambda: bench_head(rec, args.smoke, clock)),
        ("kl_head", 20, lambda: bench_kl_head(rec, args.smoke, clock)),
        ("headline", 40, lambda: bench_headline(rec, args.smoke, clock)),
        ("beam-1b", 45, lambda: bench_beam(rec, args.smoke, clock, "llama-1b")),
        ("beam-smollm2", 30, lambda: bench_beam(rec, args.smoke, clock, "smollm2-135m")),
    ]
    failures = 0
    for name, need, run in sections:
        if name not in wanted:
            continue
        if clock.left() < need:
            rec.note(name, f"skipped: {clock.left():.0f}s of the budget left, needs about {need}s")
            continue
        t0 = time.monotonic()
        try:
            run()
            rec.data["notes"].setdefault(f"{name}_seconds", round(time.monotonic() - t0, 1))
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            failures += 1
            traceback.print_exc()
            rec.note(name, f"failed after {time.monotonic() - t0:.0f}s: {type(exc).__name__}: {exc}"[:500])
        finally:
            if CUDA:
                torch.cuda.empty_cache()
        rec.flush()
    rec.data["meta"]["finished"] = _now()
    rec.flush()
    print(f"wrote {Path(args.out) / 'gpu_bench.json'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
