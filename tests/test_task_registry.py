"""Task kinds and schemes are registered data: a kind defined here, outside the package, runs
through the search, the runners and the analysis without a line of library code naming it, and a
second KL-like kind gets the dense path from its declaration, never from its name."""

import re
from pathlib import Path

import numpy as np
import pytest

from blockprune import analysis, models, search
from blockprune.tasks import scores
from blockprune.search import shard
from blockprune.engine import Engine
from blockprune.tasks.kinds import KLTask, Task, kind_of_task
from blockprune.tasks.loaders import select
from blockprune.tasks.request import Request
from blockprune.tasks.scores import KINDS, SCORES, Kind, Score, get_kind, register_kind
from blockprune.runs.store import Store
from blockprune.tasks import (SCHEMES, Scheme, TaskSpec, absolute_spec, check_spec, load_task, parse_spec,
                              register_scheme)
from reference import naive_scores


# ---- a toy kind: the log-prob of each sentence's last token -------------------------------------
class LastTokenTask(Task):
    """Each sample is one sentence; only its last token is scored."""

    def __init__(self, name, sentences, ids, tokenizer):
        super().__init__(name, ids)
        for s, text in enumerate(sentences):
            tokens = tokenizer(text, add_special_tokens=False).input_ids
            self.requests.append(Request(tuple(tokens), len(tokens) - 1))
            self.request_sample.append(s)

    def per_sample(self, logprob, greedy, kl=None):
        return {"last_nll": -logprob, "last_ntok": np.ones_like(logprob)}

    def value(self, per_sample):
        nll = np.asarray(per_sample["last_nll"], dtype=float)
        return -nll.sum(axis=-1) / np.asarray(per_sample["last_ntok"], dtype=float).sum(axis=-1)


def load_last_token(spec, load):
    sentences = [f"The word {spec.source} is number {i} of the list." for i in range(6)]
    ids, sentences = select([str(i) for i in range(6)], sentences, load.samples, load.seed, spec.source, load.exclude)
    return LastTokenTask(f"last_{spec.source}", sentences, ids, load.tokenizer)


TOY_SCORE = Score("last_token", "loglik", "last_nll", "last_ntok", False, "log-prob of a sentence's last token")
TOY_KIND = Kind("last_token", ("last_token",), metric="last_token")
TOY_SCHEME = Scheme("last", "last:<word>", load_last_token)
# a second kind that needs the dense model's distribution, under another name than "kl"
TWIN_KIND = Kind("kl_twin", ("kl", "perplexity"), metric="kl", higher_is_better=False, shown="perplexity",
                 needs_dense=True, text_windows=True)


@pytest.fixture
def registered():
    """Register the toy kind, its score and scheme, and the KL twin, through the public calls;
    take them out again afterwards (other tests read the registries' names in messages)."""
    scores.register(TOY_SCORE)
    kind_of_task(TOY_KIND)(LastTokenTask)
    register_scheme(TOY_SCHEME)
    register_kind(TWIN_KIND)
    yield
    for table, name in ((SCORES, "last_token"), (KINDS, "last_token"), (KINDS, "kl_twin"), (SCHEMES, "last")):
        table.pop(name)


def store_for(out, bm, tasks):
    return Store(out, {"model": "tiny", "num_blocks": bm.num_blocks, "method": "beam", "tasks": {
        t.name: {"spec": t.name, "kind": t.kind, "metric": t.metric, "higher_is_better": t.higher_is_better, "n": t.n,
                 "sample_ids": t.sample_ids} for t in tasks}})


def test_a_kind_registered_outside_the_package_runs_through_the_search(registered, tiny_dir, jsonl_tasks, tmp_path):
    bm = models.load(str(tiny_dir), device="cpu")
    check_spec("last:apple")  # the syntax check the CLI runs before the model loads
    toy = load_task("last:apple#4", bm.tokenizer, bm.eos_token_id)
    mc = load_task(f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4", bm.tokenizer, bm.eos_token_id)
    assert isinstance(toy, LastTokenTask) and toy.kind == "last_token" and toy.n == 4
    assert (toy.metric, toy.higher_is_better) == ("last_token", True)
    store = store_for(tmp_path / "run", bm, [toy, mc])
    ev = search.Evaluator(Engine(bm), [toy, mc], store, progress=False)
    assert ev.rank_by == {"last_apple": "last_token", "mc": "p_gold"}  # the kind's default score
    result = search.run("beam", ev, max_remove=2, beam_width=2)
    assert result.evaluated
    # the toy's stored value for a removal set is the last tokens' mean log-prob of the physically pruned model
    key = next(k for k in result.evaluated if k)
    lp, _ = naive_scores(bm, toy.requests, key)
    assert store.get(key, "last_apple")["value"] == pytest.approx(float(lp.mean()), abs=2e-4)
    # the analysis reads the kind's declarations: ranking score, shown metric, drops
    a = analysis.build(Store.open_existing(tmp_path / "run"), replicates=20)
    assert a["rank_by"]["last_apple"] == "last_token" and a["tasks"]["last_apple"]["shown"] == "last_token"
    cand = next(c for c in a["candidates"] if tuple(c["removed"]) == key)
    dense = store.get((), "last_apple")["value"]
    # a loglik score's drop: 1 - exp(-(NLL - NLL_dense) per token)
    assert cand["drops"]["last_apple"] == pytest.approx(1 - np.exp(cand["scores"]["last_apple"] - dense), rel=1e-6)
    # --rank-by knows it too
    assert scores.resolve_rank_by("metric", {"last_apple": "last_token"}) == {"last_apple": "last_token"}


def test_a_second_kl_like_kind_gets_the_dense_path_from_its_declaration(registered, tiny_dir, jsonl_tasks, tmp_path):
    """Fails when any runner decides the dense path by `kind == "kl"` (the twin then gets no KL
    output, its per_sample refuses, or its work unit is planned without the dense row)."""

    @kind_of_task("kl_twin")
    class TwinKL(KLTask):
        pass

    bm = models.load(str(tiny_dir), device="cpu")
    kl = load_task(f"kl:jsonl:{jsonl_tasks / 'ppl.jsonl'}#3", bm.tokenizer, bm.eos_token_id, ppl_window=8)
    twin = TwinKL("twin", [list(r.tokens[len(kl.prefix):]) for r in kl.requests], kl.sample_ids, kl.prefix)
    assert twin.kind == "kl_twin" and [r.tokens for r in twin.requests] == [r.tokens for r in kl.requests]
    engine = Engine(bm)
    sets, req_ids = [(1,), (2, 3)], list(range(len(kl.requests)))
    plain = load_task(f"jsonl:{jsonl_tasks / 'ppl.jsonl'}#3", bm.tokenizer, bm.eos_token_id, ppl_window=8)
    assert shard.unit_cost(engine, twin, sets, req_ids) == shard.unit_cost(engine, kl, sets, req_ids) \
        > shard.unit_cost(engine, plain, sets, req_ids)  # the dense path's rows are counted
    store = store_for(tmp_path / "run", bm, [kl, twin])
    ev = search.Evaluator(engine, [kl, twin], store, progress=False)
    assert ev.rank_by == {kl.name: "kl", "twin": "kl"}
    result = search.run("beam", ev, max_remove=2, beam_width=2)
    for key in [()] + list(result.evaluated):
        a, b = store.get(key, kl.name), store.get(key, "twin")
        assert b["value"] == pytest.approx(a["value"], rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(b["per_sample"]["kl"], a["per_sample"]["kl"], rtol=1e-6, atol=1e-9)
    assert any(store.get(k, "twin")["value"] > 0 for k in result.evaluated)  # a real KL, not zeros
    assert get_kind("kl_twin").text_windows  # validate's plain-transformers check reads this, not the name


def test_no_branch_on_a_kind_name_in_the_library():
    """Behaviour per kind comes from its declaration (scores.Kind): a comparison of a kind with a
    registered kind's name (`task.kind == "kl"`, `kind in ("perplexity", "kl")`) is the branch this
    design removed. (The loaders choose a task class from a row *layout*, lm-eval's from its output
    type: neither is a kind.) The planted `kl = task.kind == "kl"` in evaluator.py fails here."""
    names = "|".join(re.escape(n) for n in KINDS)
    branch = re.compile(rf"""kind\s*(?:==|!=|\bin\b|\bnot in\b)\s*[\(\[\{{]?\s*["'](?:{names})["']""")
    on_task = re.compile(r"""\.kind\s*(?:==|!=|\bin\b)""")
    root = Path(__file__).resolve().parent.parent
    found = [f"{p.relative_to(root)}:{i}: {line.strip()}"
             for d in ("blockprune", "export", "kernels") for p in sorted((root / d).rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line) or on_task.search(line)]
    assert not found, "a branch on a task kind's name:\n" + "\n".join(found)


def test_a_spec_is_parsed_once_into_a_value():
    assert parse_spec("bigbench:emoji_movie#30") == TaskSpec("bigbench", "emoji_movie", 30)
    assert parse_spec("kl:jsonl:take#2##5") == TaskSpec("kl", "jsonl:take#2", 5)
    assert str(parse_spec("jsonl:take#2##5").without_count()) == "jsonl:take#2#"  # still escaped
    assert str(parse_spec("jsonl:notes#2/rows.jsonl#3")) == "jsonl:notes#2/rows.jsonl#3"
    assert absolute_spec("kl:jsonl:rel/x.jsonl#3") == f"kl:jsonl:{Path('rel/x.jsonl').resolve()}#3"
    assert absolute_spec("kl:shakespeare/hamlet#3") == "kl:shakespeare/hamlet#3"


def test_unknown_schemes_and_kinds_are_named_from_the_registries(registered):
    from blockprune.tasks.kinds import TaskError

    with pytest.raises(TaskError, match=r"expected ppl, kl, mc, bigbench, jsonl, hf, lm-eval, gen, vqa, docvqa, caption, last$"):
        check_spec("nope:x")
    with pytest.raises(TaskError, match=r", gen:<benchmark, jsonl:path or bigbench:task>, vqa:<easy-vqa, jsonl:path or hf:dataset>, "
                       r"docvqa:<jsonl:path or hf:dataset>, caption:<jsonl:path or hf:dataset> or last:<word>$"):
        check_spec("nope")
    with pytest.raises(scores.ScoreError, match="unknown task kind 'nope'"):
        get_kind("nope")
    with pytest.raises(ValueError, match="no score named 'missing'"):
        register_kind(Kind("bad", ("missing",), metric="missing"))
    with pytest.raises(ValueError, match="registered already"):
        register_kind(Kind("kl", ("kl",), metric="kl"))


def test_prefetch_reads_the_sources_from_the_parsed_specs(monkeypatch):
    from blockprune.tasks import benchmarks
    from blockprune import data, tasks

    calls = []
    monkeypatch.setattr(data, "shakespeare_text", lambda play: calls.append(("play", play)))
    monkeypatch.setattr(data, "bigbench_prefetch", lambda names: calls.append(("bigbench", list(names))))
    monkeypatch.setattr(benchmarks, "prefetch", lambda kind, names: calls.append((kind, list(names))))
    tasks.prefetch(["kl:shakespeare/hamlet#16", "bigbench:general_knowledge#30", "bigbench:emoji_movie#40",
                    "mc:arc_easy#30", "gen:basic_arithmetic/1d1d#30", "gen:bigbench:arithmetic#4", "mc:sciq",
                    "ppl:shakespeare/macbeth", "kl:jsonl:x.jsonl#3", "jsonl:y.jsonl", "gen:jsonl:z.jsonl"])
    assert calls == [("play", "hamlet"), ("bigbench", ["general_knowledge", "emoji_movie"]), ("mc", ["arc_easy", "sciq"]),
                     ("bigbench", ["arithmetic"]), ("gen", ["basic_arithmetic/1d1d"]), ("play", "macbeth")]
