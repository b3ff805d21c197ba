"""Parity of blockprune's per-sample scores with lm-evaluation-harness on the real SmolLM2-135M.

A real multiple-choice task (BIG-bench general_knowledge from the cache, written as a local
lm-eval YAML task over JSONL) is scored by `blockprune search --method given` (dense and the given
sets) and by lm-eval's own HFLM on the dense checkpoint and on blockprune's exported pruned
checkpoints. Writes bench/results/lmeval_parity.{json,md}.

    .venv/bin/python bench/lmeval_parity.py [--sets "17,18,19;4,13"]
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
from blockprune.tasks import _bigbench_rows

YAML = """task: bigbench_gk_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def lm_eval_samples(model_dir: Path, task_dir: Path) -> dict[int, dict]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=16, dtype="float32")
    out = simple_evaluate(model=lm, tasks=["bigbench_gk_local"], log_samples=True,
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    return {s["doc_id"]: s for s in out["samples"]["bigbench_gk_local"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="17,18,19;4,13")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    sets = [tuple(int(b) for b in s.split(",")) for s in args.sets.split(";")]
    root = Path(tempfile.mkdtemp(prefix="bp-lmeval-"))
    rows = _bigbench_rows(data.bigbench_task("general_knowledge", None), "general_knowledge")
    docs = [{"question": r["context"], "choices": [c.strip() for c in r["choices"]], "answer": r["label"]} for r in rows]
    (root / "docs.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    (root / "task.yaml").write_text(YAML.format(data=root / "docs.jsonl"))
    start = time.perf_counter()
    api.run_search(model="smollm2-135m", tasks=[f"lm-eval:{root / 'task.yaml'}"], out=root / "run", method="given",
                   sets=sets, samples=None, device="cpu", progress=False, latency=False)
    ours_s = time.perf_counter() - start
    recs = {tuple(json.loads(line)["removed"]): json.loads(line) for line in (root / "run" / "results.jsonl").read_text().splitlines()
            if json.loads(line).get("type") is None}
    result = {"model": "smollm2-135m", "task": "BIG-bench general_knowledge as a local lm-eval YAML task",
              "docs": len(docs), "blockprune_seconds": round(ours_s, 1), "sets": {}}
    for key in [()] + sets:
        if key:
            api.export("smollm2-135m", key, root / f"exp-{'-'.join(map(str, key))}", device="cpu")
            model_dir = root / f"exp-{'-'.join(map(str, key))}" / "hf"
        else:
            model_dir = Path(models.resolve("smollm2-135m"))
        t = time.perf_counter()
        theirs = lm_eval_samples(model_dir, root)
        per = recs[key]["per_sample"]
        ids = sorted(theirs)
        acc_same = sum(per["correct"][i] == theirs[d]["acc"] for i, d in enumerate(ids))
        norm_same = sum(per["correct_norm"][i] == theirs[d]["acc_norm"] for i, d in enumerate(ids))
        diff = max(abs(a - r[0]) for i, d in enumerate(ids)
                   for a, r in zip(per["choice_logprob"][i], theirs[d]["filtered_resps"]))
        result["sets"][",".join(map(str, key)) or "dense"] = {
            "acc_agree": f"{acc_same}/{len(ids)}", "acc_norm_agree": f"{norm_same}/{len(ids)}",
            "max_abs_loglik_diff": float(diff), "acc_blockprune": float(np.mean(per["correct"])),
            "acc_lm_eval": float(np.mean([theirs[d]["acc"] for d in ids])), "lm_eval_seconds": round(time.perf_counter() - t, 1)}
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
