"""Generative tasks (blockprune.tasks.gen_task): normalisation and F1 by hand, bad rows in one line, and a
search whose stored generations are the pruned model's own `generate()` output."""

import json

import numpy as np
import pytest
import torch

from blockprune import api, cli, models
from blockprune.tasks import gen_task
from reference import pruned
from test_hostile import one_error  # noqa: F401


def test_normalisation_by_hand():
    assert gen_task.normalize("  The Cat.  ") == "cat"
    assert gen_task.normalize("An apple, a day!") == "apple day"
    assert gen_task.exact_match("The cat.", ["cat"]) == 1.0
    assert gen_task.exact_match("cats", ["cat"]) == 0.0
    assert gen_task.exact_match("Eight", ["8", "eight"]) == 1.0


def test_f1_by_hand():
    # "the cat sat" -> [cat, sat]; gold "a cat sat down" -> [cat, sat, down]: common 2, P = 1, R = 2/3, F1 = 0.8
    assert gen_task.token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    # the best answer counts: "dog" shares nothing with the first, everything with the second
    assert gen_task.token_f1("dog", ["cat", "the dog"]) == 1.0
    assert gen_task.token_f1("", [""]) == 1.0 and gen_task.token_f1("x", [""]) == 0.0
    # repeated tokens count once each side: pred [a1, a1] vs gold [a1]: common 1, P = 1/2, R = 1 -> 2/3
    assert gen_task.token_f1("a1 a1", ["a1"]) == pytest.approx(2 / 3)


def test_cut_at_the_first_stop_string():
    assert gen_task.cut_at_stop("Paris\nQ: next", ["\n", "Q:"]) == ("Paris", True)
    assert gen_task.cut_at_stop("no stop here", ["###"]) == ("no stop here", False)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "Q", "answers": []}, "non-empty list"),
    ({"prompt": "Q", "answers": ["a"], "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "Q", "answers": ["a"], "max_new_tokens": 10 ** 6}, "max_new_tokens"),
    ({"prompt": "Q", "answers": ["a"], "until": [""]}, "stop strings"),
])
def test_bad_rows_are_one_line(row, needle, tiny_dir, tmp_path, capsys):
    task = _write(tmp_path / "g.jsonl", [row])
    out = tmp_path / "run"
    rc = cli.main(["search", "--model", str(tiny_dir), "--task", f"gen:jsonl:{task}", "--method", "given", "--sets", "1",
                   "--out", str(out), "--no-progress", "--no-latency", "--device", "cpu"])
    assert rc == 2
    one_error(capsys, needle)
    assert not (out / "results.jsonl").exists()


def test_a_prompt_too_long_for_the_positions(tiny_dir, tmp_path, capsys):
    task = _write(tmp_path / "g.jsonl", [{"prompt": "word " * 500, "answers": ["a"], "max_new_tokens": 32}])
    out = tmp_path / "run"
    rc = cli.main(["search", "--model", str(tiny_dir), "--task", f"gen:jsonl:{task}", "--method", "given", "--sets", "1",
                   "--out", str(out), "--no-progress", "--no-latency", "--device", "cpu"])
    assert rc == 2
    one_error(capsys, "exceeds the model's 512 positions")


def test_stored_generations_are_the_pruned_models(tiny_dir, tmp_path):
    rows = [{"prompt": f"Count: {i}, {i + 1},", "answers": [f" {i + 2}"], "max_new_tokens": 6, "until": ["."]}
            for i in range(3)]
    task = _write(tmp_path / "g.jsonl", rows)
    out = tmp_path / "run"
    api.run_search(str(tiny_dir), [f"gen:jsonl:{task}"], out, method="given", sets=[(2,), (1, 4)], samples=None,
                   device="cpu", progress=False, latency=False)
    bm = models.load(str(tiny_dir), device="cpu")
    stored = {}
    for line in (out / "results.jsonl").open():
        r = json.loads(line)
        if "generated" in r:
            stored[tuple(r["removed"])] = r
    assert set(stored) == {(), (2,), (1, 4)}
    tok = bm.tokenizer
    for removed, rec in stored.items():
        pm = pruned(bm, removed)
        for s, row in enumerate(rows):
            ids = torch.tensor([tok(row["prompt"], add_special_tokens=False).input_ids])
            with torch.inference_mode():
                gen = pm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                        do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0)
            text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            want = text.split(".")[0] if "." in text else text
            assert rec["generated"][s] == want, (removed, s)
            assert rec["per_sample"]["match"][s] == gen_task.exact_match(want, row["answers"])
    # the default ranking score is the dense continuation's log-prob
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["rank_by"] == {"gen_g": "dense_logprob"}


def test_racing_on_a_generative_task_keeps_generations_and_scores(tiny_dir, tmp_path):
    """Racing adds samples in rounds: parts hold their samples' generations, and every whole record
    equals the same set scored exactly (no racing) in a fresh run."""
    rows = [{"prompt": f"Item {i}: the colour of {w} is", "answers": [" red"], "max_new_tokens": 4}
            for i, w in enumerate(["sky", "grass", "snow", "coal", "blood", "sun", "sea", "fire", "ash", "gold"] * 2)]
    task = _write(tmp_path / "g.jsonl", rows)
    kw = dict(method="beam", beam_width=1, max_remove=1, samples=None, device="cpu", progress=False, latency=False,
              rank_by="dense_logprob")
    raced = api.run_search(str(tiny_dir), [f"gen:jsonl:{task}"], tmp_path / "raced", **kw)
    exact = api.run_search(str(tiny_dir), [f"gen:jsonl:{task}"], tmp_path / "exact", exact=True, **kw)
    parts = [json.loads(x) for x in (tmp_path / "raced" / "results.jsonl").open() if '"type":"part"' in x]
    assert parts and all(len(p["generated"]) == len(p["samples"]) for p in parts)

    def whole(d):
        return {tuple(r["removed"]): r for r in map(json.loads, (d / "results.jsonl").open())
                if r.get("type") is None and "value" in r}

    w_r, w_e = whole(tmp_path / "raced"), whole(tmp_path / "exact")
    assert set(w_r) <= set(w_e) and len(w_r) >= 2
    for key, rec in w_r.items():
        assert rec["generated"] == w_e[key]["generated"], key
        np.testing.assert_allclose(rec["per_sample"]["dense_logprob"], w_e[key]["per_sample"]["dense_logprob"],
                                   rtol=1e-5, atol=1e-5)
    assert raced.result.steps[0][0] == exact.result.steps[0][0]
