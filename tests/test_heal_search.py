"""Healed searches end to end on a tiny model: run.json's healing record, calibration windows
disjoint from every scored and held-out window, the plain baseline in OUT/plain, healed held-out
checks, and the bad inputs of #23 (one line, nothing written)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from blockprune import api, cli, models
from blockprune.healing import heal
from blockprune.engine import Engine
from blockprune.tasks import load_task
from test_hostile import no_model_load, one_error, snapshot  # noqa: F401

TEXT = "kl:shakespeare/hamlet#4"


def healed_args(tiny_dir, jsonl_tasks, out, *extra):
    return ["search", "--model", str(tiny_dir), "--task", TEXT, "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4",
            "--ppl-window", "32", "--out", str(out), "--no-progress", "--device", "cpu", "--no-latency",
            "--method", "given", "--sets", "2;2,3;0,1", "--heal", "linear", *extra]


@pytest.fixture(scope="module")
def healed_run(tiny_dir, jsonl_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("healed") / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out, "--held-out")) == 0
    return out


def test_run_json_records_the_healing_and_its_disjoint_windows(healed_run):
    run = json.loads((healed_run / "run.json").read_text())
    rec = run["settings"]["heal"]
    assert rec["method"] == "linear" and rec["ridge"] == heal.DEFAULT_RIDGE
    cal = rec["calibration"]
    assert cal["spec"] == "shakespeare/hamlet" and cal["window"] == 32
    assert cal["tokens"] >= 16 * 64
    # the default mix: the text's unscored windows and half of the other task's unscored samples
    mc = cal["tasks"]["mc"]
    assert cal["n"] == len(cal["sample_ids"]) + len(mc["sample_ids"]) and len(mc["sample_ids"]) == 2  # (8 - 4) / 2
    scored = set(run["settings"]["tasks"]["kl_shakespeare_hamlet"]["sample_ids"])
    assert not scored & set(cal["sample_ids"])
    mc_scored = set(run["settings"]["tasks"]["mc"]["sample_ids"])
    assert not mc_scored & set(mc["sample_ids"])
    held = json.loads((healed_run / "validation.json").read_text())
    held_ids = set(held["tasks"]["kl_shakespeare_hamlet"]["sample_ids"])
    assert held_ids and not held_ids & set(cal["sample_ids"]) and not held_ids & scored
    mc_held = set(held["tasks"]["mc"]["sample_ids"])
    assert mc_held and not mc_held & set(mc["sample_ids"]) and not mc_held & mc_scored
    assert "seconds" in run["healing"]


def test_the_plain_baseline_is_a_plain_run_of_the_same_search(healed_run):
    plain = json.loads((healed_run / "plain" / "run.json").read_text())
    assert "heal" not in plain["settings"]
    healed = json.loads((healed_run / "run.json").read_text())
    assert plain["settings"]["tasks"] == healed["settings"]["tasks"]
    sets = {tuple(json.loads(line).get("removed", ())) for line in (healed_run / "plain" / "results.jsonl").open()
            if '"removed"' in line}
    assert {(2,), (2, 3), (0, 1)} <= sets


def _record(run: Path, task: str, removed):
    for line in (run / "results.jsonl").open():
        r = json.loads(line)
        if r.get("task") == task and tuple(r.get("removed", ())) == tuple(removed) and r.get("type", "result") == "result":
            return r
    raise AssertionError((task, removed))


def test_healed_scores_are_the_folded_models_and_plain_ones_are_not(healed_run, tiny_dir):
    """The stored KL of a healed set is the KL of a copy with the recorded maps folded in and the
    blocks deleted (plain transformers, fp32); the baseline's is the plain copy's."""
    from blockprune.healing import calibration

    run = json.loads((healed_run / "run.json").read_text())
    bm = models.load(str(tiny_dir), device="cpu")
    cal = calibration.from_record(run["settings"]["heal"]["calibration"], bm.tokenizer, bm.eos_token_id)
    healing = heal.Healing.fit(bm, cal.windows, 2, run["settings"]["heal"]["ridge"], skip=cal.skip)
    task = load_task(run["settings"]["tasks"]["kl_shakespeare_hamlet"]["spec"], bm.tokenizer, bm.eos_token_id, 4, 0, 32)
    from reference import folded_kl

    for removed in [(2,), (2, 3)]:
        want_healed = folded_kl(bm, healing, task.requests, removed)
        want_plain = folded_kl(bm, None, task.requests, removed)
        got_healed = _record(healed_run, "kl_shakespeare_hamlet", removed)["value"]
        got_plain = _record(healed_run / "plain", "kl_shakespeare_hamlet", removed)["value"]
        np.testing.assert_allclose(got_healed, want_healed, rtol=1e-4)
        np.testing.assert_allclose(got_plain, want_plain, rtol=1e-4)
        assert abs(want_healed - want_plain) > 1e-3 * want_plain
    # (0, 1) starts at block 0: nothing to fold into, healed == plain
    np.testing.assert_allclose(_record(healed_run, "kl_shakespeare_hamlet", (0, 1))["value"],
                               _record(healed_run / "plain", "kl_shakespeare_hamlet", (0, 1))["value"], rtol=1e-6)


def test_validate_refits_the_same_healing(healed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(healed_run, run)
    before = json.loads((run / "validation.json").read_text())
    api.validate(run)
    after = json.loads((run / "validation.json").read_text())
    for key, entry in before["sets"].items():
        for task, drop in entry["drops"].items():
            np.testing.assert_allclose(after["sets"][key]["drops"][task], drop, rtol=1e-6, atol=1e-9)
    assert after["unseen_text"]["spec"] == "shakespeare/macbeth"
    assert after["unseen_text"]["sets"].keys() == after["sets"].keys()
    assert all(set(v) == {"healed", "plain"} for v in after["unseen_text"]["sets"].values())


# ---- bad input: one line, nothing written -------------------------------------------------------
def test_another_runs_directory_is_refused_before_the_healing_is_fitted(healed_run, tiny_dir, jsonl_tasks, tmp_path,
                                                                       capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(healed_run, run)
    before = snapshot(run)
    fitted = []
    monkeypatch.setattr(api, "fit_healing", lambda *a, **k: fitted.append(1))
    args = healed_args(tiny_dir, jsonl_tasks, run)
    args[args.index("2;2,3;0,1")] = "2;1,3"  # other sets: another search
    assert cli.main(args) == 2
    one_error(capsys, "different settings", "sets")
    assert fitted == [] and snapshot(run) == before


def test_unknown_healing_method_is_one_line(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load):
    out = tmp_path / "run"
    args = healed_args(tiny_dir, jsonl_tasks, out)
    args[args.index("linear")] = "quadratic"
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    one_error(capsys, "--heal", "quadratic")
    assert not out.exists()


def test_calibration_without_heal_is_refused(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load):
    out = tmp_path / "run"
    args = healed_args(tiny_dir, jsonl_tasks, out, "--calibration", "shakespeare/macbeth#40")
    args[args.index("linear")] = "none"
    assert cli.main(args) == 2
    one_error(capsys, "--calibration", "--heal linear")
    assert not out.exists()


def test_a_calibration_too_short_names_the_tokens_it_needs(tiny_dir, jsonl_tasks, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(healed_args(tiny_dir, jsonl_tasks, out, "--calibration", "shakespeare/macbeth#3")) == 2
    line = one_error(capsys, "too few", "at least 256")
    assert "#9" in line  # 4 tokens per hidden dimension (64): 256 tokens / 31 per window
    assert snapshot(out) in ({}, {".blockprune-run.lock": b""}) or not any(
        p.name in ("run.json", "results.jsonl") for p in out.rglob("*"))


def test_a_calibration_that_is_a_scored_text_is_refused(tiny_dir, jsonl_tasks, tmp_path, capsys):
    """The same text under another name: its windows are the windows the search scores."""
    from blockprune import data

    text = data.shakespeare_text("hamlet")
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"text": text}) + "\n")
    out = tmp_path / "run"
    args = healed_args(tiny_dir, jsonl_tasks, out, "--calibration", f"jsonl:{tmp_path / 'b.jsonl'}#200")
    args[args.index(TEXT)] = f"kl:jsonl:{tmp_path / 'a.jsonl'}#30"
    assert cli.main(args) == 2
    one_error(capsys, "is a window the search scores")
    assert not (out / "run.json").exists() and not (out / "results.jsonl").exists()


def test_heal_on_a_model_with_nothing_to_fold_into(tmp_path, tiny_dir, jsonl_tasks, capsys):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    cfg = transformers.Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                        num_attention_heads=4, head_dim=16, num_key_value_heads=2,
                                        max_position_embeddings=512, sliding_window=8)
    torch.manual_seed(0)
    gemma = tmp_path / "gemma"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(gemma)
    tok.save_pretrained(gemma)
    out = tmp_path / "run"
    args = healed_args(gemma, jsonl_tasks, out)
    assert cli.main(args) == 2
    one_error(capsys, "nothing to heal", "norm or scale")
    assert not (out / "run.json").exists() and not (out / "results.jsonl").exists()


def test_healed_export_of_a_run_from_block_0_is_refused(tiny_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "export"
    rc = cli.main(["export", "--model", str(tiny_dir), "--remove", "0,1", "--out", str(out), "--heal", "linear",
                   "--calibration", "shakespeare/hamlet#40", "--ppl-window", "32"])
    assert rc == 2
    one_error(capsys, "starts at block 0")
    assert not out.exists()


def test_the_default_mix_takes_at_most_max_task_samples_of_a_task(jsonl_tasks, monkeypatch):
    """Half of a task's unscored samples, capped: a benchmark's half can be thousands of prompts."""
    from blockprune.healing import calibration
    from conftest import CharTokenizer

    tok = CharTokenizer()
    spec = f"jsonl:{jsonl_tasks / 'mc.jsonl'}#2"  # 8 rows, 2 scored: 6 unscored, half is 3
    task = load_task(spec, tok, 2, seed=0, ppl_window=32)
    for cap, want in ((64, 3), (2, 2)):
        monkeypatch.setattr(calibration, "MAX_TASK_SAMPLES", cap)
        cal = calibration.select(None, tok, 2, 8, 0, 32, [task], [spec])
        picked = cal.tasks["mc"]["sample_ids"]
        assert len(picked) == want and not set(picked) & set(task.sample_ids)
        assert len(cal.windows) == want  # no text task: the tasks' samples only
