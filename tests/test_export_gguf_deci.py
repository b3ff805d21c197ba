"""GGUF of arch `deci` for half-pruned Llamas (#32, export/gguf_deci.py).

Fast (no llama.cpp): the written file read back with gguf.GGUFReader: per-layer head counts and FFN
widths, which tensors each layer holds and their shapes, the exact-zero padding; the one-line
refusals. Slow (llama-cpp-python, `make llama-cpp`; a missing one FAILS these): llama.cpp's logits
against an independent reference (a copy of the HF model whose removed halves output zeros, run
through its own forward) and against masked_logits (verify); what llama.cpp does with the
combinations the writer pads (confirmed: a layer with n_ff 0 loses its attention; an attention-free
layer 0 does not load); planted faults in a written file; SmolLM2-135M without [17a, 22a]."""

import sys

import numpy as np
import pytest
import torch
import transformers

from blockprune import models
from blockprune.export import gguf_deci
from blockprune.export.hf import ParityError
from blockprune.export.onnx import ExportError
from conftest import tiny_model

LAYERS = 6
SETS = [[0], [2, 3], [1, 4, 7], [3], [5, 9, 10, 11], []]  # 0a; block 1 whole; 0m 2a 3m; 1m; 2m 4m 5a 5m


def bpe_tokenizer():
    """A small byte-level BPE tokenizer (309 tokens) with a tokenizer.json, as llama.cpp's gpt2 vocab reads it."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["To be, or not to be, that is the question. The quick brown fox jumps over the lazy dog."] * 4,
                            trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def tiny(tied: bool, layers: int = LAYERS, rope_scaling=None, biases: bool = False):
    """A small random Llama with a real BPE tokenizer (llama.cpp needs a real vocabulary)."""
    tok = bpe_tokenizer()
    torch.manual_seed(1 if tied else 2)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   tie_word_embeddings=tied, rope_scaling=rope_scaling, attention_bias=biases,
                                   mlp_bias=biases)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # norms away from 1 and biases away from 0, so one written wrong (or not at all) shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(-0.3, 0.3) if name.endswith("bias") else p.uniform_(0.5, 1.5)
    return models.wrap(model, tok, f"tiny-llama-{'tied' if tied else 'untied'}")


@pytest.fixture(scope="module")
def tied():
    return tiny(True)


@pytest.fixture(scope="module")
def untied():
    return tiny(False)


def expected_layers(num_blocks, removed):
    """(block, head_count, head_count_kv, n_ff) of each layer the file should hold, by the rules
    the module doc gives (written out here, not taken from gguf_deci.plan)."""
    out = []
    for b in range(num_blocks):
        attn, mlp = 2 * b not in removed, 2 * b + 1 not in removed
        if attn or mlp:
            first = not out
            out.append((b, 4 if attn or first else 0, 2 if attn else 0, 96 if mlp else gguf_deci.PAD_FF))
    return out


def read(path):
    import gguf

    r = gguf.GGUFReader(path)
    fields = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("tokenizer.ggml.")}
    fields["tokens"] = len(r.fields["tokenizer.ggml.tokens"].data)
    fields["tokenizer.ggml.model"] = r.fields["tokenizer.ggml.model"].contents()
    tensors = {t.name: (tuple(int(x) for x in t.shape), t.data) for t in r.tensors}
    return fields, tensors


# ---- fast: the file itself ---------------------------------------------------------------------------
@pytest.mark.parametrize("removed", SETS, ids=str)
def test_metadata_and_tensors_per_layer(tied, untied, removed, tmp_path):
    for bm in (tied, untied):
        path = tmp_path / f"{bm.name}.gguf"
        info = gguf_deci.write(bm, removed, path)
        fields, tensors = read(path)
        want = expected_layers(LAYERS, set(removed))
        assert fields["general.architecture"] == "deci"
        assert fields["deci.block_count"] == len(want) == info["block_count"]
        assert fields["deci.attention.head_count"] == [w[1] for w in want]
        assert fields["deci.attention.head_count_kv"] == [w[2] for w in want]
        assert fields["deci.feed_forward_length"] == [w[3] for w in want]
        assert fields["deci.attention.key_length"] == fields["deci.rope.dimension_count"] == 16
        assert fields["tokens"] == bm.head.weight.shape[0] == 309 and fields["tokenizer.ggml.model"] == "gpt2"
        names = {"token_embd.weight", "output_norm.weight"} | (set() if bm is tied else {"output.weight"})
        for i, (block, heads, kv, n_ff) in enumerate(want):
            p = f"blk.{i}."
            if kv:
                names |= {p + f"attn_{x}.weight" for x in ("norm", "q", "k", "v", "output")}
                assert tensors[p + "attn_q.weight"][0] == (64, 64) and tensors[p + "attn_k.weight"][0] == (64, 32)
                assert np.array_equal(tensors[p + "attn_norm.weight"][1],
                                      bm.blocks[block].input_layernorm.weight.detach().numpy())
            elif heads:  # the first layer without attention: linear attention, exactly zero
                names |= {p + "attn_norm.weight", p + "attn_output.weight"}
                assert tensors[p + "attn_output.weight"][0] == (64, 64)
                assert not tensors[p + "attn_output.weight"][1].any()
            names |= {p + f"ffn_{x}.weight" for x in ("norm", "gate", "up", "down")}
            assert tensors[p + "ffn_down.weight"][0] == (n_ff, 64)  # GGUF lists the row length first
            if 2 * block + 1 in removed:
                assert not any(tensors[p + f"ffn_{x}.weight"][1].any() for x in ("gate", "up", "down"))
            else:
                assert np.array_equal(tensors[p + "ffn_down.weight"][1], bm.blocks[block].mlp.down_proj.weight.detach().numpy())
        assert set(tensors) == names
        assert all(tensors[n][1].dtype == np.float32 for n in names)


def test_refusals_are_one_line(tied, tmp_path):
    cases = [([12], "out of range"), ([-1], "out of range"), (["3a"], "not a half's index"), ([True], "not a half's"),
             ([2.0], "not a half's"), (list(range(12)), "every half removed")]
    for removed, words in cases:
        with pytest.raises(ExportError, match=words) as err:
            gguf_deci.write(tied, removed, tmp_path / "x.gguf")
        assert "\n" not in str(err.value)
    for outtype in ("f16", "q8_0"):
        with pytest.raises(ExportError, match="unknown deci GGUF type"):
            gguf_deci.write(tied, [3], tmp_path / "x.gguf", outtype=outtype)
    # without padding, the two combinations llama.cpp runs wrongly are refused
    with pytest.raises(ExportError, match=r"block 1 keeps its attention but not its MLP.*attention output lost"):
        gguf_deci.write(tied, [3], tmp_path / "x.gguf", pad=False)
    with pytest.raises(ExportError, match=r"first layer kept \(block 1\) has no attention"):
        gguf_deci.write(tied, [0, 1, 2], tmp_path / "x.gguf", pad=False)
    gguf_deci.write(tied, [2, 3, 4, 5, 8], tmp_path / "ok.gguf", pad=False)  # nothing to pad: written
    with pytest.raises(ExportError, match="architecture 'gpt2' is not supported"):
        gguf_deci.write(tiny_model("gpt2", layers=2), [0], tmp_path / "x.gguf")
    with pytest.raises(ExportError, match="tokenizer \\(CharTokenizer\\)"):
        gguf_deci.write(tiny_model("llama", layers=2), [0], tmp_path / "x.gguf")


def test_verify_without_llama_cpp_names_the_make_target(tied, tmp_path, monkeypatch):
    gguf_deci.write(tied, [3], tmp_path / "m.gguf")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    with pytest.raises(ExportError, match="make llama-cpp"):
        gguf_deci.verify(tied, [3], tmp_path / "m.gguf")


# ---- slow: llama.cpp itself ------------------------------------------------------------------------
from reference import half_removed  # noqa: E402


def llama_cpp_logits(path, rows):
    """llama.cpp's logits for each token row (fails, not skips, without llama-cpp-python)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.fail("llama-cpp-python is not installed: run `make llama-cpp`")
    llm = gguf_deci.open_llama(path)
    try:
        return [gguf_deci.llama_logits(llm, r.tolist()) for r in rows]
    finally:
        llm.close()


def rows(bm):
    """Two fixed token rows of 14 for `bm`'s vocabulary."""
    return torch.randint(3, bm.head.weight.shape[0], (2, 14), generator=torch.Generator().manual_seed(5))


def max_diff(got, model, ids):
    with torch.inference_mode():
        want = model(input_ids=ids).logits.float().numpy()
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


@pytest.mark.slow
@pytest.mark.parametrize("removed", SETS, ids=str)
def test_llama_cpp_runs_the_half_pruned_model(tied, untied, removed, tmp_path):
    for bm in (tied, untied):
        path = tmp_path / f"{bm.name}.gguf"
        gguf_deci.write(bm, removed, path)
        diff = max_diff(llama_cpp_logits(path, rows(bm)), half_removed(bm, removed), rows(bm))
        assert diff < 1e-4, (bm.name, removed, diff)  # the independent reference
        info = gguf_deci.verify(bm, removed, path)  # masked_logits of the unit model, and greedy decoding
        assert info["logits_max_abs_diff"] < 1e-4 and info["greedy_logits_max_abs_diff"] < 1e-4, info


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["llama3_rope", "linear_rope", "biases"])
def test_llama_cpp_with_scaled_rope_or_biases(variant, tmp_path):
    scaling = {"llama3_rope": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8},
               "linear_rope": {"rope_type": "linear", "factor": 3.0}, "biases": None}[variant]
    bm = tiny(variant != "biases", layers=4, rope_scaling=scaling, biases=variant == "biases")
    for removed in ([1, 4], [0]):
        gguf_deci.write(bm, removed, tmp_path / "r.gguf")
        assert max_diff(llama_cpp_logits(tmp_path / "r.gguf", rows(bm)), half_removed(bm, removed), rows(bm)) < 1e-4
        assert gguf_deci.verify(bm, removed, tmp_path / "r.gguf")["logits_max_abs_diff"] < 1e-4


def rewrite(src, dst, kv=None, drop=(), replace=None):
    """A copy of the GGUF `src` with metadata values replaced (`kv`), tensors left out (`drop`) or
    given other float32 values (`replace`)."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        w.add_key_value(f.name, (kv or {}).get(f.name, f.contents()), vtype,
                        sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    kept = [(t, (replace or {}).get(t.name, t.data)) for t in r.tensors if t.name not in drop]
    for t, data in kept:
        w.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, data in kept:
        w.write_tensor_data(np.ascontiguousarray(data))
    w.close()


@pytest.mark.slow
def test_what_llama_cpp_does_unpadded(tied, tmp_path):
    ids = rows(tied)
    # [1m]: layer 1 keeps its attention; padded it runs right, with n_ff 0 llama.cpp drops its attention too
    gguf_deci.write(tied, [3], tmp_path / "p.gguf")
    rewrite(tmp_path / "p.gguf", tmp_path / "n.gguf", {"deci.feed_forward_length": [96, 0, 96, 96, 96, 96]},
            [f"blk.1.ffn_{x}.weight" for x in ("norm", "gate", "up", "down")])
    got = llama_cpp_logits(tmp_path / "n.gguf", ids)
    assert max_diff(got, half_removed(tied, [2, 3]), ids) < 1e-4  # = the whole block removed
    assert max_diff(got, half_removed(tied, [3]), ids) > 1e-2
    with pytest.raises(ParityError, match="max abs diff"):
        gguf_deci.verify(tied, [3], tmp_path / "n.gguf")
    # [0a]: a first layer with no heads gives every attention layer a head size of 0: it does not load
    gguf_deci.write(tied, [0], tmp_path / "z.gguf")
    rewrite(tmp_path / "z.gguf", tmp_path / "z0.gguf", {"deci.attention.head_count": [0, 4, 4, 4, 4, 4]},
            ["blk.0.attn_norm.weight", "blk.0.attn_output.weight"])
    with pytest.raises(ExportError, match="llama.cpp cannot load"):
        gguf_deci.verify(tied, [0], tmp_path / "z0.gguf")


@pytest.mark.slow
def test_planted_faults_in_the_file(tied, tmp_path):
    gguf_deci.write(tied, [1, 4, 7], tmp_path / "m.gguf")
    assert gguf_deci.verify(tied, [1, 4, 7], tmp_path / "m.gguf")["logits_max_abs_diff"] < 1e-4
    # one layer's head_count entry corrupted: llama.cpp refuses the file (its tensors no longer fit)
    rewrite(tmp_path / "m.gguf", tmp_path / "bad.gguf", {"deci.attention.head_count": [4, 4, 0, 4, 2, 4]})
    with pytest.raises(ExportError, match="llama.cpp cannot load"):
        gguf_deci.verify(tied, [1, 4, 7], tmp_path / "bad.gguf")
    # layer 4's q written without llama.cpp's rotary permutation: same shapes, wrong logits
    q = tied.blocks[4].self_attn.q_proj.weight.detach().numpy()
    rewrite(tmp_path / "m.gguf", tmp_path / "bad.gguf", replace={"blk.4.attn_q.weight": q})
    with pytest.raises(ParityError, match="max abs diff"):
        gguf_deci.verify(tied, [1, 4, 7], tmp_path / "bad.gguf")
    with pytest.raises(ParityError, match="max abs diff"):  # the file of another removal set
        gguf_deci.verify(tied, [1, 4, 6], tmp_path / "m.gguf")


@pytest.mark.slow
def test_smollm2_without_17a_22a(smollm2, tmp_path):
    removed, ids = [34, 44], rows(smollm2)
    info = gguf_deci.write(smollm2, removed, tmp_path / "s.gguf")
    assert info["tokenizer"].startswith("copied from the source GGUF")
    assert info["head_count"] == [0 if b in (17, 22) else 9 for b in range(30)] and not info["padded"]
    result = gguf_deci.verify(smollm2, removed, tmp_path / "s.gguf")
    print(info, result)
    assert result["logits_max_abs_diff"] < 1e-3 and result["greedy_logits_max_abs_diff"] < 1e-3  # seen: 7e-5, 4e-5
    assert max_diff(llama_cpp_logits(tmp_path / "s.gguf", ids), half_removed(smollm2, removed), ids) < 2e-3  # seen: 3e-4
    # without 0a (layer 0 padded with zero linear attention) SmolLM2 is ill-conditioned: PyTorch's own f32 is
    # 6e-3 off a float64 reference at one position, llama.cpp 6e-4; verify's atol scales with the logits (~34)
    gguf_deci.write(smollm2, [0], tmp_path / "s0.gguf")
    result = gguf_deci.verify(smollm2, [0], tmp_path / "s0.gguf")
    assert result["logits_max_abs_diff"] < 1e-2 < result["atol"], result
