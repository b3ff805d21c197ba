"""DeciLM (Nemotron-NAS) export of half-pruned models (export/decilm.py): the checkpoint written, reloaded
with transformers' remote code, against the masked model (`verify`) and against an independent
reference: a copy of the HF model whose removed halves output zeros, run through its own forward.
Also: the KV cache holds one layer per kept attention, removed halves' weights are absent, planted
bugs are caught, and models the layout cannot hold are refused."""

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from blockprune import models
from blockprune.export import decilm
from blockprune.export.hf import ParityError
from blockprune.export.onnx import ExportError
from conftest import CharTokenizer
from reference import half_removed

# 2b: block b's attention, 2b+1: its MLP (6 blocks: units 0..11)
SETS = [(0,), (4, 5), (1, 4, 7), (0, 1, 2, 9), (3, 6, 8, 10, 11), ()]


def tiny(arch="llama", intermediate=256, layers=6, **extra):
    """A small random model whose MLP width vLLM's ffn_mult rule reproduces (hidden 48 -> 256); a rope
    theta other than the default, so that a code path ignoring it shows."""
    torch.manual_seed(0)
    extra.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 5000.0})
    common = dict(vocab_size=262, hidden_size=48, intermediate_size=intermediate, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, num_hidden_layers=layers, **extra)
    cfg = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[arch](**common)
    return models.wrap(transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), CharTokenizer(),
                       f"tiny-{arch}")


def token_rows(vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, shape, generator=g) for shape in ((2, 7), (1, 13))]


def kept_attention(num_blocks, removed):
    return sum(1 for b in range(num_blocks) if 2 * b not in removed)


def expected_layers(num_blocks, removed):
    """(block, attention kept, MLP kept) per checkpoint layer, written out independently of decilm."""
    out = []
    for b in range(num_blocks):
        attn, mlp = 2 * b not in removed, 2 * b + 1 not in removed
        if attn or mlp:
            out.append((b, attn, mlp))
    return out


@pytest.mark.parametrize("removed", SETS, ids=str)
def test_export_matches_a_half_removed_copy(removed, tmp_path):
    bm = tiny()
    manifest = decilm.write(bm, list(removed), tmp_path)
    result = decilm.verify(bm, list(removed), tmp_path)
    assert result["logits_max_abs_diff"] <= 1e-4 and result["token_agreement"] == 1.0

    layers = expected_layers(bm.num_blocks, set(removed))
    n_attn = kept_attention(bm.num_blocks, set(removed))
    assert manifest["layers"] == len(layers) and manifest["attention_layers"] == n_attn
    per_layer = 2 * 2 * 12 * 4  # K and V, 2 KV heads, head_dim 12, float32
    assert manifest["kv_cache_bytes_per_token"] == {"dense": 6 * per_layer, "exported": n_attn * per_layer,
                                                    "dtype": "float32"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    assert [(not c["attention"]["no_op"], not c["ffn"]["no_op"]) for c in config["block_configs"]] == \
        [(a, m) for _, a, m in layers]

    # the independent reference: the HF model's own forward, removed halves replaced by zeros
    ref = half_removed(bm, removed)
    model = decilm.reload(tmp_path, bm)
    with torch.no_grad():
        for ids in token_rows(262):
            want = ref(input_ids=ids, use_cache=False).logits
            assert torch.allclose(model(input_ids=ids, use_cache=False).logits, want, atol=1e-5, rtol=0)
            # prefill with the KV cache, then one cached decode step
            out = model(input_ids=ids[:, :-1], use_cache=True)
            assert len(out.cache) == n_attn
            assert out.cache.get_seq_length() == ids.shape[1] - 1
            step = model(input_ids=ids[:, -1:], cache=out.cache, use_cache=True).logits[:, -1]
            assert torch.allclose(step, want[:, -1], atol=1e-5, rtol=0)

    # removed halves' weights (pre-norms included) are absent; kept ones are the source's tensors
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    for part, kept in (("self_attn.q_proj.weight", [a for _, a, _ in layers]),
                       ("input_layernorm.weight", [a for _, a, _ in layers]),
                       ("mlp.down_proj.weight", [m for _, _, m in layers]),
                       ("post_attention_layernorm.weight", [m for _, _, m in layers])):
        assert [f"model.layers.{i}.{part}" in names for i in range(len(layers))] == kept, part
    weights = load_file(str(tmp_path / "model.safetensors"))
    source = bm.model.state_dict()
    for i, (b, attn, mlp) in enumerate(layers):
        part = "self_attn.k_proj.weight" if attn else "mlp.up_proj.weight"
        assert torch.equal(weights[f"model.layers.{i}.{part}"], source[f"model.layers.{b}.{part}"])
    assert not any(n.startswith(f"model.layers.{len(layers)}.") for n in names)


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_llama_families(arch, tmp_path):
    bm = tiny(arch, **({"sliding_window": None} if arch == "mistral" else {}))
    decilm.write(bm, [1, 4, 7], tmp_path)
    assert decilm.verify(bm, [1, 4, 7], tmp_path)["token_agreement"] == 1.0
    if arch == "qwen2":  # q/k/v biases, no o_proj bias
        config = json.loads((tmp_path / "config.json").read_text())
        assert config["qkv_bias"] is True and config["attention_bias"] is False


def test_rope_scaling_is_carried(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    bm = tiny(rope_parameters=rope)
    decilm.write(bm, [2, 5], tmp_path)
    decilm.verify(bm, [2, 5], tmp_path)
    ids = token_rows(262)[1]
    with torch.no_grad():
        got = decilm.reload(tmp_path, bm)(input_ids=ids, use_cache=False).logits
        want = half_removed(bm, (2, 5))(input_ids=ids, use_cache=False).logits
        plain = half_removed(tiny(), (2, 5))(input_ids=ids, use_cache=False).logits  # same weights and theta, unscaled
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-3)  # the scaling is really applied


# ---- planted bugs --------------------------------------------------------------------------------
def test_verify_catches_swapped_block_configs(tmp_path):
    bm = tiny()
    decilm.write(bm, [1, 4, 7], tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    blocks = config["block_configs"]
    blocks[0], blocks[2] = blocks[2], blocks[0]  # layer 0 keeps attention only, layer 2 its MLP only
    path.write_text(json.dumps(config))
    with pytest.raises(ParityError, match="do not match its config"):
        decilm.verify(bm, [1, 4, 7], tmp_path)


def test_verify_catches_swapped_weights(tmp_path):
    bm = tiny()
    decilm.write(bm, [1, 4, 7], tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    a, b = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    weights[a], weights[b] = weights[b], weights[a]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ParityError, match="max abs logit diff"):
        decilm.verify(bm, [1, 4, 7], tmp_path)


def test_verify_catches_cache_slots_over_all_layers(tmp_path):
    """A modeling file that gives every layer a cache slot (the attention-free one included)."""
    bm = tiny()
    decilm.write(bm, [0], tmp_path)
    code = tmp_path / "modeling_decilm.py"
    text = code.read_text()
    assert "slots += not block.attention.no_op" in text
    code.write_text(text.replace("slots += not block.attention.no_op", "slots += 1"))
    with pytest.raises(ParityError, match="KV cache has 6 layers, expected 5"):
        decilm.verify(bm, [0], tmp_path)


# ---- refusals ------------------------------------------------------------------------------------
def test_refuses_an_intermediate_size_no_ffn_mult_gives(tmp_path):
    bm = tiny(intermediate=80)  # the rule rounds 2/3 * ffn_mult * 48 up to a multiple of 256: never 80
    assert decilm.vllm_intermediate_size(3 * 80 / (2 * 48), 48) == 256
    with pytest.raises(ExportError, match="intermediate_size 80 cannot be written as a DeciLM ffn_mult") as err:
        decilm.write(bm, [1], tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("removed, message", [([12], r"removed units \[12\] are out of range"),
                                              ([-1, 3], r"removed units \[-1\] are out of range"),
                                              (list(range(12)), "removing all 12 units")])
def test_refuses_bad_unit_lists(removed, message, tmp_path):
    with pytest.raises(ExportError, match=message):
        decilm.write(tiny(), removed, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_other_layouts(tmp_path):
    with pytest.raises(ExportError, match="sliding-window attention"):
        decilm.write(tiny("mistral", sliding_window=5), [1], tmp_path / "a")
    from conftest import tiny_model

    with pytest.raises(ExportError, match="Llama-family"):
        decilm.write(tiny_model("gpt2"), [1], tmp_path / "b")


def test_ffn_mult_round_trips_through_the_rule():
    for hidden, intermediate in [(576, 1536), (4096, 14336), (8192, 28672), (2048, 8192), (48, 256), (3072, 8192)]:
        assert decilm.vllm_intermediate_size(decilm.ffn_mult_for(intermediate, hidden), hidden) == intermediate


# ---- the real model ------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_attention_halves_removed(smollm2, tmp_path):
    removed = [34, 44]  # 17a, 22a
    manifest = decilm.write(smollm2, removed, tmp_path)
    assert manifest["removed_units"] == "[17a, 22a]" and manifest["layers"] == 30
    assert manifest["attention_layers"] == 28 and manifest["ffn_layers"] == 30
    assert (tmp_path / "tokenizer.json").exists()
    result = decilm.verify(smollm2, removed, tmp_path)
    print(f"SmolLM2-135M [17a, 22a]: max abs logit diff {result['logits_max_abs_diff']:.3g}, "
          f"token agreement {result['token_agreement']}")
    assert result["logits_max_abs_diff"] <= 1e-4 and result["token_agreement"] == 1.0
    assert result["kv_cache_layers"] == 28
