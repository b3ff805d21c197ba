"""Block-list adapters."""

import pytest
import torch
from torch import nn

from blockprune import models
from conftest import tiny_model


class NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def get_output_embeddings(self):
        return self.proj


def test_a_model_without_a_block_list_is_refused():
    with pytest.raises(models.ModelError, match="^NoBlocks: no block list found"):
        models.wrap(NoBlocks(), None, "noblocks")


def test_a_model_whose_forward_skips_blocks_names_its_architecture():
    import copy

    bm = tiny_model("llama", layers=3)
    bm.blocks = nn.ModuleList([*bm.blocks, copy.deepcopy(bm.blocks[0])])  # a block the forward never calls
    with pytest.raises(models.ModelError, match=r"\(llama \(LlamaForCausalLM\)\): its forward called 3 of its 4 blocks"):
        bm.prelude(torch.tensor([[5, 6, 7]]))


@pytest.mark.parametrize("arch, path", [("llama", "model.layers"), ("gpt2", "transformer.h"),
                                        ("gemma3", "model.layers"), ("qwen3", "model.layers")])
def test_blocks_norm_and_head_are_found(arch, path):
    bm = tiny_model(arch, layers=3)
    assert bm.block_path == path and bm.num_blocks == 3
    assert bm.final_norm is not None and bm.head.weight.shape[0] == 262
    assert (bm.logit_softcap is not None) == (arch == "gemma3")


def test_prelude_restores_the_blocks_forward():
    bm = tiny_model("llama", layers=3)
    ids = torch.randint(3, 200, (2, 7))
    with torch.inference_mode():
        before = bm.model(ids).logits
        pre = bm.prelude(ids)
        after = bm.model(ids).logits
    assert torch.equal(before, after)
    assert pre.hidden.shape == (2, 7, 48) and len(pre.block_args) == 3


@pytest.mark.parametrize("removed, message", [([7], "out of range"), ([0, 1, 2], "cannot remove all")])
def test_remove_blocks_refuses_bad_sets(removed, message):
    with pytest.raises(models.ModelError, match=message):
        models.remove_blocks(tiny_model("llama", layers=3), removed)
