"""The store is the run's results in memory (results.jsonl is for durability): after the search
the report, the held-out check and the latency step take the search's store and analysis, so the
file is parsed once per process and the recommendations are computed once."""

import collections

import pytest

from blockprune.analysis import advice
from blockprune import api
from blockprune.analysis import candidates as analysis, stats
from blockprune.runs import store


@pytest.fixture
def counted(monkeypatch):
    """Counts of results.jsonl parses (Store._load on an existing file), analyses and recommendations."""
    counts = collections.Counter()
    load = store.Store._load

    def counting_load(self, *a, **k):
        if (self.dir / store.RESULTS_FILE).exists():
            counts["parse"] += 1
        return load(self, *a, **k)

    monkeypatch.setattr(store.Store, "_load", counting_load)
    for module, name, key in [(analysis, "build", "analysis"), (advice, "recommendations", "recommendations")]:
        original = getattr(module, name)

        def counting(*a, _original=original, _key=key, **k):
            counts[_key] += 1
            return _original(*a, **k)

        monkeypatch.setattr(module, name, counting)
    from blockprune.report import write

    monkeypatch.setattr(write, "recommendations", advice.recommendations)  # imported by name there
    return counts


def _search(tiny_dir, jsonl_tasks, out, **kw):
    tasks = [f"jsonl:{jsonl_tasks / n}.jsonl" for n in ("mc", "em")]
    return api.run_search(model=str(tiny_dir), tasks=tasks, out=out, method="beam", beam_width=2, max_remove=2,
                          samples=3, ppl_window=16, device="cpu", progress=False, **kw)


def test_after_the_search_nothing_reparses_the_store(tiny_dir, jsonl_tasks, tmp_path, counted):
    _search(tiny_dir, jsonl_tasks, tmp_path / "run", held_out=True)
    for name in ("validation.json", "latency.json", "REPORT.md"):
        assert (tmp_path / "run" / name).exists(), name
    # a fresh run directory: no results.jsonl to read when the search opens it, none read after
    assert counted["parse"] == 0
    assert counted["analysis"] == 1
    assert counted["recommendations"] == 1


def test_report_entry_point_parses_once(tiny_dir, jsonl_tasks, tmp_path, counted):
    _search(tiny_dir, jsonl_tasks, tmp_path / "run", latency=False)
    counted.clear()
    api.write_report(tmp_path / "run")
    assert counted == {"parse": 1, "analysis": 1, "recommendations": 1}


def _same_columns(a: store.Store, b: store.Store) -> None:
    assert set(a._columns) == set(b._columns)
    for key in a._columns:
        (ia, fa), (ib, fb) = a.columns(*key), b.columns(*key)
        assert ia.dtype == ib.dtype and ia.tolist() == ib.tolist(), key
        assert set(fa) == set(fb), key
        for f in fa:
            assert fa[f].dtype == fb[f].dtype and fa[f].tolist() == fb[f].tolist(), (key, f)


def test_resumed_run_has_the_fresh_runs_columns(tiny_dir, tmp_path, monkeypatch):
    """Racing (20 samples: rounds of 8, 16, 20) leaves parts; a run resumed from half its records
    holds, in memory, the same per-sample columns as the fresh run and as a reader of its file."""
    import json
    import shutil

    from blockprune import report

    rows = [{"context": f"Question {i}: which number comes after {i}?", "choices": [f" {i + 1}", f" {i + 7}", " pear"],
             "label": 0} for i in range(20)]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    build = report.build_analysis

    def capture(directory, replicates=stats.DEFAULT_REPLICATES, store=None):
        seen.append(store)
        return build(directory, replicates, store)

    monkeypatch.setattr(report, "build_analysis", capture)
    kw = dict(model=str(tiny_dir), tasks=[f"jsonl:{data}"], method="beam", beam_width=2, max_remove=2,
              samples=None, ppl_window=16, device="cpu", progress=False, latency=False)
    api.run_search(out=tmp_path / "fresh", **kw)
    fresh = seen[-1]
    assert fresh.parts, "racing left no parts: the test would not cover merging them"
    _same_columns(fresh, store.Store.open_existing(tmp_path / "fresh"))

    shutil.copytree(tmp_path / "fresh", tmp_path / "resumed")
    results = tmp_path / "resumed" / store.RESULTS_FILE
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[: len(lines) // 2]))
    api.run_search(out=tmp_path / "resumed", **kw)
    resumed = seen[-1]
    assert resumed is not fresh
    _same_columns(fresh, resumed)
