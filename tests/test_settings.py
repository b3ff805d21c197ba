"""blockprune.settings: one Settings object. Its run.json "settings" must stay what the search
wrote before it existed (key for key, value for value, in the same order), or no earlier run
resumes; the CLI builds it from flags whose dest is the field's name."""

import dataclasses
import json
from dataclasses import fields
from types import SimpleNamespace

import pytest

from blockprune import api, cli, search
from blockprune.models import sources
from blockprune.settings import DEMO, Loaded, Settings, default
from blockprune.runs.store import fingerprint
from blockprune.tasks import absolute_spec


def legacy_settings(model, tasks, num_blocks, dtype, seed, samples, ppl_window, method, beam_width, max_remove,
                    protected, min_depth, exact, ranking, population, generations, offspring, sets, loaded) -> dict:
    """run.json's "settings" as api._search_locked built it by hand before Settings (commit c64f34e)."""
    return {
        "model": sources.absolute_model(model),
        "num_blocks": num_blocks,
        "dtype": dtype,
        "seed": seed,
        "samples": samples,
        "ppl_window": ppl_window,
        "method": method,
        "beam_width": beam_width,
        "max_remove": max_remove,
        "protected": sorted(protected),
        "min_depth": min_depth,
        "racing": not exact,
        "rank_by": ranking,
        **({"evolution": {"population": population, "generations": generations, "offspring": offspring}}
           if method == "evolutionary" else {}),
        **({"sets": [list(x) for x in sorted(set(sets), key=lambda x: (len(x), x))]} if method == "given" else {}),
        **({"prefix_tokens": loaded[0].prefix} if loaded[0].prefix else {}),
        "tasks": {
            t.name: {"spec": absolute_spec(spec), "kind": t.kind, "metric": t.metric, "higher_is_better": t.higher_is_better,
                     "n": t.n, "available": t.available, "sample_ids": t.sample_ids}
            for spec, t in zip(tasks, loaded)
        },
    }


def _task(name, kind="multiple_choice", prefix=(), n=3):
    return SimpleNamespace(name=name, kind=kind, metric="acc" if kind != "kl" else "kl", higher_is_better=kind != "kl",
                           n=n, available=n + 2, sample_ids=list(range(n)), prefix=list(prefix))


COMBOS = [
    {},
    dict(method="evolutionary", population=4, generations=2, offspring=5, seed=7, exact=True),
    dict(method="given", sets=[(3, 1), (2,), (1, 3), (0, 4, 2)], protected=[5, 0], samples=None, dtype="float32"),
    dict(method="exhaustive", max_remove=2, min_depth=3, ppl_window=16, rank_by="kl", prefix=[1]),
    dict(method="beam", beam_width=5, protected=(9, 2, 4), samples=10, dtype="bfloat16", prefix=[0, 1],
         lang="zh", tolerance=0.2, latency=False, held_out=True, budget_gb=2.0, candidates_per_pass=7),
]


@pytest.mark.parametrize("combo", COMBOS)
def test_run_settings_are_the_ones_written_before(combo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "a.jsonl").write_text("")
    combo = dict(combo)
    prefix = combo.pop("prefix", [])
    specs = ["jsonl:a.jsonl#3", "kl:shakespeare/hamlet#4"]
    loaded = [_task("a", prefix=prefix), _task("hamlet", kind="kl", prefix=prefix)]
    ranking = {"a": "p_gold", "hamlet": "kl"}
    s = Settings(model="model", tasks=specs, **combo)
    s = s.replace(sets=[tuple(sorted(x)) for x in s.sets])  # as check() normalises them
    new = s.run_settings(Loaded(num_blocks=12, rank_by=ranking, tasks=loaded))
    old = legacy_settings(s.model, specs, 12, s.dtype, s.seed, s.samples, s.ppl_window, s.method, s.beam_width,
                          s.max_remove, s.protected, s.min_depth, s.exact, ranking, s.population, s.generations,
                          s.offspring, s.sets, loaded)
    assert json.dumps(new) == json.dumps(old)  # the same keys, values and order: run.json byte for byte
    assert fingerprint(new) == fingerprint(old)
    assert new["model"] == str(tmp_path / "model") and new["tasks"]["a"]["spec"] == f"jsonl:{tmp_path / 'a.jsonl'}#3"


def test_every_option_says_whether_it_is_fingerprinted_and_has_a_default():
    for f in fields(Settings):
        assert "run" in f.metadata, f"{f.name}: declare it with option(..., run=...)"
    assert [f.name for f in fields(Settings) if f.default is dataclasses.MISSING] == ["model", "tasks"]


def test_every_option_is_a_flag_of_search_or_api_only():
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    dests = {a.dest for a in sub.choices["search"]._actions}
    api_only = {"kv_cache", "held_out_samples"}  # Python callers only
    assert {f.name for f in fields(Settings)} - dests == api_only


def test_cli_builds_the_settings(tmp_path):
    args = cli.parser().parse_args(["search", "--model", "m", "--task", "jsonl:a", "--task", "jsonl:b", "--out", "o",
                                    "--samples", "0", "--protect", "3,1", "--export", "hf", "--no-latency",
                                    "--no-progress", "--method", "given", "--sets", "4,2;1"])
    s = cli._settings(args)
    assert s == Settings(model="m", tasks=["jsonl:a", "jsonl:b"], samples=None, protected=[3, 1], export_formats=["hf"],
                         latency=False, progress=False, method="given", sets=[(2, 4), (1,)])
    demo = cli._settings(cli.parser().parse_args(["demo", "--no-export", "--seed", "2"]), DEMO)
    assert demo == DEMO.replace(export_formats=(), seed=2)
    assert cli._settings(cli.parser().parse_args(["demo"]), DEMO) == DEMO


def test_check_resolves_and_refuses_with_the_same_messages():
    s = Settings(model="m", tasks=["jsonl:a"], method="given", sets=[(3, 1), [2]], device="cpu").check()
    assert s.dtype == "float32" and s.sets == [(1, 3), (2,)]
    with pytest.raises(search.SearchError, match="give at least one --task"):
        Settings(model="m", tasks=[]).check()
    with pytest.raises(search.SearchError, match="--sets are scored by --method given, not beam"):
        Settings(model="m", tasks=["jsonl:a"], sets=[(1,)]).check()
    with pytest.raises(search.SearchError, match="unknown dtype 'float64': choose one of auto, float32"):
        Settings(model="m", tasks=["jsonl:a"], dtype="float64").check()
    with pytest.raises(search.SearchError, match="--max-remove 12 must be less than the number of blocks"):
        Settings(model="m", tasks=["jsonl:a"], max_remove=12).check_blocks(12)
    with pytest.raises(search.SearchError, match=r"set \[0, 12\]: block ids \[12\] out of range"):
        Settings(model="m", tasks=["jsonl:a"], method="given", sets=[(0, 12)]).check().check_blocks(12)


def test_run_search_takes_settings_or_keywords(tmp_path):
    with pytest.raises(search.SearchError, match="give at least one --task"):
        api.run_search(model="m", tasks=[], out=tmp_path / "a")
    with pytest.raises(search.SearchError, match="give at least one --task"):
        api.run_search(Settings(model="m", tasks=["jsonl:a"]), out=tmp_path / "b", tasks=[])
    with pytest.raises(search.SearchError, match="give at least one --task"):
        api.run_search("m", [], tmp_path / "c")  # the positional form of the README
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_evolution_and_budget_come_from_the_fields():
    s = Settings(model="m", tasks=["t"], population=2, generations=4, offspring=6, budget_gb=1.0)
    assert (s.evolution.population, s.evolution.generations, s.evolution.offspring) == (2, 4, 6)
    assert s.budget_bytes == 2**30 and Settings(model="m", tasks=["t"]).budget_bytes is None
