"""Healed exports (#23): the maps folded into a copy of the model before the blocks are removed,
every format written from it. Checked against what the engine scores healed and against
references built here (plain transformers, gguf's own quantiser), never the manifest's figures."""

import json

import gguf as gguf_lib
import numpy as np
import pytest
import torch
import transformers

from blockprune import data, models
from blockprune.healing import heal
from blockprune.engine import Engine
from blockprune.export import MANIFEST, ExportFailed, export_model, request_of
from blockprune.export import gguf as gguf_export
from conftest import tiny_model
from test_engine import masks_for, random_requests

REMOVED = (2, 3, 5)  # runs [2, 3] after block 1 and [5] after block 4
CALIBRATION = {"spec": "test/random", "window": 24, "n": 16, "tokens": 16 * 23,
               "sample_ids": [f"w{i}" for i in range(16)]}


def _windows(rng, n, length, vocab=262):
    return [tuple(int(t) for t in rng.integers(3, vocab, size=length)) for _ in range(n)]


def _fit(bm, ridge=1e-3, seed=1, n=16, length=24):
    return heal.Healing.fit(bm, _windows(np.random.default_rng(seed), n, length, bm.head.weight.shape[0]), max_run=3,
                            ridge=ridge, calibration=CALIBRATION)


@torch.inference_mode()
def _logprobs(model, requests):
    """Per request, the summed float64 log-probability of its scored tokens (a plain HF forward)."""
    out = []
    for r in requests:
        logits = model(torch.tensor([r.tokens]), use_cache=False).logits[0].double()
        pos = torch.arange(r.score_from - 1, len(r.tokens) - 1)
        out.append(torch.log_softmax(logits, -1)[pos, torch.tensor(r.tokens[r.score_from:])].sum().item())
    return np.array(out)


@pytest.fixture(scope="module")
def llama_exports(tmp_path_factory):
    bm = tiny_model("llama", layers=6)
    healing = _fit(bm)
    before = {k: v.clone() for k, v in bm.model.state_dict().items()}
    root = tmp_path_factory.mktemp("heal-export")
    healed = export_model(bm, REMOVED, root / "healed", healing=healing)
    plain = export_model(bm, REMOVED, root / "plain")
    return bm, healing, root, healed, plain, before


def test_healed_hf_export_reloads_to_the_engines_healed_scores(llama_exports):
    bm, healing, root, _, _, before = llama_exports
    for k, v in bm.model.state_dict().items():  # the caller's model is not changed by the fold
        assert torch.equal(v, before[k]), k
    reqs = random_requests(np.random.default_rng(3), 6)
    keep = masks_for([REMOVED], bm.num_blocks)
    engine_healed = Engine(bm, heal=healing).score(reqs, keep).logprob[0]
    engine_plain = Engine(bm).score(reqs, keep).logprob[0]
    healed = transformers.AutoModelForCausalLM.from_pretrained(root / "healed" / "hf", dtype=torch.float32).eval()
    plain = transformers.AutoModelForCausalLM.from_pretrained(root / "plain" / "hf", dtype=torch.float32).eval()
    assert healed.config.num_hidden_layers == plain.config.num_hidden_layers == 3
    got_healed, got_plain = _logprobs(healed, reqs), _logprobs(plain, reqs)
    np.testing.assert_allclose(got_healed, engine_healed, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_plain, engine_plain, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got_healed, got_plain, rtol=1e-3, atol=1e-3)  # the maps are in the weights
    # exactly the folded projections differ (kept blocks 0, 1, 4 are renumbered 0, 1, 2)
    hs, ps = healed.state_dict(), plain.state_dict()
    differ = sorted(k for k in hs if not torch.equal(hs[k], ps[k]))
    assert differ == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]


def test_the_manifest_records_the_healing(llama_exports):
    bm, healing, root, healed, plain, _ = llama_exports
    on_disk = json.loads((root / "healed" / MANIFEST).read_text())
    assert on_disk["healing"] == healed["healing"]
    h = on_disk["healing"]
    assert h["method"] == "linear" and h["ridge"] == 1e-3 and h["tokens"] == 16 * 23
    assert h["calibration"] == CALIBRATION
    assert h["runs"] == [
        {"after": 1, "blocks": [2, 3], "healed": True, "folded_into": "model.layers.1.mlp.down_proj"},
        {"after": 4, "blocks": [5], "healed": True, "folded_into": "model.layers.4.mlp.down_proj"},
    ]
    req = on_disk["request"]["healing"]
    assert req["method"] == "linear" and req["calibration"] == {k: CALIBRATION[k] for k in ("spec", "window", "n", "tokens")}
    assert len(req["sample_ids_sha256"]) == 16
    assert "healing" not in plain and "healing" not in plain["request"]
    assert on_disk["parity"]["hf"]["logits_max_abs_diff"] <= 1e-5


def test_a_run_from_block_0_is_refused_before_anything_is_written(llama_exports, tmp_path):
    bm, healing, root, *_ = llama_exports
    with pytest.raises(ExportFailed, match=r"cannot remove the run \[0, 1\]: it starts at block 0") as exc:
        export_model(bm, (0, 1, 4), tmp_path / "out", healing=healing)
    assert "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []  # no out dir, no staging folder
    # over an existing export: refused the same way, the export untouched
    listing = sorted(p.relative_to(root) for p in (root / "plain").rglob("*"))
    stamp = (root / "plain" / MANIFEST).read_bytes()
    with pytest.raises(ExportFailed, match="starts at block 0"):
        export_model(bm, (0,), root / "plain", healing=healing, force=True)
    assert sorted(p.relative_to(root) for p in (root / "plain").rglob("*")) == listing
    assert (root / "plain" / MANIFEST).read_bytes() == stamp


def test_a_healed_and_a_plain_export_are_different_requests(llama_exports, tmp_path):
    bm, healing, *_ = llama_exports
    out = tmp_path / "out"
    export_model(bm, (2,), out)
    with pytest.raises(ExportFailed, match="an export of another request"):
        export_model(bm, (2,), out, healing=healing)
    assert "healing" not in json.loads((out / MANIFEST).read_text())
    export_model(bm, (2,), out, healing=healing, force=True)
    assert json.loads((out / MANIFEST).read_text())["healing"]["runs"][0]["folded_into"] == "model.layers.1.mlp.down_proj"
    export_model(bm, (2,), out, healing=healing)  # the same healed request again: no force needed
    with pytest.raises(ExportFailed, match="an export of another request"):
        export_model(bm, (2,), out)  # and back to plain is another request
    other = heal.Healing(bm, healing.stats, healing.max_run, 1e-2, CALIBRATION)  # another ridge
    assert request_of(bm.name, (2,), ["hf"], False, other) != request_of(bm.name, (2,), ["hf"], False, healing)
    moved = heal.Healing(bm, healing.stats, healing.max_run, 1e-3, {**CALIBRATION, "sample_ids": ["x"] * 16})
    assert request_of(bm.name, (2,), ["hf"], False, moved) != request_of(bm.name, (2,), ["hf"], False, healing)
    assert request_of(bm.name, (2,), ["hf"], False) == {"model": bm.name, "removed": [2], "formats": ["hf"],
                                                         "kv_cache": False}  # plain requests as before healing


def test_a_run_longer_than_the_fit_is_refused_in_one_line(tmp_path):
    bm = tiny_model("llama", layers=6)
    short = heal.Healing.fit(bm, _windows(np.random.default_rng(1), 8, 16), max_run=1)
    with pytest.raises(ExportFailed, match="cannot heal the export: no healing map for blocks 2..3 after block 1"):
        export_model(bm, (2, 3), tmp_path / "out", healing=short)
    assert list(tmp_path.iterdir()) == []


def test_a_block_that_cannot_fold_stays_plain_and_says_why(tmp_path):
    bm = tiny_model("gemma3", layers=4)  # the post-feedforward norm: no block folds
    healing = _fit(bm, n=8, length=16)
    manifest = export_model(bm, (2,), tmp_path / "healed", healing=healing)
    (run,) = manifest["healing"]["runs"]
    assert run["healed"] is False and "norm or scale" in run["why"] and "folded_into" not in run
    export_model(bm, (2,), tmp_path / "plain")
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "healed" / "hf").state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / "hf").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_onnx_graph_is_healed(tmp_path):
    import onnxruntime as ort

    bm = tiny_model("llama", layers=4)
    healing = _fit(bm, n=8, length=16)
    export_model(bm, (2,), tmp_path / "out", formats=["onnx"], healing=healing)
    ids = np.array([_windows(np.random.default_rng(4), 1, 9)[0]], dtype=np.int64)
    sess = ort.InferenceSession(str(tmp_path / "out" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    with torch.inference_mode():
        want = heal_reference(bm, healing, (2,)).model(torch.from_numpy(ids), use_cache=False).logits.numpy()
        plain = models.remove_blocks(bm, (2,)).model(torch.from_numpy(ids), use_cache=False).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, plain, rtol=1e-3, atol=1e-3)


def test_onnx_elastic_stays_plain_and_says_so(tmp_path, monkeypatch):
    from blockprune.export import elastic

    monkeypatch.setattr(elastic, "speed", lambda *a, **k: {"not measured": "in this test"})  # interleaved timing runs
    bm = tiny_model("llama", layers=4)
    healing = _fit(bm, n=8, length=16)
    manifest = export_model(bm, (2,), tmp_path / "out", formats=["onnx-elastic"], healing=healing)
    assert manifest["healing"]["elastic"].startswith("plain: ")
    assert manifest["parity"]["onnx_elastic"]["healed"] is False
    assert manifest["healing"]["runs"][0]["healed"] is True  # the run heals; the elastic graph does not
    sess = elastic._session(tmp_path / "out" / "onnx-elastic" / elastic.ELASTIC_FILE)
    ids = np.array([_windows(np.random.default_rng(4), 1, 9)[0]], dtype=np.int64)
    keep = np.array([True, True, False, True])
    out = sess.run(None, elastic._feeds(ids, np.ones_like(ids), np.arange(9)[None].astype(np.int64),
                                        elastic._empty_past(sess, 1), keep))
    with torch.inference_mode():
        plain = models.remove_blocks(bm, (2,)).model(torch.from_numpy(ids), use_cache=False).logits.numpy()
        healed = heal_reference(bm, healing, (2,)).model(torch.from_numpy(ids), use_cache=False).logits.numpy()
    np.testing.assert_allclose(out[0], plain, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out[0], healed, rtol=1e-3, atol=1e-3)


def heal_reference(bm, healing, removed):
    """The folded pruned model built here: a deep copy, the maps multiplied into the weights by hand."""
    import copy

    ref = copy.deepcopy(bm)
    with torch.no_grad():
        for block, t in healing.maps_for(removed).items():
            w = ref.blocks[block].mlp.down_proj.weight  # Linear [out, in]: y T = x (Tᵀ W)ᵀ
            w.copy_((t.double().T @ w.double()).float())
    return models.remove_blocks(ref, removed)


# ---- GGUF ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    """A 4-block GGUF made of the real SmolLM2 file's first blocks (Q4_1 / Q8_0 / F32 tensors as they are)."""
    directory, name = data.smollm2_gguf()
    out = tmp_path_factory.mktemp("gguf-heal") / "small.gguf"
    gguf_export.write_pruned(directory / name, range(4, 30), out)
    return out


def test_a_healed_gguf_rewrites_the_folded_projections_at_their_type(small_gguf, tmp_path):
    bm = models.load(str(small_gguf), device="cpu")
    removed = (1, 3)  # runs after block 0 (stays blk.0) and after block 2 (written as blk.1)
    healing = heal.Healing.fit(bm, _windows(np.random.default_rng(2), 24, 32, bm.head.weight.shape[0]), max_run=1,
                               calibration=CALIBRATION)
    manifest = export_model(bm, removed, tmp_path / "out", formats=["gguf"], healing=healing)
    info = manifest["parity"]["gguf"]
    assert info["rewritten"] == [
        {"tensor": "blk.0.ffn_down.weight", "written_as": "blk.0.ffn_down.weight", "source_type": "Q4_1", "type": "Q4_1"},
        {"tensor": "blk.2.ffn_down.weight", "written_as": "blk.1.ffn_down.weight", "source_type": "Q4_1", "type": "Q4_1"},
    ]
    assert info["requantised"] is True and info["logits_max_abs_diff"] <= 1e-4
    (written,) = (tmp_path / "out" / "gguf").glob("*.gguf")
    src, dst = gguf_lib.GGUFReader(small_gguf), gguf_lib.GGUFReader(written)
    before = {t.name: t for t in src.tensors}
    old_of = {"blk.0": "blk.0", "blk.1": "blk.2"}
    for t in dst.tensors:
        parts = t.name.split(".", 2)
        old = f"{old_of[parts[0] + '.' + parts[1]]}.{parts[2]}" if parts[0] == "blk" else t.name
        assert before[old].tensor_type == t.tensor_type, t.name
        if t.name in ("blk.0.ffn_down.weight", "blk.1.ffn_down.weight"):
            assert before[old].data.tobytes() != t.data.tobytes()
        else:  # every other tensor byte for byte
            assert before[old].data.tobytes() == t.data.tobytes(), t.name
    # read back by transformers' own GGUF reader: the folded pruned model (maps multiplied in here),
    # its two projections rounded through Q4_1 by gguf's quantiser
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype="float32")
    ref = heal_reference(bm, healing, removed)
    kind = gguf_lib.GGMLQuantizationType.Q4_1
    with torch.no_grad():
        for new in (0, 1):
            w = ref.blocks[new].mlp.down_proj.weight
            q = gguf_lib.quants.quantize(w.numpy(), kind)
            w.copy_(torch.from_numpy(gguf_lib.quants.dequantize(q, kind).reshape(w.shape).copy()))
    ids = torch.tensor([_windows(np.random.default_rng(5), 1, 12, bm.head.weight.shape[0])[0]])
    with torch.inference_mode():
        got = reloaded(ids).logits
        diff = (got - ref.model(ids, use_cache=False).logits).abs().max().item()
        plain = models.remove_blocks(bm, removed).model(ids, use_cache=False).logits
    assert diff <= 1e-4
    assert (got - plain).abs().max().item() > 1e-2  # healed, not the plain cut
    assert info["logits_max_abs_diff_vs_unrounded"] > 0


def test_a_type_gguf_cannot_quantise_is_written_as_f16(tmp_path):
    """A source tensor in Q6_K (which the gguf library dequantises but cannot quantise): the folded
    values go in as F16, and the manifest says why."""
    path = tmp_path / "k.gguf"
    w = gguf_lib.GGUFWriter(path, "llama")
    w.add_block_count(2)
    k = gguf_lib.GGMLQuantizationType.Q6_K
    block, size = gguf_lib.GGML_QUANT_SIZES[k]
    rng = np.random.default_rng(0)
    for b in range(2):
        raw = rng.integers(0, 255, size=(4, 256 // block * size), dtype=np.uint8)
        w.add_tensor(f"blk.{b}.ffn_down.weight", raw, raw_shape=raw.shape, raw_dtype=k)
        w.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(256, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    values = rng.normal(size=(4, 256)).astype(np.float32)
    info = gguf_export.write_pruned(path, [1], tmp_path / "out.gguf", {"blk.0.ffn_down.weight": values})
    (r,) = info["rewritten"]
    assert r["source_type"] == "Q6_K" and r["type"] == "F16" and "cannot quantise Q6_K" in r["why"]
    out = {t.name: t for t in gguf_lib.GGUFReader(tmp_path / "out.gguf").tensors}
    assert set(out) == {"blk.0.ffn_down.weight", "blk.0.attn_norm.weight"}
    np.testing.assert_array_equal(np.asarray(out["blk.0.ffn_down.weight"].data), values.astype(np.float16))
    with pytest.raises(Exception, match="is \\[4, 256\\], the folded projection \\[256, 4\\]"):
        gguf_export.write_pruned(path, [1], tmp_path / "bad.gguf", {"blk.0.ffn_down.weight": values.T.copy()})
