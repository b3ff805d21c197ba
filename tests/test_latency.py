"""Latency benchmark: dense vs pruned, PyTorch and onnxruntime, CLI errors, the report's speedup column."""

import json

import numpy as np
import pytest
import torch

from blockprune import api, cli, models, report
from blockprune.measure import latency
from conftest import tiny_model
from reference import greedy
from test_report import BASE, acc_record, make_store

import onnxruntime  # noqa: F401 - in the [onnx] extra `make test` installs: missing must fail, not skip

SHORT = dict(prompt_len=12, gen_len=6, warmup=0, reps=2)


_generate = greedy  # HF generate, greedy, exactly gen_len new tokens (tests/reference.py)


def _first_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockprune: error: ") and "\n" not in err, err
    return err


# ---- PyTorch ----------------------------------------------------------------------------------
def test_torch_bench_decodes_what_generate_decodes_and_prunes_for_real():
    bm = tiny_model("llama", layers=6)
    r = latency.bench(bm, [3, 1], batches=(1, 2), keep_tokens=True, **SHORT)
    assert r["num_blocks"] == 6 and r["settings"]["reps"] == 2
    rows = {(x["batch"], x["variant"]): x for x in r["results"]}
    assert set(rows) == {(1, "dense"), (1, "-1,3"), (2, "dense"), (2, "-1,3")}
    pruned = models.remove_blocks(bm, [1, 3])
    assert len(models.find_blocks(pruned.model)[1]) == 4 and rows[(1, "-1,3")]["kept_blocks"] == 4
    for batch in (1, 2):
        ids = latency._prompt(262, batch, SHORT["prompt_len"])
        dense_tokens = np.asarray(rows[(batch, "dense")]["tokens"])
        pruned_tokens = np.asarray(rows[(batch, "-1,3")]["tokens"])
        assert dense_tokens.shape == (batch, SHORT["gen_len"])
        np.testing.assert_array_equal(dense_tokens, _generate(bm.model, ids, SHORT["gen_len"]))
        np.testing.assert_array_equal(pruned_tokens, _generate(pruned.model, ids, SHORT["gen_len"]))
        assert not np.array_equal(dense_tokens, pruned_tokens)  # the blocks really are gone
    for x in r["results"]:
        assert x["tokens_identical_across_runs"]
        for key, n in (("prefill_ms", 2), ("decode_ms_per_token", 2 * 5), ("decode_ms_per_token_run_mean", 2)):
            s = x[key]
            assert s["n"] == n and 0 < s["min"] <= s["median"] <= s["p90"] <= s["max"]  # decode: every step of every run
    # the KV cache holds prompt + generated - 1 positions for each kept layer: 2 x batch x 2 heads x 12 dims x 4 B
    kv = {(x["batch"], x["kept_blocks"]): x["memory"]["kv_cache_mib"] * 2**20 for x in r["results"]}
    assert kv[(1, 6)] == 6 * 2 * 1 * 2 * 17 * 12 * 4 and kv[(1, 4)] == 4 * 2 * 1 * 2 * 17 * 12 * 4
    (s1, s2) = r["speedups"]
    assert s1["ideal"] == pytest.approx(1.5) and s1["k"] == 2 and s1["removed"] == [1, 3]
    assert s1["decode_paired"]["n"] == 2
    md = latency.markdown(r)
    assert "| torch | 1 | -1,3 | 4 |" in md and "1.500" in md


# Scripted timings (seconds) per variant and run, and the figures worked out by hand from them.
SCRIPT = {6: [(0.010, [0.004, 0.006, 0.005]), (0.014, [0.008, 0.008, 0.007])],   # dense
          4: [(0.005, [0.0025, 0.0025, 0.003]), (0.010, [0.004, 0.004, 0.004])]}  # without [1, 3]


def test_figures_are_the_ones_worked_out_by_hand_from_known_timings(monkeypatch):
    """Runners that report scripted times: every figure bench derives (statistics, tokens/s, the
    paired and ratio-of-medians speedups, fractions of the ideal) equals its value computed by hand."""
    class Scripted:
        def __init__(self, model):
            self.layers = len(models.find_blocks(model)[1])
            self.calls, self.weights_bytes = 0, 1
        def __call__(self, ids, gen_len):
            prefill, steps = SCRIPT[self.layers][self.calls]
            self.calls += 1
            return {"prefill": prefill, "steps": steps, "tokens": np.zeros((1, gen_len)), "kv_bytes": 0}

    monkeypatch.setattr(latency, "TorchGeneration", Scripted)
    r = latency.bench(tiny_model("llama", layers=6), [1, 3], prompt_len=4, gen_len=4, warmup=0, reps=2)
    rows = {x["variant"]: x for x in r["results"]}
    dense, cut = rows["dense"], rows["-1,3"]
    # decode steps of both runs: dense 4 5 6 7 8 8 ms, pruned 2.5 2.5 3 4 4 4 ms
    assert dense["decode_ms_per_token"]["median"] == pytest.approx(6.5)
    assert cut["decode_ms_per_token"]["median"] == pytest.approx(3.5)
    assert dense["decode_ms_per_token"]["min"] == pytest.approx(4) and dense["decode_ms_per_token"]["max"] == pytest.approx(8)
    assert dense["prefill_ms"]["median"] == pytest.approx(12) and cut["prefill_ms"]["median"] == pytest.approx(7.5)
    assert dense["decode_tokens_per_s"] == pytest.approx(1000 / 6.5) and cut["decode_tokens_per_s"] == pytest.approx(1000 / 3.5)
    assert dense["decode_ms_per_token_run_mean"]["median"] == pytest.approx((5 + 23 / 3) / 2)
    (s,) = r["speedups"]
    assert s["ideal"] == pytest.approx(1.5)
    # paired per run: decode 5/2.5 = 2 and 8/4 = 2; prefill 10/5 = 2 and 14/10 = 1.4
    assert s["decode"] == pytest.approx(2.0) and s["prefill"] == pytest.approx(1.7)
    assert s["decode_paired"]["min"] == pytest.approx(2.0) and s["prefill_paired"]["min"] == pytest.approx(1.4)
    assert s["decode_ratio_of_medians"] == pytest.approx(6.5 / 3.5) and s["prefill_ratio_of_medians"] == pytest.approx(12 / 7.5)
    assert s["decode_fraction_of_ideal"] == pytest.approx(2 / 1.5) and s["decode_fraction_of_ideal_gain"] == pytest.approx(2.0)


def test_interleaving_alternates_the_order():
    calls = []

    def runner(name):
        def run(ids, gen_len):
            calls.append(name)
            return {"prefill": 1.0, "steps": [1.0] * (gen_len - 1), "tokens": np.zeros((1, gen_len)), "kv_bytes": 0}
        return run

    out = latency._measure({"a": runner("a"), "b": runner("b")}, np.zeros((1, 3)), 4, warmup=1, reps=3,
                           device=torch.device("cpu"))
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(out["a"]["runs"]) == 3 and out["a"]["consistent"]


def test_pareto_front():
    pts = [(0.0, 1.0), (0.02, 1.05), (0.01, 1.10), (0.05, 1.10), (0.08, 1.25), (0.10, 1.2)]
    assert latency.pareto_front(pts) == [0, 2, 4]


# ---- onnxruntime ------------------------------------------------------------------------------
def _write_tiny_decoder(bm, removed, out):
    """bench/conftest.py's fast export of the decoder with past (TorchScript exporter, verified)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("blockprune_bench_conftest",
                                                  Path(__file__).resolve().parents[1] / "bench" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_decoder(bm, removed, out)


@pytest.fixture(scope="module")
def tiny_exports(tiny_dir, tmp_path_factory):
    """A 6-block Llama with a small vocabulary saved as an HF directory (so the CLI can load it), and
    export directories (manifest + decoder with past) of its dense model and of it without [1, 3]."""
    import transformers

    root = tmp_path_factory.mktemp("bench-exports")
    tiny_model("llama", layers=6).model.save_pretrained(root / "model")
    transformers.AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(root / "model")  # bench never tokenizes
    bm = models.load(str(root / "model"), device="cpu")
    for name, removed in (("dense", []), ("pruned", [1, 3])):
        _write_tiny_decoder(bm, removed, root / name)
    return bm, root / "dense", root / "pruned"


def test_onnxruntime_bench_reuses_the_exports_and_agrees_with_torch(tiny_exports, tmp_path, capsys):
    bm, dense, pruned = tiny_exports
    out = tmp_path / "out"
    code = cli.main(["bench", "--model", str(bm.name), "--remove", "3,1", "--backend", "torch,onnxruntime",
                     "--prompt-len", "10", "--gen-len", "5", "--reps", "2", "--warmup", "1",
                     "--onnx", str(pruned / "onnx"), "--onnx-dense", str(dense), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "latency.json").read_text())
    assert (out / "latency.md").read_text().startswith("# Latency:") and (out / "latency.png").stat().st_size > 0
    ort_rows = [x for x in r["results"] if x["backend"] == "onnxruntime"]
    assert [x["kept_blocks"] for x in ort_rows] == [6, 4]
    assert all(x["token_agreement_with_torch"] == 1.0 for x in ort_rows)
    assert r["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert r["onnxruntime"]["graphs"]["-1,3"].startswith(str(pruned))
    assert {(s["backend"], s["k"]) for s in r["speedups"]} == {("torch", 2), ("onnxruntime", 2)}
    assert "versions" in r and "onnxruntime" in r["versions"] and r["machine"]["cpu_count"] >= 1
    # the KV cache of the ORT decode holds the same positions as PyTorch's
    kv = {(x["backend"], x["kept_blocks"]): x["memory"]["kv_cache_mib"] for x in r["results"]}
    assert kv[("onnxruntime", 4)] == pytest.approx(kv[("torch", 4)])


def test_export_of_another_set_or_model_is_refused(tiny_exports):
    bm, dense, pruned = tiny_exports
    with pytest.raises(latency.BenchError, match="without blocks"):
        latency.bench(bm, [1, 3], backends=("onnxruntime",), onnx_dirs={"pruned": dense, "dense": dense}, **SHORT)
    other = tiny_model("llama", layers=6)
    with pytest.raises(latency.BenchError, match="is an export of"):
        latency.bench(other, [1, 3], backends=("onnxruntime",), onnx_dirs={"pruned": pruned, "dense": dense}, **SHORT)


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--backend", "tensorrt"], "unknown backend"),
    (["--prompt-len", "0"], "--prompt-len"),
    (["--gen-len", "1"], "--gen-len"),
    (["--prompt-len", "500", "--gen-len", "20"], "exceeds the model's 512 positions"),
    (["--batch", "0"], "batch sizes"),
    (["--reps", "0"], "--reps"),
    (["--remove", "1,99"], "out of range"),
    (["--remove", ""], "at least one block"),
    (["--backend", "onnxruntime"], "needs the pruned model's export"),
    (["--backend", "onnxruntime", "--onnx", "NOPE", "--onnx-dense", "NOPE"], "no such directory"),
    (["--backend", "onnxruntime", "--onnx", "EMPTY", "--onnx-dense", "EMPTY"], "no ONNX decoder with past"),
])
def test_bad_input_exits_2(tiny_dir, tmp_path, capsys, extra, message):
    (tmp_path / "EMPTY").mkdir()
    extra = [str(tmp_path / x) if x in ("NOPE", "EMPTY") else x for x in extra]
    args = ["bench", "--model", str(tiny_dir), "--remove", "1", "--reps", "1", "--warmup", "0", "--gen-len", "3",
            "--prompt-len", "4", "--out", str(tmp_path / "out")]
    assert cli.main(args + extra) == 2
    assert message in _first_line_error(capsys)
    assert not (tmp_path / "out").exists()


# ---- report -----------------------------------------------------------------------------------
def _toy_run(tmp_path):
    recs = [acc_record([], "a", BASE), acc_record([1], "a", BASE), acc_record([2], "a", [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
            acc_record([1, 2], "a", [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])]
    make_store(tmp_path, recs, {"a": "acc"})
    return tmp_path


def _fake_latency(directory, speeds):
    rows = [{"backend": "torch", "batch": 1, "removed": list(k), "k": len(k), "ideal": 4 / (4 - len(k)), "decode": d,
             "prefill": d, "decode_paired": {"min": d - 0.01, "median": d, "max": d + 0.01}} for k, d in speeds.items()]
    (directory / "latency.json").write_text(json.dumps({
        "model": "toy", "device": "cpu", "machine": {"cpu": "test cpu", "torch_threads": 2},
        "settings": {"prompt_len": 64, "gen_len": 16, "reps": 5}, "speedups": rows}))


def test_report_gains_measured_speedups_and_the_pareto_plot(tmp_path):
    d = _toy_run(tmp_path)
    report.write_report(d, tolerance=0.05)
    assert "measured speedup" not in (d / "REPORT.md").read_text()
    assert not (d / "plots" / "drop_vs_speedup.png").exists()
    _fake_latency(d, {(1,): 1.31, (1, 2): 1.87})
    recs = report.write_report(d, tolerance=0.05)
    assert recs["recommendations"]["balanced"]["removed"] == [1]
    text = (d / "REPORT.md").read_text()
    assert "| recommendation | removed | k | Mean drop | measured speedup | ideal L/(L-k) | prefill speedup |" in text
    assert "| Balanced | [1] | 1 | 0.00% | 1.31x (1.30–1.32) | 1.33x | 1.31x |" in text
    assert (d / "plots" / "drop_vs_speedup.png").stat().st_size > 0
    report.write_report(d, lang="zh", tolerance=0.05)
    zh = (d / "REPORT.zh.md").read_text()
    assert "实测加速比" in zh and "1.31x (1.30–1.32)" in zh
    # a latency.json of another model is ignored
    _fake_latency(d, {(1,): 1.31})
    (d / "latency.json").write_text((d / "latency.json").read_text().replace('"toy"', '"other"'))
    report.write_report(d, tolerance=0.05)
    assert "measured speedup" not in (d / "REPORT.md").read_text()


def test_search_measures_the_report_candidates(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "run"
    res = api.run_search(model=str(tiny_dir), tasks=[f"jsonl:{jsonl_tasks / 'mc.jsonl'}"], out=out, method="greedy",
                         max_remove=2, samples=None, progress=False)
    lat = json.loads((out / "latency.json").read_text())
    assert lat["settings"]["prompt_len"] == latency.REPORT_SETTINGS["prompt_len"]
    measured = {tuple(s["removed"]) for s in lat["speedups"]}
    best = {tuple(v["best"]["removed"]) for v in res.recommendations["independent_best"].values()}
    recs = {tuple(r["removed"]) for r in res.recommendations["recommendations"].values() if isinstance(r, dict) and r.get("k")}
    assert best | recs == measured
    assert [r["variant"] for r in lat["results"]].count("dense") == 1
    assert (out / "plots" / "drop_vs_speedup.png").exists()
    if recs:
        assert "measured speedup" in (out / "REPORT.md").read_text()
    out2 = tmp_path / "run2"
    api.run_search(model=str(tiny_dir), tasks=[f"jsonl:{jsonl_tasks / 'mc.jsonl'}"], out=out2, method="greedy",
                   max_remove=1, samples=None, progress=False, latency=False)
    assert not (out2 / "latency.json").exists()


# ---- the real model ---------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_bench_decodes_what_generate_decodes(smollm2):
    r = latency.bench(smollm2, [17, 18, 19], prompt_len=32, gen_len=12, warmup=1, reps=3, keep_tokens=True)
    rows = {x["variant"]: x for x in r["results"]}
    ids = latency._prompt(smollm2.model.get_input_embeddings().num_embeddings, 1, 32)
    np.testing.assert_array_equal(np.asarray(rows["dense"]["tokens"]), _generate(smollm2.model, ids, 12))
    pruned = models.remove_blocks(smollm2, [17, 18, 19])
    np.testing.assert_array_equal(np.asarray(rows["-17,18,19"]["tokens"]), _generate(pruned.model, ids, 12))
    (s,) = r["speedups"]
    assert s["ideal"] == pytest.approx(30 / 27) and s["k"] == 3  # speed itself is bench/'s job, not a test's
