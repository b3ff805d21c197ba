"""Held-out validation, KL tasks and --rank-by through the API and the CLI (tiny model, real tokenizer)."""

import json

import numpy as np
import pytest

from blockprune import api, cli, report
from blockprune.runs.store import Store


def search(tiny_dir, jsonl_tasks, out, *tasks, **kw):
    specs = list(tasks) or [f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4", f"jsonl:{jsonl_tasks / 'ppl.jsonl'}#3",
                            f"kl:jsonl:{jsonl_tasks / 'ppl.jsonl'}#3"]
    return api.run_search(model=str(tiny_dir), tasks=specs, out=out, method="greedy", max_remove=2, ppl_window=16,
                          progress=False, latency=False, device="cpu", tolerance=0.9, **kw)


def test_validate_scores_unused_samples_and_the_report_shows_them(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "run"
    res = search(tiny_dir, jsonl_tasks, out)
    settings = Store.open_existing(out).run_info["settings"]
    assert settings["rank_by"] == {"mc": "p_gold", "ppl": "perplexity", "kl_ppl": "kl"}
    assert res.recommendations["recommendations"]["balanced"]["k"] >= 1
    v = api.validate(out, tolerance=0.9)
    for name, info in v["tasks"].items():  # disjoint from the search's samples
        assert not set(info["sample_ids"]) & set(settings["tasks"][name]["sample_ids"])
        assert info["n"] == min(settings["tasks"][name]["n"], settings["tasks"][name]["available"] - settings["tasks"][name]["n"])
    key, entry = next(iter(v["sets"].items()))
    # the engine's held-out perplexity equals plain transformers with the blocks deleted
    ppl_drop = entry["metric_drops"]["ppl"]
    plain = entry["plain_perplexity"]["ppl"] / v["dense"]["ppl"]["plain_perplexity"]
    assert 1 - 1 / plain == pytest.approx(ppl_drop, rel=1e-4, abs=1e-6)
    assert entry["mean_drop"] == pytest.approx(np.mean(list(entry["drops"].values())))
    text = (out / "REPORT.md").read_text()
    assert "### Held-out check" in text and "measured by plain transformers" in text
    recs = json.loads((out / "pruning_recommendations.json").read_text())
    assert key in recs["held_out"]["sets"]


def test_old_store_reports_with_a_note_and_refuses_to_resume(tiny_dir, jsonl_tasks, tmp_path, capsys):
    out = tmp_path / "old"
    search(tiny_dir, jsonl_tasks, out, f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4")
    # rewrite the store as blockprune wrote it before per-choice log-probs were kept
    run = json.loads((out / "run.json").read_text())
    del run["settings"]["rank_by"]
    (out / "run.json").write_text(json.dumps(run))
    lines = []
    for line in (out / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("run", None)  # nor did it mark records with their run, plan steps or finish
        if rec.get("type") in ("plan", "done"):
            continue
        if "per_sample" in rec:
            rec["per_sample"] = {k: v for k, v in rec["per_sample"].items() if k in ("correct", "correct_norm")}
        lines.append(json.dumps(rec))
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    report.write_report(out, replicates=50)
    text = (out / "REPORT.md").read_text()
    assert "ranked by acc instead of p_gold" in text
    capsys.readouterr()
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4",
                     "--method", "greedy", "--max-remove", "2", "--out", str(out), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "older blockprune" in err and "\n" not in err


@pytest.mark.parametrize("extra, message", [
    (["--rank-by", "mc=kl"], "has no score 'kl'"),
    (["--rank-by", "accuracy"], "unknown score"),
    (["--rank-by", "exact_match"], "no task has this score"),
])
def test_bad_rank_by_is_one_line(tiny_dir, jsonl_tasks, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                     "--out", str(out), "--no-progress", "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not out.exists()


def test_kl_source_too_short_is_one_line(tiny_dir, tmp_path, capsys):
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "too short"}\n')
    code = cli.main(["search", "--model", str(tiny_dir), "--task", f"kl:jsonl:{short}", "--out", str(tmp_path / "o"),
                     "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "fewer than one window" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_rank_by_metric_ranks_by_accuracy(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "metric"
    search(tiny_dir, jsonl_tasks, out, f"jsonl:{jsonl_tasks / 'mc.jsonl'}#6", rank_by="metric")
    a = report.build_analysis(out, replicates=50)
    assert a["rank_by"] == {"mc": "acc"}
    for c in a["candidates"]:  # the ranked drop is the accuracy's relative drop, by hand
        base, cand = a["tasks"]["mc"]["baseline"], c["scores"]["mc"]
        assert c["drops"]["mc"] == pytest.approx(1 - cand / base if base else base - cand)
        assert c["metric_drops"]["mc"] == c["drops"]["mc"]
