"""Decoding's per-step state (#33 item 5): what a step costs besides its blocks.

- Host-to-device copies: counted on fake CUDA (tests/fakecuda.py counts every `.to("cuda")` of a
  CPU tensor and every copy into a CUDA tensor, whoever issues it): one per step, whatever the
  depth. Before, every (block, code) of every step uploaded its own gather and scatter indices.
- The KV cache: a step's attention reads views of the cache, never a gathered copy of the history.
- The model's forward: recorded once per span of steps, not every step; the slices each step takes
  are the model's own arguments to the bit (CHECK_EVERY_STEP records every step as well and compares),
  across sliding windows, left padding and none, rows that stop, groups that split and GPT-2,
  whose block-0 input is not its embedding (it records every step).
The tokens themselves are compared with `generate()` of pruned copies in tests/test_decode.py."""

from collections import Counter

import numpy as np
import pytest
import torch
import transformers
from conftest import CharTokenizer, tiny_model
from fakecuda import fake_cuda
from test_engine import masks_for

from blockprune import models
from blockprune.engine import decode, steps


def count_forwards(monkeypatch) -> list:
    calls = []
    real = decode.step_arguments

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "step_arguments", counted)
    return calls


def fake_llama(fc, layers: int):
    cfg = transformers.LlamaConfig(vocab_size=262, num_hidden_layers=layers, hidden_size=48, intermediate_size=80,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   attn_implementation="eager")  # the CPU build runs no SDPA on fake CUDA
    return models.wrap(fc.model(cfg), CharTokenizer(), "fake-llama")


def uploads(layers: int, steps: int) -> tuple[int, Counter]:
    """Host-to-device copies of one generate() on fake CUDA, and every sync by kind and place."""
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    sets = [(), (1,), (2,), (1, layers - 1), (0, 2)]  # several codes per block: gathers and scatters
    with fake_cuda() as fc:
        bm = fake_llama(fc, layers)
        assert bm.device == torch.device("cuda", 0)
        with fc.syncs() as syncs:
            g = decode.generate(bm, prompts, masks_for(sets, layers), steps)  # fake ids are 0: no EOS
    assert g.steps == steps
    return sum(op == "host_to_device" for op, _ in syncs.events), Counter(syncs.events)


def test_one_upload_per_step_whatever_the_depth():
    shallow, events = uploads(4, 9)
    deep, _ = uploads(12, 9)
    assert deep == shallow, events
    assert shallow <= 9, events  # at most one per step (the prefill's included); steps that need none skip it


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("prompts", [[[5, 6, 7]], [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]],
                         ids=["one-prompt", "left-padded"])
def test_sliced_arguments_are_the_models_own(monkeypatch, arch, prompts):
    """Spans of 8 steps (the sliding windows of 5 crossed inside one when nothing is padded: that
    span records every step), rows that stop at different steps (EOS), candidates that share and
    split; every sliced step also records the model's own forward and must match it exactly; the
    forwards recorded are far fewer than the steps."""
    monkeypatch.setattr(steps, "SPAN", 8)
    monkeypatch.setattr(decode, "CHECK_EVERY_STEP", True)
    bm = tiny_model(arch, layers=4)
    sets = [(), (), (1,), (2, 3), (0,)]
    checked = decode.generate(bm, prompts, masks_for(sets, 4), 20, eos={7, 11, 19})
    monkeypatch.setattr(decode, "CHECK_EVERY_STEP", False)
    calls = count_forwards(monkeypatch)
    g = decode.generate(bm, prompts, masks_for(sets, 4), 20, eos={7, 11, 19})
    assert g.tokens == checked.tokens and len(calls) == g.preludes
    spans = -(-(g.steps - 1) // 8)  # decoding steps in spans of 8, three forwards each
    if len(prompts) > 1 or arch == "llama":  # masks at every step: every span sliced
        assert g.preludes == 1 + 3 * spans, (g.preludes, g.steps)
    assert g.preludes < g.steps, (g.preludes, g.steps)


def test_gpt2_records_every_step(monkeypatch):
    """GPT-2 adds position embeddings to the token embeddings: its block-0 input is not the
    embedding of the tokens alone, so the span is refused once and every step records."""
    bm = tiny_model("gpt2", layers=3)
    calls = count_forwards(monkeypatch)
    g = decode.generate(bm, [[5, 6, 7], [8, 9]], masks_for([(), (1,)], 3), 8)
    assert g.steps == 8 and len(calls) == g.steps + 2  # one per step, and the refused span's two


def test_dynamic_rotary_frequencies_record_every_step(monkeypatch):
    bm = tiny_model("llama", layers=2)
    rotary = bm.model.model.rotary_emb
    monkeypatch.setattr(rotary, "rope_type", "dynamic", raising=False)
    calls = count_forwards(monkeypatch)
    g = decode.generate(bm, [[5, 6, 7]], masks_for([()], 2), 6)
    assert len(calls) == g.steps


def test_attention_reads_views_of_the_cache(monkeypatch):
    """Every history a block reads is a view of its cache (no gathered copy), through steps where
    candidates share a group, split it (copied once) and stop."""
    reads, splits = [], []
    update, copy_slots = decode.BlockCache.update, decode.BlockCache.copy_slots

    def spy_update(self, key, value, *args, **kwargs):
        k, v = update(self, key, value, *args, **kwargs)
        reads.append(k.untyped_storage().data_ptr() == self.k.untyped_storage().data_ptr()
                     and v.untyped_storage().data_ptr() == self.v.untyped_storage().data_ptr())
        return k, v

    def spy_copy(self, dst, src, length):
        splits.append((len(dst), length))
        return copy_slots(self, dst, src, length)

    monkeypatch.setattr(decode.BlockCache, "update", spy_update)
    monkeypatch.setattr(decode.BlockCache, "copy_slots", spy_copy)
    bm = tiny_model("llama", layers=4)
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(3, 200, size=n)) for n in (6, 3, 9)]
    g = decode.generate(bm, prompts, masks_for([(), (), (3,), (2, 3), (1,)], 4), 10, eos={7, 9, 11, 13})
    assert reads and all(reads)
    assert any(n for n, _ in splits)  # groups split: their histories were copied, once each
    assert g.block_rows < g.naive_block_rows


def test_regroup_keeps_slots_and_copies_only_splits():
    # slots 0, 1, 2 held by rows [0, 0, 1, 2, 2]; slot 0's rows disagree, slot 1's row stopped (absent)
    old = np.array([0, 0, 2, 2])
    key = np.array([5, 6, 8, 8])
    slots, count, dst, src = decode._regroup(old, key)
    assert count == 3
    assert slots[0] == 0 and slots[2] == slots[3] == 2  # kept in place
    assert slots[1] == 1 and list(dst) == [1] and list(src) == [0]  # the split's new group: slot 1, from 0
    # groups above the new count move down, with their history
    slots, count, dst, src = decode._regroup(np.array([3, 3, 1]), np.array([4, 4, 4]))
    assert count == 2 and sorted(slots.tolist()) == [0, 0, 1] and list(src) == [3] and slots[0] == 0


def test_copy_slots_copies_keys_and_values_of_the_history_only():
    cache = decode.BlockCache(4, 6)
    cache.length = 0
    cache.update(torch.randn(4, 2, 5, 3), torch.randn(4, 2, 5, 3))
    k, v = cache.k.clone(), cache.v.clone()
    cache.copy_slots(torch.tensor([1, 3]), torch.tensor([0, 0]), 4)
    for dst in (1, 3):
        assert torch.equal(cache.k[dst, :, :4], k[0, :, :4]) and torch.equal(cache.v[dst, :, :4], v[0, :, :4])
        assert torch.equal(cache.k[dst, :, 4:], k[dst, :, 4:]) and torch.equal(cache.v[dst, :, 4:], v[dst, :, 4:])
    assert torch.equal(cache.k[[0, 2]], k[[0, 2]]) and torch.equal(cache.v[[0, 2]], v[[0, 2]])


def test_spans_shrink_to_bound_their_masks():
    prelude = steps.StepSpans(tiny_model("llama", layers=2), enabled=True)
    assert prelude.span_for(1, 100, rows=4, past=20) == steps.SPAN
    assert prelude.span_for(1, 5, rows=4, past=20) == 5  # the steps left
    span = prelude.span_for(1, 100, rows=1000, past=2048)
    assert 1 < span < steps.SPAN and 1000 * span * (2048 + span) <= steps.SPAN_ELEMENTS
    assert steps.StepSpans(tiny_model("llama", layers=2), enabled=False).span_for(1, 100, 4, 20) == 1
