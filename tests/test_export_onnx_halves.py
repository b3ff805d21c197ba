"""ONNX export of half-pruned models (export/onnx_halves.py): the decoder's KV cache has inputs only for
the layers that keep attention, and onnxruntime matches the masked model (`verify`) and an independent
reference (a copy of the HF model whose removed halves output zeros, run through its own forward),
logits and greedy tokens through the cache. Planted bugs in the graphs, the slot map and the
feeding-back of the cache are caught."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from blockprune.export import decilm, onnx_halves
from blockprune.export.hf import ParityError
from blockprune.export.onnx import ExportError
from test_export_decilm import tiny
from test_units import half_removed

# 4 blocks, units 0..7 (2b: block b's attention, 2b+1: its MLP): layer 0's attention, a mix, an MLP
# alone, a whole block
SETS = [(0,), (1, 4, 7), (3,), (4, 5)]
BLOCKS = 4


@pytest.fixture(scope="module")
def bm():
    return tiny(layers=BLOCKS)


@pytest.fixture(scope="module")
def exported(bm, tmp_path_factory):
    """Each removal set exported once: (directory, export's result)."""
    done = {}

    def get(removed):
        if removed not in done:
            out = tmp_path_factory.mktemp("onnx-halves")
            checkpoint = None
            if removed == (4, 5):  # traced from a DeciLM checkpoint already written (as beside an hf export)
                checkpoint = tmp_path_factory.mktemp("decilm")
                decilm.write(bm, list(removed), checkpoint)
            # the MLP-only removal keeps every attention: its logits graph alone (the decoder path of a layer
            # with attention and no MLP is [1, 4, 7]'s blocks 0 and 3), which keeps the file near a minute
            done[removed] = out, onnx_halves.export(bm, list(removed), out, kv_cache=removed != (3,),
                                                    decilm_dir=checkpoint)
            if checkpoint is not None:
                assert (checkpoint / "model.safetensors").exists()  # left as it was
        return done[removed]

    return get


def kept_attention_blocks(removed):
    return [b for b in range(BLOCKS) if 2 * b not in removed]


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def greedy_through_cache(path, prompt, new_tokens):
    """Greedy decoding with the decoder graph: prefill from an empty past, then one token per step, each
    `present.{i}.*` fed back by name as `past_key_values.{i}.*`; returns (tokens, logits per step)."""
    session = _session(path)
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    feed = {"input_ids": prompt[None], "attention_mask": np.ones((1, len(prompt)), np.int64),
            "position_ids": np.arange(len(prompt))[None],
            **{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in pasts}}
    names = [o.name for o in session.get_outputs()]
    tokens, steps = [], []
    for _ in range(new_tokens):
        out = dict(zip(names, session.run(None, feed)))
        steps.append(out["logits"][0, -1])
        tokens.append(int(out["logits"][0, -1].argmax()))
        n = len(prompt) + len(tokens)
        feed = {"input_ids": np.array([[tokens[-1]]]), "attention_mask": np.ones((1, n), np.int64),
                "position_ids": np.array([[n - 1]]),
                **{i.name: out[i.name.replace("past_key_values.", "present.")] for i in pasts}}
    return tokens, steps


@pytest.mark.parametrize("removed", SETS, ids=str)
def test_export_matches_masked_and_a_half_removed_copy(removed, bm, exported):
    out, info = exported(removed)
    blocks = kept_attention_blocks(removed)
    decoder_path = out / "decoder_with_past.onnx"
    # which block each slot belongs to: in the result and beside the graphs
    assert [s["block"] for s in info["cache_slots"]] == blocks
    assert json.loads((out / "kv_cache_layers.json").read_text())["cache_slots"] == info["cache_slots"]
    assert info["kv_cache_bytes_per_token"]["exported"] == len(blocks) * 2 * 2 * 12 * 4
    assert not [p for p in out.iterdir() if p.name.startswith(".decilm")]  # the traced checkpoint is gone
    assert decoder_path.exists() == info["kv_cache"] == (decoder_path.name in info["files"])

    # the export's own verification: logits, past count, greedy tokens through the cache
    result = onnx_halves.verify(bm, list(removed), out)
    assert result["onnx_logits"]["max_abs_diff"] <= 1e-4
    if info["kv_cache"]:
        decoder = result["onnx_decoder_with_past"]
        assert decoder["kv_cache_slots"] == len(blocks) and decoder["token_agreement"] == 1.0
        assert decoder["max_abs_diff"] <= 1e-4 and decoder["slot_blocks"] == blocks
        # the graph itself: one past/present pair per kept attention, nothing for the removed ones
        graph = onnx.load(str(decoder_path), load_external_data=False).graph
        inputs, outputs = [v.name for v in graph.input], [v.name for v in graph.output]
        assert inputs == ["input_ids", "attention_mask", "position_ids"] + [
            f"past_key_values.{i}.{kind}" for i in range(len(blocks)) for kind in ("key", "value")]
        assert outputs == ["logits"] + [f"present.{i}.{kind}" for i in range(len(blocks)) for kind in ("key", "value")]
        for value in graph.input[3:]:
            batch, heads, past, size = _dims(value)
            assert isinstance(batch, str) and isinstance(past, str) and (heads, size) == (2, 12)
    else:
        assert "onnx_decoder_with_past" not in result

    # the independent reference: the HF model's own forward, removed halves replaced by zeros
    ref = half_removed(bm, removed)
    g = torch.Generator().manual_seed(3)
    logits = _session(out / "model.onnx")
    with torch.no_grad():
        for shape in ((2, 6), (1, 15)):
            ids = torch.randint(3, 262, shape, generator=g)
            (got,) = logits.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones(shape, np.int64)})
            want = ref(input_ids=ids, use_cache=False).logits.numpy()
            assert np.abs(got - want).max() <= 1e-4
        if not info["kv_cache"]:
            return
        prompt = torch.randint(3, 262, (6,), generator=g)
        tokens, steps = greedy_through_cache(decoder_path, prompt.numpy(), 6)
        seq = prompt[None]
        for step in steps:  # the reference, a full recompute per token
            want = ref(input_ids=seq, use_cache=False).logits[0, -1]
            assert np.abs(step - want.numpy()).max() <= 1e-4
            seq = torch.cat([seq, want.argmax().view(1, 1)], dim=1)
    assert tokens == seq[0, 6:].tolist()


# ---- planted bugs ----------------------------------------------------------------------------------
@pytest.fixture
def mixed(bm, exported, tmp_path):
    """A copy of the [1, 4, 7] export (3 kept attentions: blocks 0, 1, 3) to break."""
    out, _ = exported((1, 4, 7))
    shutil.copytree(out, tmp_path / "x")
    return tmp_path / "x"


def test_verify_catches_swapped_slots_when_fed_back(bm, mixed, monkeypatch):
    """The runtime side: slots 0 and 1 swapped when each step's presents become the next pasts."""
    right = onnx_halves.next_past

    def swapped(outputs, slots):
        past = right(outputs, slots)
        for kind in ("key", "value"):
            a, b = f"past_key_values.0.{kind}", f"past_key_values.1.{kind}"
            past[a], past[b] = past[b], past[a]
        return past

    monkeypatch.setattr(onnx_halves, "next_past", swapped)
    with pytest.raises(ParityError, match="KV cache.*decode step 1"):
        onnx_halves.verify(bm, [1, 4, 7], mixed)


def test_verify_catches_present_outputs_misnamed_in_the_graph(bm, mixed):
    """The graph side: present.0.* and present.1.* swap names, so a runtime feeds each slot to the other."""
    path = mixed / "decoder_with_past.onnx"
    model = onnx.load(str(path))
    rename = {f"present.{a}.{k}": f"present.{b}.{k}" for a, b in ((0, 1), (1, 0)) for k in ("key", "value")}
    for node in model.graph.node:  # the attention reads its concatenated keys by the same name: rename both
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for value in [*model.graph.output, *model.graph.value_info]:
        value.name = rename.get(value.name, value.name)
    outputs = sorted(model.graph.output, key=lambda v: (v.name != "logits", v.name))  # declared order again
    model.graph.ClearField("output")
    model.graph.output.extend(outputs)
    assert [v.name for v in model.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    onnx.save(model, str(path))
    with pytest.raises(ParityError, match="decode step 1"):
        onnx_halves.verify(bm, [1, 4, 7], mixed)


def test_verify_catches_other_greedy_tokens(bm, mixed, monkeypatch):
    """The token comparison itself: a reference whose greedy tokens are all shifted by one."""
    right = decilm.greedy_masked
    monkeypatch.setattr(decilm, "greedy_masked", lambda *a: (right(*a) + 1) % 262)
    with pytest.raises(ParityError, match="greedy decoding through decoder_with_past.onnx.*0/8 tokens agree"):
        onnx_halves.verify(bm, [1, 4, 7], mixed)


def test_verify_catches_a_cache_for_a_removed_attention(bm, mixed):
    """A decoder with one more past pair (as for block 2, whose attention is removed): 4 pairs for 3 slots."""
    path = mixed / "decoder_with_past.onnx"
    model = onnx.load(str(path))
    for kind in ("key", "value"):
        extra = onnx.ValueInfoProto()
        extra.CopyFrom(model.graph.input[3])
        extra.name = f"past_key_values.3.{kind}"
        model.graph.input.append(extra)
    onnx.save(model, str(path))
    message = r"has 4 past key/value pairs \(8 inputs\), expected 3 \(one per kept attention\)"
    with pytest.raises(ExportError, match=message):
        onnx_halves.verify(bm, [1, 4, 7], mixed)


def test_verify_catches_a_wrong_slot_map(bm, mixed):
    path = mixed / "kv_cache_layers.json"
    record = json.loads(path.read_text())
    record["cache_slots"][0]["block"], record["cache_slots"][1]["block"] = 1, 0
    path.write_text(json.dumps(record))
    with pytest.raises(ExportError, match=r"does not map the slots.*blocks \[0, 1, 3\]"):
        onnx_halves.verify(bm, [1, 4, 7], mixed)


def test_verify_catches_logits_of_another_removal(bm, mixed, exported):
    shutil.copyfile(exported((0,))[0] / "model.onnx", mixed / "model.onnx")
    with pytest.raises(ParityError, match="model.onnx.*max abs logit diff"):
        onnx_halves.verify(bm, [1, 4, 7], mixed)


def test_refusals_are_one_line(bm, tmp_path):
    for removed, message in (([8], r"removed units \[8\] are out of range"), (list(range(8)), "removing all 8 units")):
        with pytest.raises(ExportError, match=message) as err:
            onnx_halves.export(bm, removed, tmp_path / "out")
        assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="model.onnx is missing"):
        onnx_halves.verify(bm, [1], tmp_path)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"block_configs": []}))
    with pytest.raises(ExportError, match=r"is not the DeciLM checkpoint of tiny-llama without \[0m\]"):
        onnx_halves.export(bm, [1], tmp_path / "x", decilm_dir=tmp_path / "hf")
