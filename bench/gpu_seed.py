"""The seed's question on a card (#33 item 4): a seed-sized search end to end, racing on and off.

A ~1B Llama-shaped random config with 16 blocks (gpu_bench.MODELS["llama-1b"], bf16), 8 tasks x
1,000 samples of synthetic tokens (4 multiple-choice tasks: a 48-token context and 4 choices of 4
tokens; 4 generative tasks: a 32-token prompt, up to 8 greedy tokens, EOS token 0), beam width 3,
up to 4 blocks removed, searched in this process as `blockprune run` does (blockprune.search.run on
an Evaluator over an Engine, a Store in a temporary directory): once with racing (the default),
once without (every candidate on every sample). Each search has a share of the time budget; one
that runs out of it stops between work units, and its time to the end is extrapolated from the
time per candidate of its finished steps (or, with none finished, from its candidate-samples
scored), said so in the row (`extrapolated`). The goal: the search end to end in 5 minutes.

The naive method (what the search replaces: one forward of the pruned model per candidate and
multiple-choice sample, one generate() of its pruned copy per candidate and generative sample) is
timed on a sample of (candidate, sample) pairs -- the dense model and a few single removals, each
task's first samples in racing order -- and extrapolated to every candidate of the racing search
(`candidates_all`: counted, or for a stopped search estimated as width x blocks left per step not
reached) and the dense model, on every sample: always `extrapolated: true`. The pairs the search
scored are compared with what it stored: choice log-probs (fp32: to 1e-4 relative) and generated
tokens (up to the first step within the dtype's noise, gpu_checks.compare_tokens); asserted in fp32
(at least one pair compared), reported in bf16 (batch sizes pick other kernels there).

    python bench/gpu_seed.py --out DIR [--budget 100]        # a CUDA machine (bench/gpu.sh runs it)
    .venv/bin/python bench/gpu_seed.py --smoke --out /tmp/x  # the tiny config, a few samples, on CPU

Rows go to section `seed` of DIR/gpu_bench.json (appended) and summary.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench as gb  # noqa: E402  (sets TRITON_INTERPRET on a machine without CUDA first)
import gpu_checks as checks  # noqa: E402

GOAL_S = 300.0
EOS = 0
WIDTH, MAX_REMOVE = 3, 4
FULL = {"samples": 1000, "ctx": 48, "choices": 4, "choice_len": 4, "prompt": 32, "new": 8, "naive_samples": 4,
        "naive_candidates": 2}
SMOKE = {"samples": 10, "ctx": 6, "choices": 4, "choice_len": 2, "prompt": 6, "new": 3, "naive_samples": 2,
         "naive_candidates": 1}


class SynthTokenizer:
    """Synthetic tokens: text is space-separated token ids (what the tasks need of a tokenizer)."""

    eos_token_id = EOS

    def __call__(self, text, add_special_tokens=True):
        return types.SimpleNamespace(input_ids=[int(t) for t in str(text).split() if t.isdigit()])

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(int(t)) for t in ids)


def build_tasks(vocab: int, size: dict) -> list:
    """4 multiple-choice and 4 generative tasks of random tokens (1..vocab-1; 0 is EOS)."""
    from blockprune.tasks.gen_task import GenerationTask
    from blockprune.tasks.kinds import MultipleChoiceTask

    tok = SynthTokenizer()
    tasks = []
    for t in range(8):
        rng = np.random.default_rng(100 + t)

        def words(n):
            return " ".join(str(int(x)) for x in rng.integers(1, vocab, n))

        ids = [str(i) for i in range(size["samples"])]
        if t < 4:
            rows = [{"context": words(size["ctx"]), "choices": [words(size["choice_len"]) for _ in range(size["choices"])],
                     "label": int(rng.integers(size["choices"]))} for _ in ids]
            tasks.append(MultipleChoiceTask(f"mc{t}", rows, tok, ids))
        else:
            rows = [{"prompt": words(size["prompt"]), "answers": [words(2)], "max_new_tokens": size["new"]} for _ in ids]
            tasks.append(GenerationTask(f"gen{t}", rows, tok, ids, EOS))
    return tasks


class OutOfTime(Exception):
    """A search's share of the budget is spent (raised between work units)."""


class DeadlineRunner:
    """shard.LocalRunner, stopping after the unit that passes `deadline`; counts candidate-samples."""

    def __init__(self, inner, deadline: float):
        self.inner, self.deadline, self.scored = inner, deadline, 0

    def units(self, jobs):
        return self.inner.units(jobs)

    def run(self, units, progress):
        for unit, result in self.inner.run(units, progress):
            self.scored += len(unit.sets) * (unit.task.n if unit.samples is None else len(unit.samples))
            yield unit, result
            if time.monotonic() > self.deadline:
                raise OutOfTime

    def retain(self, masks):
        self.inner.retain(masks)

    def after_step(self):
        self.inner.after_step()


def search_once(bm, size: dict, racing: bool, seconds: float) -> tuple[dict, object]:
    """One beam search end to end (tasks built, dense continuations decoded, every step), stopped
    after `seconds`; (row, store)."""
    from blockprune import search
    from blockprune.engine import Engine
    from blockprune.runs.store import Store
    from blockprune.search import shard
    from blockprune.search.evaluator import Evaluator, Racing, rank

    steps: list[dict] = []
    current: dict = {}

    class Timed(Evaluator):
        def race(self, sets, keep):
            current.update(candidates=len(sets), start=time.monotonic(), scored=runner.scored)
            out = super().race(sets, keep)
            steps.append({"candidates": len(sets), "seconds": time.monotonic() - current.pop("start"),
                          "best": list(rank(out)[0])})
            return out

    t0 = time.monotonic()
    engine = Engine(bm)
    info = {k: v for k, v in engine.info().items() if k in ("fused", "fused_reason", "packing_limit")}
    runner = DeadlineRunner(shard.LocalRunner(engine), t0 + seconds)
    tasks = build_tasks(bm.head.weight.shape[0], size)
    store = Store(Path(tempfile.mkdtemp(prefix="gpu-seed-")) / "run", {"bench": "gpu_seed", "racing": racing})
    completed, ev = True, None
    try:
        ev = Timed(engine, tasks, store, progress=False, racing=Racing() if racing else None, runner=runner)
        search.run("beam", ev, max_remove=MAX_REMOVE, beam_width=WIDTH)
    except OutOfTime:
        completed = False
    checks.sync()
    stopped = time.monotonic()
    wall = stopped - t0
    end, how = wall, "measured"
    if not completed:
        end, how = extrapolate(steps, current, wall, stopped, sum(t.n for t in tasks), runner.scored, bm.num_blocks)
    candidates = sum(s["candidates"] for s in steps) + current.get("candidates", 0) * (not completed)
    later = range(len(steps) + 2, MAX_REMOVE + 1) if not completed else ()
    row = {"what": "search", "racing": racing, "completed": completed, "steps_done": len(steps),
           "candidates": candidates,
           "candidates_all": candidates + sum(step_candidates(k, bm.num_blocks) for k in later),
           "candidate_samples": runner.scored, "wall_s": wall, "end_to_end_s": end, "extrapolated": not completed,
           "how": how, "goal_s": GOAL_S, "meets_goal": bool(end <= GOAL_S),
           "step_seconds": [round(s["seconds"], 2) for s in steps],
           "best_per_k": {len(s["best"]): s["best"] for s in steps}, **info, "ok": True}
    runner.inner = ev = engine = None  # the Timed class (a reference cycle) holds `runner`: free the engine now
    gc.collect()
    gb.free_memory()
    return row, store


def step_candidates(k: int, blocks: int) -> int:
    """Children at the step that removes k blocks: every block at k = 1, at most width x blocks left after."""
    return blocks if k == 1 else WIDTH * (blocks - k + 1)


def extrapolate(steps: list[dict], current: dict, wall: float, stopped: float, samples: int, scored: int,
                blocks: int) -> tuple[float, str]:
    """Time to the end of a stopped search: what ran as measured; the stopped step's rest and the
    steps not started at the finished steps' time per candidate (children counted as width x
    blocks left, an upper bound); with no step finished, at the stopped step's candidate-samples
    rate (every candidate on every sample: for racing, an upper bound)."""
    in_step = stopped - current["start"] if "start" in current else 0.0
    k = len(steps) + 1  # the step that was stopped
    cands = current.get("candidates") or step_candidates(k, blocks)
    todo = sum(step_candidates(j, blocks) for j in range(k + 1, MAX_REMOVE + 1))
    step_scored = scored - current.get("scored", scored)
    if steps:
        per_cand = sum(s["seconds"] for s in steps) / sum(s["candidates"] for s in steps)
        how = "extrapolated: the finished steps' seconds per candidate x the candidates left"
    elif step_scored > 0:
        per_cand = samples * in_step / step_scored
        how = "extrapolated: the first step's candidate-samples per second x every candidate on every sample"
    else:
        per_cand = wall / blocks
        how = "extrapolated: stopped before any candidate was scored (the time so far per block)"
    return wall + max(0.0, per_cand * cands - in_step) + per_cand * todo, how


def stored(store, key: tuple, task, s: int):
    """What the search stored for sample s of (key, task): the choice log-probs (multiple choice) or
    the generated text, from a whole record or a racing part; None where it has not scored it."""
    if task.kind == "multiple_choice":
        idx, cols = store.columns(key, task.name)
        at = np.flatnonzero(np.asarray(idx) == s)
        return np.asarray(cols["choice_logprob"][at[0]], dtype=float) if len(at) and "choice_logprob" in cols else None
    if store.has(key, task.name):
        texts = store.get(key, task.name).get("generated")
        return texts[s] if texts else None
    for part in store.parts.get((key, task.name), []):
        if s in part["samples"] and part.get("generated"):
            return part["generated"][part["samples"].index(s)]
    return None


@torch.inference_mode()
def naive_sample(bm, store, row: dict, size: dict, seconds: float, dtype: torch.dtype) -> dict:
    """The naive method on a sample of (candidate, sample) pairs: the dense model and a few single
    removals (the search's first step), each task's first samples in the search's racing order;
    extrapolated to every candidate of the racing search and the dense model on every sample.
    Pairs the search has scored are compared with what it stored."""
    from blockprune import models
    from blockprune.search.evaluator import Evaluator

    tasks = build_tasks(bm.head.weight.shape[0], size)
    rng = np.random.default_rng(0)
    singles = sorted(int(b) for b in rng.choice(bm.num_blocks, size["naive_candidates"], replace=False))
    picked = [()] + [(b,) for b in singles]
    t_end = time.monotonic() + seconds
    secs, pairs = {"mc": 0.0, "gen": 0.0}, {"mc": 0, "gen": 0}
    worst_rel, compared, tally = 0.0, 0, {"compared": 0, "skipped": 0, "mismatches": 0}
    for removed in picked:
        if pairs["mc"] and time.monotonic() > t_end:
            break
        copy = models.remove_blocks(bm, list(removed)) if removed else bm  # not timed: pruned copies are kept
        for task in tasks:
            for s in (int(i) for i in Evaluator.sample_order(None, task)[: size["naive_samples"]]):
                want = stored(store, removed, task, s)
                if task.kind == "multiple_choice":
                    reqs = [r for r, o in zip(task.requests, task.request_sample) if o == s]
                    dt_, got = gb.wall(lambda: gb.naive_scores(bm, reqs, list(removed)))
                    if checks.planted("seed"):
                        got = got + 1.0
                    if want is not None:
                        compared += 1
                        worst_rel = max(worst_rel, float(np.abs(got - want).max() / max(1e-30, np.abs(want).max())))
                    kind = "mc"
                else:
                    dt_, (tokens, logits) = gb.wall(lambda: checks.generate_with_logits(
                        copy.model, task.prompts[s], task.max_new[s], eos=[EOS]))
                    if want is not None:
                        compared += 1
                        expect = [int(x) for x in str(want).split()]
                        if len(expect) < task.max_new[s]:
                            expect.append(EOS)  # the search stopped this row at EOS (not kept in its text)
                        for k, v in checks.compare_tokens(expect, tokens, logits, dtype).items():
                            tally[k] += v
                    kind = "gen"
                secs[kind] += dt_
                pairs[kind] += 1
        copy = None
        gb.free_memory()
    per_pair = {k: secs[k] / max(1, pairs[k]) for k in secs}
    candidates = row["candidates_all"] + 1  # and the dense model, scored once as the baseline
    samples = {"mc": sum(t.n for t in tasks if t.kind == "multiple_choice"),
               "gen": sum(t.n for t in tasks if t.kind != "multiple_choice")}
    total = sum(per_pair[k] * candidates * samples[k] for k in secs)
    exact = dtype == torch.float32
    agree = bool(worst_rel <= gb.THRESHOLDS["fp32_rel"] and tally["mismatches"] == 0 and compared > 0)
    return {"what": "naive", "method": "one forward per candidate and multiple-choice sample (its choices in one "
                                       "batch), one generate() of the pruned copy per candidate and generative sample",
            "candidates_timed": [list(c) for c in picked], "pairs_timed": sum(pairs.values()),
            "seconds_timed": sum(secs.values()), "seconds_per_pair": per_pair,
            "pairs_all": candidates * sum(samples.values()), "extrapolated": True, "extrapolated_s": total,
            "ratio_vs_racing_search": total / row["end_to_end_s"], "pairs_compared": compared,
            "mc_max_rel_diff": worst_rel, "tokens_compared": tally["compared"],
            "tokens_skipped_low_margin": tally["skipped"], "token_mismatches": tally["mismatches"],
            "agreement": (f"{compared} pairs compared: choice log-probs max rel diff {worst_rel:.2g}; tokens "
                          f"{tally['compared']} compared, {tally['skipped']} skipped (low margin), "
                          f"{tally['mismatches']} mismatches" + ("" if exact else " (bf16: reported, not asserted)")),
            "asserted": exact, "ok": bool(agree or not exact)}


def warm_up(bm, size: dict) -> None:
    """Not timed: the first scoring and decoding in this process (kernels load, caches fill), so
    that neither search pays for them."""
    from blockprune.engine import Engine

    engine = Engine(bm)
    tasks = build_tasks(bm.head.weight.shape[0], {**size, "samples": 2})
    keep = np.ones((2, bm.num_blocks), dtype=bool)
    keep[1, 0] = False
    engine.score(tasks[0].requests, keep)
    tasks[4].generate(engine, keep, [0, 1])
    del engine
    gb.free_memory()


def bench_seed(rec, smoke: bool, budget: float) -> None:
    size = SMOKE if smoke else FULL
    dtype = torch.float32 if smoke else torch.bfloat16
    t0 = time.monotonic()
    bm = gb.build_model("tiny" if smoke else "llama-1b", dtype)
    base = {"model": (f"tiny ({bm.num_blocks} blocks, smoke, for llama-1b)" if smoke else
                      f"llama-1b shape, {bm.num_blocks} blocks, random"), "dtype": checks.dtype_name(dtype),
            "tasks": 8, "samples_per_task": size["samples"], "task_kinds": "4 multiple-choice, 4 generative",
            "beam_width": WIDTH, "max_remove": MAX_REMOVE, "kernels": gb.kernels.backend()}
    warm_up(bm, size)
    left = budget - (time.monotonic() - t0)
    on, store = search_once(bm, size, True, 0.5 * left)
    rec.add("seed", {**base, **on})
    off, _ = search_once(bm, size, False, max(5.0, budget - (time.monotonic() - t0) - 0.2 * left))
    off["best_same_as_racing"] = {k: off["best_per_k"].get(k) == on["best_per_k"].get(k) for k in off["best_per_k"]}
    rec.add("seed", {**base, **off})
    naive = naive_sample(bm, store, on, size, max(3.0, budget - (time.monotonic() - t0)), dtype)
    rec.add("seed", {**base, **naive})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/gpu"))
    ap.add_argument("--budget", type=float, default=100.0, help="seconds for the whole section (default 100)")
    ap.add_argument("--smoke", action="store_true", help="the tiny config, a few samples (CPU; Triton interpreted)")
    args = ap.parse_args()
    if not gb.CUDA and not args.smoke:
        print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
        return 2
    checks.planted("")
    if args.smoke and not gb.CUDA:  # the interpreted heads cost ~0.5 s a call (the kernels part checks them):
        os.environ.setdefault("BLOCKPRUNE_KERNELS", "torch")  # the search's own code path is the card's
    torch.backends.cuda.matmul.allow_tf32 = False
    rec = gb.Recorder(Path(args.out), {**gb.environment(), "smoke": args.smoke, "seed_budget_s": args.budget},
                      append=True)
    t0 = time.monotonic()
    try:
        bench_seed(rec, args.smoke, args.budget)
        rec.data["notes"]["seed seconds"] = round(time.monotonic() - t0, 1)
        failed_section = False
    except Exception as exc:  # noqa: BLE001 - said in the JSON and the exit status
        traceback.print_exc()
        rec.note("seed", f"failed after {time.monotonic() - t0:.0f}s: {type(exc).__name__}: {exc}"[:500])
        failed_section = True
    rec.flush()
    failed = rec.failed()
    for line in failed:
        print(f"FAILED CHECK {line}", flush=True)
    return 1 if failed or failed_section else 0


if __name__ == "__main__":
    sys.exit(main())
