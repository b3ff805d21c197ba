"""The checks of bench/gpu_bench.py that can fail, and the bugs planted to prove it (#33).

Every check row carries `ok`; a row with ok=False makes gpu_bench.py (and bench/gpu.sh) exit
non-zero. Tolerances are stated per dtype in TOLERANCES and copied into gpu_bench.json:

* heads: the scoring head, the KL head (softcapped) and the KL by dense expectation at real sizes
  against float64 computed from the same (already rounded) inputs: |got - want| <= atol + rtol |want|
  on lse, the target logit and the KL. The buffers the kernel wrappers allocate (the split
  partials, [3|6, splits, P] fp32: 442 KB / 884 KB at 4096 positions, from the caching allocator's
  small pool) are filled with NaN explicitly (`nan_buffers`: every floating torch.empty /
  torch.empty_like called from a kernel module), and the allocator's large and small pools are
  filled with NaN first (`poison_allocator`), so a position or a slice a kernel never writes is NaN
  in the partials or the outputs; both are counted and must be 0.
* rows: gather+norm and residual-add (the Triton kernels, called directly) against their torch
  references within 1 bf16 ulp (2 in the interpreter, which rounds by truncation), outputs
  NaN-poisoned the same way; and as a fraction of the card's copy bandwidth,
  which must reach ROW_COPY_FLOOR on a GPU (ROW_COPY_TARGET is the goal, reported). On CPU (smoke,
  interpreted) the fraction is reported and the floor is not enforced (the row says so).
* generation: tokens compared one by one only up to the first step whose top-2 logit margin (the
  naive generate()'s full logits) is below the dtype's noise, atol + rtol |top logit|; the compared
  and the skipped tokens are counted.

Planted bugs (GPU_BENCH_PLANT=name[,name]: used by bench/test_gpu_script.py to prove a check fails
end to end; never set otherwise): head (the scoring head skips its last position tile), kl (the
KL head skips its last position tile), head_value (one lse perturbed by 10x its tolerance), rows
(gather+norm skips its last program), rows_value (one residual-add element perturbed), fallback
(the fused runner's check reports a mismatch: the plain path runs), packing (the engine built
without packing), generate (one batched token
changed), seed (one naive multiple-choice log-prob of the seed search's sample perturbed).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from unittest import mock

import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TOLERANCES = {  # dtype -> (atol, rtol)
    "heads": {"float32": (1e-4, 1e-5), "bfloat16": (2e-3, 2e-4)},  # vs float64 of the same inputs
    "rows": {"float32": (1e-5, 1e-5), "bfloat16": (1e-3, 2**-7)},  # vs the torch reference: 1 bf16 ulp
    "rows_interpreted": {"float32": (1e-5, 1e-5), "bfloat16": (1e-3, 2**-6)},  # the interpreter truncates: 2 ulps
    "margin_noise": {"float32": (1e-3, 1e-4), "bfloat16": (5e-2, 1e-2)},  # a top-2 margin below: not compared
}
ROW_COPY_FLOOR = 0.5  # rows below this fraction of copy bandwidth fail the run (on a GPU)
ROW_COPY_TARGET = 0.8  # the goal, reported
PLANTS = ("head", "kl", "head_value", "rows", "rows_value", "fallback", "packing", "generate", "seed")
KERNEL_MODULES = ("blockprune.kernels.scoring_head_triton", "blockprune.kernels.kl_head_triton",
                  "blockprune.kernels.gather_norm_triton", "blockprune.kernels.residual_add_triton")


def planted(name: str) -> bool:
    """Whether GPU_BENCH_PLANT names this planted bug (bench/test_gpu_script.py only)."""
    names = [p.strip() for p in os.environ.get("GPU_BENCH_PLANT", "").split(",") if p.strip()]
    unknown = [p for p in names if p not in PLANTS]
    if unknown:
        raise ValueError(f"GPU_BENCH_PLANT: unknown {unknown}; known: {', '.join(PLANTS)}")
    return name in names


def sync():
    if CUDA:
        torch.cuda.synchronize()


def wall(fn):
    """(seconds, result) of one call, synchronised."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def free_memory():
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def timeit(fn, min_time: float = 0.05, reps: int = 3) -> float:
    """Median seconds per call after a warm-up call."""
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
    return sorted(times)[len(times) // 2]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---- NaN poisoning ----------------------------------------------------------------------------------
def poison_allocator() -> None:
    """Fill the caching allocator's free memory with NaN: half the free memory in one block (the
    large pool) and 64 MiB in 1 MiB blocks (the small pool, where allocations <= 1 MiB come from:
    the heads' partials), so a fresh torch.empty holds NaN. No-op on CPU."""
    if not CUDA:
        return
    free, _ = torch.cuda.mem_get_info()
    block = torch.empty(int(free * 0.5) // 4, dtype=torch.float32, device=DEVICE)
    block.fill_(float("nan"))
    small = [torch.full((2**18,), float("nan"), device=DEVICE) for _ in range(64)]  # 1 MiB each
    del block, small


@contextlib.contextmanager
def nan_buffers():
    """Every floating tensor that a kernel module allocates with torch.empty / torch.empty_like in
    this block is filled with NaN; yields the list of them (to count NaN left after the call)."""
    made: list[torch.Tensor] = []
    real_empty, real_like = torch.empty, torch.empty_like

    def poisoned(real):
        def alloc(*args, **kwargs):
            out = real(*args, **kwargs)
            if out.is_floating_point() and sys._getframe(1).f_globals.get("__name__") in KERNEL_MODULES:
                out.fill_(float("nan"))
                made.append(out)
            return out
        return alloc

    with mock.patch.object(torch, "empty", poisoned(real_empty)), mock.patch.object(torch, "empty_like",
                                                                                     poisoned(real_like)):
        yield made


class _SkipLastTile:
    """A planted bug: the kernel launched without its last program along the first grid axis."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return self.kernel[(max(0, grid[0] - 1), *grid[1:])]


@contextlib.contextmanager
def plant_skip(module_name: str, kernel_name: str, plant: str):
    if not planted(plant):
        yield
        return
    module = sys.modules[module_name]
    with mock.patch.object(module, kernel_name, _SkipLastTile(getattr(module, kernel_name))):
        yield


def nan_count(tensors) -> int:
    return int(sum(torch.isnan(t.float()).sum().item() for t in tensors if t.is_floating_point()))


def worst(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> tuple[float, float]:
    """(max |got - want|, max of |got - want| / (atol + rtol |want|)): the check is the second <= 1.
    NaN counts as infinitely wrong."""
    diff = (got.double() - want.double()).abs()
    ratio = diff / (atol + rtol * want.double().abs())
    ratio = torch.where(torch.isnan(ratio), torch.full_like(ratio, float("inf")), ratio)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    return float(diff.max()), float(ratio.max())


# ---- heads against float64 ----------------------------------------------------------------------------
def float64_head(hidden, weight, targets, softcap=None, dense=None):
    """lse, target logit (and KL(dense || hidden)) in float64, 512 positions at a time."""
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
            del a, la, lb
        del logits
    return {k: torch.cat(v) for k, v in out.items() if v}


def _kl_by_expectation(hidden, dense, weight, targets):
    """The engine's KL without a softcap: the dense side once (torch, fp32), then the scoring head."""
    from blockprune import kernels
    from blockprune.kernels.scoring_head_triton import scoring_head_triton

    dense_lse, mean = kernels.dense_expectation(dense, weight)
    lse, tgt, _ = scoring_head_triton(hidden, weight, targets)
    return kernels.kl_from_expectation(hidden, dense, lse, dense_lse, mean), lse, tgt


def check_head(op: str, fn, keys: tuple[str, ...], want: dict, dtype: torch.dtype) -> dict:
    """Run `fn` once with NaN-poisoned buffers (and the planted bug of `op`, if any) and compare its
    outputs named `keys` with the float64 `want`."""
    atol, rtol = TOLERANCES["heads"][dtype_name(dtype)]
    poison_allocator()
    skip = {"scoring_head": ("scoring_head_triton", "_scoring_head_kernel", "head"),
            "kl_dense_expectation": ("scoring_head_triton", "_scoring_head_kernel", "head"),
            "kl_head_softcap": ("kl_head_triton", "_kl_head_kernel", "kl")}[op]
    with nan_buffers() as bufs, plant_skip(f"blockprune.kernels.{skip[0]}", skip[1], skip[2]):
        got = dict(zip(keys, fn()))
    sync()
    if planted("head_value") and op == "scoring_head":
        got["lse"] = got["lse"].clone()
        got["lse"][-1] += 10 * (atol + rtol * float(got["lse"][-1].abs()))
    row = {"tolerance": f"atol {atol:g} + rtol {rtol:g} x |want|", "poisoned_buffers": len(bufs),
           "nan_partials": nan_count(bufs), "nan_outputs": nan_count(v for k, v in got.items() if k in want)}
    ratios = []
    for key in ("lse", "tgt", "kl"):
        if key in got and key in want:
            err, ratio = worst(got[key], want[key], atol, rtol)
            row[f"max_abs_err_{key}"] = err
            ratios.append(ratio)
    row["err_over_tol"] = max(ratios)
    # poisoned_buffers >= 1: the wrapper's partials were poisoned (else this check could not see a missed write)
    row["ok"] = bool(row["nan_partials"] == 0 and row["nan_outputs"] == 0 and row["err_over_tol"] <= 1.0
                     and row["poisoned_buffers"] >= 1)
    return row


def bench_heads(rec, smoke: bool, deadline: float) -> None:
    """The heads at real sizes (smoke: several position tiles and vocabulary splits, interpreted)
    against float64, then timed beside a cuBLAS matmul of the same shape (TFLOP/s and the ratio)."""
    from blockprune.kernels.kl_head_triton import kl_head_triton
    from blockprune.kernels.scoring_head_triton import scoring_head_triton

    bf16, fp32 = torch.bfloat16, torch.float32  # fp32 last: the exact (FMA) path, which fp32 models take
    cases = ([(100, 24, 200, fp32)] if smoke else
             [(4096, 2048, 128256, bf16), (4096, 4096, 128256, bf16), (4096, 2560, 262144, bf16), (4096, 2048, 128256, fp32)])
    split = {"programs": 8} if smoke else {}  # the interpreter aims at 1 program: force vocabulary splits
    for positions, dim, vocab, dtype in cases:
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
        want_kl = {"kl": float64_head(hidden, weight, targets, None, dense)["kl"], **want}
        flops = 2 * positions * vocab * dim
        base = {"positions": positions, "hidden": dim, "vocab": vocab, "dtype": dtype_name(dtype)}
        t_cublas = timeit(lambda: hidden @ weight.T, min_time=0.02 if smoke else 0.2)
        cublas = flops / t_cublas / 1e12
        rec.add("heads", {"op": "cublas_matmul", **base, "ms": t_cublas * 1e3, "tflops": cublas})
        runs = {  # op: (call, output names, reference, matmul passes)
            "scoring_head": (lambda: scoring_head_triton(hidden, weight, targets, **split), ("lse", "tgt"), want, 1),
            "kl_head_softcap": (lambda: kl_head_triton(hidden, dense, weight, targets, softcap=softcap, **split),
                                ("kl", "lse", "tgt"), want_cap, 2),
            "kl_dense_expectation": (lambda: _kl_by_expectation(hidden, dense, weight, targets), ("kl", "lse", "tgt"),
                                     want_kl, 3),
        }
        for op, (fn, keys, ref, passes) in runs.items():
            row = {"op": op, **base, **check_head(op, fn, keys, ref, dtype)}
            t = timeit(fn, min_time=0.02 if smoke else 0.2)
            row.update(ms=t * 1e3, tflops=passes * flops / t / 1e12)
            row["vs_cublas"] = row["tflops"] / cublas
            rec.add("heads", row)
        if CUDA:
            torch.cuda.empty_cache()


# ---- row ops against their references and copy bandwidth ----------------------------------------------
def bench_rows(rec, smoke: bool) -> None:
    from blockprune import kernels
    from blockprune.kernels.gather_norm_triton import gather_norm_triton
    from blockprune.kernels.residual_add_triton import residual_add_triton

    dtype = torch.bfloat16
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # rounds to bf16 by truncation
    atol, rtol = TOLERANCES["rows_interpreted" if interpreted else "rows"][dtype_name(dtype)]
    numel = 2**20 if smoke else 2**29
    src = torch.randn(numel, device=DEVICE).to(dtype)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() * src.element_size() / timeit(lambda: dst.copy_(src)) / 1e9
    rec.add("rows", {"op": "copy", "GB/s": copy_gbs})
    src = dst = None
    enforce = CUDA
    shapes = [(6, 8, 40, 4)] if smoke else [(128, 512, 2048, 96), (64, 512, 4096, 48), (256, 512, 576, 192)]
    for rows, seq, dim, active in shapes:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(rows, seq, dim, generator=g).to(DEVICE, dtype)
        idx = torch.randperm(rows, generator=g)[:active].sort().values.to(DEVICE)
        weight = torch.randn(dim, generator=g).to(DEVICE, dtype)
        out = torch.randn(active, seq, dim, generator=g).to(DEVICE, dtype)
        moved = active * seq * dim * hidden.element_size()

        def gather():
            return gather_norm_triton(hidden, idx, weight, None, 1e-5)

        def residual():
            state = hidden.clone()
            residual_add_triton(state, idx, out)
            if planted("rows_value"):
                state[idx[-1], -1, -1] += 1.0
            return state

        checks = {"gather_norm": (gather, lambda: kernels.gather_norm_reference(hidden, idx, weight, None, 1e-5), 2,
                                  lambda: gather_norm_triton(hidden, idx, weight, None, 1e-5)),
                  "residual_add": (residual, lambda: kernels.residual_add_reference(hidden.clone(), idx, out), 3,
                                   lambda: residual_add_triton(hidden, idx, out))}  # timed in place: adds again
        for op, (run, reference, traffic, timed) in checks.items():
            poison_allocator()
            with nan_buffers() as bufs, plant_skip("blockprune.kernels.gather_norm_triton", "_gather_norm_kernel",
                                                   "rows"):
                got = run()
            sync()
            err, ratio = worst(got, reference(), atol, rtol)
            gbs = traffic * moved / timeit(timed) / 1e9
            fraction = gbs / copy_gbs
            row = {"op": op, "rows": rows, "tokens": seq, "hidden": dim, "active": active, "dtype": dtype_name(dtype),
                   "tolerance": f"atol {atol:g} + rtol {rtol:g} x |want|", "max_abs_err": err, "err_over_tol": ratio,
                   "nan_outputs": nan_count([got]) + nan_count(bufs), "GB/s": gbs, "copy_fraction": fraction,
                   "floor": ROW_COPY_FLOOR, "target": ROW_COPY_TARGET,
                   "floor_enforced": enforce}
            if not enforce:
                row["floor_note"] = "CPU smoke (interpreted): the fraction is reported, the floor not enforced"
            row["ok"] = bool(ratio <= 1.0 and row["nan_outputs"] == 0 and (fraction >= ROW_COPY_FLOOR or not enforce))
            rec.add("rows", row)
        if CUDA:
            torch.cuda.empty_cache()


# ---- generation: token by token up to the first step within the dtype's noise --------------------------
def compare_tokens(engine: list[int], naive: list[int], logits, dtype: torch.dtype) -> dict:
    """Compare the batched tokens with generate()'s step by step while generate()'s top-2 logit
    margin is above the dtype's noise (atol + rtol |top logit|); from the first step within the
    noise on, the rest is skipped (either token is right there). A mismatch ends the comparison."""
    atol, rtol = TOLERANCES["margin_noise"][dtype_name(dtype)]
    compared = mismatches = 0
    for step, want in enumerate(naive):
        top = logits[step].float().reshape(-1).topk(2).values
        if float(top[0] - top[1]) < atol + rtol * abs(float(top[0])):
            break
        compared += 1
        if step >= len(engine) or engine[step] != want:
            mismatches += 1
            break
    return {"compared": compared, "skipped": len(naive) - compared, "mismatches": mismatches}


def generate_with_logits(model, prompt: list[int], new: int, eos=None) -> tuple[list[int], list[torch.Tensor]]:
    """generate() greedy on one prompt: its new tokens and the full logits of each step."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         min_new_tokens=new if eos is None else 0, do_sample=False, eos_token_id=eos, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), [s[0] for s in out.logits]


# ---- the kernel tests' report (bench/gpu.sh) ----------------------------------------------------------
def junit_counts(path) -> dict | None:
    """A pytest JUnit report's test cases by outcome, and the failing ones by name (None: no report)."""
    import xml.etree.ElementTree as ET

    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for case in cases:
        kinds = {child.tag for child in case}
        name = f"{case.get('classname')}::{case.get('name')}"
        if "failure" in kinds:
            counts["failed"] += 1
            counts["failures"].append(name)
        elif "error" in kinds:
            counts["errors"] += 1
            counts["failures"].append(name + " (error)")
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def junit_line(path: str, rc: int, limit: str, summary: str) -> int:
    """Say what the kernel tests did (appended to summary.md); 1 when a test failed or erred, none
    ran or pytest itself failed, 0 when they passed or the time limit (rc 124) stopped them."""
    c = junit_counts(path)
    if c is None:
        line, bad = f"no JUnit report (pytest exit {rc})", True
    else:
        tests = c["passed"] + c["failed"] + c["errors"] + c["skipped"]
        bad = bool(c["failed"] or c["errors"] or not tests or rc not in (0, 124))
        line = (f"{tests} run, {c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped"
                + (f"; stopped by the time limit ({limit} s), the rest did not run" if rc == 124 else "")
                + (f" (pytest exit {rc})" if bad else ""))
    print(f"kernel tests: {line}", flush=True)
    with open(summary, "a") as f:
        f.write(f"\n## Kernel tests\n\n- {line}: {'**FAIL**' if bad else 'ok'}\n")
    return int(bad)


if __name__ == "__main__" and sys.argv[1:2] == ["junit"]:
    sys.exit(junit_line(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
