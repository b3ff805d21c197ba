"""Batched masked generation (blockprune.engine.decode) against `generate()` of physically pruned copies,
one prompt at a time: the same tokens, per candidate and prompt, on Llama, Qwen3 (sliding window),
Gemma 3 and GPT-2, with rows that stop at different lengths, and healed candidates against the
folded copy."""

import copy

import numpy as np
import pytest
import torch

from blockprune.engine import decode
from blockprune.healing import heal
from conftest import tiny_model
from reference import pruned
from test_engine import masks_for


def hf_tokens(bm, removed, prompt, n, eos):
    """HF generate on the physically pruned copy, one unpadded prompt; cut before the first EOS."""
    pm = pruned(bm, removed)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = pm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                eos_token_id=sorted(eos) or None, pad_token_id=0)
    res = []
    for t in out[0, len(prompt):].tolist():
        if t in eos:
            break
        res.append(t)
    return res


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "gpt2"])
def test_tokens_equal_generate_of_the_pruned_model(arch):
    bm = tiny_model(arch, layers=5)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, 200, size=int(rng.integers(3, 12)))) for _ in range(4)]
    sets = [(), (1,), (2, 3), (0, 4), (1, 2)]
    eos = {7, 9, 11, 13, 15, 17, 19, 21}  # frequent enough that rows stop at different steps
    limits = [10, 6, 10, 3]
    g = decode.generate(bm, prompts, masks_for(sets, 5), limits, eos=eos)
    lengths = set()
    for c, removed in enumerate(sets):
        for p, prompt in enumerate(prompts):
            assert g.tokens[c][p] == hf_tokens(bm, removed, prompt, limits[p], eos), (removed, p)
            lengths.add(len(g.tokens[c][p]))
    assert len(lengths) >= 3  # rows really stopped at different lengths
    assert g.block_rows <= g.naive_block_rows


def test_identical_rows_share_their_blocks():
    """Two candidates that keep the same blocks, and every candidate before its first removed
    block, are one row: by hand, with one prompt and removal sets (), (), (3,)."""
    bm = tiny_model("llama", layers=4)
    g = decode.generate(bm, [[5, 6, 7]], masks_for([(), (), (3,)], 4), 2)
    assert g.tokens[0] == g.tokens[1]
    # step 1 (prefill): blocks 0-2 run once for all three rows, block 3 once for the two keeping it -> 4
    # step 2: (3,) may have made another token, so blocks 0-2 run for at most 2 histories -> <= 2*3 + 1
    assert g.naive_block_rows == 2 * (3 * 3 + 2)
    assert g.block_rows <= 4 + 7
    assert g.block_rows >= 4 + 4


def test_healed_rows_equal_generate_of_the_folded_model():
    bm = tiny_model("llama", layers=6)
    rng = np.random.default_rng(1)
    windows = [tuple(int(t) for t in rng.integers(3, 262, size=24)) for _ in range(16)]
    healing = heal.Healing.fit(bm, windows, max_run=2)
    prompts = [list(rng.integers(3, 200, size=6)) for _ in range(3)]
    sets = [(2,), (2, 3), (4,), ()]
    keep = masks_for(sets, 6)
    g = decode.generate(bm, prompts, healing.codes(keep), 8, heal=healing)
    plain = decode.generate(bm, prompts, keep, 8)
    differ = 0
    for c, removed in enumerate(sets):
        folded = copy.deepcopy(bm)
        heal.fold_into(folded, healing.maps_for(removed))
        for p, prompt in enumerate(prompts):
            assert g.tokens[c][p] == hf_tokens(folded, removed, prompt, 8, set()), (removed, p)
            differ += g.tokens[c][p] != plain.tokens[c][p]
    assert differ  # healing changed some continuation (else this test could not tell)
