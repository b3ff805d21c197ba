"""The second hostile sweep (#21), part A: where blockprune writes. Never lose a user's files.

Every case checks, as tests/test_hostile.py does: the exit code (2 for a refusal), that stderr is
one `blockprune: error:` line (no traceback), that what should not change did not (byte for byte),
and, where a refusal can be given before the model loads, that it is.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from blockprune import cli, models
from blockprune.runs import rundir
from blockprune.export import MANIFEST
from test_hostile import no_model_load, one_error, search_args, snapshot  # noqa: F401  (fixtures and helpers)

ROOT = Path(__file__).resolve().parents[1]


def export_args(model, out, *extra, remove="1"):
    return ["export", "--model", str(model), "--remove", remove, "--out", str(out), "--device", "cpu", *extra]


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in Path(d).iterdir())


@pytest.fixture(scope="module")
def finished(tiny_dir, jsonl_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "1")) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    """A model directory a test may see destroyed (the session's tiny_dir must survive old code)."""
    dst = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_dir, dst)
    return dst


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """An export of the tiny model without block 1 (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("exported") / "exp"
    assert cli.main(export_args(tiny_dir, out)) == 0
    return out


@pytest.fixture
def export_copy(exported, tmp_path):
    dst = tmp_path / "exp"
    shutil.copytree(exported, dst)
    return dst


@pytest.fixture
def seed_root(tmp_path):
    from test_seed import build_main

    return build_main(tmp_path / "seed")


def run_child(code: str, timeout=240, preexec=None):
    """Run `code` in a fresh Python (for signals and resource limits the test process must not get)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=preexec, cwd=ROOT)


def one_error_text(err: str, *needles) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("blockprune: warning:")]
    lines = [ln for ln in lines if not ln.startswith(("Writing model shards", "Loading weights"))]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def files(d: Path) -> dict:
    """snapshot() without the lock file, whose content is the pid of its last holder."""
    return {k: v for k, v in snapshot(d).items() if k != rundir.LOCK_FILE}


# ---- 1. data loss: the export swap ---------------------------------------------------------------
def test_reexport_never_deletes_a_users_files_inside_out(export_copy, tiny_dir, capsys):
    (export_copy / "NOTES.md").write_text("my notes")
    (export_copy / "my_finetune").mkdir()
    (export_copy / "my_finetune" / "adapter.bin").write_bytes(b"\x01\x02")
    before = snapshot(export_copy)
    for extra in ([], ["--force"]):  # the same request, then with --force: never the user's files
        assert cli.main(export_args(tiny_dir, export_copy, *extra)) == 2
        one_error(capsys, "holds files blockprune did not write", "NOTES.md", "--force replaces only")
    assert snapshot(export_copy) == before


def test_a_file_added_inside_the_checkpoint_is_a_users_file(export_copy, tiny_dir, capsys, no_model_load):
    (export_copy / "hf" / "README.md").write_text("my model card")
    before = snapshot(export_copy)
    assert cli.main(export_args(tiny_dir, export_copy, "--force", remove="2")) == 2
    one_error(capsys, "hf/README.md")
    assert snapshot(export_copy) == before


def test_a_users_sibling_dot_old_is_never_deleted(export_copy, tiny_dir):
    old = export_copy.parent / f".{export_copy.name}.old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    assert cli.main(export_args(tiny_dir, export_copy)) == 0  # the same request: replaced
    assert (old / "keep.txt").read_text() == "mine"
    assert sorted(listing(export_copy.parent)) == sorted([export_copy.name, old.name])


@pytest.mark.parametrize("where", ["model", "parent", "runs"])
def test_force_never_replaces_the_model_or_a_folder_holding_it_or_runs(model_copy, run_copy, tmp_path, capsys,
                                                                       no_model_load, where):
    if where == "model":
        out, needle = model_copy, "is the model being exported"
    elif where == "parent":
        out, needle = model_copy.parent, "holds the model being exported"
    else:
        out, needle = tmp_path / "runs", "not a blockprune export"
        out.mkdir()
        shutil.copytree(run_copy, out / "run1")
    before, model_before = snapshot(out), snapshot(model_copy)
    assert cli.main(export_args(model_copy, out, "--force")) == 2
    one_error(capsys, needle)
    assert snapshot(out) == before and snapshot(model_copy) == model_before


def test_export_to_dot_is_refused_before_the_model_loads(tiny_dir, tmp_path, capsys, monkeypatch, no_model_load):
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli.main(export_args(tiny_dir, ".")) == 2
    one_error(capsys, "is the current directory", "give a new one")
    assert listing(here) == [] and listing(tmp_path) == ["empty"]


def test_export_to_x_dotdot_writes_the_folder_it_names(tiny_dir, tmp_path):
    target = tmp_path / "exp"
    target.mkdir()
    (target / "x").mkdir()
    assert cli.main(export_args(tiny_dir, target / "x" / "..", "--force")) == 2  # holds x: not an export
    (target / "x").rmdir()
    assert cli.main(export_args(tiny_dir, f"{target}/x/..")) == 0  # x does not exist: `..` of it is exp
    assert (target / MANIFEST).exists() and listing(tmp_path) == ["exp"]


def test_a_name_of_250_bytes_does_not_overflow_name_max(tiny_dir, tmp_path):
    out = tmp_path / ("e" * 250)
    assert cli.main(export_args(tiny_dir, out)) == 0
    assert (out / MANIFEST).exists() and listing(tmp_path) == [out.name]


def test_a_symlinked_out_stays_a_link_to_the_new_export(export_copy, tiny_dir, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(export_copy)
    assert cli.main(export_args(tiny_dir, link, "--force", remove="2")) == 0
    assert link.is_symlink() and link.resolve() == export_copy.resolve()
    assert json.loads((export_copy / MANIFEST).read_text())["removed"] == [2]
    assert listing(tmp_path) == ["current", "exp"]  # no stray .current.old


def test_a_different_request_is_replaced_with_force_leaving_nothing_beside(export_copy, tiny_dir, capsys):
    before = snapshot(export_copy)
    assert cli.main(export_args(tiny_dir, export_copy, remove="2")) == 2
    one_error(capsys, "another request", "--force")
    assert snapshot(export_copy) == before
    assert cli.main(export_args(tiny_dir, export_copy, "--force", remove="2")) == 0
    assert json.loads((export_copy / MANIFEST).read_text())["removed"] == [2]
    assert listing(export_copy.parent) == ["exp"]


def test_search_export_refuses_a_users_files_in_the_runs_export_before_searching(run_copy, tiny_dir, jsonl_tasks,
                                                                                  capsys, no_model_load):
    (run_copy / "export").mkdir()
    (run_copy / "export" / "NOTES.md").write_text("mine")
    before = snapshot(run_copy)
    assert cli.main(search_args(tiny_dir, jsonl_tasks, run_copy, "--max-remove", "1", "--export", "hf")) == 2
    one_error(capsys, "export", "not a blockprune export", "NOTES.md")
    assert snapshot(run_copy) == before


# ---- 1. writers outside the rules: report --from-seed --out, bench --out --------------------------
def test_seed_report_never_writes_into_a_search_run(seed_root, run_copy, capsys):
    before = snapshot(run_copy)
    assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(run_copy)]) == 2
    one_error(capsys, "is a search run directory")
    assert snapshot(run_copy) == before


def test_seed_report_never_overwrites_a_users_files(seed_root, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "REPORT.md").write_text("my own report")
    before = snapshot(out)
    assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(out)]) == 2
    one_error(capsys, "files blockprune did not write", "REPORT.md")
    assert snapshot(out) == before


def test_seed_report_out_is_not_the_seed_root_and_rewrites_its_own(seed_root, capsys):
    before = snapshot(seed_root)
    assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(seed_root)]) == 2
    one_error(capsys, "is the seed root")
    assert snapshot(seed_root) == before
    for _ in range(2):  # the default ROOT/analysis, written and then rewritten
        assert cli.main(["report", str(seed_root), "--from-seed"]) == 0
    assert {"REPORT.md", "pruning_recommendations.json"} <= set(listing(seed_root / "analysis"))


def test_seed_report_takes_the_lock(seed_root, tmp_path, capsys):
    out = tmp_path / "analysis"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from blockprune.runs import rundir\n"
        f"with rundir.lock({str(out)!r}, marker='x'):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(out)]) == 2
        one_error(capsys, f"pid {holder.pid}", "being written")
        assert listing(out) == [rundir.LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("case", ["run", "users"])
def test_bench_out_is_refused_before_measuring(run_copy, tiny_dir, tmp_path, capsys, monkeypatch, case):
    from blockprune.measure import latency

    monkeypatch.setattr(latency, "bench", lambda *a, **k: pytest.fail("measured before checking --out"))
    if case == "run":
        out, needle = run_copy, "is a search run directory"
    else:
        out, needle = tmp_path / "mine", "latency.md"
        out.mkdir()
        (out / "latency.md").write_text("my notes on latency")
    before = snapshot(out)
    assert cli.main(["bench", "--model", str(tiny_dir), "--remove", "1", "--out", str(out), "--device", "cpu"]) == 2
    one_error(capsys, needle)
    assert snapshot(out) == before


def test_bench_out_rewrites_its_own_files(tiny_dir, tmp_path, capsys):
    out = tmp_path / "lat"
    argv = ["bench", "--model", str(tiny_dir), "--remove", "1", "--out", str(out), "--device", "cpu",
            "--prompt-len", "8", "--gen-len", "2", "--warmup", "0", "--reps", "1"]
    for _ in range(2):
        assert cli.main(argv) == 0
    assert {"latency.json", "latency.md", "latency.png"} <= set(listing(out))
    assert not [n for n in listing(out) if n.startswith(".") and n != ".blockprune.lock"]  # no temporary files


# ---- 1. the lock ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_that_is_not_our_file_is_refused_and_never_emptied(run_copy, tmp_path, capsys, kind):
    victim = tmp_path / "thesis.txt"
    victim.write_text("three years of work")
    lock = run_copy / rundir.LOCK_FILE
    lock.unlink(missing_ok=True)
    if kind == "symlink":
        lock.symlink_to(victim)
    else:
        os.link(victim, lock)
    before = snapshot(run_copy)
    assert cli.main(["report", str(run_copy)]) == 2
    one_error(capsys, rundir.LOCK_FILE, "not blockprune's lock file")
    assert victim.read_text() == "three years of work"
    assert snapshot(run_copy) == before


def test_report_survives_a_plots_old_symlink(run_copy, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.png").write_bytes(b"\x89PNG mine")
    (run_copy / ".plots-old").symlink_to(mine)
    for _ in range(2):
        assert cli.main(["report", str(run_copy)]) == 0
    assert (mine / "keep.png").read_bytes() == b"\x89PNG mine"
    assert (run_copy / "plots").is_dir() and not (run_copy / "plots").is_symlink()


# ---- 1. interrupted exports ---------------------------------------------------------------------
CHILD_EXPORT = """
    import os, signal, sys
    from blockprune import cli
    from blockprune.export import hf
    real = hf.verify
    def verify(*a, **k):
        os.kill(os.getpid(), signal.{sig})
        return real(*a, **k)
    hf.verify = verify
    sys.exit(cli.main({argv!r}))
"""


def test_sigterm_during_export_cleans_up_like_ctrl_c(tiny_dir, tmp_path):
    out = tmp_path / "exp"
    r = run_child(CHILD_EXPORT.format(sig="SIGTERM", argv=export_args(tiny_dir, out)))
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    line = one_error_text(r.stderr, "interrupted", "does not resume")
    assert "rerun the same command to resume" not in line
    assert listing(tmp_path) == []  # no temporary folder, no --out


def test_a_killed_exports_temp_folder_is_reclaimed_by_the_next_export(tiny_dir, tmp_path):
    out = tmp_path / "exp"
    r = run_child(CHILD_EXPORT.format(sig="SIGKILL", argv=export_args(tiny_dir, out)))
    assert r.returncode == -signal.SIGKILL
    left = listing(tmp_path)
    assert len(left) == 1 and left[0].startswith("."), left  # what kill -9 leaves
    mine = tmp_path / ".mine"  # a hidden folder of the user's is never taken for ours
    mine.mkdir()
    assert cli.main(export_args(tiny_dir, out)) == 0
    assert listing(tmp_path) == [".mine", "exp"]


def test_a_second_ctrl_c_does_not_stop_the_cleanup(tiny_dir, tmp_path, monkeypatch, capsys):
    from blockprune.export import hf

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the interrupt was not delivered")

    real_rmtree = shutil.rmtree
    sent = []

    def impatient_rmtree(*a, **k):  # the user presses Ctrl-C again while the half-written export is removed
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real_rmtree(*a, **k)

    monkeypatch.setattr(hf, "verify", interrupted)
    monkeypatch.setattr(shutil, "rmtree", impatient_rmtree)
    out = tmp_path / "exp"
    assert cli.main(export_args(tiny_dir, out)) == 130
    assert sent
    err = capsys.readouterr().err
    assert "Traceback" not in err and "does not resume" in err
    assert listing(tmp_path) == []


# ---- 4. misleading or late messages ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_dangling_link_or_a_loop_is_called_what_it_is(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load, kind):
    link = tmp_path / "out"
    if kind == "dangling":
        link.symlink_to(tmp_path / "gone")
        needle = "dangling symbolic link"
    else:
        link.symlink_to(tmp_path / "out2")
        (tmp_path / "out2").symlink_to(link)
        needle = "symbolic link loop"
    before = snapshot(tmp_path)
    for argv in (export_args(tiny_dir, link), search_args(tiny_dir, jsonl_tasks, link)):
        assert cli.main(argv) == 2
        line = one_error(capsys, needle)
        assert "is a file" not in line and "which is a file" not in line
    assert sorted(os.listdir(tmp_path)) == sorted(before) and all(p.is_symlink() for p in tmp_path.iterdir())


@pytest.mark.parametrize("argv, needle", [
    (["export", "--model", "m"], "the following arguments are required: --remove, --out"),
    (["search", "--model", "m", "--task", "jsonl:x", "--out", "o", "--lang", "fr"], "invalid choice"),
    (["bench", "--model", "m", "--remove", "1,x"], "expected comma-separated block ids"),
    (["nonsense"], "invalid choice"),
])
def test_argparse_errors_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = one_error_text(captured.err, needle)
    assert line.startswith("blockprune: error:") and "usage:" not in captured.err


def test_a_directory_holding_only_the_lock_file_is_empty(tiny_dir, seed_root, tmp_path):
    for name in ("exp", "analysis"):
        (tmp_path / name).mkdir()
        (tmp_path / name / rundir.LOCK_FILE).write_text("12345\n")  # what a killed command leaves
    assert cli.main(export_args(tiny_dir, tmp_path / "exp")) == 0
    assert (tmp_path / "exp" / MANIFEST).exists()
    assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(tmp_path / "analysis")]) == 0


def test_failed_commands_leave_no_parent_folders_they_made(tiny_dir, jsonl_tasks, tmp_path, capsys, monkeypatch):
    long = tmp_path / "long.jsonl"  # refused after the model loaded and the run directory was locked
    long.write_text(json.dumps({"context": "word " * 700, "choices": [" a", " b"], "label": 0}) + "\n")
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{long}", "--device", "cpu",
                     "--out", str(tmp_path / "a" / "b" / "run")]) == 2
    one_error(capsys, "more than the model's")
    from blockprune.export import hf

    def bad(*a, **k):
        raise hf.ParityError("logits differ by 1.0")

    monkeypatch.setattr(hf, "verify", bad)
    assert cli.main(export_args(tiny_dir, tmp_path / "c" / "d" / "exp")) == 2
    one_error(capsys, "parity check failed")
    assert listing(tmp_path) == ["long.jsonl"]


# ---- disk full: the old state or the complete new one, and the error names a path -----------------
@contextmanager
def small_disk(tmp_path: Path, size_mb: int = 48):
    """A small tmpfs (root where mounting works); None where it cannot be mounted here."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.environ.get("BLOCKPRUNE_TEST_NO_TMPFS") or os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` but `leave` bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def limited_child(argv, limit: int):
    """The command in a child whose files may not grow beyond `limit` bytes (RLIMIT_FSIZE)."""
    import resource

    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return run_child(f"import sys; from blockprune import cli; sys.exit(cli.main({argv!r}))", preexec=preexec)


def test_disk_full_during_export_keeps_the_old_export_and_names_the_path(exported, tiny_dir, tmp_path, capsys):
    with small_disk(tmp_path) as disk:
        if disk is None:  # no tmpfs here: files limited in size instead
            out = tmp_path / "exp"
            shutil.copytree(exported, out)
            before = files(out)
            r = limited_child(export_args(tiny_dir, out, "--force", remove="2"), 1 << 20)
            assert r.returncode == 2, r.stderr
            one_error_text(r.stderr, f"cannot write the export to {out}", "hf/")
        else:
            out = disk / "exp"
            shutil.copytree(exported, out)
            before = files(out)
            fill(disk, 1 << 20)
            assert cli.main(export_args(tiny_dir, out, "--force", remove="2")) == 2
            one_error(capsys, f"cannot write the export to {out}", "hf/", "no space left")
        assert files(out) == before
        assert [n for n in listing(out.parent) if n not in ("disk", "filler")] == ["exp"]


def test_disk_full_during_report_keeps_the_old_report(run_copy, tmp_path, capsys):
    with small_disk(tmp_path, 16) as disk:
        if disk is None:
            before = files(run_copy)
            r = limited_child(["report", str(run_copy), "--lang", "en", "--tolerance", "0.2"], 4096)
            assert r.returncode == 2, r.stderr
            one_error_text(r.stderr, str(run_copy))
            run = run_copy
        else:
            run = disk / "run"
            shutil.copytree(run_copy, run)
            before = files(run)
            fill(disk, 8192)
            assert cli.main(["report", str(run), "--tolerance", "0.2"]) == 2
            one_error(capsys, "no space left", str(run))
        assert files(run) == before


def test_disk_full_during_a_seed_report_keeps_the_old_one(seed_root, tmp_path, capsys):
    with small_disk(tmp_path, 4) as disk:
        if disk is None:
            out = tmp_path / "analysis"
            assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(out)]) == 0
            before = files(out)
            r = limited_child(["report", str(seed_root), "--from-seed", "--out", str(out), "--lang", "zh"], 2048)
            assert r.returncode == 2, r.stderr
            one_error_text(r.stderr, str(out))
        else:
            out = disk / "analysis"
            assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(out)]) == 0
            before = files(out)
            fill(disk, 2048)
            assert cli.main(["report", str(seed_root), "--from-seed", "--out", str(out), "--lang", "zh"]) == 2
            one_error(capsys, "no space left", str(out))
        assert files(out) == before


# ---- the swap without an atomic exchange, and a swap killed half-way ------------------------------
def test_without_an_atomic_exchange_the_swap_still_replaces_whole(export_copy, tiny_dir, monkeypatch):
    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    assert cli.main(export_args(tiny_dir, export_copy, "--force", remove="2")) == 0
    assert json.loads((export_copy / MANIFEST).read_text())["removed"] == [2]
    assert listing(export_copy.parent) == ["exp"]


def test_a_swap_killed_between_its_renames_gets_the_old_export_back(export_copy, tmp_path):
    before = snapshot(export_copy)
    stale = tmp_path / f"{rundir.TMP_PREFIX}killed1"  # what kill -9 between the two renames leaves
    stale.mkdir()
    (stale / rundir.TMP_MARKER).write_text(json.dumps({"pid": 1, "target": str(export_copy)}))
    os.rename(export_copy, stale / "old")
    assert rundir.reclaim(tmp_path) == [stale]
    assert snapshot(export_copy) == before and listing(tmp_path) == ["exp"]


def test_a_live_temp_folder_is_never_reclaimed(tmp_path):
    with rundir.TempDir(tmp_path) as tmp:
        (tmp.new / "part").write_text("being written")
        assert rundir.reclaim(tmp_path) == [] and (tmp.new / "part").exists()
    assert listing(tmp_path) == []


def test_disk_full_during_a_search_names_the_run_and_a_rerun_resumes(tiny_dir, jsonl_tasks, tmp_path, capsys):
    with small_disk(tmp_path, 4) as disk:
        if disk is None:
            pytest.skip("no tmpfs here (the other disk-full cases fall back to RLIMIT_FSIZE)")
        out = disk / "run"
        fill(disk, 20000)
        assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "1")) == 2
        one_error(capsys, str(out), "no space left")
        (disk / "filler").unlink()
        assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "1")) == 0
        assert (out / "REPORT.md").exists()


def test_disk_full_during_bench_out_keeps_the_old_files(tiny_dir, tmp_path, capsys):
    argv = lambda out: ["bench", "--model", str(tiny_dir), "--remove", "1", "--out", str(out), "--device", "cpu",  # noqa: E731
                        "--prompt-len", "8", "--gen-len", "2", "--warmup", "0", "--reps", "1"]
    with small_disk(tmp_path, 4) as disk:
        if disk is None:
            out = tmp_path / "lat"
            assert cli.main(argv(out)) == 0
            before = files(out)
            r = limited_child(argv(out), 2048)
            assert r.returncode == 2, r.stderr
            one_error_text("\n".join(ln for ln in r.stderr.splitlines() if not ln.startswith("bench: ")), str(out))
        else:
            out = disk / "lat"
            assert cli.main(argv(out)) == 0
            before = files(out)
            fill(disk, 4096)
            capsys.readouterr()
            assert cli.main(argv(out)) == 2
            err = "\n".join(ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("bench: "))
            one_error_text(err, str(out), "no space left")
        assert files(out) == before
