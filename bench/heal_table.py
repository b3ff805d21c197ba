"""Healed against plain deletion on SmolLM2-135M, k = 1..6, each set found by its own search.

    .venv/bin/python bench/heal_table.py [--out bench/results] [--max-remove 6]

One `run_search(..., heal="linear")` (racing greedy search, KL on Hamlet windows plus
general_knowledge multiple choice) whose plain baseline (OUT/plain) is the same search without
healing. Then, for the best set per k of each search, on data neither search nor the fit saw:
held-out KL to dense on Hamlet windows (not scored, not calibration), perplexity on those windows
and on Macbeth by plain transformers on the folded, pruned copy, and general_knowledge p_gold and
accuracy on the questions the search did not use. Also: the healing's cost (dense pass and
solves) as a share of the healed search's time, and the decode latency of the healed model
against the plain one (same architecture: equal within noise). Run alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockprune.analysis import advice
from blockprune import api, models, report  # noqa: E402
from blockprune.engine import Engine  # noqa: E402
from blockprune.measure.heldout import healed_copy, plain_perplexity, run_healing  # noqa: E402
from blockprune.runs.store import Store  # noqa: E402
from blockprune.tasks import load_task  # noqa: E402

TASKS = ("kl:shakespeare/hamlet#16", "bigbench:general_knowledge#30")
WINDOW = 64


def best_per_k(directory: Path) -> dict[int, tuple[int, ...]]:
    a = report.build_analysis(directory)
    return {k: tuple(group[0]["removed"]) for k, group in advice.by_k(a["candidates"]).items() if k}


def masks(sets, num_blocks):
    keep = np.ones((len(sets), num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i, list(s)] = False
    return keep


def held_out(bm, healing, store: Store, sets_healed: dict, sets_plain: dict) -> dict:
    settings = store.run_info["settings"]
    cal_ids = settings["heal"]["calibration"]["sample_ids"]  # the text's windows the maps were fitted on
    hamlet_ids = settings["tasks"]["kl_shakespeare_hamlet"]["sample_ids"]
    kl = load_task("kl:shakespeare/hamlet", bm.tokenizer, bm.eos_token_id, 24, 11, WINDOW, exclude=hamlet_ids + cal_ids)
    macbeth = load_task("ppl:shakespeare/macbeth", bm.tokenizer, bm.eos_token_id, 24, 11, WINDOW)
    gk_ids = settings["tasks"]["general_knowledge"]["sample_ids"]
    gk_ids = gk_ids + ((settings["heal"]["calibration"].get("tasks") or {}).get("general_knowledge") or {}).get(
        "sample_ids", [])  # nor the questions the maps were fitted on
    mc = load_task("bigbench:general_knowledge", bm.tokenizer, bm.eos_token_id, None, 11, WINDOW, exclude=gk_ids)
    out = {"held_out": {"hamlet_windows": kl.n, "macbeth_windows": macbeth.n, "mc_questions": mc.n}, "rows": []}
    healed_engine, plain_engine = Engine(bm, heal=healing), Engine(bm)

    def measure(engine, sets, heal):
        keep = masks([()] + list(sets), bm.num_blocks)
        res = engine.score(kl.requests, keep, kl=True)
        kls = kl.value(kl.per_sample(res.logprob, res.greedy, res.kl))
        r2 = engine.score(mc.requests, keep)
        ps = mc.per_sample(r2.logprob, r2.greedy)
        p_gold = np.asarray(ps["p_gold"], dtype=float).mean(axis=-1)
        acc = mc.value(ps)
        w = [r.tokens for r in kl.requests]
        wm = [r.tokens for r in macbeth.requests]
        rows = []
        for i, s in enumerate([()] + list(sets)):
            rows.append({"removed": list(s), "kl": float(kls[i]), "p_gold": float(p_gold[i]), "acc": float(acc[i]),
                         "ppl_hamlet": plain_perplexity(bm, s, w, kl.requests[0].score_from, heal),
                         "ppl_macbeth": plain_perplexity(bm, s, wm, macbeth.requests[0].score_from, heal)})
        return rows

    healed_rows = measure(healed_engine, [sets_healed[k] for k in sorted(sets_healed)], healing)
    plain_rows = measure(plain_engine, [sets_plain[k] for k in sorted(sets_plain)], None)
    out["dense"] = plain_rows[0]
    for k in sorted(set(sets_healed) | set(sets_plain)):
        row = {"k": k}
        if k in sets_healed:
            row["healed"] = healed_rows[1 + sorted(sets_healed).index(k)]
        if k in sets_plain:
            row["plain"] = plain_rows[1 + sorted(sets_plain).index(k)]
        out["rows"].append(row)
    return out


def decode_latency(bm, healing, removed, reps: int = 8) -> dict:
    from blockprune.measure.generation import TorchGeneration
    from blockprune.measure.latency import _measure, _prompt

    plain = models.remove_blocks(bm, removed).model
    healed = healed_copy(bm, removed, healing).model
    ids = _prompt(bm.head.weight.shape[0], 1, 64)
    runs = _measure({"plain": TorchGeneration(plain), "healed": TorchGeneration(healed)}, ids, 32, 2, reps, bm.device)
    per = {k: [float(np.median(r["steps"])) for r in v["runs"]] for k, v in runs.items()}
    ratio = [h / p for h, p in zip(per["healed"], per["plain"])]
    return {"removed": list(removed), "decode_ms_plain": 1e3 * float(np.median(per["plain"])),
            "decode_ms_healed": 1e3 * float(np.median(per["healed"])), "healed_over_plain": float(np.median(ratio)),
            "ratio_range": [float(min(ratio)), float(max(ratio))], "reps": reps}


def fmt(row, key):
    return "" if row is None else (f"{row[key]:.4f}" if key in ("kl", "p_gold", "acc") else f"{row[key]:.2f}")


def markdown(result: dict) -> str:
    d = result["dense"]
    lines = [f"# Healed vs plain deletion, SmolLM2-135M, k = 1..{result['max_remove']}", "",
             f"Searches: `{result['method']}` with racing on {', '.join(f'`{t}`' for t in TASKS)} (window {WINDOW}); "
             f"healed search {result['seconds_healed']:.0f} s, its plain baseline {result['seconds_plain']:.0f} s "
             f"(scoring time; wall, both in one run_search: {result['seconds_total']:.0f} s). Healing's dense pass over "
             f"{result['healing']['tokens']} calibration tokens ({result['healing']['calibration']['spec']} windows and "
             f"half the unscored questions): {result['healing']['seconds']:.1f} s = "
             f"{100 * result['healing']['seconds'] / result['seconds_healed']:.1f}% of the healed search's scoring time"
             + (f", with the solves of the {result['healing']['maps_solved']} maps it used" if "maps_solved" in result["healing"]
                else "; the maps' solves happen inside the search's scoring time") + ".",
             f"Held out (never scored by a search, never calibrated on): {result['held_out']['hamlet_windows']} Hamlet "
             f"windows, {result['held_out']['macbeth_windows']} Macbeth windows, {result['held_out']['mc_questions']} "
             "general_knowledge questions. Perplexities by plain transformers on the folded, pruned copy.", "",
             f"Dense: KL 0, Hamlet ppl {d['ppl_hamlet']:.2f}, Macbeth ppl {d['ppl_macbeth']:.2f}, p_gold {d['p_gold']:.4f}, "
             f"accuracy {d['acc']:.4f}.", "",
             "| k | plain: best set | KL | Hamlet ppl | Macbeth ppl | p_gold | acc | healed: best set | KL | Hamlet ppl | Macbeth ppl | p_gold | acc |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        p, h = row.get("plain"), row.get("healed")
        cells = [str(row["k"])]
        for r in (p, h):
            cells += [str(r["removed"]) if r else "", *(fmt(r, key) for key in ("kl", "ppl_hamlet", "ppl_macbeth", "p_gold", "acc"))]
        lines.append("| " + " | ".join(cells) + " |")
    lat = result["latency"]
    lines += ["", f"Decode latency of the healed model vs the plain one, both without {lat['removed']} (torch, batch 1, "
              f"64-token prompt, 32 tokens, {lat['reps']} interleaved runs): {lat['decode_ms_plain']:.2f} ms vs "
              f"{lat['decode_ms_healed']:.2f} ms per token, healed/plain {lat['healed_over_plain']:.3f} "
              f"(range {lat['ratio_range'][0]:.3f}-{lat['ratio_range'][1]:.3f}): the same modules, the same cost.", ""]
    lines.append(f"Machine: {result['machine']}; nothing else heavy was running (light pytest runs of other sessions "
                 "may have overlapped parts of the searches).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--max-remove", type=int, default=6)
    ap.add_argument("--method", default="greedy")
    ap.add_argument("--run", default=None, help="run directory (kept; rerun to resume). Default: a temporary one")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        start = time.perf_counter()
        res = api.run_search("smollm2-135m", list(TASKS), run, method=args.method, max_remove=args.max_remove,
                             samples=None, ppl_window=WINDOW, heal="linear", latency=False, progress=False,
                             tolerance=0.10)
        total = time.perf_counter() - start
        store = Store.open_existing(run)
        plain_store = Store.open_existing(run / "plain")
        t_healed = _span(run)
        t_plain = _span(run / "plain")
        bm = models.load("smollm2-135m", device="cpu")
        healing = run_healing(run, store, bm)
        healed_sets, plain_sets = best_per_k(run), best_per_k(run / "plain")
        # best plain sets: the plain search's own (not the healed sets it also scored)
        plain_sets = _searched_best(run / "plain", plain_store)
        result = {"max_remove": args.max_remove, "method": args.method, "seconds_total": total,
                  "seconds_healed": t_healed, "seconds_plain": t_plain, "healing": store.run_info["healing"],
                  **held_out(bm, healing, store, healed_sets, plain_sets)}
        longest = healed_sets[max(healed_sets)]
        result["latency"] = decode_latency(bm, healing, longest)
    import platform

    result["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heal_table.json").write_text(json.dumps(result, indent=1))
    (out / "heal_table.md").write_text(markdown(result))
    print(markdown(result))


def _span(directory: Path) -> float:
    """Seconds the run's scoring calls took (its "work" records)."""
    total = 0.0
    for line in (directory / "results.jsonl").open():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("type") == "work":
            total += float(r.get("seconds", 0.0))
    return total


def _searched_best(directory: Path, store: Store) -> dict[int, tuple[int, ...]]:
    """The plain search's own best set per k (run.json's "searched_best"), not the healed sets it also scored."""
    return {int(k): tuple(v) for k, v in store.run_info["searched_best"].items()}


if __name__ == "__main__":
    main()
