"""The report's PNG plots (matplotlib, Agg): ranking per k, the single-block heatmap, the stepwise
path, the drop distribution, and mean drop against measured speedup (`drop_vs_speedup.png`).

A set that fails the per-task guard (some task's drop significantly above the tolerance, see
`blockprune.analysis.advice.guard`) is one no recommendation can take: the plots draw it hollow and never
on a Pareto front (`speedup_points` chooses, `plot_drop_vs_speedup` draws).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis.advice import by_k, guard
from .latency import pareto_front
from .text import fmt_set
from ..analysis.format import units_named

PLOTS = ("ranking", "single_block_heatmap", "stepwise", "drop_distribution", "drop_vs_speedup")
COLOURS = {"measured": "tab:blue", "healed": "tab:green", "plain": "tab:orange"}


def speedup_points(candidates: list[dict], speedups: dict, tolerance: float, series: str = "measured") -> list[dict]:
    """The points of one series of the drop-vs-speedup plot: the dense model (drop 0, speedup 1)
    and every candidate with a measured speedup, each with its mean drop's 95% interval (`ci95`),
    the min–max of its paired decode speedups (`speedup_range`), `guard` (False: drawn hollow) and
    `front`: on the Pareto front of the sets that pass the guard (a failing set never is)."""
    points = [{"series": series, "removed": [], "label": "dense", "drop": 0.0, "ci95": [0.0, 0.0], "speedup": 1.0,
               "speedup_range": [1.0, 1.0], "ideal": 1.0, "guard": True}]
    for c in candidates:
        s = speedups.get(tuple(c["removed"]))
        if s is None:
            continue
        paired = s.get("decode_paired") or {}
        points.append({"series": series, "removed": list(c["removed"]), "label": fmt_set(c["removed"]),
                       "drop": c["mean_drop"], "ci95": list(c["ci95"]), "speedup": s["decode"],
                       "speedup_range": [paired.get("min", s["decode"]), paired.get("max", s["decode"])],
                       "ideal": s.get("ideal"), "guard": guard(c, tolerance)})
    eligible = [i for i, p in enumerate(points) if p["guard"]]
    front = {eligible[j] for j in pareto_front([(points[i]["drop"], points[i]["speedup"]) for i in eligible])}
    for i, p in enumerate(points):
        p["front"] = i in front
    return points


def speedup_series(candidates: list[dict], speedups: dict, tolerance: float, healed: bool = False,
                   plain: dict | None = None, plain_speedups: dict | None = None) -> dict[str, list[dict]]:
    """{series name: points}: the run's sets ("healed" for a healed run, else "measured") and, with
    `plain` (a healed run's OUT/plain analysis), the plain search's sets, whose speeds are the
    run's measurements (a set's modules and speed are the same healed or plain) or plain/'s own."""
    series = {"healed" if healed else "measured": speedup_points(candidates, speedups, tolerance,
                                                                 "healed" if healed else "measured")}
    if plain is not None:
        series["plain"] = speedup_points(plain["candidates"], {**(plain_speedups or {}), **speedups}, tolerance, "plain")
    return series


def plot_drop_vs_speedup(series: dict[str, list[dict]], tolerance: float, path: str | Path) -> bool:
    """Mean drop (95% interval) vs measured decode speedup (min–max) of every benched set, one
    colour per series (`speedup_points`), each series' Pareto front dashed; sets failing the guard
    hollow. False (nothing drawn) when no series has a measured set."""
    if not any(len(points) > 1 for points in series.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    ax.scatter([0.0], [1.0], color="black", zorder=4, label="dense")
    hollow_labelled = False
    for name, points in series.items():
        colour = COLOURS.get(name, "tab:purple")
        sets = points[1:]
        for filled in (True, False):
            pts = [p for p in sets if p["guard"] == filled]
            if not pts:
                continue
            x = np.array([100 * p["drop"] for p in pts])
            y = np.array([p["speedup"] for p in pts])
            xerr = np.clip([[100 * (p["drop"] - p["ci95"][0]) for p in pts],
                            [100 * (p["ci95"][1] - p["drop"]) for p in pts]], 0, None)
            yerr = np.clip([[p["speedup"] - p["speedup_range"][0] for p in pts],
                            [p["speedup_range"][1] - p["speedup"] for p in pts]], 0, None)
            label = name if filled else (None if hollow_labelled else "fails the per-task guard (hollow)")
            hollow_labelled = hollow_labelled or not filled
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=colour, mfc=colour if filled else "none",
                        ecolor=colour, elinewidth=0.8, capsize=2, alpha=1.0 if filled else 0.7, label=label)
        front = sorted((p for p in points if p["front"]), key=lambda p: p["speedup"])
        ax.plot([100 * p["drop"] for p in front], [p["speedup"] for p in front], "--", color=colour, lw=1.2,
                label=f"{name}: Pareto front (guard passed)")
        for p in sets:
            ax.annotate(p["label"], (100 * p["drop"], p["speedup"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=colour)
            if p.get("ideal"):
                ax.scatter([100 * p["drop"]], [p["ideal"]], marker="_", s=150, color="grey")
    ax.axvline(100 * tolerance, color="grey", ls=":", lw=0.8, label=f"tolerance {100 * tolerance:.1f}%")
    ax.set_xlabel("mean drop over tasks (%), 95% interval")
    ax.set_ylabel("measured decode speedup vs dense (grey: ideal)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_all(a: dict, path: list[dict], directory: Path, tolerance: float | None = None) -> None:
    """Every plot but drop_vs_speedup; with `tolerance`, ranking bars of sets failing the guard are hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_k(a["candidates"])
    ks = sorted(groups)
    if ks:
        fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.5), squeeze=False)
        for ax, k in zip(axes[0], ks):
            top = groups[k][:5]
            y = [100 * c["mean_drop"] for c in top]
            err = [[100 * (c["mean_drop"] - c["ci95"][0]) for c in top], [100 * (c["ci95"][1] - c["mean_drop"]) for c in top]]
            bars = ax.bar(range(len(top)), y, yerr=np.clip(err, 0, None), capsize=3, color="tab:blue", edgecolor="tab:blue")
            if tolerance is not None:
                for bar, c in zip(bars, top):
                    bar.set_fill(guard(c, tolerance))
            ax.set_xticks(range(len(top)), [fmt_set(c["removed"]) for c in top], rotation=45, ha="right", fontsize=7)
            ax.set_title(f"k = {k}: top {len(top)}" + (" (hollow: fails the guard)" if tolerance is not None else ""),
                         fontsize=9)
            ax.set_ylabel("mean drop (%), 95% CI")
        fig.tight_layout()
        fig.savefig(directory / "ranking.png", dpi=110)
        plt.close(fig)
    if a["per_block"]:
        tasks = list(a["tasks"])
        grid = np.array([[100 * b["drops"][t] for b in a["per_block"]] for t in tasks])
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(a["per_block"])), 1 + 0.5 * len(tasks)))
        im = ax.imshow(np.clip(grid, -50, 100), aspect="auto", cmap="magma_r")
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_xticks(range(len(a["per_block"])), [fmt_set([b["block"]])[1:-1] for b in a["per_block"]], fontsize=7)
        unit = "block" if units_named() == "blocks" else "unit (a: attention, m: MLP)"
        ax.set_xlabel(f"removed {unit}")
        ax.set_title(f"single-{unit.split()[0]} drop per task (%, clipped to [-50, 100])")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(directory / "single_block_heatmap.png", dpi=110)
        plt.close(fig)
    if path:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        k = [s["k"] for s in path]
        m = np.array([100 * s["mean_drop"] for s in path])
        lo = np.array([100 * s["ci95"][0] for s in path])
        hi = np.array([100 * s["ci95"][1] for s in path])
        ax.plot(k, m, "o-", label="mean drop")
        ax.fill_between(k, lo, hi, alpha=0.25, label="95% CI")
        ax.bar(k, [100 * s["incremental_drop"] for s in path], alpha=0.4, color="tab:orange", label="incremental")
        ax.set_xlabel(f"{'blocks' if units_named() == 'blocks' else 'units'} removed (stepwise)")
        ax.set_ylabel("drop (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "stepwise.png", dpi=110)
        plt.close(fig)
    if ks:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k in ks:
            ax.hist([100 * c["mean_drop"] for c in groups[k]], bins=20, alpha=0.5, label=f"k = {k}")
        ax.set_xlabel("mean drop (%)")
        ax.set_ylabel("candidates")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "drop_distribution.png", dpi=110)
        plt.close(fig)
