"""The store is the run's results in memory (results.jsonl is for durability): after the search
the report, the held-out check and the latency step take the search's store and analysis, so the
file is parsed once per process and the recommendations are computed once."""

import collections

import pytest

from blockprune import advice, analysis, api, store


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
    from blockprune import report

    monkeypatch.setattr(report, "recommendations", advice.recommendations)  # imported by name there
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
