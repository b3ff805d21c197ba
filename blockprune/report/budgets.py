"""REPORT.md's "Best set per budget" section and its plots (#32): what each unit costs (measured,
OUT/costs.json), the best searched set within each --budget with its interval and held-out check,
and the drop against the KV cache kept and against the predicted decode speed."""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis import budgets
from ..analysis.format import cell, fmt_set, pct, units_named
from ..runs.outputs import COSTS_FILE


def load_costs(directory: Path) -> dict | None:
    try:
        costs = json.loads((Path(directory) / COSTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return costs if isinstance(costs, dict) and "rows" in costs else None


def of_run(directory: Path, run_info: dict, a: dict) -> dict | None:
    """The costs and each budget's choice (None when the run measured no costs)."""
    costs = load_costs(directory)
    if costs is None or len(costs["rows"]) != (a["num_blocks"] if a.get("units", "blocks") == "blocks"
                                                else 2 * a["num_blocks"]):
        return None
    chosen = budgets.choose(a["candidates"], costs, [budgets.parse_budget(b) for b in run_info.get("budgets", [])])
    return {"costs": costs, "chosen": chosen}


def budget_sets(bundle: dict | None) -> list[tuple[int, ...]]:
    """The sets the budgets chose (the held-out check scores them too)."""
    if not bundle:
        return []
    return [tuple(c["removed"]) for c in bundle["chosen"].values() if c.get("met")]


def predicted(bundle: dict | None, removed, phase: str = "decode") -> tuple[float, str] | None:
    """A set's predicted speedup at the longest measured context, and that context."""
    if not bundle or not bundle["costs"].get("time", {}).get(phase):
        return None
    sc = budgets.set_costs(bundle["costs"], removed)
    ctx = max(sc[phase], key=int)
    return sc[phase][ctx], ctx


def _unit_summary(costs: dict) -> list[str]:
    rows, dense = costs["rows"], costs["dense"]
    kv = [r for r in rows if r["kv_bytes_per_token"]]
    decode = costs.get("time", {}).get("decode", {})
    L = [f"Measured on {costs['device']} ({costs['dtype']}): the dense model holds {dense['kv_bytes_per_token']:,} "
         f"bytes of KV cache per token and {dense['weight_bytes'] / 2**20:.1f} MiB of weights."]
    if kv:
        L[-1] += (f" Each attention unit holds {kv[0]['kv_bytes_per_token']:,} bytes per token "
                  f"({pct(kv[0]['kv_bytes_per_token'] / dense['kv_bytes_per_token'])} of the cache).")
    if decode:
        parts = []
        for ctx, t in sorted(decode.items(), key=lambda x: int(x[0])):
            units = t["units_s"]
            att = [units[r["unit"]] for r in rows if r["kv_bytes_per_token"]]
            mlp = [units[r["unit"]] for r in rows if not r["kv_bytes_per_token"]]
            part = f"{ctx} tokens: {1e3 * t['total_s']:.2f} ms per token"
            if att and mlp:
                part += (f" (an attention unit {1e3 * sum(att) / len(att):.3f} ms, an MLP unit "
                         f"{1e3 * sum(mlp) / len(mlp):.3f} ms, median)")
            parts.append(part)
        L[-1] += " Decode step, dense, by context: " + "; ".join(parts) + "."
    return L


def section_lines(bundle: dict | None, validation: dict | None) -> list[str]:
    if not bundle:
        return []
    L = ["## Best set per budget", ""] + _unit_summary(bundle["costs"]) + [""]
    chosen = bundle["chosen"]
    if not chosen:
        return L + ["No --budget was given: each unit's costs are in `costs.json`; `--budget kv=0.7` (or params=, "
                    "decode=X@CONTEXT) names the best set within one.", ""]
    L += ["Speed is predicted from each unit's measured time (T / (T - the removed units' time)); the latency "
          "section measures the recommended sets for real.", "",
          "| budget | removed | k | mean drop (95% CI) | KV kept | weights kept | decode speedup (predicted) | held-out |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    held = (validation or {}).get("sets", {})
    for name, c in chosen.items():
        if not c.get("met"):
            L.append(f"| `{cell(name)}` | — | — | {cell(c['why'])} | — | — | — | — |")
            continue
        sc = c["costs"]
        speed = "—"
        if sc.get("decode"):
            ctx = max(sc["decode"], key=int)
            speed = f"{sc['decode'][ctx]:.2f}x at {ctx}"
        key = ",".join(str(u) for u in c["removed"])
        h = held.get(key)
        verdict = (f"{pct(h['mean_drop'])} ({pct(h['ci95'][0])} – {pct(h['ci95'][1])})"
                   if isinstance(h, dict) and "mean_drop" in h and "ci95" in h else "not checked")
        L.append(f"| `{cell(name)}` | {fmt_set(c['removed'])} | {c['k']} | {pct(c['mean_drop'])} "
                 f"({pct(c['ci95'][0])} – {pct(c['ci95'][1])}) | {pct(sc['kv'])} | {pct(sc['params'])} | {speed} | "
                 f"{verdict} |")
    return L + [""]


def json_of(bundle: dict | None) -> dict:
    if not bundle:
        return {}
    return {"budgets": {name: {**c, **({"names": [fmt_set([u])[1:-1] for u in c["removed"]]} if c.get("met") else {})}
                        for name, c in bundle["chosen"].items()}}


def plot(bundle: dict | None, a: dict, plain: dict | None, directory: Path) -> None:
    """drop_vs_kv.png and drop_vs_decode.png: every complete set (healed and plain, when both)."""
    if not bundle:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = bundle["costs"]
    series = [("healed" if plain else units_named(), a["candidates"])] + ([("plain", plain["candidates"])] if plain else [])
    for measure, fname, xlabel in (("kv", "drop_vs_kv.png", "KV cache kept (fraction of dense)"),
                                   ("decode", "drop_vs_decode.png", "decode speedup, predicted")):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for label, cands in series:
            xs, ys = [], []
            for c in cands:
                sc = budgets.set_costs(costs, c["removed"])
                if measure == "decode":
                    if not sc.get("decode"):
                        continue
                    x = sc["decode"][max(sc["decode"], key=int)]
                else:
                    x = sc["kv"]
                xs.append(x)
                ys.append(100 * c["mean_drop"])
            ax.scatter(xs, ys, s=12, label=label, alpha=0.7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean drop (%)")
        ax.set_title(f"removal sets by {'halves' if units_named() != 'blocks' else 'blocks'}: drop vs {measure}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / fname, dpi=110)
        plt.close(fig)
