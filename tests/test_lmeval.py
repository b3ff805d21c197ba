"""lm-eval tasks: blockprune's per-sample acc / acc_norm equal lm-evaluation-harness's own run
(HFLM on the same model, and on blockprune's exported checkpoint for a removal set)."""

import json

import pytest

from blockprune import cli
from blockprune.runs.store import RESULTS_FILE

import lm_eval  # noqa: E402,F401  (make test installs it: missing is a failure, not a skip)

DOCS = [{"question": f"What comes after {i}?", "choices": [str(i + 1), str(i + 7), "banana", "café au lait"],
         "answer": 0 if i % 3 else 3} for i in range(12)]
YAML = """task: bp_parity_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def yaml_task(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval")
    (d / "docs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in DOCS), encoding="utf-8")
    (d / "task.yaml").write_text(YAML.format(data=d / "docs.jsonl"))
    return d / "task.yaml"


def lm_eval_samples(model_dir, yaml_task) -> dict[int, dict]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=8, dtype="float32")
    out = simple_evaluate(model=lm, tasks=["bp_parity_mc"], log_samples=True,
                          task_manager=TaskManager(include_path=str(yaml_task.parent), include_defaults=False))
    return {s["doc_id"]: s for s in out["samples"]["bp_parity_mc"]}


def records(run) -> dict[tuple, dict]:
    recs = [json.loads(line) for line in (run / RESULTS_FILE).read_text().splitlines()]
    return {tuple(r["removed"]): r for r in recs if r.get("type") is None}


def test_norm_divides_by_characters_of_the_choice(tiny_dir, yaml_task):
    import transformers

    from blockprune.tasks import load_task

    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    task = load_task(f"lm-eval:{yaml_task}", tok, tok.eos_token_id, None, 0, 64)
    assert task.name == "bp_parity_mc" and task.n == 12 and task.labels == [d["answer"] for d in DOCS]
    assert task.norm_len[:4] == [1, 1, 6, 12]  # "café au lait": 12 characters, 13 bytes
    first = task.requests[0]
    assert tok.decode(first.tokens[: first.score_from]) == "Question: What comes after 0?\nAnswer:"
    assert tok.decode(first.tokens[first.score_from :]) == " 1"


def test_per_sample_scores_match_lm_eval_dense_and_pruned(tiny_dir, yaml_task, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{yaml_task}", "--method", "given",
                     "--sets", "2,3", "--out", str(out), "--no-progress", "--device", "cpu", "--no-latency"]) == 0
    ours = records(out)
    exp = tmp_path / "exp"
    assert cli.main(["export", "--model", str(tiny_dir), "--remove", "2,3", "--out", str(exp)]) == 0
    for key, model_dir in [((), tiny_dir), ((2, 3), exp / "hf")]:
        theirs = lm_eval_samples(model_dir, yaml_task)
        rec = ours[key]["per_sample"]
        for i, doc_id in enumerate(sorted(theirs)):
            s = theirs[doc_id]
            assert rec["correct"][i] == s["acc"], (key, doc_id)
            assert rec["correct_norm"][i] == s["acc_norm"], (key, doc_id)
            lls = [r[0] for r in s["filtered_resps"]]
            assert rec["choice_logprob"][i] == pytest.approx(lls, abs=2e-4)


LL_YAML = """task: bp_parity_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text}}}}"
doc_to_target: " {{{{word}}}}"
metric_list:
  - metric: acc
  - metric: perplexity
"""


def test_loglikelihood_tasks_match_lm_eval(tiny_dir, tmp_path):
    """LAMBADA-style: lm-eval's acc is is_greedy of the continuation; blockprune's match, and the
    log-likelihood is its gold_logprob."""
    words = ["river", "stone", "cloud", "light", "apple", "night"]
    docs = [{"text": f"The {w} and the {w} and the", "word": w} for w in words]
    (tmp_path / "ll.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "ll.yaml").write_text(LL_YAML.format(data=tmp_path / "ll.jsonl"))
    out = tmp_path / "run"
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{tmp_path / 'll.yaml'}", "--method",
                     "given", "--sets", "1", "--out", str(out), "--no-progress", "--device", "cpu", "--no-latency"]) == 0
    rec = records(out)[()]["per_sample"]
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(model=HFLM(pretrained=str(tiny_dir), device="cpu", batch_size=8, dtype="float32"),
                          tasks=["bp_parity_ll"], log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    theirs = {s["doc_id"]: s for s in res["samples"]["bp_parity_ll"]}
    for i, doc_id in enumerate(sorted(theirs)):
        ll, greedy = theirs[doc_id]["filtered_resps"][0]
        assert rec["match"][i] == theirs[doc_id]["acc"] == int(greedy)
        assert rec["gold_logprob"][i] == pytest.approx(ll, abs=2e-4)


@pytest.mark.parametrize("yaml_text, needle", [
    ("task: bp_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
     "output_type: generate_until\ndoc_to_text: '{{{{text}}}}'\ndoc_to_target: '{{{{word}}}}'\n"
     "generation_kwargs:\n  do_sample: true\n  temperature: 0.7\n",
     "blockprune decodes greedily only"),
    ("not: [a task", "not a YAML task file"),
    ("dataset_path: json\n", "no `task:` name"),
])
def test_lm_eval_tasks_blockprune_cannot_run_are_one_line(tiny_dir, tmp_path, capsys, yaml_text, needle):
    (tmp_path / "d.jsonl").write_text('{"text": "a b", "word": "c"}\n')
    (tmp_path / "t.yaml").write_text(yaml_text.format(data=tmp_path / "d.jsonl"))
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{tmp_path / 't.yaml'}", "--method",
                     "given", "--sets", "1", "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("blockprune: error:") and needle in err and "\n" not in err
    assert not (tmp_path / "o").exists()
