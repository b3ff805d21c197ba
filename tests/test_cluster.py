"""Scoring on Ray workers (blockprune.search.cluster): the same store and scores as one process, a worker
killed mid-run, a driver killed mid-run. One local Ray cluster for the whole module."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import ray  # blockprune[ray]: `make test` installs it

from blockprune import api
from blockprune.search import cluster
from blockprune.runs.store import RESULTS_FILE, RUN_FILE


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster for this module's tests (the search's pools join it instead of starting one)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def search_kw(tiny_dir, jsonl_tasks, out, **kw):
    tasks = [f"jsonl:{jsonl_tasks / n}.jsonl" for n in ("mc", "ppl", "em")]
    return dict(model=str(tiny_dir), tasks=tasks, out=out, method="beam", beam_width=2, max_remove=2, samples=None,
                ppl_window=16, device="cpu", progress=False, latency=False, **kw)


def lines(out):
    return [json.loads(x) for x in (out / RESULTS_FILE).read_text().splitlines()]


def whole(out) -> dict:
    """(candidate, task) -> whole record; fails on a candidate stored twice."""
    recs = {}
    for r in lines(out):
        if r.get("type") is None:
            key = (tuple(r["removed"]), r["task"])
            assert key not in recs, f"{key} stored twice"
            recs[key] = r
    return recs


def scored_samples(out) -> list:
    """Every (candidate, task, sample) a unit scored: parts count their samples, whole records
    every sample unless they merge parts (merging is not scoring)."""
    recs = lines(out)
    parts = [r for r in recs if r.get("type") == "part"]
    with_parts = {(tuple(r["removed"]), r["task"]) for r in parts}
    scored = [((tuple(r["removed"]), r["task"]), s) for r in parts for s in r["samples"]]
    for r in recs:
        key = (tuple(r.get("removed", ())), r.get("task"))
        if r.get("type") is None and key not in with_parts:
            scored += [(key, s) for s in range(len(next(iter(r["per_sample"].values()))))]
    return scored


def flat(values: list) -> np.ndarray:
    """A per-sample field as one float array (per-choice fields are lists per sample)."""
    return np.concatenate([np.asarray(v, dtype=float).ravel() for v in values])


def same_scores(a: dict, b: dict) -> None:
    """Same records, same per-sample values: flags equal, float sums within the engine's own
    rounding across batch shapes (4.8e-7 measured between one call and two of half the candidates)."""
    assert set(a) == set(b)
    for key in a:
        assert a[key]["value"] == pytest.approx(b[key]["value"], rel=1e-6, abs=1e-9), key
        for field, va in a[key]["per_sample"].items():
            vb = b[key]["per_sample"][field]
            if isinstance(va[0], bool):
                assert va == vb, (key, field)
            else:
                np.testing.assert_allclose(flat(va), flat(vb), rtol=1e-5, atol=1e-6, err_msg=f"{key} {field}")


@pytest.fixture(scope="module")
def single(tiny_dir, jsonl_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    res = api.run_search(**search_kw(tiny_dir, jsonl_tasks, out))
    return out, res


def test_two_workers_store_what_one_process_stores(ray_cluster, single, tiny_dir, jsonl_tasks, tmp_path):
    one, res_one = single
    out = tmp_path / "two"
    res = api.run_search(**search_kw(tiny_dir, jsonl_tasks, out, workers=2, ray_address=ray_cluster))
    assert res.result.steps == res_one.result.steps
    same_scores(whole(out), whole(one))
    recs, recs_one = res.recommendations["recommendations"], res_one.recommendations["recommendations"]
    for level in ("conservative", "balanced", "aggressive"):
        assert recs[level]["removed"] == recs_one[level]["removed"], level
        assert recs[level]["mean_drop"] == pytest.approx(recs_one[level]["mean_drop"], rel=1e-6, abs=1e-9)
    # both workers scored, each unit once
    work = [r for r in lines(out) if r.get("type") == "work"]
    assert {r["worker"] for r in work} == {0, 1}
    scored = scored_samples(out)
    assert len(scored) == len(set(scored)), "a sample of a candidate was scored twice"
    info = json.loads((out / RUN_FILE).read_text())["cluster"]
    assert len(info) == 1 and info[0]["retried_units"] == 0
    assert [w["worker"] for w in info[0]["workers"]] == [0, 1]
    assert all(w["units"] > 0 and w["block_tokens_per_s"] > 0 for w in info[0]["workers"])
    # sharing survives the split: the trie is not cut, only the samples
    tokens = {name: sum(r["block_tokens"] for r in lines(d) if r.get("type") == "work") for name, d in
              (("one", one), ("two", out))}
    assert tokens["two"] <= 1.15 * tokens["one"], tokens


def test_a_healed_search_on_two_workers_stores_what_one_process_stores(ray_cluster, tiny_dir, jsonl_tasks, tmp_path):
    """The workers score healed with the driver's statistics: the same healed records as one process."""
    kw = dict(model=str(tiny_dir), tasks=["kl:shakespeare/hamlet#4", f"jsonl:{jsonl_tasks / 'mc.jsonl'}"],
              method="given", sets=[(2,), (2, 3), (1, 3)], samples=None, ppl_window=32, device="cpu", progress=False,
              latency=False, heal="linear", plain_baseline=False)
    one = api.run_search(out=tmp_path / "one", **kw)
    two = api.run_search(out=tmp_path / "two", workers=2, ray_address=ray_cluster, **kw)
    assert two.result.steps == one.result.steps
    same_scores(whole(tmp_path / "two"), whole(tmp_path / "one"))
    plain = api.run_search(out=tmp_path / "plain", **{**kw, "heal": "none"})
    healed_kl = whole(tmp_path / "two")[((2, 3), "kl_shakespeare_hamlet")]["value"]
    assert healed_kl != pytest.approx(whole(tmp_path / "plain")[((2, 3), "kl_shakespeare_hamlet")]["value"], rel=1e-3)
    assert plain.result.steps == one.result.steps


def test_a_generative_search_on_two_workers_stores_what_one_process_stores(ray_cluster, tiny_dir, jsonl_tasks, tmp_path):
    """Generative samples are decoded on the workers: the same records and texts as one process."""
    rows = [{"prompt": f"Count: {i}, {i + 1},", "answers": [f" {i + 2}"], "max_new_tokens": 3 + i % 4, "until": [","]}
            for i in range(6)]
    gen = tmp_path / "g.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(model=str(tiny_dir), tasks=[f"gen:jsonl:{gen}", f"jsonl:{jsonl_tasks / 'mc.jsonl'}"], method="beam",
              beam_width=2, max_remove=2, samples=None, device="cpu", progress=False, latency=False)
    one = api.run_search(out=tmp_path / "one", **kw)
    two = api.run_search(out=tmp_path / "two", workers=2, ray_address=ray_cluster, **kw)
    assert two.result.steps == one.result.steps
    a, b = whole(tmp_path / "two"), whole(tmp_path / "one")
    same_scores(a, b)
    texts = {key: r["generated"] for key, r in a.items() if key[1] == "gen_g"}
    assert len(texts) > 3 and all(len(t) == len(rows) for t in texts.values())
    assert texts == {key: r["generated"] for key, r in b.items() if key[1] == "gen_g"}
    work = [r for r in lines(tmp_path / "two") if r.get("type") == "work"]
    assert {r["worker"] for r in work} == {0, 1}


def test_a_worker_killed_mid_run_loses_nothing(ray_cluster, single, tiny_dir, jsonl_tasks, tmp_path, monkeypatch):
    one, res_one = single
    handed = []

    def kill(pool, worker, unit):
        handed.append(worker)
        if len(handed) == 6:  # the dense model is done; a step's unit is on its way to this worker
            os.kill(pool.stats[worker]["pid"], signal.SIGKILL)

    monkeypatch.setattr(cluster.Pool, "kill_hook", kill)
    out = tmp_path / "killed"
    res = api.run_search(**search_kw(tiny_dir, jsonl_tasks, out, workers=2, ray_address=ray_cluster))
    assert len(handed) > 6
    assert res.result.steps == res_one.result.steps
    same_scores(whole(out), whole(one))
    scored = scored_samples(out)
    assert len(scored) == len(set(scored)), "a sample of a candidate was scored twice"
    info = json.loads((out / RUN_FILE).read_text())["cluster"][0]
    assert info["retried_units"] >= 1 and len(info["lost_workers"]) == 1
    assert [w["alive"] for w in info["workers"]].count(False) == 1
    assert any(r.get("retried") for r in lines(out) if r.get("type") == "work")
    report = (out / "REPORT.md").read_text()
    assert f"{info['retried_units']} unit" in report and "retried" in report


def test_a_killed_driver_resumes_without_rescoring(ray_cluster, single, tiny_dir, jsonl_tasks, tmp_path):
    one, _ = single
    out = tmp_path / "driver"
    tasks = [a for n in ("mc", "ppl", "em") for a in ("--task", f"jsonl:{jsonl_tasks / n}.jsonl")]
    cmd = [sys.executable, "-m", "blockprune.cli", "search", "--model", str(tiny_dir), *tasks, "--method", "beam",
           "--beam-width", "2", "--max-remove", "2", "--samples", "0", "--ppl-window", "16", "--device", "cpu",
           "--no-progress", "--no-latency", "--workers", "2", "--ray-address", ray_cluster, "--out", str(out)]
    # killed at a deterministic point: blockprune.runs.store's test hook SIGKILLs the driver right after
    # the append that brings its records to half of what the one-process run stored
    kill_at = len(lines(one)) // 2
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "BLOCKPRUNE_KILL_AFTER_RECORDS": str(kill_at)})
    assert killed.returncode == -signal.SIGKILL, f"the driver was not killed: {killed.stderr[-500:]}"
    before = lines(out)
    assert len(before) >= kill_at and not any(r.get("type") == "done" for r in before)
    done_units = sum(r.get("type") == "work" for r in before)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = lines(out)
    assert after[: len(before)] == before  # appended to, never rewritten
    scored = scored_samples(out)
    assert len(scored) == len(set(scored)), "the rerun scored again what the killed driver had stored"
    same_scores(whole(out), whole(one))
    sessions = json.loads((out / RUN_FILE).read_text())["cluster"]
    assert len(sessions) == 2  # the killed session's figures kept (as of its last finished step), the rerun's added
    assert sum(r.get("type") == "work" for r in after) == done_units + sessions[1]["units"]


@pytest.mark.parametrize("flags, needle", [
    (["--ray-address", "127.0.0.1:1"], "cannot reach a ray cluster at 127.0.0.1:1"),
    (["--ray-address", "nonsense"], "expected host:port"),
    (["--workers", "2"], "need ray: pip install 'blockprune[ray]'"),
])
def test_cluster_flags_refused_in_one_line_before_the_model_loads(flags, needle, tiny_dir, jsonl_tasks, tmp_path, capsys,
                                                                   monkeypatch):
    from blockprune import cli, models

    if flags[0] == "--workers":
        monkeypatch.setitem(sys.modules, "ray", None)  # as if blockprune[ray] were not installed
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("the model loaded before the flags were checked"))
    out = tmp_path / "o"
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}", "--out", str(out),
                     "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("blockprune: error:"), err
    assert needle in err.lower()
    assert not out.exists()  # refused before the model loads (models.load fails the test); its speed: bench/
