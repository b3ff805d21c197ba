"""The report's PNG plots (matplotlib, Agg): ranking per k, the single-block heatmap, the stepwise
path and the drop distribution; `drop_vs_speedup.png` is drawn by blockprune.latency_report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .advice import by_k
from .report_text import fmt_set

PLOTS = ("ranking", "single_block_heatmap", "stepwise", "drop_distribution", "drop_vs_speedup")


def plot_all(a: dict, path: list[dict], directory: Path) -> None:
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
            ax.bar(range(len(top)), y, yerr=np.clip(err, 0, None), capsize=3, color="tab:blue")
            ax.set_xticks(range(len(top)), [fmt_set(c["removed"]) for c in top], rotation=45, ha="right", fontsize=7)
            ax.set_title(f"k = {k}: top {len(top)}")
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
        ax.set_xticks(range(len(a["per_block"])), [b["block"] for b in a["per_block"]], fontsize=7)
        ax.set_xlabel("removed block")
        ax.set_title("single-block drop per task (%, clipped to [-50, 100])")
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
        ax.set_xlabel("blocks removed (stepwise)")
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
