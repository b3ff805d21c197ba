"""Halves as units (#32): every candidate's scores and greedy tokens, removing attention and MLP
halves, against an independent reference: a copy of the model whose removed halves are replaced by
modules that output zeros (so the block adds nothing for them), run through the model's own forward
without a cache. Families: Llama, Qwen3 (sliding windows), Gemma 3 (a norm after each half),
GPT-2, Mistral, OLMoE (mixture-of-experts MLP)."""


import numpy as np
import pytest
import torch

from blockprune import models
from blockprune.engine import Engine
from blockprune.models import units as units_mod
from blockprune.tasks.request import Request
from conftest import tiny_model
from reference import half_removed  # noqa: F401  (other test files import it from here too)


def moe_model(family):
    import tempfile
    from pathlib import Path

    import vlm_fixtures as vf

    d = vf.build(family, Path(tempfile.mkdtemp()) / family)
    return models.load(str(d), device="cpu")


def mistral_model():
    import transformers

    from blockprune import models as m
    from conftest import CharTokenizer

    torch.manual_seed(0)
    cfg = transformers.MistralConfig(vocab_size=262, hidden_size=48, intermediate_size=80, num_attention_heads=4,
                                     num_key_value_heads=2, num_hidden_layers=6, max_position_embeddings=256,
                                     sliding_window=5)
    return m.wrap(transformers.AutoModelForCausalLM.from_config(cfg), CharTokenizer(), "tiny-mistral")


FAMILIES = {"llama": lambda: tiny_model("llama"), "qwen3": lambda: tiny_model("qwen3"),
            "gemma3": lambda: tiny_model("gemma3"), "gpt2": lambda: tiny_model("gpt2"), "mistral": mistral_model,
            "olmoe": lambda: moe_model("olmoe")}
SETS = [(), (4,), (5,), (0,), (3, 4), (2, 7, 9), (1, 2, 3)]  # 2b: block b's attention, 2b+1: its MLP


@pytest.mark.parametrize("family", list(FAMILIES))
def test_halves_score_as_a_half_removed_copy_does(family):
    bm = FAMILIES[family]()
    um = models.unit_model(bm, "sublayers")
    assert um.num_blocks == 2 * bm.num_blocks
    rng = np.random.default_rng(0)
    vocab = bm.head.weight.shape[0]
    reqs = [Request(tuple(int(t) for t in rng.integers(3, vocab, size=n)), k) for n, k in ((12, 5), (9, 2), (15, 8))]
    masks = np.ones((len(SETS), um.num_blocks), dtype=bool)
    for c, s in enumerate(SETS):
        masks[c, list(s)] = False
    got = Engine(um).score(reqs, masks).logprob
    for c, s in enumerate(SETS):
        ref = half_removed(bm, s)
        for r, req in enumerate(reqs):
            with torch.no_grad():
                logits = ref(input_ids=torch.tensor([req.tokens]), use_cache=False).logits[0].double()
            if bm.logit_softcap and not getattr(ref.config, "final_logit_softcapping", None):
                logits = torch.tanh(logits / bm.logit_softcap) * bm.logit_softcap
            target = torch.tensor(req.tokens[req.score_from:])
            want = torch.log_softmax(logits, -1)[req.score_from - 1: -1].gather(1, target[:, None]).sum().item()
            assert got[c, r] == pytest.approx(want, abs=2e-4), (family, s, r)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "olmoe"])
def test_halves_decode_as_a_half_removed_copy_does(family):
    bm = FAMILIES[family]()
    um = models.unit_model(bm, "sublayers")
    rng = np.random.default_rng(1)
    vocab = bm.head.weight.shape[0]
    prompts = [[int(t) for t in rng.integers(3, vocab, size=n)] for n in (5, 8)]
    masks = np.ones((len(SETS), um.num_blocks), dtype=bool)
    for c, s in enumerate(SETS):
        masks[c, list(s)] = False
    gen = Engine(um).generate(prompts, masks, 6)
    for c, s in enumerate(SETS):
        ref = half_removed(bm, s)
        for p, prompt in enumerate(prompts):
            seq = list(prompt)
            with torch.no_grad():
                for _ in range(6):  # a full recompute per token: no cache for a removed attention to skip
                    seq.append(int(ref(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
            assert gen.tokens[c][p] == seq[len(prompt):], (family, s, p)


def test_names_and_parsing():
    assert units_mod.fmt_units([35, 44, 19 * 2 + 1], "sublayers") == "[17m, 19m, 22a]"
    assert units_mod.fmt_units([17, 4], "blocks") == "[4, 17]"
    assert units_mod.parse_unit("17a", "sublayers", 30) == 34 and units_mod.parse_unit("17m", "sublayers", 30) == 35
    for bad in ("31a", "17x", "a", "17"):
        with pytest.raises(ValueError):
            units_mod.parse_unit(bad, "sublayers", 30)
    assert units_mod.protected_units("attention", 3) == [1, 3, 5]
    assert units_mod.protected_units("mlp", 3) == [0, 2, 4]


def test_a_block_that_cannot_be_split_is_refused_in_one_line():
    bm = tiny_model("neox")  # GPT-NeoX: attention and MLP in parallel, off one residual
    with pytest.raises(models.ModelError, match="cannot be split"):
        models.unit_model(bm, "sublayers")


PHYSICAL_SETS = [(0,), (4,), (0, 1), (3, 4, 5), (2, 7, 9)]  # (0, 1): a whole block deleted


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "gpt2"])
def test_removed_halves_physically_deleted_decode_with_a_cache(family):
    """`remove_units` (held-out checks and latency run it): the removed halves' weights are gone,
    the KV cache holds one layer per attention kept, and cached greedy decoding gives the tokens of
    the zero-module reference recomputed without a cache (layer 0's attention removed included:
    the cache's length must come from the first attention kept)."""
    bm = FAMILIES[family]()
    rng = np.random.default_rng(2)
    prompt = [int(t) for t in rng.integers(3, bm.head.weight.shape[0], size=7)]
    for s in PHYSICAL_SETS:
        pruned = units_mod.remove_units(bm, s)
        attn_kept = bm.num_blocks - sum(1 for u in s if u % 2 == 0)
        n_params = sum(p.numel() for p in pruned.model.parameters())
        assert n_params < sum(p.numel() for p in bm.model.parameters())
        ref = half_removed(bm, s)
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                seq.append(int(ref(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
            out = pruned.model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, use_cache=True,
                                        return_dict_in_generate=True, pad_token_id=0)
        assert out.sequences[0, len(prompt):].tolist() == seq[len(prompt):], (family, s)
        with torch.no_grad():  # a server's step: the cache alone says where the new token is
            first = pruned.model(input_ids=torch.tensor([prompt]), use_cache=True)
            step = pruned.model(input_ids=torch.tensor([[seq[len(prompt)]]]), past_key_values=first.past_key_values)
            whole = ref(input_ids=torch.tensor([seq[:len(prompt) + 1]]), use_cache=False).logits[0, -1]
        assert torch.allclose(step.logits[0, -1], whole, atol=1e-4), (family, s)
        cache = out.past_key_values
        # a removed attention's layer holds one number per token (its length), a kept one whole heads
        filled = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None and layer.keys.shape[-1] > 1]
        assert len(filled) == attn_kept, (family, s)
