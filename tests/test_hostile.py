"""A hostile but realistic user (#12): every case gives the right result or one clean line, exit 2.

Each case checks the exit code, that stderr is one `blockprune: error:` line (no traceback), and
that what should not change did not: files before == files after, byte for byte.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from blockprune import cli, models
from blockprune.runs import rundir
from blockprune.export import MANIFEST
from blockprune.runs.store import RESULTS_FILE, RUN_FILE


# ---- helpers -----------------------------------------------------------------------------------
def snapshot(root: Path) -> dict:
    """{relative path: bytes (files) or None (dirs)} of everything under root (or of root, a file)."""
    root = Path(root)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": root.read_bytes()}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("blockprune: warning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("blockprune: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def search_args(tiny_dir, jsonl_tasks, out, *extra):
    return ["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
            "--task", f"jsonl:{jsonl_tasks / 'ppl.jsonl'}", "--ppl-window", "16", "--out", str(out), "--no-progress",
            "--device", "cpu", "--no-latency", "--method", "beam", "--beam-width", "2", "--max-remove", "2", *extra]


@pytest.fixture(scope="module")
def finished(tiny_dir, jsonl_tasks, tmp_path_factory):
    """A finished search on the tiny model (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out)) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded (options must be refused before)."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")
    monkeypatch.setattr(models, "load", refuse)


# Root writes anywhere; `as_writer` children under root run without the capabilities that let it
# (setpriv drops CAP_DAC_OVERRIDE and friends from the bounding set), so file modes bind them as they
# bind any user. `nobody` would do too, but the interpreter may live where nobody cannot run it.
WRITER = (["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner,-linux_immutable", "--"]
          if os.geteuid() == 0 else [])


@contextmanager
def read_only(path: Path):
    """`path` and everything in it read-only (write bits cleared) to the writer `as_writer` starts:
    on any machine, as root or not, with no bind mount, no chattr and no skip."""
    path = Path(path)
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p, m in modes.items():
        p.chmod(m & ~0o222)
    try:
        yield
    finally:
        for p, m in modes.items():
            p.chmod(m)


_CHILD = """
import contextlib, io, json, sys
from blockprune import cli, models
from blockprune.measure import latency
def refuse(what):
    def fail(*a, **k):
        raise AssertionError(what)
    return fail
patches = json.loads(sys.argv[2])
if "no_model_load" in patches:
    models.load = refuse("a model was loaded before the options were checked")
if "no_bench" in patches:
    latency.bench = refuse("measured before checking --out")
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def as_writer(argvs, *patches, env=None) -> list[tuple[int, str]]:
    """Each `blockprune argv` in turn, in one child process run by the writer (this user; under root,
    root without the capabilities that bypass file modes), with the named test patches applied:
    [(exit code, stderr)] per command."""
    proc = subprocess.run([*WRITER, sys.executable, "-c", _CHILD, json.dumps([[str(a) for a in argv] for argv in argvs]),
                           json.dumps(patches)], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [tuple(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]


def child_error(result, *needles) -> str:
    """A command's (exit code, stderr): exit 2 and one `blockprune: error:` line naming each needle."""
    code, err = result
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("blockprune: warning:")]
    assert len(lines) == 1 and lines[0].startswith("blockprune: error:"), err[-2000:]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def results(run: Path) -> list[dict]:
    out = []
    for line in (run / RESULTS_FILE).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append(None)  # a line the test broke on purpose
    return out


def scored_keys(run: Path) -> list:
    return [(tuple(r["removed"]), r["task"]) for r in results(run)
            if isinstance(r, dict) and r.get("type") is None and isinstance(r.get("removed"), list)]


# ---- data loss: export ---------------------------------------------------------------------------
def test_export_refuses_a_users_directory_and_names_force(tiny_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my thesis")
    before = snapshot(out)
    assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(out)]) == 2
    one_error(capsys, "not empty", "--force")
    assert snapshot(out) == before
    # --force replaces only an earlier blockprune export, never a user's files (#21)
    assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(out), "--force"]) == 2
    one_error(capsys, "not a blockprune export", "--force replaces only")
    assert snapshot(out) == before


def test_export_never_touches_a_search_run(run_copy, tiny_dir, capsys):
    before = snapshot(run_copy)
    for extra in ([], ["--force"]):
        assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(run_copy), *extra]) == 2
        one_error(capsys, "search run directory")
    assert snapshot(run_copy) == before


def test_export_refuses_a_file_and_a_path_under_a_file(tiny_dir, tmp_path, capsys):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\x00weights")
    for out, needle in [(f, "is a file"), (f / "sub", "which is a file")]:
        assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(out)]) == 2
        one_error(capsys, needle)
    assert f.read_bytes() == b"\x00weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]  # no hidden .model.bin.old either


def test_export_replaces_the_same_request_but_not_another(tiny_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(out)]) == 0
    assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(out)]) == 0  # same request
    capsys.readouterr()
    before = snapshot(out)
    assert cli.main(["export", "--model", str(tiny_dir), "--remove", "2", "--out", str(out)]) == 2
    one_error(capsys, "another request", "--force")
    assert snapshot(out) == before


# ---- data loss: the store ------------------------------------------------------------------------
def test_search_refuses_a_non_empty_directory_that_is_not_a_run(tiny_dir, jsonl_tasks, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "REPORT.md").write_text("my own report")
    before = snapshot(out)
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out)) == 2
    one_error(capsys, "not empty", "not a blockprune run")
    assert snapshot(out) == before


def test_lost_run_json_is_rebuilt_from_the_records_and_nothing_is_scored_twice(run_copy, tiny_dir, jsonl_tasks, capsys):
    keys = scored_keys(run_copy)
    settings = json.loads((run_copy / RUN_FILE).read_text())["settings"]
    (run_copy / RUN_FILE).unlink()
    assert cli.main(search_args(tiny_dir, jsonl_tasks, run_copy)) == 0
    assert "rebuilt it" in capsys.readouterr().err
    assert scored_keys(run_copy) == keys  # no record stored twice
    assert json.loads((run_copy / RUN_FILE).read_text())["settings"] == settings


def test_lost_run_json_and_other_settings_are_refused(run_copy, tiny_dir, jsonl_tasks, capsys):
    (run_copy / RUN_FILE).unlink()
    before = snapshot(run_copy)
    assert cli.main(search_args(tiny_dir, jsonl_tasks, run_copy, "--seed", "7")) == 2
    one_error(capsys, "no run.json", "not scored under these settings")
    assert snapshot(run_copy) == before


def test_a_record_of_other_settings_is_not_mixed_in(run_copy, tiny_dir, jsonl_tasks, capsys):
    recs = results(run_copy)
    victim = next(i for i, r in enumerate(recs) if r.get("type") is None and r["removed"])
    recs[victim]["run"] = "0123456789abcdef"
    (run_copy / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert cli.main(search_args(tiny_dir, jsonl_tasks, run_copy)) == 0
    err = capsys.readouterr().err
    assert f"{RESULTS_FILE}:{victim + 1}: skipped a record (scored under other settings" in err
    assert scored_keys(run_copy).count((tuple(recs[victim]["removed"]), recs[victim]["task"])) == 2  # rescored


# ---- one writer per run directory ----------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder(run_copy, tiny_dir, jsonl_tasks, capsys):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from blockprune.runs import rundir\n"
        f"with rundir.lock({str(run_copy)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_copy)
        cases = [
            search_args(tiny_dir, jsonl_tasks, run_copy),
            ["report", str(run_copy)],
            ["validate", str(run_copy), "--device", "cpu"],
        ]
        for argv in cases:
            assert cli.main(argv) == 2
            one_error(capsys, f"pid {holder.pid}", "being written")
        assert snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(["report", str(run_copy)]) == 0  # the lock dies with its holder


def test_lock_leaves_no_trace_when_nothing_was_written(tmp_path):
    with pytest.raises(RuntimeError):
        with rundir.lock(tmp_path / "new"):
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "new").exists()


# ---- wrong successes -----------------------------------------------------------------------------
def test_boolean_label_is_refused(tiny_dir, tmp_path, capsys):
    f = tmp_path / "bool.jsonl"
    f.write_text(json.dumps({"context": "Is water wet?", "choices": [" no", " yes"], "label": True}) + "\n")
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{f}", "--out", str(tmp_path / "o"),
                     "--device", "cpu"]) == 2
    one_error(capsys, "bool.jsonl:1", "'label' must be an integer", "not the boolean true")
    assert not (tmp_path / "o").exists()


def test_dense_accuracy_zero_is_said(run_copy, capsys):
    recs = results(run_copy)
    for r in recs:  # the dense model gets no question right (its p_gold is left as it was)
        if r.get("type") is None and not r["removed"] and r["task"] == "mc":
            r["per_sample"]["correct"] = [False] * len(r["per_sample"]["correct"])
            r["value"] = 0.0
    (run_copy / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert cli.main(["report", str(run_copy)]) == 0
    warning = "mc: the dense model's acc is 0, so its acc drops are 0% and say nothing; the ranking uses p_gold"
    assert warning in (run_copy / "REPORT.md").read_text()
    assert warning in (run_copy / "SUMMARY.md").read_text()


def test_dense_zero_rules():
    from blockprune.analysis.candidates import _dense_zero

    tasks = {"a": {"higher_is_better": True, "metric": "acc"}, "b": {"higher_is_better": True, "metric": "acc"},
             "c": {"higher_is_better": False, "metric": "perplexity"}}
    got = _dense_zero(tasks, ["a", "b", "c"], {"a": 0.0, "b": 0.5, "c": 0.0}, {"a": 0.0, "b": 0.4, "c": 0.0},
                      {"a": "acc", "b": "p_gold", "c": "perplexity"}, {"a": "acc", "b": "acc", "c": "perplexity"})
    assert got == ["a: the dense model's acc is 0, so every drop on it is 0% and it cannot rank anything; "
                   "remove the task or rank it by another score (--rank-by)"]


@pytest.mark.parametrize("method", ["sensitivity", "greedy", "beam", "exhaustive"])
def test_min_depth_is_honoured_by_every_method(tiny_dir, jsonl_tasks, tmp_path, capsys, method):
    out = tmp_path / "o"
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--method", method, "--min-depth", "6")) == 2
    one_error(capsys, "--min-depth 6 keeps all 6 blocks")
    assert not out.exists()


def test_requests_longer_than_the_models_positions_are_refused(tiny_dir, tmp_path, capsys):
    f = tmp_path / "long.jsonl"  # the tiny model has 512 positions
    f.write_text(json.dumps({"context": "word " * 700, "choices": [" a", " b"], "label": 0}) + "\n")
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{f}", "--out", str(tmp_path / "o"),
                     "--device", "cpu"]) == 2
    one_error(capsys, "sample 0 is", "more than the model's 512 positions")
    assert not (tmp_path / "o").exists()


def test_report_of_an_incomplete_run_says_so_and_names_the_missing_sets(run_copy, capsys):
    recs = results(run_copy)
    plans = [r for r in recs if r.get("type") == "plan"]
    last = plans[-1]["sets"][0]
    kept = [r for r in recs if r.get("type") != "done"
            and not (r.get("type") in (None, "part") and r["removed"] == last)]
    (run_copy / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert cli.main(["report", str(run_copy)]) == 0
    report = (run_copy / "REPORT.md").read_text()
    assert "the search has not finished" in report
    assert "[" + ", ".join(map(str, last)) + "]" in report.split("has not finished")[1].split("\n")[0]


def test_finished_run_report_has_no_incomplete_warning(finished):
    assert "has not finished" not in (finished / "REPORT.md").read_text()
    assert any(r.get("type") == "done" for r in results(finished))


@pytest.mark.parametrize("extra, needle", [
    (["--export", "pdf"], "unknown export format"),
    (["--tolerance", "5"], "--tolerance must be between 0 and 1"),
    (["--lang", "fr"], "invalid choice"),
    (["--rank-by", "nonsense_score"], "nonsense_score"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda:99"], "cuda:99"),
    (["--ppl-window", "1"], "--ppl-window"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_options_are_refused_before_the_model_loads(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load, extra, needle):
    out = tmp_path / "o"
    try:
        code = cli.main(search_args(tiny_dir, jsonl_tasks, out, *extra))
    except SystemExit as exc:  # argparse's own choices
        code = exc.code
    assert code == 2
    assert needle.lower() in capsys.readouterr().err.lower()
    assert not out.exists()


# ---- tracebacks become one line ------------------------------------------------------------------
def test_non_utf8_task_file_names_the_line(tiny_dir, tmp_path, capsys):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{f}", "--out", str(tmp_path / "o"),
                     "--device", "cpu"]) == 2
    one_error(capsys, "latin1.jsonl:2: not UTF-8")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tiny_dir, jsonl_tasks, tmp_path, capsys):
    assert cli.main(search_args(tiny_dir, jsonl_tasks, tmp_path / "o", "--device", "cuda")) == 2
    one_error(capsys, "CUDA is not available")


@pytest.mark.parametrize("make_out, needle", [
    (lambda t: (t / "f").write_text("x") and t / "f", "is a file"),
    (lambda t: (t / "f").write_text("x") and t / "f" / "run", "which is a file"),
    (lambda t: Path("/proc/blockprune-run"), "cannot write in /proc"),
    (lambda t: Path("/sys/blockprune-run"), "cannot write in /sys"),
])
def test_bad_out_paths(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load, make_out, needle):
    out = make_out(tmp_path)
    before = snapshot(tmp_path)
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out)) == 2
    one_error(capsys, needle)
    assert snapshot(tmp_path) == before


def test_read_only_out_report_resume_and_validate(run_copy, tiny_dir, jsonl_tasks, tmp_path):
    fresh = tmp_path / "ro"
    fresh.mkdir()
    before = snapshot(run_copy)
    with read_only(fresh), read_only(run_copy):
        new, report, resume, validate = as_writer([
            search_args(tiny_dir, jsonl_tasks, fresh / "run"), ["report", run_copy],
            search_args(tiny_dir, jsonl_tasks, run_copy), ["validate", run_copy, "--device", "cpu"]])
    child_error(new, "cannot write in")
    for result in (report, resume, validate):
        child_error(result, str(run_copy))
    assert snapshot(run_copy) == before and not any(fresh.iterdir())


def test_store_lines_of_the_wrong_shape_are_skipped_and_rescored(run_copy, tiny_dir, jsonl_tasks, capsys):
    recs = results(run_copy)
    lines = [json.dumps(r) for r in recs]
    victim = next(i for i, r in enumerate(recs) if r.get("type") is None and r["removed"])
    key = (tuple(recs[victim]["removed"]), recs[victim]["task"])
    lines[victim] = json.dumps({"removed": "oops", "task": recs[victim]["task"]})  # valid JSON, wrong shape
    lines.insert(3, "[1, 2, 3]")
    lines.insert(5, "{not json")
    (run_copy / RESULTS_FILE).write_text("\n".join(lines) + "\n")
    assert cli.main(["report", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert f"{RESULTS_FILE}:4: skipped a record (not a JSON object)" in err
    assert f"{RESULTS_FILE}:6: skipped a record (not valid JSON)" in err
    assert f"{RESULTS_FILE}:{victim + 3}: skipped a record ('removed' is not a list of block ids)" in err
    assert cli.main(search_args(tiny_dir, jsonl_tasks, run_copy)) == 0
    assert scored_keys(run_copy).count(key) == 1  # rescored once


def test_bench_out_is_checked_before_measuring(tiny_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        (result,) = as_writer([["bench", "--model", tiny_dir, "--remove", "1", "--out", ro / "lat", "--device", "cpu"]],
                              "no_bench")
    child_error(result, "cannot write in")


def test_fetch_and_demo_with_unwritable_cache_or_out(tmp_path, capsys, monkeypatch, no_model_load):
    monkeypatch.setenv("BLOCKPRUNE_CACHE", "/proc/blockprune-cache")
    assert cli.main(["fetch"]) == 2
    one_error(capsys, "cannot create the cache /proc/blockprune-cache", "BLOCKPRUNE_CACHE")
    ro_cache = tmp_path / "cache"
    ro_cache.mkdir()
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(ro_cache))
    with read_only(ro_cache):  # exists, but nothing can be downloaded into it
        (result,) = as_writer([["fetch"]], "no_model_load", env={"BLOCKPRUNE_CACHE": str(ro_cache)})
    child_error(result, f"cannot write the cache {ro_cache}", "BLOCKPRUNE_CACHE")
    assert not any(ro_cache.iterdir())
    monkeypatch.delenv("BLOCKPRUNE_CACHE")
    assert cli.main(["demo", "--out", "/proc/blockprune-demo", "--device", "cpu"]) == 2
    one_error(capsys, "cannot write in /proc")


# ---- also ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, needle", [
    ("no-such-model-anywhere", "not an embedded name, not a local directory, not in the hugging face cache"),
    ("/no/such/model/dir", "no such directory"),
    ("EMPTY", "has no config.json"),
])
def test_model_errors_are_fast_and_say_where_they_looked(jsonl_tasks, tmp_path, capsys, spec, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if spec == "EMPTY":
        (tmp_path / "empty").mkdir()
        spec = str(tmp_path / "empty")
    import socket

    tried = []  # fast because it never waits on the network (offline): no connection is even tried

    def refuse(address, *a, **k):
        tried.append(address)
        raise OSError("the test refuses connections")

    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "create_connection", refuse)
    code = cli.main(["search", "--model", spec, "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                     "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2
    one_error(capsys, "cannot load model", needle)
    assert tried == []  # wall-clock speed is bench/'s job
    assert not (tmp_path / "o").exists()


def test_files_follow_the_users_umask(tiny_dir, jsonl_tasks, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "1")) == 0
        for name in ("REPORT.md", "SUMMARY.md", RUN_FILE, RESULTS_FILE, "pruning_recommendations.json"):
            assert (out / name).stat().st_mode & 0o777 == 0o644, name
        assert (out / "plots").stat().st_mode & 0o777 == 0o755
        exp = tmp_path / "exp"
        assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(exp)]) == 0
        assert exp.stat().st_mode & 0o777 == 0o755
        assert (exp / MANIFEST).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_batch_sizes_are_called_batch_sizes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--model", "x", "--remove", "1", "--batch", "1,x"])
    assert exc.value.code == 2
    assert "expected comma-separated batch sizes, got '1,x'" in capsys.readouterr().err


def test_report_cleans_plots_a_killed_report_left(run_copy):
    stale = run_copy / ".plots-abc123"
    stale.mkdir()
    (stale / "half.png").write_bytes(b"\x89PNG")
    assert cli.main(["report", str(run_copy)]) == 0
    assert not stale.exists() and (run_copy / "plots").is_dir()


def test_bench_hint_never_points_at_a_directory_that_holds_something(tmp_path):
    from blockprune.measure import latency

    from conftest import tiny_model

    bm = tiny_model()
    hf_only = tmp_path / "exp"
    hf_only.mkdir()
    (hf_only / MANIFEST).write_text("{}")
    with pytest.raises(latency.BenchError) as exc:
        latency.find_decoder(hf_only, bm, (1,))
    assert f"--out {tmp_path / 'exp-onnx'}" in str(exc.value)
    with pytest.raises(latency.BenchError) as exc:
        latency.find_decoder(tmp_path / "new", bm, (1,))
    assert str(exc.value).endswith(f"--out {tmp_path / 'new'})")
