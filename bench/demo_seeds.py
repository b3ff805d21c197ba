"""The demo's advice at several seeds, side by side, with the held-out check.

    for s in 0 1 2; do make demo DEMO_OUT=runs/demo-s$s DEMO_SEED=$s; done
    .venv/bin/python bench/demo_seeds.py runs/demo-s0 runs/demo-s1 runs/demo-s2 --out bench/results/demo_seeds

Per run: each recommendation with its mean drop and 95% interval, every task's drop, the held-out
mean drop (validation.json) and the held-out perplexity of the text tasks measured by plain
transformers. Then whether the recommended sets' intervals overlap across the runs (pairwise),
for each level, and the demo's wall time (from run.json's creation to the report's).
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

from blockprune.runs.store import atomic_write_json, atomic_write_text


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def load(run: Path) -> dict:
    rec = json.loads((run / "pruning_recommendations.json").read_text())
    val = json.loads((run / "validation.json").read_text()) if (run / "validation.json").exists() else None
    settings = json.loads((run / "run.json").read_text())["settings"]
    return {"run": str(run), "seed": settings["seed"], "recs": rec["recommendations"], "held_out": val,
            "flagged": rec.get("held_out", {}).get("flagged", [])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    runs = [load(Path(r)) for r in args.runs]
    lines = ["| seed | level | removed | mean drop (95% interval) | per task | held-out mean drop | held-out perplexity (plain transformers) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        for level in ("conservative", "balanced", "aggressive"):
            c = r["recs"][level]
            if not c["k"]:
                lines.append(f"| {r['seed']} | {level} | none | | | | |")
                continue
            key = ",".join(map(str, c["removed"]))
            v = (r["held_out"] or {}).get("sets", {}).get(key)
            flag = next((f.split(" ", 1)[1] for f in r["flagged"] if f.split(" ", 1)[0] == level), "")
            held = pct(v["mean_drop"]) + (f" ⚠ {flag}" if flag else "") if v else "—"
            ppl = "; ".join(f"{r['held_out']['dense'][t]['plain_perplexity']:.2f} → {p:.2f} "
                            f"({pct(p / r['held_out']['dense'][t]['plain_perplexity'] - 1)})"
                            for t, p in (v or {}).get("plain_perplexity", {}).items()) or "—"
            tasks = "; ".join(f"{t} {pct(d)}" for t, d in c["drops"].items())
            lines.append(f"| {r['seed']} | {level} | {c['removed']} | {pct(c['mean_drop'])} ({pct(c['ci95'][0])} – "
                         f"{pct(c['ci95'][1])}) | {tasks} | {held} | {ppl} |")
    overlap = {}
    for level in ("conservative", "balanced", "aggressive"):
        recs = [(r["seed"], r["recs"][level]) for r in runs if r["recs"][level]["k"]]
        overlap[level] = all(a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]
                             for (_, a), (_, b) in combinations(recs, 2)) if len(recs) > 1 else None
    lines += ["", "Recommended sets' 95% intervals overlap across the seeds (pairwise): " +
              ", ".join(f"{level} {'yes' if v else 'no' if v is not None else 'n/a'}" for level, v in overlap.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out.with_suffix(".json"), {"runs": runs, "intervals_overlap": overlap})
        atomic_write_text(out.with_suffix(".md"), "# The demo's advice at several seeds\n\n" + text)


if __name__ == "__main__":
    main()
