"""bench/gpu.sh --smoke on CPU (#20, #33): the GPU run's script works end to end before it meets a
card, returns at most 6 files, answers the card's question first and the seed's second (a seed-sized
search, racing on and off, the naive method extrapolated), then the kernels and decode, every check
row with an ok flag; and a planted bug makes a check, and the script, fail."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(out: Path, **env) -> subprocess.CompletedProcess:
    """gpu.sh --smoke in its own process group: at the timeout the whole group ends, not only bash."""
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    args = ["bash", str(REPO / "bench" / "gpu.sh"), "--smoke"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError("gpu.sh --smoke ran past 400 s:\n" + stdout[-3000:]) from None
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_gpu_script_smoke(tmp_path):
    out = tmp_path / "out"
    done = _run(out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    check_smoke_output(out)


def check_smoke_output(out: Path) -> None:
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu.log", "gpu_bench.json", "summary.md", "tests.xml", "vlm.json"], files  # at most 6
    data = json.loads((out / "gpu_bench.json").read_text())
    sec = data["sections"]
    # the card's question, then the seed's, then the kernels, then decode
    assert list(sec) == ["engine", "fp32_exact", "seed", "heads", "rows", "generate"], list(sec)
    # every check row says ok, and it is True
    checked = [r for rows in sec.values() for r in rows if r.get("task") != "both" and r.get("op") not in
               ("copy", "cublas_matmul")]
    assert checked and all(r.get("ok") is True for r in checked), [r for r in checked if r.get("ok") is not True]
    engine = [r for r in sec["engine"] if "agrees" in r]
    assert {r["model"] for r in engine} == {"tiny (smoke, for llama-1b)", "tiny (smoke, for llama-8b)"}
    assert all(r["fused"] and r["fallback"] is None and r["packing_limit"] for r in engine)  # BLOCKPRUNE_FUSED=1
    # the seed: one search with racing and one without, wall times, the naive method extrapolated
    searches = {r["racing"]: r for r in sec["seed"] if r["what"] == "search"}
    assert set(searches) == {True, False}
    for r in searches.values():
        assert r["wall_s"] > 0 and r["end_to_end_s"] >= r["wall_s"] * 0.999 and r["goal_s"] == 300
        assert r["candidate_samples"] > 0 and r["extrapolated"] == (not r["completed"])
        assert r["samples_per_task"] > 8 and r["tasks"] == 8 and r["beam_width"] == 3 and r["max_remove"] == 4
    naive = [r for r in sec["seed"] if r["what"] == "naive"]
    assert len(naive) == 1 and naive[0]["extrapolated"] is True and naive[0]["pairs_timed"] > 0
    assert naive[0]["pairs_all"] > naive[0]["pairs_timed"] and naive[0]["asserted"] is True
    assert naive[0]["pairs_compared"] > 0 and naive[0]["token_mismatches"] == 0
    # heads: tolerance stated, partials poisoned and written, TFLOP/s beside cuBLAS
    heads = [r for r in sec["heads"] if r["op"] != "cublas_matmul"]
    assert {r["op"] for r in heads} == {"scoring_head", "kl_head_softcap", "kl_dense_expectation"}
    assert all(r["poisoned_buffers"] >= 1 and r["nan_partials"] == 0 and r["nan_outputs"] == 0 for r in heads)
    assert all(r["err_over_tol"] <= 1 and "atol" in r["tolerance"] and r["vs_cublas"] > 0 for r in heads)
    # rows: against the reference, the floor reported but not enforced on CPU
    rows = [r for r in sec["rows"] if r["op"] != "copy"]
    assert {r["op"] for r in rows} == {"gather_norm", "residual_add"}
    assert all(r["floor_enforced"] is False and "not enforced" in r["floor_note"] for r in rows)
    gen = sec["generate"][0]
    assert gen["tokens_compared"] > 0 and gen["mismatches"] == 0 and gen["pairs_compared"] == "6/6"
    summary = (out / "summary.md").read_text()
    titles = ["Batched engine vs one pruned forward per candidate", "The seed's question", "Heads at real sizes",
              "Row ops vs their references", "Batched masked generation", "Kernel tests"]
    assert [summary.index(t) for t in titles] == sorted(summary.index(t) for t in titles), summary
    assert "**extrapolated**" in summary and "x cuBLAS" in summary and "**FAIL**" not in summary
    assert 'failures="0"' in (out / "tests.xml").read_text() and 'errors="0"' in (out / "tests.xml").read_text()
    vlm = json.loads((out / "vlm.json").read_text())  # the replaced system's experiment, on a tiny VLM here
    assert vlm["answers_compared"] and vlm["answers_same"] == vlm["answers_compared"]
    assert vlm["search"]["candidates"] > 1 and vlm["replaced_method"]["pairs_timed"] > 0


def test_planted_bugs_fail_their_checks_and_the_script(tmp_path):
    """Three bugs planted at once into the kernels and decode stage: the scoring head skips its last
    position tile (its NaN-poisoned partials show it), one residual-add element is off, one batched
    token is changed. Each fails its own rows, the others stay ok, and gpu.sh exits non-zero."""
    out = tmp_path / "out"
    done = _run(out, GPU_BENCH_PLANT="head,rows_value,generate", GPU_BENCH_ONLY="kernels")
    assert done.returncode != 0, done.stdout[-3000:]
    assert "FAILED CHECK" in done.stdout
    sec = json.loads((out / "gpu_bench.json").read_text())["sections"]
    ok = {r["op"]: r["ok"] for r in sec["heads"] + sec["rows"] if "ok" in r}
    # kl_dense_expectation runs the scoring head too
    assert ok == {"scoring_head": False, "kl_dense_expectation": False, "kl_head_softcap": True,
                  "gather_norm": True, "residual_add": False}, ok
    head = next(r for r in sec["heads"] if r["op"] == "scoring_head")
    assert head["nan_partials"] > 0
    assert sec["generate"][0]["ok"] is False and sec["generate"][0]["mismatches"] == 1
    assert "**FAIL**" in (out / "summary.md").read_text()
