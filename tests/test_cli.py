"""The command line: bad input gives one line and exit 2 with nothing written; kill -9 resumes."""

import json
import os
import signal
import subprocess
import sys

import pytest

from blockprune import cli
from blockprune.runs.store import RESULTS_FILE


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "blockprune", *args], capture_output=True, text=True, timeout=600)


def search_args(tiny_dir, jsonl_tasks, out, *extra):
    return ["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
            "--task", f"jsonl:{jsonl_tasks / 'ppl.jsonl'}", "--ppl-window", "16", "--out", str(out), "--no-progress",
            "--device", "cpu", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--task", "nonsense:foo"], "unknown task scheme"),
    (["--protect", "99"], "out of range"),
    (["--max-remove", "6"], "less than the number of blocks"),
    (["--task", "mc:no_such_benchmark"], "unknown mc: benchmark 'no_such_benchmark'"),
    (["--task", "gen:basic_arithmetic/9d9d"], "no part '9d9d' of basic_arithmetic"),
    (["--method", "exhaustive", "--max-remove", "5", "--max-candidates", "10"], "more than --max-candidates"),
    (["--task", "jsonl:/no/such.jsonl"], "not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_dir, jsonl_tasks, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code = cli.main(search_args(tiny_dir, jsonl_tasks, out, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("blockprune: error:") and "\n" not in err and message.lower() in err.lower()
    assert not out.exists()


def test_bad_task_files(tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken"\n')
    for path, message in [(empty, "empty task file"), (bad, "bad.jsonl:2: malformed JSON")]:
        code = cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{path}", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_unloadable_model(tmp_path, jsonl_tasks, capsys):
    code = cli.main(["search", "--model", str(tmp_path / "no-such-model"), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                     "--out", str(tmp_path / "o")])
    assert code == 2 and "cannot load model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_resume_after_kill_9_loses_nothing_and_scores_nothing_twice(tiny_dir, jsonl_tasks, tmp_path):
    args = search_args(tiny_dir, jsonl_tasks, tmp_path / "killed", "--method", "exhaustive", "--max-remove", "3",
                       "--candidates-per-pass", "2")
    # killed at a deterministic point (blockprune.runs.store's test hook: SIGKILL right after the
    # append that makes 12 records), not when a polling loop happens to see them
    killed = subprocess.run([sys.executable, "-m", "blockprune", *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "BLOCKPRUNE_KILL_AFTER_RECORDS": "12"})
    assert killed.returncode == -signal.SIGKILL, f"the search was not killed: {killed.stderr[-500:]}"
    results = tmp_path / "killed" / RESULTS_FILE
    before = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    assert len(before) >= 12 and not any(r.get("type") == "done" for r in before)
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    after = [json.loads(line) for line in results.read_text().splitlines()]
    keys = [(tuple(r["removed"]), r["task"]) for r in after if r.get("type") is None]
    assert len(keys) == len(set(keys)), "a (candidate, task) was scored twice"
    for rec in before:  # nothing that was stored before the kill changed or vanished
        if rec.get("type") is None:
            assert rec in after
    fresh = run_cli(*search_args(tiny_dir, jsonl_tasks, tmp_path / "fresh", "--method", "exhaustive", "--max-remove", "3"))
    assert fresh.returncode == 0, fresh.stderr
    a = json.loads((tmp_path / "killed" / "cross_dataset_analysis.json").read_text())
    b = json.loads((tmp_path / "fresh" / "cross_dataset_analysis.json").read_text())
    assert [c["removed"] for c in a["candidates"]] == [c["removed"] for c in b["candidates"]]
    for ca, cb in zip(a["candidates"], b["candidates"]):
        for task, value in ca["scores"].items():
            assert value == pytest.approx(cb["scores"][task], rel=1e-6)


def test_resume_with_other_settings_is_refused(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "1")).returncode == 0
    again = run_cli(*search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "2"))
    assert again.returncode == 2 and "different settings (max_remove 1 (the run) vs 2 (now))" in again.stderr
