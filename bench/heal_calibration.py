"""Healing (#23): how much calibration the linear repair map needs, which ridge, which text.

For the removal sets SETS on SmolLM2-135M (30 blocks, hidden 576), the ridge least-squares map of
blockprune.healing.heal is fitted on calibration windows of 64 tokens and the healed sets are scored by
the engine against the plain (unhealed) sets:

1. calibration size: Hamlet windows disjoint from 24 held-out Hamlet windows, at about 2, 4, 8,
   16 and 32 tokens per hidden dimension (1.2k .. 18k tokens), ridge 1e-3: mean per-token KL to
   the dense model and perplexity on the held-out Hamlet windows and on 24 Macbeth windows;
2. ridge {0, 1e-4, 1e-3, 1e-2, 1e-1} at 8 and 16 tokens per dimension (held-out Hamlet KL);
3. calibration source for [17, 18, 19]: Hamlet vs a mix of the tasks' own prompts (BIG-bench
   general_knowledge and emoji_movie contexts + gold answers, one window per sample, the
   general_knowledge questions used here never evaluated): held-out Hamlet KL and multiple-choice
   p_gold / accuracy on every other general_knowledge question;
and the cost: the dense statistics pass (Healing.fit) and the solves (healing.map for every
(block, n <= 6)).

Economy (2 CPU cores): the statistics are sums over tokens, so the Hamlet calibration windows are
fitted once, in nested chunks, and each size's Healing is the sum of its chunks' statistics (the
same numbers as one fit on the union, up to float64 summation order); the ridge only enters the
solve. All conditions of one evaluation text are scored in one engine call: a `Conditions` object
gives each candidate row its own Healing (codes 8*condition + n), so the trie shares the dense
prefix and the dense path across conditions; a self-check at the start compares it with one
Engine per Healing.

    .venv/bin/python bench/heal_calibration.py --out bench/results/heal_calibration

Run it alone: two heavy processes on 2 cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from blockprune.healing import heal
from blockprune import models
from blockprune.engine import Engine
from blockprune.tasks import load_task

MODEL = "smollm2-135m"
WINDOW = 64
HELD_OUT = 24
SEED = 0
MAX_RUN = 6
SETS = [[17], [19], [17, 18, 19], [16, 17, 18, 19], list(range(14, 20))]
PER_DIM = [2, 4, 8, 16, 32]  # calibration sizes, tokens per hidden dimension (about 1.2k .. 18k tokens)
RIDGES = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]
RIDGE_SIZES = [8, 16]  # tokens per dimension of the ridge sweep
RIDGE = 1e-3
SOURCE_SET = [17, 18, 19]
GK_CALIBRATION = 30  # general_knowledge questions given to the calibration mix (the other 40 are evaluated)
EMOJI = None  # emoji_movie samples in the mix (None: all 100)
STRIDE = 8  # code = STRIDE * condition + n (n <= MAX_RUN < STRIDE)


def fmt_set(s) -> str:
    return "[" + ", ".join(map(str, s)) + "]"


class Conditions:
    """Several Healings in one engine call: candidate row c heals with healings[row_cond[c]]
    (None: plain). The engine only asks `codes(keep)` and `applied(block, code)`."""

    def __init__(self, healings, row_cond):
        self.healings = healings
        self.row_cond = list(row_cond)

    def codes(self, keep):
        keep = np.asarray(keep, dtype=bool)
        assert len(keep) == len(self.row_cond), (len(keep), len(self.row_cond))
        out = heal.plain_codes(keep)
        for c, cond in enumerate(self.row_cond):
            if cond is None:
                continue
            row = self.healings[cond].codes(keep[c : c + 1])[0]
            out[c] = np.where(row > 0, row + STRIDE * cond, row)
        return out

    def applied(self, block, code):
        cond, n = divmod(int(code), STRIDE)
        return self.healings[cond].applied(block, n)


def masks(sets, blocks=30):
    keep = np.ones((len(sets), blocks), dtype=bool)
    for c, s in enumerate(sets):
        keep[c, list(s)] = False
    return keep


def score_conditions(bm, requests, healings, sets, conds, kl=True):
    """Score `sets` under every condition in `conds` (None: plain, else an index into healings) in
    one engine call; returns ({cond: Scores-like dict of [S, R] arrays}, seconds)."""
    rows_sets, rows_cond = [], []
    for cond in conds:
        rows_sets += sets
        rows_cond += [cond] * len(sets)
    start = time.perf_counter()
    scores = Engine(bm, heal=Conditions(healings, rows_cond)).score(requests, masks(rows_sets, bm.num_blocks), kl=kl)
    seconds = time.perf_counter() - start
    out = {}
    for k, cond in enumerate(conds):
        sl = slice(k * len(sets), (k + 1) * len(sets))
        out[cond] = {"logprob": scores.logprob[sl], "greedy": scores.greedy[sl],
                     "kl": None if scores.kl is None else scores.kl[sl]}
    return out, seconds


def text_metrics(res, ntok):
    """Per set: mean per-token KL, perplexity, per-window KL per token."""
    out = []
    for s in range(res["logprob"].shape[0]):
        row = {"ppl": float(math.exp(-res["logprob"][s].sum() / ntok.sum()))}
        if res["kl"] is not None:
            row["kl"] = float(res["kl"][s].sum() / ntok.sum())
            row["kl_windows"] = (res["kl"][s] / ntok).round(6).tolist()
        out.append(row)
    return out


def healing_from(bm, stats_list, ridge, calibration, unfoldable):
    total = heal.Stats()
    for st in stats_list:
        for k, v in st.gram.items():
            total.gram[k] = total.gram.get(k, 0) + v
        for k, v in st.cross.items():
            total.cross[k] = total.cross.get(k, 0) + v
        total.tokens += st.tokens
    return heal.Healing(bm, total, MAX_RUN, ridge, calibration, unfoldable)


def others_running() -> list[str]:
    """Other heavy processes seen on the machine (command names, for the record)."""
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,etimes,args", "--sort=-pcpu"], capture_output=True, text=True,
                            timeout=10).stdout.splitlines()[1:]
    except Exception:  # noqa: BLE001
        return []
    me = os.getpid()
    seen = []
    for line in ps:
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) == me or float(parts[1]) < 20 or parts[3].startswith("ps "):
            continue
        seen.append(f"{parts[1]}% cpu: {parts[3][:120]}")
    return seen


def self_check(bm, requests, healings):
    """Conditions in one call == one Engine per Healing (and plain == Engine without healing)."""
    sets = [[17, 18, 19], [19], [14, 15, 16, 17, 18, 19]]
    multi, _ = score_conditions(bm, requests, healings, sets, [None, 0, 1])
    worst = 0.0
    for cond in (None, 0, 1):
        one = Engine(bm, heal=None if cond is None else healings[cond]).score(requests, masks(sets), kl=True)
        for key in ("logprob", "kl"):
            got, want = multi[cond][key], getattr(one, key)
            worst = max(worst, float(np.max(np.abs(got - want) / (1e-4 + np.abs(want)))))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/heal_calibration", help="writes OUT.json and OUT.md")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 when other processes share the 2 cores: small ops stall far less)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    record = {"model": MODEL, "window": WINDOW, "held_out_windows": HELD_OUT, "seed": SEED, "max_run": MAX_RUN,
              "sets": SETS, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "platform": platform.platform(), "torch": torch.__version__,
              "load_at_start": os.getloadavg(), "others_at_start": others_running()}
    bm = models.load(MODEL, device="cpu")
    tok, eos = bm.tokenizer, bm.eos_token_id
    hidden = int(bm.head.weight.shape[1])
    record["hidden"] = hidden

    # ---- texts ---------------------------------------------------------------------------------
    held = load_task("kl:shakespeare/hamlet", tok, eos, HELD_OUT, SEED, WINDOW)
    macbeth = load_task("kl:shakespeare/macbeth", tok, eos, HELD_OUT, SEED, WINDOW)
    pool = load_task("ppl:shakespeare/hamlet", tok, eos, None, SEED, WINDOW, exclude=held.sample_ids)
    skip = pool.requests[0].score_from
    order = list(range(pool.n))
    random.Random(f"{SEED}:heal-calibration").shuffle(order)  # nested sizes: prefixes of one seeded order
    pool_windows = [tuple(pool.requests[i].tokens) for i in order]
    pool_ids = [pool.sample_ids[i] for i in order]
    held_windows = {tuple(r.tokens) for r in held.requests}
    assert not held_windows & set(pool_windows) and not set(held.sample_ids) & set(pool_ids)
    per_window = WINDOW - skip

    # the mix of the tasks' own prompts: context + gold answer of each sample, one window each
    gk_cal = load_task("bigbench:general_knowledge", tok, eos, GK_CALIBRATION, SEED, WINDOW)
    gk_eval = load_task("bigbench:general_knowledge", tok, eos, None, SEED, WINDOW, exclude=gk_cal.sample_ids)
    emoji = load_task("bigbench:emoji_movie", tok, eos, EMOJI, SEED, WINDOW)
    assert not set(gk_cal.sample_ids) & set(gk_eval.sample_ids)
    mix_windows = []
    for task in (gk_cal, emoji):
        for s in range(task.n):
            gold = task.requests[int(task._bounds[s]) + task.labels[s]]
            mix_windows.append(tuple(gold.tokens[:WINDOW]))
    eval_prompts = {tuple(r.tokens[: r.score_from]) for r in gk_eval.requests}
    assert not any(w[: len(p)] == p for w in mix_windows for p in eval_prompts if len(w) >= len(p))
    mix_tokens = sum(len(w) - skip for w in mix_windows)
    matched = max(1, round(mix_tokens / per_window))  # Hamlet windows with the mix's token count
    sizes = {t: -(-t * hidden // per_window) for t in PER_DIM}
    bounds = sorted(set(sizes.values()) | {matched})
    assert bounds[-1] <= len(pool_windows)
    record["calibration"] = {"hamlet_pool": len(pool_windows), "sizes_windows": {str(k): v for k, v in sizes.items()},
                             "mix": {"general_knowledge": gk_cal.sample_ids, "emoji_movie": emoji.n,
                                     "windows": len(mix_windows), "tokens": mix_tokens,
                                     "tokens_per_dim": mix_tokens / hidden},
                             "hamlet_matched_windows": matched, "general_knowledge_evaluated": gk_eval.n}
    print(f"hamlet pool {len(pool_windows)} windows; sizes {sizes}; mix {len(mix_windows)} windows "
          f"{mix_tokens} tokens (hamlet matched: {matched} windows)", flush=True)

    start = time.perf_counter()
    [heal.foldable(bm, i) for i in range(bm.num_blocks)]
    foldable_seconds = time.perf_counter() - start  # paid once per Healing.fit call (in every chunk's time)

    # ---- statistics: one dense pass over the Hamlet windows in nested chunks, one over the mix ------
    chunks, fit_seconds, lo = [], [], 0
    unfoldable = None
    for hi in bounds:
        start = time.perf_counter()
        h = heal.Healing.fit(bm, pool_windows[lo:hi], max_run=MAX_RUN, ridge=RIDGE, skip=skip)
        fit_seconds.append(time.perf_counter() - start)
        chunks.append(h.stats)
        unfoldable = h.unfoldable
        print(f"fit windows {lo}..{hi}: {h.stats.tokens} tokens, {fit_seconds[-1]:.1f}s", flush=True)
        lo = hi
    start = time.perf_counter()
    mix_fit = heal.Healing.fit(bm, mix_windows, max_run=MAX_RUN, ridge=RIDGE, skip=skip)
    mix_seconds = time.perf_counter() - start
    print(f"fit mix: {mix_fit.stats.tokens} tokens, {mix_seconds:.1f}s", flush=True)

    def hamlet(windows, ridge):
        k = bounds.index(windows) + 1
        return healing_from(bm, chunks[:k], ridge, {"source": "shakespeare/hamlet", "windows": windows}, unfoldable)

    # conditions: (label, Healing)
    healings, labels = [], []

    def add(label, healing):
        labels.append(label)
        healings.append(healing)
        return len(healings) - 1

    size_cond = {t: add(f"hamlet {t}/dim ridge {RIDGE:g}", hamlet(sizes[t], RIDGE)) for t in PER_DIM}
    ridge_cond = {}
    for t in RIDGE_SIZES:
        for r in RIDGES:
            ridge_cond[(t, r)] = size_cond[t] if r == RIDGE else add(f"hamlet {t}/dim ridge {r:g}", hamlet(sizes[t], r))
    matched_cond = next((size_cond[t] for t in PER_DIM if sizes[t] == matched), None)
    if matched_cond is None:
        matched_cond = add(f"hamlet {matched} windows (mix-matched) ridge {RIDGE:g}", hamlet(matched, RIDGE))
    mix_fit.calibration = {"source": "mix of general_knowledge + emoji_movie prompts"}
    mix_cond = add(f"mix ridge {RIDGE:g}", mix_fit)
    for h, lab in zip(healings, labels):
        print(f"  condition {lab}: {h.stats.tokens} tokens", flush=True)

    # cost of the solves: every (block, n <= 6) the statistics hold, on the 16/dim Hamlet statistics
    fresh = hamlet(sizes[PER_DIM[-1]], RIDGE)
    start = time.perf_counter()
    keys = [(i, n) for i in range(bm.num_blocks) for n in range(1, MAX_RUN + 1) if fresh.can_heal(i, n)]
    for i, n in keys:
        fresh.map(i, n)
    solve_seconds = time.perf_counter() - start
    print(f"solves: {len(keys)} maps in {solve_seconds:.2f}s", flush=True)

    # ---- self-check of one engine call for several healings ---------------------------------------
    start = time.perf_counter()
    worst = self_check(bm, held.requests[:3], [healings[size_cond[PER_DIM[0]]], healings[mix_cond]])
    print(f"self-check: conditions in one call == one engine per healing (worst rel. diff {worst:.1e}), "
          f"{time.perf_counter() - start:.1f}s", flush=True)

    # ---- scoring ---------------------------------------------------------------------------------
    ntok_h = np.array([r.num_scored for r in held.requests], dtype=float)
    ntok_m = np.array([r.num_scored for r in macbeth.requests], dtype=float)
    hamlet_conds = [None] + list(range(len(healings)))
    res_h, sec_h = score_conditions(bm, held.requests, healings, SETS, hamlet_conds)
    print(f"scored held-out Hamlet: {len(hamlet_conds)} conditions x {len(SETS)} sets, {sec_h:.0f}s", flush=True)
    mac_conds = [None] + [size_cond[t] for t in PER_DIM] + [mix_cond]
    res_m, sec_m = score_conditions(bm, macbeth.requests, healings, SETS, mac_conds)
    print(f"scored Macbeth: {len(mac_conds)} conditions, {sec_m:.0f}s", flush=True)
    gk_conds = list(dict.fromkeys([None, matched_cond, size_cond[PER_DIM[-2]], mix_cond]))
    res_g, sec_g = score_conditions(bm, gk_eval.requests, healings, [[], SOURCE_SET], gk_conds, kl=False)
    print(f"scored general_knowledge: {gk_eval.n} questions, {sec_g:.0f}s", flush=True)

    def cond_name(cond):
        return "plain" if cond is None else labels[cond]

    hamlet_m = {cond_name(c): text_metrics(res_h[c], ntok_h) for c in hamlet_conds}
    macbeth_m = {cond_name(c): text_metrics(res_m[c], ntok_m) for c in mac_conds}
    mc = {}
    for c in gk_conds:
        per = gk_eval.per_sample(res_g[c]["logprob"], res_g[c]["greedy"])
        mc[cond_name(c)] = {"dense": {"p_gold": float(per["p_gold"][0].mean()), "acc": float(per["correct"][0].mean())},
                            "set": {"p_gold": float(per["p_gold"][1].mean()), "acc": float(per["correct"][1].mean()),
                                    "p_gold_samples": per["p_gold"][1].round(5).tolist(),
                                    "correct_samples": per["correct"][1].tolist()}}
    # dense perplexity of the texts (one plain call with the empty set)
    dense_res, _ = score_conditions(bm, held.requests + macbeth.requests, healings, [[]], [None], kl=False)
    lp = dense_res[None]["logprob"][0]
    dense_h = float(math.exp(-lp[: len(held.requests)].sum() / ntok_h.sum()))
    dense_m = float(math.exp(-lp[len(held.requests):].sum() / ntok_m.sum()))

    record.update({
        "conditions": {lab: {"tokens": h.stats.tokens, "tokens_per_dim": h.stats.tokens / hidden, "ridge": h.ridge,
                             **h.calibration} for lab, h in zip(labels, healings)},
        "held_out_hamlet": hamlet_m, "macbeth": macbeth_m, "general_knowledge": mc,
        "dense_ppl": {"hamlet_held_out": dense_h, "macbeth": dense_m},
        "seconds": {"fit_chunks": dict(zip(map(str, bounds), fit_seconds)),
                    "fit_cumulative": {str(t): sum(fit_seconds[: bounds.index(sizes[t]) + 1]) for t in PER_DIM},
                    "fit_mix": mix_seconds, "foldable_check_per_fit": foldable_seconds, "solves": solve_seconds, "solves_count": len(keys),
                    "score_hamlet": sec_h, "score_macbeth": sec_m, "score_general_knowledge": sec_g},
        "self_check_worst_rel": worst,
    })
    record["seconds"]["total"] = time.perf_counter() - t_all
    record["load_at_end"] = os.getloadavg()
    record["others_at_end"] = others_running()
    write(record, size_cond, ridge_cond, matched_cond, mix_cond, labels, sizes, Path(args.out))
    print(f"total {record['seconds']['total']:.0f}s", flush=True)


def write(rec, size_cond, ridge_cond, matched_cond, mix_cond, labels, sizes, out: Path):
    hidden = rec["hidden"]
    H, M = rec["held_out_hamlet"], rec["macbeth"]
    plain_h, plain_m = H["plain"], M["plain"]
    names = [fmt_set(s) for s in SETS]
    lines = ["# Healing: calibration size, ridge, source (SmolLM2-135M, CPU)", "",
             f"Written by `bench/heal_calibration.py` ({rec['platform']}, torch {rec['torch']}, "
             f"{rec['torch_threads']} threads). Held-out: {HELD_OUT} Hamlet windows of {WINDOW} tokens "
             f"({HELD_OUT * (WINDOW - 1)} scored tokens) never used for calibration, and {HELD_OUT} Macbeth windows. "
             f"Healing: one ridge least-squares map per removed run, folded into the block before it "
             f"(`blockprune.healing.heal`); calibration windows of {WINDOW} tokens, hidden = {hidden}. "
             f"Dense perplexity: Hamlet {rec['dense_ppl']['hamlet_held_out']:.2f}, "
             f"Macbeth {rec['dense_ppl']['macbeth']:.2f}.", ""]

    # 1. size
    lines += ["## 1. Calibration size (ridge 1e-3): held-out Hamlet KL (nats/token)", "",
              "| calibration | tokens | " + " | ".join(names) + " |", "| --- | ---: |" + " ---: |" * len(SETS)]
    lines.append("| plain | – | " + " | ".join(f"{r['kl']:.4f}" for r in plain_h) + " |")
    beats = {}
    for t in PER_DIM:
        lab = labels[size_cond[t]]
        rows = H[lab]
        tokens = rec["conditions"][lab]["tokens"]
        beats[t] = all(r["kl"] < p["kl"] for r, p in zip(rows, plain_h))
        lines.append(f"| {t}/dim | {tokens} | " + " | ".join(
            f"{r['kl']:.4f}" + ("" if r["kl"] < p["kl"] else " ✗") for r, p in zip(rows, plain_h)) + " |")
    lines += ["", "✗: healed is not below plain.", "",
              "Perplexity, held-out Hamlet / Macbeth:", "",
              "| calibration | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(SETS)]
    for lab, show in [("plain", "plain")] + [(labels[size_cond[t]], f"{t}/dim") for t in PER_DIM]:
        lines.append(f"| {show} | " + " | ".join(f"{h['ppl']:.2f} / {m['ppl']:.2f}" for h, m in zip(H[lab], M[lab])) + " |")
    lines += ["", "Macbeth KL (nats/token):", "", "| calibration | " + " | ".join(names) + " |",
              "| --- |" + " ---: |" * len(SETS)]
    for lab, show in [("plain", "plain")] + [(labels[size_cond[t]], f"{t}/dim") for t in PER_DIM] + \
            [(labels[mix_cond], "mix")]:
        lines.append(f"| {show} | " + " | ".join(f"{m['kl']:.4f}" for m in M[lab]) + " |")

    # 2. ridge
    lines += ["", "## 2. Ridge (λ = ridge × mean eigenvalue of MᵀM): held-out Hamlet KL", "",
              "| size | ridge | " + " | ".join(names) + " | mean healed/plain |", "| --- | ---: |" + " ---: |" * (len(SETS) + 1)]
    best_ridge = {}
    for t in RIDGE_SIZES:
        ratios = {}
        for r in RIDGES:
            rows = H[labels[ridge_cond[(t, r)]]]
            ratios[r] = float(np.mean([x["kl"] / p["kl"] for x, p in zip(rows, plain_h)]))
            lines.append(f"| {t}/dim | {r:g} | " + " | ".join(f"{x['kl']:.4f}" for x in rows) + f" | {ratios[r]:.3f} |")
        best_ridge[t] = min(ratios, key=ratios.get)
        rec.setdefault("ridge_ratio", {})[str(t)] = {f"{r:g}": v for r, v in ratios.items()}

    # 3. source
    s_idx = SETS.index(SOURCE_SET)
    G = rec["general_knowledge"]
    gk_rows = [("plain", "plain"), (labels[matched_cond], f"Hamlet, {rec['conditions'][labels[matched_cond]]['tokens']} tokens (mix-matched)"),
               (labels[size_cond[PER_DIM[-2]]], f"Hamlet, {rec['conditions'][labels[size_cond[PER_DIM[-2]]]]['tokens']} tokens ({PER_DIM[-2]}/dim)"),
               (labels[mix_cond], f"mix of task prompts, {rec['conditions'][labels[mix_cond]]['tokens']} tokens")]
    n_eval = rec["calibration"]["general_knowledge_evaluated"]
    base = np.array(G["plain"]["set"]["p_gold_samples"])
    lines += ["", f"## 3. Calibration source, set {fmt_set(SOURCE_SET)} (ridge 1e-3)", "",
              f"Multiple choice: bigbench:general_knowledge, the {n_eval} questions not in the mix "
              f"(dense: p_gold {G['plain']['dense']['p_gold']:.3f}, accuracy {G['plain']['dense']['acc']:.3f}). "
              "Δ p_gold: paired mean difference to plain ± its standard error.", "",
              "| calibration | held-out Hamlet KL | Hamlet ppl | Macbeth KL | p_gold | Δ p_gold | accuracy |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lab, show in gk_rows:
        h = H[lab][s_idx]
        mk = f"{M[lab][s_idx]['kl']:.4f}" if lab in M else "–"
        g = G[lab]["set"]
        d = np.array(g["p_gold_samples"]) - base
        delta = "–" if lab == "plain" else f"{d.mean():+.3f} ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}"
        lines.append(f"| {show} | {h['kl']:.4f} | {h['ppl']:.2f} | {mk} | {g['p_gold']:.3f} | {delta} | {g['acc']:.3f} |")

    # cost
    sec = rec["seconds"]
    lines += ["", "## Cost (2 CPU cores)", "",
              "| calibration | tokens | dense statistics pass, s |", "| --- | ---: | ---: |"]
    for t in PER_DIM:
        lab = labels[size_cond[t]]
        lines.append(f"| {t}/dim | {rec['conditions'][lab]['tokens']} | {sec['fit_cumulative'][str(t)]:.1f} |")
    lines += ["", f"Solves: {sec['solves_count']} maps (every block, n ≤ {MAX_RUN}) in {sec['solves']:.2f} s "
              f"(independent of the calibration size). The pass is the sum of nested chunk fits "
              f"(statistics add over tokens); each chunk's fit repeats the per-block foldable check "
              f"({sec['foldable_check_per_fit']:.1f} s), so one fit of the whole set costs about that much less per extra chunk. Scoring: held-out Hamlet {sec['score_hamlet']:.0f} s "
              f"({len(labels) + 1} conditions x {len(SETS)} sets in one engine call), Macbeth {sec['score_macbeth']:.0f} s; "
              f"whole script {sec['total']:.0f} s. Load average at start {rec['load_at_start'][0]:.2f}, at end "
              f"{rec['load_at_end'][0]:.2f}; other processes seen: "
              f"{'; '.join(rec['others_at_start'] + rec['others_at_end']) or 'none above 20% CPU'}.", ""]

    # conclusion
    smallest = next((t for t in PER_DIM if all(beats[u] for u in PER_DIM if u >= t)), None)
    mix_kl, ham_kl = H[labels[mix_cond]][s_idx]["kl"], H[labels[matched_cond]][s_idx]["kl"]
    mix_p, ham_p = G[labels[mix_cond]]["set"]["p_gold"], G[labels[matched_cond]]["set"]["p_gold"]
    rec["conclusion"] = {"smallest_tokens_per_dim_beating_plain_for_all_sets": smallest,
                         "best_ridge": {str(k): v for k, v in best_ridge.items()}}
    lines += ["## Conclusion", "", "(auto-filled figures; see the paragraph below)", "",
              f"* smallest size at which healing beats plain on held-out KL for every set (and every larger size): "
              f"{smallest if smallest is not None else 'none measured'} tokens per dimension",
              f"* lowest mean healed/plain KL ratio: ridge {', '.join(f'{best_ridge[t]:g} at {t}/dim' for t in RIDGE_SIZES)}",
              f"* [17, 18, 19], matched token counts: Hamlet KL {ham_kl:.4f} vs mix {mix_kl:.4f}; "
              f"p_gold Hamlet {ham_p:.3f} vs mix {mix_p:.3f}", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(rec, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
