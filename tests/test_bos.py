"""Requests start the way the model expects: with the tokenizer's leading special tokens (BOS),
never scored. Checked on a tiny Gemma 3 with a real tokenizer (SmolLM2's vocabulary) that adds BOS
by default, against plain transformers forwards."""

import json

import numpy as np
import pytest
import torch

from blockprune import cli, models
from blockprune.engine import Engine
from blockprune.tasks import leading_specials, load_task


@pytest.fixture(scope="module")
def gemma_bos(tmp_path_factory):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(models.resolve("smollm2-135m"), add_bos_token=True)
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                                        num_attention_heads=4, head_dim=12, num_key_value_heads=2,
                                        max_position_embeddings=256, sliding_window=5, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    out = tmp_path_factory.mktemp("gemma-bos")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_the_tokenizer_adds_bos_and_blockprune_sees_it(gemma_bos):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(gemma_bos)
    assert tok("To be").input_ids[0] == tok.bos_token_id  # a reload adds BOS by default, like Llama 3
    assert leading_specials(tok) == [tok.bos_token_id]
    plain = transformers.AutoTokenizer.from_pretrained(models.resolve("smollm2-135m"))
    assert leading_specials(plain) == []  # SmolLM2 itself adds none


def test_every_request_starts_with_bos_which_is_never_scored(gemma_bos, jsonl_tasks):
    bm = models.load(str(gemma_bos), device="cpu")
    bos = bm.tokenizer.bos_token_id
    for name in ("mc", "ppl", "em"):
        task = load_task(f"jsonl:{jsonl_tasks / name}.jsonl", bm.tokenizer, bm.eos_token_id, None, 0, 16)
        assert task.prefix == [bos]
        for r in task.requests:
            assert r.tokens[0] == bos and r.tokens.count(bos) == 1 and r.score_from >= 1
    # a perplexity window scores the same tokens as without BOS: window - 1 of them
    ppl = load_task(f"jsonl:{jsonl_tasks / 'ppl.jsonl'}", bm.tokenizer, bm.eos_token_id, None, 0, 16)
    assert all(len(r.tokens) == 17 and r.num_scored == 15 for r in ppl.requests)


def test_engine_with_bos_matches_a_plain_forward(gemma_bos, jsonl_tasks):
    bm = models.load(str(gemma_bos), device="cpu")
    task = load_task(f"jsonl:{jsonl_tasks / 'ppl.jsonl'}", bm.tokenizer, bm.eos_token_id, None, 0, 16)
    keep = np.ones((2, bm.num_blocks), dtype=bool)
    keep[1, 2] = False
    got = Engine(bm).score(task.requests, keep).logprob
    pruned = models.remove_blocks(bm, [2])
    for c, m in enumerate([bm, pruned]):
        for i, r in enumerate(task.requests):
            ids = torch.tensor([r.tokens])
            with torch.no_grad():
                logp = torch.log_softmax(m.model(input_ids=ids).logits[0].double(), -1)
            want = sum(logp[t - 1, r.tokens[t]].item() for t in range(r.score_from, len(r.tokens)))
            assert got[c, i] == pytest.approx(want, abs=2e-4)


def test_run_json_records_the_prefix(gemma_bos, jsonl_tasks, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["search", "--model", str(gemma_bos), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
                     "--method", "given", "--sets", "1", "--out", str(out), "--no-progress", "--device", "cpu",
                     "--no-latency"]) == 0
    run = json.loads((out / "run.json").read_text())
    bos = json.loads((gemma_bos / "config.json").read_text())["bos_token_id"]
    assert run["settings"]["prefix_tokens"] == [bos] and run["prefix_tokens"] == [bos]
