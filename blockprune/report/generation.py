"""The report's generative parts: what the pruned model says, and whether generation falls faster
than multiple choice.

Depth pruning hurts generation first (arXiv 2602.01997; Minitron-4B depth: MMLU 58.7 against the
teacher's 65.3, GSM8K 16.8 against 48.6): a report built on multiple choice and perplexity alone
overstates what survives. So when a run has a generative task (kind `generate`) and a
multiple-choice one, the finding compares, for the best set of each k, the generative task's drop
with the largest multiple-choice drop, both on their ranking scores (full signal), and says where
generation falls faster by more than both intervals allow. And for the recommended sets the report
shows a few samples' generated text beside the dense model's (the store keeps every sample's).
"""

from __future__ import annotations

from typing import Sequence

from .text import cell

GEN_KIND = "generate"
MC_KIND = "multiple_choice"
SHOWN_SAMPLES = 3
SHOWN_CHARS = 120


def _tasks_of(a: dict, kind: str) -> list[str]:
    return [n for n, t in a["tasks"].items() if t.get("kind") == kind]


def finding(a: dict, groups: dict[int, list[dict]]) -> dict | None:
    """{"kind": "generation_falls_faster", "per_k": [...]} or None when the run has no generative
    and multiple-choice task both. Per k: the best set, the generative task's drop and interval,
    the multiple-choice task with the largest drop and its interval, and whether the generative
    drop's lower bound is above that task's upper bound (`faster`)."""
    gens, mcs = _tasks_of(a, GEN_KIND), _tasks_of(a, MC_KIND)
    if not gens or not mcs:
        return None
    rows = []
    for k in sorted(groups):
        if not k or not groups[k]:
            continue
        best = groups[k][0]
        ci = best.get("task_ci95", {})
        mc = max(mcs, key=lambda t: best["drops"].get(t, float("-inf")))
        for g in gens:
            if g not in best["drops"] or mc not in best["drops"]:
                continue
            g_ci, m_ci = ci.get(g, [best["drops"][g]] * 2), ci.get(mc, [best["drops"][mc]] * 2)
            rows.append({"k": k, "removed": best["removed"], "task": g, "drop": best["drops"][g], "ci95": g_ci,
                         "mc_task": mc, "mc_drop": best["drops"][mc], "mc_ci95": m_ci,
                         "metric_drop": best.get("metric_drops", {}).get(g),
                         "faster": g_ci[0] > m_ci[1]})
    return {"kind": "generation_falls_faster", "value": any(r["faster"] for r in rows), "per_k": rows}


def finding_lines(f: dict, T: dict) -> list[str]:
    faster = [r for r in f["per_k"] if r["faster"]]
    if not faster:
        return [f"- {T['gen_not_faster']}"]
    first = faster[0]
    return [f"- {T['gen_faster'].format(task=first['task'], k=first['k'], set=first['removed'], drop=first['drop'], lo=first['ci95'][0], hi=first['ci95'][1], mc=first['mc_task'], mc_drop=first['mc_drop'], mc_hi=first['mc_ci95'][1], ks=', '.join(str(r['k']) for r in faster))}"]


def _clip(text: str | None) -> str:
    if text is None:
        return "—"
    text = " ".join(str(text).split())
    text = text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
    return "`" + cell(text.replace("`", "'")) + "`" if text else "*(empty)*"


def sample_lines(a: dict, store, sets: Sequence[Sequence[int]], T: dict) -> list[str]:
    """A few samples of each generative task: the dense model's output and each set's."""
    gens = _tasks_of(a, GEN_KIND)
    if not gens or store is None:
        return []
    from .text import fmt_set

    out = [f"## {T['gen_samples']}", "", T["gen_samples_text"], ""]
    for task in gens:
        def generated(removed):
            try:
                return store.get(tuple(removed), task).get("generated")
            except KeyError:
                return None

        dense = generated(())
        if dense is None:
            continue
        shown = [s for s in sets if generated(s) is not None]
        head = ["sample", "dense"] + [fmt_set(list(s)) for s in shown]
        out += [f"**{task}**", "", "| " + " | ".join(map(cell, head)) + " |", "|" + " --- |" * len(head)]
        ids = a["tasks"][task].get("sample_ids") or [str(i) for i in range(len(dense))]
        for i in range(min(SHOWN_SAMPLES, len(dense))):
            cells = [cell(ids[i]) if i < len(ids) else str(i), _clip(dense[i])]
            cells += [_clip(generated(s)[i]) for s in shown]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out if len(out) > 4 else []
