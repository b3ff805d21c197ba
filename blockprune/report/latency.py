"""The latency tables and plots: `latency.md` and `latency.png` of `blockprune bench --out`, the
report's measured speedups (read from a run's `latency.json`) and its drop-vs-speedup plot.

Reading and rendering only: what is measured, and how, is `blockprune.measure.latency`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

LATENCY_FILE = "latency.json"
MARKDOWN_FILE = "latency.md"
PLOT_FILE = "latency.png"


def _fmt_stats(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def markdown(result: dict) -> str:
    st = result["settings"]
    m = result["machine"]
    L = [f"# Latency: {result['model']} ({result['num_blocks']} blocks), dense vs pruned", "",
         f"{result['device']}, {result['dtype']}; {m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}; "
         + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + f"; {result['timestamp']}.", "",
         f"Prompt {st['prompt_len']} tokens, {st['gen_len']} generated (greedy, no EOS stop); {st['warmup']} warm-up + "
         f"{st['reps']} timed runs per variant, interleaved (A B, then B A). Times are median (min–max): prefill over runs, "
         "decode over every step of every run (the first token is the prefill's). Speedup = median over runs of "
         "dense run r / pruned run r (adjacent in time; decode: their median step times), min–max beside it; "
         "ideal = L/(L-k)."
         + (f" Load average (1/5/15 min) {m['loadavg_start']} before, {m.get('loadavg_end')} after."
            if "loadavg_start" in m else ""), "",
         "| backend | batch | variant | blocks | prefill ms | prefill p90 | decode ms/token | decode p90 | decode tok/s "
         "| end-to-end tok/s | KV cache MiB |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["results"]:
        L.append(f"| {r['backend']} | {r['batch']} | {r['variant']} | {r['kept_blocks']} | {_fmt_stats(r['prefill_ms'])} | "
                 f"{r['prefill_ms']['p90']:.2f} | {_fmt_stats(r['decode_ms_per_token'])} | "
                 f"{r['decode_ms_per_token']['p90']:.2f} | {r['decode_tokens_per_s']:.1f} | {r['e2e_tokens_per_s']:.1f} | "
                 f"{r['memory']['kv_cache_mib']:.2f} |")
    L += ["", "| backend | batch | removed | k | ideal L/(L-k) | prefill speedup (min–max) | decode speedup (min–max) "
          "| decode ratio of medians | decode % of ideal | % of ideal gain |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in result["speedups"]:
        p, q = s["decode_paired"], s["prefill_paired"]
        L.append(f"| {s['backend']} | {s['batch']} | {s['removed']} | {s['k']} | {s['ideal']:.3f} | "
                 f"{s['prefill']:.3f} ({q['min']:.3f}–{q['max']:.3f}) | {s['decode']:.3f} ({p['min']:.3f}–{p['max']:.3f}) | "
                 f"{s['decode_ratio_of_medians']:.3f} | "
                 f"{100 * s['decode_fraction_of_ideal']:.1f}% | {100 * s['decode_fraction_of_ideal_gain']:.0f}% |")
    L += ["", f"Memory: {result['memory_note']}."]
    rss = max((r["memory"].get("process_peak_rss_mib", 0) for r in result["results"]), default=0)
    L.append(f"Process peak RSS: {rss:.0f} MiB.")
    if "onnxruntime" in result:
        o = result["onnxruntime"]
        L.append(f"onnxruntime: providers {', '.join(o['providers'])}, {o['intra_op_num_threads']} intra-op threads; "
                 "its graph computes logits at every prompt position (no logits_to_keep).")
    return "\n".join(L) + "\n"


def plot(result: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speedups = result["speedups"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, phase in zip(axes[0], ("prefill", "decode")):
        labels = [f"{'ort' if s['backend'] == 'onnxruntime' else s['backend']} b{s['batch']}\n-{','.join(map(str, s['removed']))}"
                  for s in speedups]
        x = np.arange(len(speedups))
        med = [s[phase] for s in speedups]
        lo = [s[phase] - s[f"{phase}_paired"]["min"] for s in speedups]
        hi = [s[f"{phase}_paired"]["max"] - s[phase] for s in speedups]
        ax.bar(x, med, yerr=np.clip([lo, hi], 0, None), capsize=3, color="tab:blue", label="measured: paired median (min–max)")
        ax.scatter(x, [s["ideal"] for s in speedups], marker="_", s=400, color="tab:red", zorder=3, label="ideal L/(L-k)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel(f"{phase} speedup vs dense")
        ax.set_title(f"{phase}: {result['model']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_speedups(directory: str | Path, model: str | None = None) -> dict[tuple[int, ...], dict] | None:
    """{removed set: speedup record} from DIR/latency.json (PyTorch, the smallest batch), or None."""
    path = Path(directory) / LATENCY_FILE
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        speedups = result["speedups"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if model is not None and result.get("model") != model:
        return None
    rows = [s for s in speedups if s.get("backend") == "torch"] or speedups
    if not rows:
        return None
    batch = min(s["batch"] for s in rows)
    return {tuple(s["removed"]): s for s in rows if s["batch"] == batch}


def load_settings(directory: str | Path) -> dict:
    """{prompt, gen, reps, device} of DIR/latency.json, for the report's sentence."""
    result = json.loads((Path(directory) / LATENCY_FILE).read_text(encoding="utf-8"))
    st = result["settings"]
    return {"prompt": st["prompt_len"], "gen": st["gen_len"], "reps": st["reps"],
            "device": f"{result['device']}, {result['machine'].get('gpu') or result['machine']['cpu']}, "
                      f"torch threads {result['machine']['torch_threads']}"}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (drop, speedup) not dominated by another (lower-or-equal drop and
    higher-or-equal speedup, one strictly), ordered by speedup."""
    front = []
    for i, (d, s) in enumerate(points):
        if not any((d2 <= d and s2 >= s and (d2 < d or s2 > s)) for j, (d2, s2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][1])
