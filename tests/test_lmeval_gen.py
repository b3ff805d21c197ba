"""lm-eval generate_until tasks: lm-eval builds the requests, blockprune decodes them greedily under
every candidate in one batch, lm-eval's own filters and metrics score the strings. The generated
text and the per-sample metric equal lm-eval's own HFLM run (batch size 1, greedy) on the dense
model and on blockprune's exported pruned checkpoint."""

import builtins
import json

import pytest

from blockprune import cli
from blockprune.runs.store import RESULTS_FILE

import lm_eval  # noqa: E402,F401  (make test installs it: missing is a failure, not a skip)

PAIRS = [(1, 2), (3, 4), (2, 2), (5, 1), (7, 2), (4, 4), (6, 3), (8, 1)]
# the few-shot examples show the sum ("a"); the scored target ("t") is the first non-space character
# lm-eval's regex filter keeps of the response: on the tiny random model it matches some samples and
# not others, dense and pruned (the test checks both occur)
DOCS = [{"q": f"What is {a} plus {b}?", "a": str(a + b), "t": "t" if i % 2 == 0 else ":"}
        for i, (a, b) in enumerate(PAIRS)]
YAML = """task: bp_gen_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_target: "{{{{t}}}}"
num_fewshot: 2
fewshot_config:
  sampler: first_n
  doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false{extra}
filter_list:
  - name: first-char
    filter:
      - function: regex
        regex_pattern: "(\\\\S)"
        group_select: 0
        fallback: "[none]"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
"""
SETS = "2,3;1"


def write_task(d, extra: str = "", docs=DOCS) -> "Path":  # noqa: F821
    (d / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs), encoding="utf-8")
    (d / "task.yaml").write_text(YAML.format(data=d / "docs.jsonl", extra=extra))
    return d / "task.yaml"


@pytest.fixture(scope="module")
def yaml_task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("lmeval-gen"))


@pytest.fixture(scope="module")
def searched(tiny_dir, yaml_task, tmp_path_factory):
    """`search --method given` on the task: records by removal set."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{yaml_task}", "--method", "given",
                     "--sets", SETS, "--out", str(out), "--no-progress", "--device", "cpu", "--no-latency"]) == 0
    recs = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    return {tuple(r["removed"]): r for r in recs if r.get("type") is None}


def lm_eval_samples(model_dir, yaml_task) -> dict[int, dict]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=1, dtype="float32")
    out = simple_evaluate(model=lm, tasks=["bp_gen_qa"], log_samples=True,
                          task_manager=TaskManager(include_path=str(yaml_task.parent), include_defaults=False))
    return {s["doc_id"]: s for s in out["samples"]["bp_gen_qa"]}


def test_search_stores_generations_and_lm_evals_metric(searched):
    assert set(searched) == {(), (2, 3), (1,)}
    for rec in searched.values():
        per = rec["per_sample"]
        assert len(rec["generated"]) == len(DOCS) and all(isinstance(t, str) for t in rec["generated"])
        assert set(per) >= {"exact_match", "match", "f1", "dense_logprob", "gold_logprob"}
        assert per["match"] == per["exact_match"]
        assert all(v in (0.0, 1.0) for v in per["exact_match"])
        assert rec["value"] == pytest.approx(sum(per["exact_match"]) / len(DOCS))
        assert all(isinstance(v, float) and v == v for f in ("f1", "dense_logprob", "gold_logprob") for v in per[f])


def test_generations_and_metric_equal_lm_evals_own_run(tiny_dir, yaml_task, searched, tmp_path):
    """Per sample: blockprune's generated text is lm-eval's unfiltered response, and its stored
    exact_match is lm-eval's (after lm-eval's regex filter), dense and for two pruned sets (one
    stopping at `until`), with matches and misses in each."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    runs = [((), tiny_dir)]
    for key in [(2, 3), (1,)]:  # (1,) stops at the "\n" of `until` (the others run to max_gen_toks)
        exp = tmp_path / f"exp{len(runs)}"
        assert cli.main(["export", "--model", str(tiny_dir), "--remove", ",".join(map(str, key)), "--out", str(exp)]) == 0
        runs.append((key, exp / "hf"))
    stopped = 0
    for key, model_dir in runs:
        theirs = lm_eval_samples(model_dir, yaml_task)
        rec = searched[key]
        for i, doc_id in enumerate(sorted(theirs)):
            s = theirs[doc_id]
            assert rec["generated"][i] == s["resps"][0][0], (key, doc_id)
            stopped += len(tokenizer.encode(s["resps"][0][0])) < 16
            assert rec["per_sample"]["exact_match"][i] == s["exact_match"], (key, doc_id, s["filtered_resps"])
        assert {s["exact_match"] for s in theirs.values()} == {0.0, 1.0}, key  # else the check says little
    assert stopped  # some response ended at a stop string, before max_gen_toks


def test_filters_decide_the_metric(tiny_dir, yaml_task):
    """The metric is lm-eval's after its filter: the first non-space character is the answer."""
    import transformers

    from blockprune.tasks import load_task

    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    task = load_task(f"lm-eval:{yaml_task}", tok, tok.eos_token_id, None, 0, 512)
    assert task.kind == "generate" and task.n == len(DOCS) and task.lm_eval_metric == "exact_match"
    assert tok.decode(task.prompts[1]) == "Q: What is 1 plus 2?\nA: 3\n\nQ: What is 3 plus 4?\nA: 7\n\nQ: What is 3 plus 4?\nA:"
    assert task.max_new[0] == 16 and task.until[0][0] == "\n"
    assert task.answers[:2] == [["t"], [":"]]
    got = task.lm_eval_scores({0: " Transparency", 1: "t", 2: ": x", 3: " ::::", 5: ""})[("first-char", "exact_match")]
    assert got == {0: 1.0, 1: 0.0, 2: 0.0, 3: 1.0, 5: 0.0}


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockprune: error:") and "\n" not in err, err
    return err


@pytest.mark.parametrize("extra, needle", [
    ("\n  temperature: 0.7", "decodes greedily only"),
    ("\n  do_sample: true", "decodes greedily only"),
    ("\n  num_beams: 4", "num_beams is not plain greedy"),
])
def test_sampling_configs_are_refused_in_one_line(tiny_dir, tmp_path, capsys, extra, needle):
    text = YAML.format(data=tmp_path / "docs.jsonl", extra=extra)
    if "do_sample: true" in extra:
        text = text.replace("  do_sample: false\n  do_sample: true", "  do_sample: true")
    write_task(tmp_path)
    (tmp_path / "task.yaml").write_text(text)
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{tmp_path / 'task.yaml'}", "--method",
                     "given", "--sets", "1", "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"])
    assert code == 2 and needle in one_error(capsys)
    assert not (tmp_path / "o").exists()


def test_a_missing_filter_package_is_refused_in_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    """A filter whose package is not installed (its import fails when it runs): refused, naming the
    package, before anything is decoded or written."""
    (tmp_path / "myfilters.py").write_text(
        "from lm_eval.api.filter import Filter\n\n"
        "class Langdetect(Filter):\n"
        "    def apply(self, resps, docs):\n"
        "        import langdetect_for_test  # noqa: F401\n"
        "        return resps\n")
    write_task(tmp_path)
    text = (tmp_path / "task.yaml").read_text().replace("      - function: take_first",
                                                       "      - function: !function myfilters.Langdetect\n"
                                                       "      - function: take_first")
    (tmp_path / "task.yaml").write_text(text)
    real = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "langdetect_for_test":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", failing)
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{tmp_path / 'task.yaml'}", "--method",
                     "given", "--sets", "1", "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"])
    err = one_error(capsys)
    assert code == 2 and "need the package 'langdetect_for_test'" in err and "not installed" in err
    assert not (tmp_path / "o").exists()


def test_corpus_level_metrics_are_refused(tiny_dir, tmp_path, capsys):
    write_task(tmp_path)
    text = (tmp_path / "task.yaml").read_text().replace("    aggregation: mean", "    aggregation: median")
    (tmp_path / "task.yaml").write_text(text)
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{tmp_path / 'task.yaml'}", "--method",
                     "given", "--sets", "1", "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"])
    assert code == 2 and "aggregated over the corpus" in one_error(capsys)
