"""The GPU figures, in the order a short slot on a card should produce them. Run by bench/gpu.sh.

    python bench/gpu_bench.py --out DIR [--budget SECONDS] [--quick] [--part card,kernels,decode] [--append]
    .venv/bin/python bench/gpu_bench.py --smoke --out /tmp/x           # tiny shapes on CPU

Parts (bench/gpu.sh runs `card`, then bench/gpu_seed.py, then `kernels,decode`, each appending to
the same gpu_bench.json):
1. card (section `engine`, `fp32_exact`): the card's question. One beam step (the children of a
   few 2-block parents) on a perplexity task and a multiple-choice task, scored by the batched
   engine (auto mode: fused block runner, Triton heads) and by the naive loop (one physically
   pruned forward per candidate, full logits), on a ~1B and an 8B Llama-shaped config with random
   weights in bf16 (timing needs no trained weights). Same scores, checked by thresholds that can
   fail: the largest difference of a candidate's mean log-prob divided by the spread between
   candidates (<= 0.1), and the rank correlation of the candidates (Spearman >= 0.95); a fused-runner
   or packing fallback fails the row unless GPU_BENCH_ALLOW_FALLBACK=1 says it is expected (on a GPU
   the fused runner is expected; on CPU only under BLOCKPRUNE_FUSED=1; packing always); then one
   fp32 case where both must agree to 1e-4 relative. `--quick` runs this part alone on the ~1B
   config (under 2 minutes).
2. kernels (`heads`, `rows`): bench/gpu_checks.py: the heads against float64 with a tolerance per
   dtype, partials and outputs NaN-poisoned, TFLOP/s beside cuBLAS; the row ops against their
   references and as a fraction of copy bandwidth, with a floor.
3. decode (`generate`): batched masked generation against generate() per candidate, tokens
   compared up to the first step within fp32's noise.

Every check row has `ok`; any ok=False (or a section that raised) makes the exit status 1.
Writes `gpu_bench.json` (card, versions, every figure) and `summary.md` into --out after every
row, so a run killed at any point returns what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
if not CUDA:  # CPU smoke run: Triton only through the interpreter, chosen before kernels import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_checks as checks  # noqa: E402
from blockprune import kernels  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
THRESHOLDS = {"diff_over_spread": 0.1, "spearman": 0.95, "fp32_rel": 1e-4, "row_copy_floor": checks.ROW_COPY_FLOOR,
              "row_copy_target": checks.ROW_COPY_TARGET, "tolerances": checks.TOLERANCES}
MODELS = {  # Llama-3.2-1B-like and Llama-3-8B-like shapes
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "tiny": dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
PARTS = ("card", "kernels", "decode")


# ---- bookkeeping ----------------------------------------------------------------------------------
class Recorder:
    """Rows per section; gpu_bench.json and summary.md rewritten (atomically) after every row."""

    def __init__(self, out: Path, meta: dict, append: bool = False):
        """`append`: keep the sections of an existing gpu_bench.json (the script's later parts)."""
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"meta": meta, "thresholds": THRESHOLDS, "notes": {}, "sections": {}}
        self.mine: list[tuple[str, dict]] = []  # rows this process added
        old = out / "gpu_bench.json"
        if append and old.exists():
            kept = json.loads(old.read_text())
            self.data.update(notes=kept.get("notes", {}), sections=kept.get("sections", {}))
            before = kept.get("meta", {})
            self.data["meta"] = {**before, **meta, "runs": before.get("runs", [before.get("argv")]) + [meta.get("argv")]}
        self.flush()

    def failed(self) -> list[str]:
        """This process's check rows with ok (or agrees) False, as 'section: row' lines."""
        return [f"{s}: {r}" for s, r in self.mine if r.get("ok") is False or r.get("agrees") is False]

    def add(self, section: str, row: dict) -> None:
        self.data["sections"].setdefault(section, []).append(row)
        self.mine.append((section, row))
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


sync, wall, free_memory = checks.sync, checks.wall, checks.free_memory


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


def fallbacks(info: dict) -> list[str]:
    """What the engine fell back from: the fused block runner where it is expected (on a GPU, or
    forced by BLOCKPRUNE_FUSED=1), and packing (expected everywhere for a Llama config)."""
    forced = os.environ.get("BLOCKPRUNE_FUSED", "").strip().lower() in ("1", "true", "on", "yes")
    out = []
    if (CUDA or forced) and not info.get("fused"):
        out.append(f"fused runner off: {info.get('fused_reason')}")
    if info.get("packing_limit") is None:
        out.append(f"packing off: {info.get('packing')}")
    return out


def make_engine(bm, **kwargs):
    """Engine(bm) (auto mode), with the planted fallback when GPU_BENCH_PLANT names it."""
    from unittest import mock

    from blockprune.engine import Engine
    from blockprune.models import fused

    if checks.planted("packing"):
        kwargs["pack"] = False
    if not checks.planted("fallback"):
        return Engine(bm, **kwargs)
    with mock.patch.object(fused, "verify", lambda bm, runner: "planted: the fused block runner disagrees"):
        return Engine(bm, **kwargs)


def bench_engine(rec: Recorder, kind: str, smoke: bool, deadline: float) -> None:
    dtype = torch.float32 if smoke else torch.bfloat16
    bm = build_model("tiny" if smoke else kind, dtype)
    keep = beam_step(bm.num_blocks, 2 if smoke else 4 if kind == "llama-1b" else 2)
    eng = make_engine(bm, reuse_bytes=0)  # one pass: nothing kept from warm-up calls
    tasks = requests_for(bm.head.weight.shape[0], smoke)
    for reqs in tasks.values():  # warm-up: kernels compile, the packing self-check runs
        eng.score(reqs[:4], keep[:2])
    info = eng.info()
    fell = fallbacks(info)
    expected = os.environ.get("GPU_BENCH_ALLOW_FALLBACK") == "1"
    base = {"model": f"tiny (smoke, for {kind})" if smoke else kind, "blocks": bm.num_blocks,
            "dtype": str(dtype).replace("torch.", ""), "candidates": len(keep),
            **{k: info[k] for k in ("fused", "fused_reason", "packing_limit")},
            "fallback": "; ".join(fell) or None, "fallback_expected": expected}
    total_engine = total_naive = 0.0
    for task, reqs in tasks.items():
        t_engine, scores = wall(lambda: eng.score(reqs, keep))
        naive_scores(bm, reqs[:2], [])  # warm-up
        cap = max(2.0, min(60.0, (deadline - time.monotonic()) / 8))
        naive, t0 = [], time.perf_counter()
        for c in range(len(keep)):  # timed until the cap, then extrapolated
            naive.append(naive_scores(bm, reqs, np.flatnonzero(~keep[c]).tolist()))
            sync()
            if time.perf_counter() - t0 > cap:
                break
        t_naive = (time.perf_counter() - t0) / len(naive) * len(keep)
        total_engine, total_naive = total_engine + t_engine, total_naive + t_naive
        agree = agreement(scores.logprob[: len(naive)], np.array(naive))
        rec.add("engine", {**base, "task": task, "requests": len(reqs), "engine_s": t_engine, "naive_s": t_naive,
                           "naive_candidates_timed": len(naive), "naive_extrapolated": len(naive) < len(keep),
                           "speedup": t_naive / t_engine, "block_token_ratio": scores.work.as_dict()["token_ratio"],
                           **agree, "ok": bool(agree["agrees"] and (not fell or expected))})
    rec.add("engine", {**base, "task": "both", "engine_s": total_engine, "naive_s": total_naive,
                       "speedup": total_naive / total_engine})
    bm = eng = None
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
                           "requests": len(reqs), "max_rel_diff": rel, "agrees": bool(rel <= THRESHOLDS["fp32_rel"]),
                           "ok": bool(rel <= THRESHOLDS["fp32_rel"])})
    del bm
    free_memory()


# ---- 4: batched masked generation against generate() per candidate --------------------------------
@torch.inference_mode()
def bench_generate(rec: "Recorder", smoke: bool, end: float) -> None:
    """One beam step's candidates decoded by Engine.generate (blockprune.engine.decode) against the naive
    loop: per candidate, its pruned copy (models.remove_blocks, not timed) and generate() per
    prompt, greedy; the ~1B config in fp32, 8 prompts of 64 tokens, 16 new tokens each. Tokens are
    compared one by one up to the first step whose top-2 logit margin is within fp32's noise
    (gpu_checks.compare_tokens: batch sizes may pick other kernels on a GPU); a run out of time
    reports the pairs it compared and extrapolates the naive time from them (said so in the row)."""
    from blockprune import models
    from blockprune.engine import Engine

    dtype = torch.float32
    bm = build_model("tiny" if smoke else "llama-1b", dtype)
    rng = np.random.default_rng(1)
    prompts = [list(int(t) for t in rng.integers(1, bm.head.weight.shape[0], 8 if smoke else 64))
               for _ in range(2 if smoke else 8)]
    new = 6 if smoke else 16
    keep = beam_step(bm.num_blocks, 1)[: (3 if smoke else 12)]
    engine = Engine(bm)
    engine.generate(prompts[:1], keep[:1], 2)  # warm-up
    t_engine, got = wall(lambda: engine.generate(prompts, keep, new))
    if checks.planted("generate"):
        got.tokens[0][0][0] = (got.tokens[0][0][0] + 1) % bm.head.weight.shape[0]
    t_naive, pairs, tally = 0.0, 0, {"compared": 0, "skipped": 0, "mismatches": 0}
    for c, mask in enumerate(keep):
        if pairs and time.monotonic() > end:
            break
        pm = models.remove_blocks(bm, [b for b in range(bm.num_blocks) if not mask[b]])
        for p, prompt in enumerate(prompts):
            dt_, (tokens, logits) = wall(lambda: checks.generate_with_logits(pm.model, prompt, new))
            t_naive += dt_
            pairs += 1
            for k, v in checks.compare_tokens(got.tokens[c][p], tokens, logits, dtype).items():
                tally[k] += v
        pm = None
        free_memory()
    rows = len(keep) * len(prompts)
    naive = t_naive / pairs * rows
    rec.add("generate", {"model": "tiny (smoke, for llama-1b)" if smoke else "llama-1b", "dtype": "float32",
                         "candidates": len(keep), "prompts": len(prompts), "new_tokens": new,
                         "engine_s": t_engine, "naive_s": naive, "naive_extrapolated": pairs < rows,
                         "speedup": naive / t_engine, "pairs_compared": f"{pairs}/{rows}",
                         "timed_out": pairs < rows, "tokens_compared": tally["compared"],
                         "tokens_skipped_low_margin": tally["skipped"], "mismatches": tally["mismatches"],
                         "margin_noise": "atol {:g} + rtol {:g} x |top logit|".format(*checks.TOLERANCES["margin_noise"]["float32"]),
                         "agrees": tally["mismatches"] == 0, "ok": tally["mismatches"] == 0 and tally["compared"] > 0,
                         "block_rows": got.block_rows, "block_rows_unshared": got.naive_block_rows})


# ---- summary and main -----------------------------------------------------------------------------
def _ok(r) -> str:
    return "" if "ok" not in r else ("ok" if r["ok"] else "**FAIL**")


def _seed_lines(rows: list[dict]) -> list[str]:
    lines = ["## 2. The seed's question: a seed-sized search end to end (bench/gpu_seed.py)", ""]
    for r in rows:
        if r.get("what") == "search":
            if len(lines) == 2:
                lines += [f"{r['model']}, {r['tasks']} tasks x {r['samples_per_task']} samples ({r['task_kinds']}), "
                          f"beam {r['beam_width']}, up to {r['max_remove']} blocks removed; goal {r['goal_s']:.0f} s", "",
                          "| racing | finished | steps | candidates | candidate-samples scored | wall s | "
                          "wall s to the end | meets goal | best set per k | ok |",
                          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            end = f"{r['end_to_end_s']:.1f}" + (" (extrapolated)" if r["extrapolated"] else "")
            lines.append(f"| {'on' if r['racing'] else 'off'} | {r['completed']} | {r['steps_done']} | {r['candidates']} "
                         f"| {r['candidate_samples']} | {r['wall_s']:.1f} | {end} | {r['meets_goal']} "
                         f"| {r.get('best_per_k')} | {_ok(r)} |")
        elif r.get("what") == "naive":
            lines += ["", f"- naive method ({r['method']}): timed on {r['pairs_timed']} (candidate, sample) pairs in "
                      f"{r['seconds_timed']:.1f} s, **extrapolated** to {r['pairs_all']} pairs: "
                      f"{r['extrapolated_s']:.0f} s = {r['ratio_vs_racing_search']:.1f}x the racing search; "
                      f"agreement with the search's stored results: {r['agreement']} {_ok(r)}"]
    return lines + [""]


def summarize(data: dict) -> str:
    meta, sec = data["meta"], data["sections"]
    lines = [f"# GPU figures: {meta.get('device')}", "",
             f"torch {meta.get('torch')}, CUDA {meta.get('cuda')}, triton {meta.get('triton')}, "
             f"transformers {meta.get('transformers')}; {meta.get('timestamp')}"
             + (" (smoke: tiny shapes, figures mean nothing)" if meta.get("smoke") else ""), ""]
    if sec.get("engine"):
        lines += ["## 1. Batched engine vs one pruned forward per candidate (beam step)", "",
                  "| model | task | candidates | engine s | naive s | speedup | diff / spread | Spearman | fallback | ok |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sec["engine"]:
            naive = f"{r['naive_s']:.2f}" + (" (extrapolated)" if r.get("naive_extrapolated") else "")
            lines.append(f"| {r['model']} | {r['task']} | {r['candidates']} | {r['engine_s']:.2f} | {naive} "
                         f"| {r['speedup']:.1f}x | {_fmt(r.get('diff_over_spread', ''))} | {_fmt(r.get('spearman', ''))} "
                         f"| {r.get('fallback') or 'none'} | {_ok(r)} |")
        lines.append("")
    for r in sec.get("fp32_exact", []):
        lines += [f"fp32 exactness ({r['model']}, {r['candidates']} candidates): max relative difference "
                  f"{r['max_rel_diff']:.2e} (threshold {THRESHOLDS['fp32_rel']:g}): {_ok(r)}", ""]
    if sec.get("seed"):
        lines += _seed_lines(sec["seed"])
    if sec.get("heads"):
        lines += ["## 3. Heads at real sizes vs float64 (partials and outputs poisoned with NaN), TFLOP/s vs cuBLAS", "",
                  "| op | positions x hidden x vocab | dtype | ms | TFLOP/s | x cuBLAS | max err lse / tgt / kl | "
                  "tolerance | NaN partials / outputs | ok |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sec["heads"]:
            errs = " / ".join(_fmt(r[k]) for k in ("max_abs_err_lse", "max_abs_err_tgt", "max_abs_err_kl") if k in r)
            nans = f"{r['nan_partials']} / {r['nan_outputs']}" if "nan_partials" in r else ""
            lines.append(f"| {r['op']} | {r['positions']} x {r['hidden']} x {r['vocab']} | {r['dtype']} | {r['ms']:.2f} "
                         f"| {r['tflops']:.1f} | {_fmt(r.get('vs_cublas', 1.0))} | {errs} | {r.get('tolerance', '')} "
                         f"| {nans} | {_ok(r)} |")
        lines.append("")
    if sec.get("rows"):
        lines += ["## 4. Row ops vs their references and copy bandwidth", ""]
        for r in sec["rows"]:
            if r["op"] == "copy":
                lines.append(f"- device-to-device copy: {r['GB/s']:.0f} GB/s")
            else:
                floor = "enforced" if r["floor_enforced"] else "not enforced: CPU smoke"
                lines.append(f"- {r['op']} {r['active']} of {r['rows']} rows x {r['tokens']} tokens x {r['hidden']}: "
                             f"{r['GB/s']:.0f} GB/s = {r['copy_fraction']:.0%} of copy (floor {r['floor']:.0%}, {floor}; "
                             f"target {r['target']:.0%}); max err {_fmt(r['max_abs_err'])} ({r['tolerance']}), "
                             f"NaN {r['nan_outputs']}: {_ok(r)}")
        lines.append("")
    if sec.get("generate"):
        lines += ["## 5. Batched masked generation vs generate() per candidate (beam step, fp32)", "",
                  "| model | candidates x prompts | new tokens | engine s | naive s | speedup | pairs compared | "
                  "tokens compared / skipped (low margin) | mismatches | ok |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sec["generate"]:
            naive = f"{r['naive_s']:.2f}" + (" (extrapolated)" if r.get("naive_extrapolated") else "")
            lines.append(f"| {r['model']} | {r['candidates']} x {r['prompts']} | {r['new_tokens']} | {r['engine_s']:.2f} "
                         f"| {naive} | {r['speedup']:.1f}x | {r['pairs_compared']} | {r['tokens_compared']} / "
                         f"{r['tokens_skipped_low_margin']} | {r['mismatches']} | {_ok(r)} |")
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
    ap.add_argument("--part", default=",".join(PARTS), help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    ap.add_argument("--append", action="store_true", help="keep the sections of an existing gpu_bench.json")
    args = ap.parse_args()
    parts = [p for p in args.part.split(",") if p]
    if not set(parts) <= set(PARTS):
        ap.error(f"--part: unknown {sorted(set(parts) - set(PARTS))}")
    if not CUDA and not args.smoke:
        print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
        return 2
    checks.planted("")  # an unknown GPU_BENCH_PLANT is refused before anything runs
    if args.smoke and not CUDA:  # exercise the (interpreted) kernels and the fused block runner, as on a card
        os.environ.setdefault("BLOCKPRUNE_KERNELS", "triton")
        os.environ.setdefault("BLOCKPRUNE_FUSED", "1")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (bf16 runs on tensor cores anyway)
    end = time.monotonic() + args.budget
    rec = Recorder(Path(args.out), {**environment(), "smoke": args.smoke, "quick": args.quick, "budget_s": args.budget},
                   append=args.append)
    sections = []
    if "card" in parts:
        # needs: seconds a section takes on a card, cold Triton compiles in the first (an estimate: no card yet)
        sections += [("engine llama-1b", 40, lambda: bench_engine(rec, "llama-1b", args.smoke, end)),
                     ("fp32 exactness", 15, lambda: bench_fp32_exact(rec, args.smoke))]
        if not args.quick:
            sections += [("engine llama-8b", 45, lambda: bench_engine(rec, "llama-8b", args.smoke, end))]
    if "kernels" in parts and not args.quick:
        sections += [("heads", 30, lambda: checks.bench_heads(rec, args.smoke, end - 40)),
                     ("rows", 10, lambda: checks.bench_rows(rec, args.smoke))]
    if "decode" in parts and not args.quick:
        sections += [("generate", 30, lambda: bench_generate(rec, args.smoke, end - 10))]
    failures = 0
    for name, need, run in sections:
        need = 5 if args.smoke else need  # the card's estimates; smoke sections take seconds
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
    failed = rec.failed()
    for line in failed:
        print(f"FAILED CHECK {line}", flush=True)
    print(f"wrote {Path(args.out) / 'gpu_bench.json'}; {len(failed)} failing check rows, {failures} failed sections",
          flush=True)
    return 1 if failures or failed else 0


if __name__ == "__main__":
    sys.exit(main())
