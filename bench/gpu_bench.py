"""The GPU figures, in the order a short slot on a card should produce them. Run by bench/gpu.sh.

    python bench/gpu_bench.py --out DIR [--budget SECONDS] [--quick]   # a CUDA machine
    .venv/bin/python bench/gpu_bench.py --smoke --out /tmp/x           # tiny shapes on CPU

1. engine: the card's question. One beam step (the children of a few 2-block parents) on a
   perplexity task and a multiple-choice task, scored by the batched engine (auto mode: fused
   block runner, Triton heads) and by the naive loop (one physically pruned forward per candidate,
   full logits), on a ~1B and an 8B Llama-shaped config with random weights in bf16 (timing needs
   no trained weights). Same scores, checked by thresholds that can fail: the largest difference of
   a candidate's mean log-prob divided by the spread between candidates (<= 0.1), and the rank
   correlation of the candidates (Spearman >= 0.95); then one fp32 case where both must agree to
   1e-4 relative. `--quick` runs this section alone on the ~1B config (under 2 minutes).
2. heads: the scoring head and the KL head (softcapped, the engine's only use of its Triton
   kernel; and the dense-expectation path used without a softcap) at real sizes against float64,
   outputs poisoned with NaN first (the allocator's free blocks are filled with NaN, so a position
   a kernel never writes shows up), with time and TFLOP/s beside a cuBLAS matmul of the same shape.
3. rows: gather+norm and residual-add as a fraction of the card's copy bandwidth.

Writes `gpu_bench.json` (card, versions, every figure) and `summary.md` into --out after every
row, so a run killed at any point returns what it measured.
"""

from __future__ import annotations

import argparse
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
THRESHOLDS = {"diff_over_spread": 0.1, "spearman": 0.95, "fp32_rel": 1e-4, "row_copy_fraction": 0.8}
MODELS = {  # Llama-3.2-1B-like and Llama-3-8B-like shapes
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "tiny": dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}


# ---- bookkeeping ----------------------------------------------------------------------------------
class Recorder:
    """Rows per section; gpu_bench.json and summary.md rewritten (atomically) after every row."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"meta": meta, "thresholds": THRESHOLDS, "notes": {}, "sections": {}}
        self.flush()

    def add(self, section: str, row: dict) -> None:
        self.data["sections"].setdefault(section, []).append(row)
        print(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        self.flush()

    def note(self, section: str, text: str) -> None:
        self.data["notes"][section] = text
        print(f"[{section}] {text}", flush=True)
        self.flush()

    def flush(self) -> None:
        self.data["meta"]["written"] = _now()
        for name, text in (("gpu_bench.json", json.dumps(self.data, indent=2, default=str)),
                           ("summary.md", summarize(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


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
    for name in ("triton", "transformers", "numpy", "scipy"):
        try:
            meta[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - record what is missing, do not stop
            meta[name] = f"unavailable: {type(exc).__name__}"
    meta["kernels_backend"] = kernels.backend()
    return meta


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timeit(fn, min_time: float = 0.05, reps: int = 3) -> float:
    """Median seconds per call after a warm-up call (CUDA events on a GPU)."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    inner = max(1, min(100, int(min_time / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def wall(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def free_memory():
    if CUDA:
        torch.cuda.empty_cache()


# ---- 1: the engine against the naive loop ---------------------------------------------------------
class _Tok:
    eos_token_id = 0


def build_model(kind: str, dtype: torch.dtype, layers: int | None = None):
    """A random-initialised Llama BlockModel on the device. initializer_range 0.05 (not 0.02) so
    that removing a block moves the scores by more than bf16 rounding: candidates must differ."""
    import transformers

    from blockprune import models

    models.quiet_transformers()
    shape = dict(MODELS[kind], **({"num_hidden_layers": layers} if layers else {}))
    cfg = transformers.LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, initializer_range=0.05, **shape)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return models.wrap(model.eval(), _Tok(), kind)


def requests_for(vocab: int, smoke: bool) -> dict:
    from blockprune.tasks.request import Request

    rng = np.random.default_rng(0)
    seq, num, questions, ctx = (16, 4, 2, 8) if smoke else (128, 8, 8, 64)
    ppl = [Request(tuple(int(t) for t in rng.integers(1, vocab, seq)), 1) for _ in range(num)]
    mc = []
    for _ in range(questions):
        c = tuple(int(t) for t in rng.integers(1, vocab, ctx))
        mc += [Request(c + tuple(int(t) for t in rng.integers(1, vocab, 8 if not smoke else 3)), ctx) for _ in range(4)]
    return {"ppl": ppl, "mc": mc}


def beam_step(num_blocks: int, width: int) -> np.ndarray:
    """Keep-masks of the children (one more block removed) of `width` random 2-block parents."""
    rng = np.random.default_rng(0)
    parents: set[tuple[int, ...]] = set()
    while len(parents) < width:
        parents.add(tuple(sorted(int(b) for b in rng.choice(num_blocks, 2, replace=False))))
    children = sorted({tuple(sorted(p + (b,))) for p in parents for b in range(num_blocks) if b not in p})
    keep = np.ones((len(children), num_blocks), dtype=bool)
    for i, c in enumerate(children):
        keep[i, list(c)] = False
    return keep


def naive_scores(bm, requests, removed) -> np.ndarray:
    """The naive loop of `make bench` (bench_engine.naive_scores), 64 requests per forward."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_engine import naive_scores as loop

    return loop(bm, requests, removed, batch=64)[0]


def agreement(engine_lp: np.ndarray, naive_lp: np.ndarray) -> dict:
    """Engine vs naive on the candidates both scored: candidate means, their spread and ranks."""
    from scipy.stats import spearmanr

    a, b = engine_lp.mean(axis=1), naive_lp.mean(axis=1)
    spread = float(b.std())
    ratio = float(np.abs(a - b).max() / spread) if spread > 0 else float("inf")
    rho = float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")
    return {"max_mean_diff": float(np.abs(a - b).max()), "spread_between_candidates": spread,
            "diff_over_spread": ratio, "spearman": rho,
            "agrees": bool(ratio <= THRESHOLDS["diff_over_spread"] and rho >= THRESHOLDS["spearman"])}


def bench_engine(rec: Recorder, kind: str, smoke: bool, deadline: float) -> None:
    from blockprune.engine import Engine

    dtype = torch.float32 if smoke else torch.bfloat16
    bm = build_model("tiny" if smoke else kind, dtype)
    keep = beam_step(bm.num_blocks, 2 if smoke else 4 if kind == "llama-1b" else 2)
    eng = Engine(bm, reuse_bytes=0)  # one pass: nothing kept from warm-up calls
    tasks = requests_for(bm.head.weight.shape[0], smoke)
    for reqs in tasks.values():  # warm-up: kernels compile, the packing self-check runs
        eng.score(reqs[:4], keep[:2])
    base = {"model": f"tiny (smoke, for {kind})" if smoke else kind, "blocks": bm.num_blocks, "dtype": str(dtype).replace("torch.", ""),
            "candidates": len(keep), **{k: v for k, v in eng.info().items() if k in ("fused", "packing_limit")}}
    total_engine = total_naive = 0.0
    for task, reqs in tasks.items():
        t_engine, scores = wall(lambda: eng.score(reqs, keep))
        naive_scores(bm, reqs[:2], [])  # warm-up
        cap = max(2.0, min(60.0, (deadline - time.monotonic()) / 6))
        naive, t0 = [], time.perf_counter()
        for c in range(len(keep)):  # timed until the cap, then extrapolated
            naive.append(naive_scores(bm, reqs, np.flatnonzero(~keep[c]).tolist()))
            sync()
            if time.perf_counter() - t0 > cap:
                break
        t_naive = (time.perf_counter() - t0) / len(naive) * len(keep)
        total_engine, total_naive = total_engine + t_engine, total_naive + t_naive
        rec.add("engine", {**base, "task": task, "requests": len(reqs), "engine_s": t_engine, "naive_s": t_naive,
                           "naive_candidates_timed": len(naive), "speedup": t_naive / t_engine,
                           "block_token_ratio": scores.work.as_dict()["token_ratio"],
                           **agreement(scores.logprob[: len(naive)], np.array(naive))})
    rec.add("engine", {**base, "task": "both", "engine_s": total_engine, "naive_s": total_naive,
                       "speedup": total_naive / total_engine})
    del bm, eng
    free_memory()


def bench_fp32_exact(rec: Recorder, smoke: bool) -> None:
    """fp32 (TF32 off): the engine and the naive loop must agree to 1e-4 relative, per sample."""
    from blockprune.engine import Engine

    bm = build_model("tiny" if smoke else "llama-1b", torch.float32, layers=None if smoke else 8)
    keep = beam_step(bm.num_blocks, 1)[:6]
    reqs = requests_for(bm.head.weight.shape[0], smoke)["mc"]
    lp = Engine(bm, reuse_bytes=0).score(reqs, keep).logprob
    naive = np.array([naive_scores(bm, reqs, np.flatnonzero(~m).tolist()) for m in keep])
    rel = float(np.abs(lp - naive).max() / np.abs(naive).max())
    rec.add("fp32_exact", {"model": "tiny" if smoke else "llama-1b (8 blocks)", "candidates": len(keep),
                           "requests": len(reqs), "max_rel_diff": rel, "agrees": bool(rel <= THRESHOLDS["fp32_rel"])})
    del bm
    free_memory()


# ---- 2: the heads against float64 -----------------------------------------------------------------
def poison():
    """Fill the caching allocator's free memory with NaN, so outputs that a kernel fails to write
    stay NaN (a real GPU's fresh torch.empty is whatever was there before)."""
    if CUDA:
        free, _ = torch.cuda.mem_get_info()
        block = torch.empty(int(free * 0.5) // 4, dtype=torch.float32, device=DEVICE)
        block.fill_(float("nan"))
        del block


def float64_head(hidden, weight, targets, softcap=None, dense=None):
    """lse, target logit (and KL to `dense`) in float64, 512 positions at a time."""
    out = {"lse": [], "tgt": [], "kl": []}
    w = weight.double()
    for s in range(0, hidden.shape[0], 512):
        logits = hidden[s : s + 512].double() @ w.T
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        out["lse"].append(torch.logsumexp(logits, -1))
        out["tgt"].append(logits.gather(1, targets[s : s + 512, None])[:, 0])
        if dense is not None:
            a = dense[s : s + 512].double() @ w.T
            if softcap is not None:
                a = torch.tanh(a / softcap) * softcap
            la, lb = torch.log_softmax(a, -1), torch.log_softmax(logits, -1)
            out["kl"].append((la.exp() * (la - lb)).sum(-1))
        del logits
    return {k: torch.cat(v) for k, v in out.items() if v}


def bench_heads(rec: Recorder, smoke: bool, deadline: float) -> None:
    from blockprune.kernels.kl_head_triton import kl_head_triton
    from blockprune.kernels.scoring_head_triton import scoring_head_triton

    shapes = [(16, 24, 97)] if smoke else [(4096, 2048, 128256), (4096, 4096, 128256), (4096, 2560, 262144)]
    dtype = torch.float32 if smoke else torch.bfloat16
    for positions, dim, vocab in shapes:
        if time.monotonic() > deadline:
            rec.note("heads", "stopped early: time budget")
            return
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(positions, dim, generator=g).to(DEVICE, dtype)
        dense = (hidden.float().cpu() + 0.5 * torch.randn(positions, dim, generator=g)).to(DEVICE, dtype)
        weight = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(DEVICE, dtype)
        targets = torch.randint(0, vocab, (positions,), generator=g).to(DEVICE)
        softcap = 30.0
        want = float64_head(hidden, weight, targets)
        want_cap = float64_head(hidden, weight, targets, softcap, dense)
        want_kl = float64_head(hidden, weight, targets, None, dense)["kl"]
        flops = 2 * positions * vocab * dim
        runs = {
            "scoring_head": (lambda: scoring_head_triton(hidden, weight, targets), want, 1),
            "kl_head_softcap": (lambda: kl_head_triton(hidden, dense, weight, targets, softcap=softcap), want_cap, 2),
            "kl_dense_expectation": (lambda: _kl_by_expectation(hidden, dense, weight, targets), {"kl": want_kl}, 2),
            "cublas_matmul": (lambda: hidden @ weight.T, None, 1),
        }
        for name, (fn, ref, passes) in runs.items():
            poison()
            got = fn()
            row = {"op": name, "positions": positions, "hidden": dim, "vocab": vocab,
                   "dtype": str(dtype).replace("torch.", "")}
            if ref is not None:
                outs = dict(zip(("kl", "lse", "tgt", "max") if name.startswith("kl_head") else
                                ("lse", "tgt", "max") if name == "scoring_head" else ("kl",), got))
                row["nan_outputs"] = int(sum(torch.isnan(v.float()).sum().item() for v in outs.values()))
                for key in ("lse", "tgt", "kl"):
                    if key in outs and key in ref:
                        row[f"max_abs_err_{key}"] = float((outs[key].double() - ref[key]).abs().max())
            t = timeit(fn, min_time=0.02 if smoke else 0.2)
            row.update(ms=t * 1e3, tflops=passes * flops / t / 1e12)
            rec.add("heads", row)
        del hidden, dense, weight
        free_memory()


def _kl_by_expectation(hidden, dense, weight, targets):
    """The engine's KL without a softcap: the dense side once, then the scoring head per candidate."""
    dense_lse, mean = kernels.dense_expectation(dense, weight)
    lse, _, _ = kernels.scoring_head(hidden, weight, targets)
    return (kernels.kl_from_expectation(hidden, dense, lse, dense_lse, mean),)


# ---- 3: the row ops against copy bandwidth --------------------------------------------------------
def bench_rows(rec: Recorder, smoke: bool) -> None:
    numel = 2**20 if smoke else 2**29
    src = torch.randn(numel, device=DEVICE).to(torch.bfloat16)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() * src.element_size() / timeit(lambda: dst.copy_(src)) / 1e9
    rec.add("rows", {"op": "copy", "GB/s": copy_gbs})
    del src, dst
    shapes = [(6, 8, 40, 4)] if smoke else [(128, 512, 2048, 96), (64, 512, 4096, 48), (256, 512, 576, 192)]
    for rows, seq, dim, active in shapes:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(rows, seq, dim, generator=g).to(DEVICE, torch.bfloat16)
        idx = torch.randperm(rows, generator=g)[:active].sort().values.to(DEVICE)
        weight = torch.randn(dim, generator=g).to(DEVICE, torch.bfloat16)
        out = torch.randn(active, seq, dim, generator=g).to(DEVICE, torch.bfloat16)
        moved = active * seq * dim * 2
        for op, fn, traffic in (("gather_norm", lambda: kernels.gather_norm(hidden, idx, weight, None, 1e-5), 2),
                                ("residual_add", lambda: kernels.residual_add(hidden, idx, out), 3)):
            gbs = traffic * moved / timeit(fn) / 1e9
            rec.add("rows", {"op": op, "rows": rows, "tokens": seq, "hidden": dim, "active": active, "GB/s": gbs,
                             "copy_fraction": gbs / copy_gbs})
        del hidden, out
        free_memory()


# ---- 4: batched masked generation against generate() per candidate --------------------------------
@torch.inference_mode()
def bench_generate(rec: "Recorder", smoke: bool, end: float) -> None:
    """One beam step's candidates decoded by Engine.generate (blockprune.engine.decode) against the naive
    loop: per candidate, its pruned copy (models.remove_blocks, not timed) and generate() per
    prompt, greedy. fp32, so the tokens must be equal; the ~1B config, 8 prompts of 64 tokens, 16
    new tokens each (EOS never stops a random model early)."""
    from blockprune import models
    from blockprune.engine import Engine

    bm = build_model("llama-1b", torch.float32, layers=4 if smoke else None)
    rng = np.random.default_rng(1)
    prompts = [list(int(t) for t in rng.integers(1, bm.head.weight.shape[0], 8 if smoke else 64))
               for _ in range(2 if smoke else 8)]
    new = 3 if smoke else 16
    keep = beam_step(bm.num_blocks, 1)[: (3 if smoke else 12)]
    engine = Engine(bm)
    engine.generate(prompts[:1], keep[:1], 2)  # warm-up
    t_engine, got = wall(lambda: engine.generate(prompts, keep, new))
    t_naive, same = 0.0, 0
    for c, mask in enumerate(keep):
        if time.monotonic() > end:
            break
        pm = models.remove_blocks(bm, [b for b in range(bm.num_blocks) if not mask[b]])
        for p, prompt in enumerate(prompts):
            ids = torch.tensor([prompt], device=DEVICE)
            dt_, out = wall(lambda: pm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                      max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                                      eos_token_id=None, pad_token_id=0))
            t_naive += dt_
            same += out[0, len(prompt):].tolist() == got.tokens[c][p]
        del pm
        free_memory()
    rows = len(keep) * len(prompts)
    rec.add("generate", {"model": "llama-1b", "candidates": len(keep), "prompts": len(prompts), "new_tokens": new,
                         "engine_s": t_engine, "naive_s": t_naive, "speedup": t_naive / t_engine,
                         "same_tokens": f"{same}/{rows}", "agrees": same == rows,
                         "block_rows": got.block_rows, "block_rows_unshared": got.naive_block_rows})


# ---- summary and main -----------------------------------------------------------------------------
def summarize(data: dict) -> str:
    meta, sec = data["meta"], data["sections"]
    lines = [f"# GPU figures: {meta.get('device')}", "",
             f"torch {meta.get('torch')}, CUDA {meta.get('cuda')}, triton {meta.get('triton')}, "
             f"transformers {meta.get('transformers')}; {meta.get('timestamp')}"
             + (" (smoke: tiny shapes, figures mean nothing)" if meta.get("smoke") else ""), ""]
    if sec.get("engine"):
        lines += ["## 1. Batched engine vs one pruned forward per candidate (beam step)", "",
                  "| model | task | candidates | engine s | naive s | speedup | diff / spread | Spearman | agrees |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sec["engine"]:
            lines.append(f"| {r['model']} | {r['task']} | {r['candidates']} | {r['engine_s']:.2f} | {r['naive_s']:.2f} "
                         f"| {r['speedup']:.1f}x | {_fmt(r.get('diff_over_spread', ''))} | {_fmt(r.get('spearman', ''))} "
                         f"| {r.get('agrees', '')} |")
        lines.append("")
    for r in sec.get("fp32_exact", []):
        lines += [f"fp32 exactness ({r['model']}, {r['candidates']} candidates): max relative difference "
                  f"{r['max_rel_diff']:.2e} (threshold {THRESHOLDS['fp32_rel']:g}): "
                  f"{'agrees' if r['agrees'] else 'DISAGREES'}", ""]
    if sec.get("heads"):
        lines += ["## 2. Heads at real sizes vs float64 (outputs poisoned with NaN first)", "",
                  "| op | positions x hidden x vocab | ms | TFLOP/s | NaN outputs | max err lse / tgt / kl |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in sec["heads"]:
            errs = " / ".join(_fmt(r[k]) for k in ("max_abs_err_lse", "max_abs_err_tgt", "max_abs_err_kl") if k in r)
            lines.append(f"| {r['op']} | {r['positions']} x {r['hidden']} x {r['vocab']} | {r['ms']:.2f} "
                         f"| {r['tflops']:.1f} | {r.get('nan_outputs', '')} | {errs} |")
        lines.append("")
    if sec.get("rows"):
        lines += ["## 3. Row ops vs copy bandwidth", ""]
        for r in sec["rows"]:
            if r["op"] == "copy":
                lines.append(f"- device-to-device copy: {r['GB/s']:.0f} GB/s")
            else:
                lines.append(f"- {r['op']} {r['active']} of {r['rows']} rows x {r['tokens']} tokens x {r['hidden']}: "
                             f"{r['GB/s']:.0f} GB/s = {r['copy_fraction']:.0%} of copy "
                             f"(target {THRESHOLDS['row_copy_fraction']:.0%})")
        lines.append("")
    if sec.get("generate"):
        lines += ["## 4. Batched masked generation vs generate() per candidate (beam step, fp32)", "",
                  "| model | candidates x prompts | new tokens | engine s | naive s | speedup | same tokens | block rows (unshared) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sec["generate"]:
            lines.append(f"| {r['model']} | {r['candidates']} x {r['prompts']} | {r['new_tokens']} | {r['engine_s']:.2f} "
                         f"| {r['naive_s']:.2f} | {r['speedup']:.1f}x | {r['same_tokens']} | {r['block_rows']} "
                         f"({r['block_rows_unshared']}) |")
        lines.append("")
    for key, text in data.get("notes", {}).items():
        lines.append(f"- note {key}: {text}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/gpu"))
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for all sections (default 330)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU works; Triton interpreted)")
    ap.add_argument("--quick", action="store_true", help="section 1 on the ~1B config only (under 2 minutes)")
    args = ap.parse_args()
    if not CUDA and not args.smoke:
        print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
        return 2
    if args.smoke and not CUDA:
        os.environ.setdefault("BLOCKPRUNE_KERNELS", "triton")  # exercise the (interpreted) kernels
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (bf16 runs on tensor cores anyway)
    end = time.monotonic() + args.budget
    rec = Recorder(Path(args.out), {**environment(), "smoke": args.smoke, "quick": args.quick, "budget_s": args.budget})
    sections = [("engine llama-1b", 60, lambda: bench_engine(rec, "llama-1b", args.smoke, end)),
                ("fp32 exactness", 20, lambda: bench_fp32_exact(rec, args.smoke))]
    if not args.quick:
        sections += [("engine llama-8b", 90, lambda: bench_engine(rec, "llama-8b", args.smoke, end)),
                     ("heads", 40, lambda: bench_heads(rec, args.smoke, end - 20)),
                     ("rows", 15, lambda: bench_rows(rec, args.smoke)),
                     ("generate", 45, lambda: bench_generate(rec, args.smoke, end - 10))]
    failures = 0
    for name, need, run in sections:
        if end - time.monotonic() < need:
            rec.note(name, f"skipped: {end - time.monotonic():.0f}s of the budget left, needs about {need}s")
            continue
        t0 = time.monotonic()
        try:
            run()
            rec.data["notes"][f"{name} seconds"] = round(time.monotonic() - t0, 1)
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            failures += 1
            traceback.print_exc()
            rec.note(name, f"failed after {time.monotonic() - t0:.0f}s: {type(exc).__name__}: {exc}"[:500])
        free_memory()
    rec.data["meta"]["finished"] = _now()
    rec.flush()
    disagree = [r for s in ("engine", "fp32_exact", "generate") for r in rec.data["sections"].get(s, []) if r.get("agrees") is False]
    print(f"wrote {Path(args.out) / 'gpu_bench.json'}; {len(disagree)} disagreeing rows", flush=True)
    return 1 if failures or disagree else 0


if __name__ == "__main__":
    sys.exit(main())
