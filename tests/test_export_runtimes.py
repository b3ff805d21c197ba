"""Runtime artifacts (#14): ONNX Runtime GenAI built by onnxruntime-genai's builder, and GGUF for
llama.cpp copied block by block from the source GGUF; each verified by its runtime or by a reader
that is not ours. A runtime that `make test` installs is imported here, never skipped."""

import json

import gguf as gguf_lib
import numpy as np
import torch
import onnxruntime_genai  # noqa: F401  (make test installs it)
import pytest

from blockprune import cli, data, models
from blockprune.export import MANIFEST, ExportFailed, export_model
from blockprune.export import genai as genai_export
from blockprune.export import gguf as gguf_export
from conftest import tiny_model
from reference import (genai_greedy, hf_greedy_until_eos, probe_ids, pruned, reload_hf_matches, same_as_pruned,
                       until_eos)


def _gguf_model(path):
    """A GGUF file read back by transformers' own GGUF reader (not blockprune's loader)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")


def test_genai_fp32_generates_the_checkpoints_tokens(tiny_dir, tmp_path):
    """Each GenAI model run by onnxruntime-genai itself on the export's prompts: fp32 gives the
    physically pruned model's greedy tokens exactly; int4 runs, and the agreement the manifest
    reports for it is the one measured here."""
    bm = models.load(str(tiny_dir), device="cpu")
    manifest = export_model(bm, [1, 3], tmp_path / "out", formats=["genai"])
    prompts = [list(bm.tokenizer(p).input_ids) for p in genai_export.PROMPTS]
    reference = pruned(bm, [1, 3]).model
    want = hf_greedy_until_eos(reference, prompts, 16)
    eos_cfg = reference.generation_config.eos_token_id
    eos = set(eos_cfg if isinstance(eos_cfg, (list, tuple)) else [eos_cfg])
    got = {precision: [until_eos(t, eos) for t in genai_greedy(tmp_path / "out" / "genai" / precision, prompts, 16)]
           for precision in ("fp32", "int4")}
    assert got["fp32"] == want  # token for token, every prompt
    agreed = 0
    for g, w in zip(got["int4"], want):
        agreed += next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
    int4 = manifest["parity"]["genai_int4"]
    assert int4["prompts"] == 5 and int4["token_agreement"] == round(agreed / sum(map(len, want)), 4)
    assert all(len(g) >= 1 for g in got["int4"])
    for precision in ("fp32", "int4"):
        cfg = json.loads((tmp_path / "out" / "genai" / precision / "genai_config.json").read_text())
        assert cfg["model"]["decoder"]["num_hidden_layers"] == 4  # 6 blocks - 2
    assert "hf" in manifest["formats"]
    reload_hf_matches(tmp_path / "out" / "hf", bm, [1, 3])


def test_a_model_the_builder_rejects_is_one_line_and_writes_nothing(tmp_path):
    bm = tiny_model("gpt2", layers=3)  # a byte tokenizer and an architecture the builder does not take
    with pytest.raises(ExportFailed, match="onnxruntime-genai's builder rejected the model"):
        export_model(bm, [1], tmp_path / "out", formats=["genai"])
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    """A 4-block GGUF made of the real SmolLM2 file's first blocks (Q4_1 / Q8_0 / F32 tensors as they are)."""
    directory, name = data.smollm2_gguf()
    out = tmp_path_factory.mktemp("gguf") / "small.gguf"
    gguf_export.write_pruned(directory / name, range(4, 30), out)
    return out


def test_gguf_export_copies_kept_blocks_without_requantising(small_gguf, tmp_path):
    bm = models.load(str(small_gguf), device="cpu")
    assert bm.num_blocks == 4
    export_model(bm, [1], tmp_path / "out", formats=["gguf"])
    (written,) = (tmp_path / "out" / "gguf").glob("*.gguf")
    same_as_pruned(_gguf_model(written), bm, [1], atol=1e-4)  # transformers' reader vs the pruned source
    src, dst = gguf_lib.GGUFReader(small_gguf), gguf_lib.GGUFReader(written)
    assert dst.fields["llama.block_count"].contents() == 3
    before = {t.name: t for t in src.tensors}
    renamed = {"blk.0": "blk.0", "blk.2": "blk.1", "blk.3": "blk.2"}
    for t in dst.tensors:  # every kept tensor: same quantisation, same bytes
        old = t.name
        for new_prefix, old_prefix in ((v, k) for k, v in renamed.items()):
            if t.name.startswith(new_prefix + "."):
                old = old_prefix + t.name[len(new_prefix):]
                break
        assert before[old].tensor_type == t.tensor_type
        assert before[old].data.tobytes() == t.data.tobytes()
    assert not any(t.name.startswith("blk.3.") for t in dst.tensors)


def test_gguf_from_a_hf_checkpoint_is_read_back_by_transformers(tiny_dir, tmp_path):
    """A llama checkpoint (not from a GGUF): written as f16 and q8_0 with the gguf writer, q/k rows in
    llama.cpp's rotary layout; transformers' reader must give the pruned model with its weights
    rounded as the file rounds them, exactly, and the same tokenizer."""
    bm = models.load(str(tiny_dir), device="cpu")
    import transformers

    manifest = export_model(bm, [1, 4], tmp_path / "out", formats=["gguf"])
    for outtype in ("f16", "q8_0"):
        path = tmp_path / "out" / "gguf" / f"model-pruned2-{outtype}.gguf"
        reloaded = _gguf_model(path)
        rounded = pruned(bm, [1, 4])  # the pruned model with its weights rounded through the file's type
        with torch.no_grad():
            for name, w in rounded.model.named_parameters():
                if w.dim() == 2:
                    w.copy_(_round(w, outtype))
        assert reloaded.config.num_hidden_layers == 4
        same_as_pruned(reloaded, rounded, [], atol=1e-4)
        tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        for p in genai_export.PROMPTS:
            assert tok(p).input_ids == bm.tokenizer(p).input_ids
        written = gguf_lib.GGUFReader(path)
        kinds = {t.tensor_type.name for t in written.tensors if len(t.shape) == 2}
        assert kinds == {"F16" if outtype == "f16" else "Q8_0"}
    assert "hf" in manifest["formats"]


def _round(w, outtype):
    """`w` as the GGUF file stores it, read back by the gguf package's own (de)quantiser."""
    if outtype == "f16":
        return w.half().float()
    kind = gguf_lib.GGMLQuantizationType.Q8_0
    data = w.detach().float().numpy()
    return torch.from_numpy(gguf_lib.quants.dequantize(gguf_lib.quants.quantize(data, kind), kind).reshape(data.shape).copy())


def test_gguf_from_an_unsupported_architecture_is_one_line(tmp_path, capsys):
    bm = tiny_model("gpt2", layers=3)
    with pytest.raises(ExportFailed, match="architecture 'gpt2' is not supported"):
        export_model(bm, [1], tmp_path / "out", formats=["gguf"])
    assert list(tmp_path.iterdir()) == []


def test_a_gguf_without_a_block_count_is_refused(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf_lib.GGUFWriter(path, "mystery")
    w.add_uint32("mystery.context_length", 8)
    import numpy as np

    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()  # noqa: E702
    from blockprune.export.onnx import ExportError

    with pytest.raises(ExportError, match="architecture 'mystery' has no mystery.block_count"):
        gguf_export.write_pruned(path, [0], tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_manifest_lists_every_artifact(tiny_dir, tmp_path):
    bm = models.load(str(tiny_dir), device="cpu")
    export_model(bm, [2], tmp_path / "out", formats=["hf", "genai"])
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"hf/config.json", "genai/fp32/model.onnx", "genai/fp32/genai_config.json", "genai/int4/model.onnx"} <= paths
    assert set(manifest["parity"]) == {"hf", "genai_fp32", "genai_int4"}


def test_bench_measures_the_genai_models_like_the_other_backends(tiny_dir, tmp_path):
    bm = models.load(str(tiny_dir), device="cpu")
    export_model(bm, [], tmp_path / "dense", formats=["genai"])
    export_model(bm, [1, 3], tmp_path / "pruned", formats=["genai"])
    from blockprune.measure import latency

    result = latency.bench(bm, [1, 3], backends=["torch", "genai"], prompt_len=12, gen_len=6, warmup=1, reps=2,
                           onnx_dirs={"dense": str(tmp_path / "dense"), "pruned": [str(tmp_path / "pruned")]})
    rows = [r for r in result["results"] if r["backend"] == "genai"]
    assert {tuple(r["removed"]) for r in rows} == {(), (1, 3)}
    for r in rows:  # the fp32 GenAI model generates what PyTorch generates
        assert r["token_agreement_with_torch"] == 1.0 and r["kept_blocks"] == 6 - len(r["removed"])
    assert any(s["backend"] == "genai" for s in result["speedups"])
    with pytest.raises(latency.BenchError, match="is an export without blocks \\[\\], not \\[1, 3\\]"):
        latency.bench(bm, [1, 3], backends=["genai"], prompt_len=12, gen_len=6, warmup=1, reps=2,
                      onnx_dirs={"dense": str(tmp_path / "dense"), "pruned": [str(tmp_path / "dense")]})
    export_model(bm, [1, 3], tmp_path / "hf-only", formats=["hf"])
    with pytest.raises(latency.BenchError, match="no ONNX Runtime GenAI model for blocks \\[1, 3\\] removed .*"
                                                 "--format genai --out .*hf-only-genai"):
        latency.bench(bm, [1, 3], backends=["genai"], prompt_len=12, gen_len=6, warmup=1, reps=2,
                      onnx_dirs={"dense": str(tmp_path / "dense"), "pruned": [str(tmp_path / "hf-only")]})


def test_onnx_elastic_matches_every_pruned_model_and_skips_the_work(tmp_path):
    """One graph, depth per request: for the dense mask, the export's set and other recommended
    sets, prefill and a decode step equal the physically pruned model; a skipped block's cache slot
    stays empty; a mask of the wrong length is refused by onnxruntime at the input."""
    import numpy as np
    import onnxruntime as ort

    from blockprune.export import elastic

    bm = tiny_model("llama", layers=6)
    manifest = export_model(bm, [1, 3], tmp_path / "out", formats=["onnx-elastic"], elastic_sets=[[0], [2, 4, 5]])
    info = manifest["parity"]["onnx_elastic"]
    assert info["sets_checked"] == [[], [1, 3], [0], [2, 4, 5]] and info["if_nodes"] == 6
    # speed (skipping saves compute) is bench/test_bench_latency.py's job, not a test's
    sess = ort.InferenceSession(str(tmp_path / "out" / "onnx-elastic" / elastic.ELASTIC_FILE))
    past = {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32) for i in sess.get_inputs()
            if i.name.startswith("past_key_values.")}
    ids = np.random.default_rng(0).integers(3, 262, (2, 9))
    outputs = [o.name for o in sess.get_outputs()]
    for removed in ([], [1, 3], [0], [2, 4, 5], [5]):  # [5]: a set the export never checked
        keep = np.ones(6, dtype=bool)
        keep[removed] = False
        feeds = {"input_ids": ids, "attention_mask": np.ones((2, 9), np.int64),
                 "position_ids": np.broadcast_to(np.arange(9), (2, 9)).copy(), "keep": keep, **past}
        out = dict(zip(outputs, sess.run(None, feeds)))
        with torch.inference_mode():
            want = pruned(bm, removed).model(torch.as_tensor(ids), use_cache=False).logits.numpy()
        np.testing.assert_allclose(out["logits"], want, atol=1e-4, rtol=1e-4, err_msg=str(removed))
        for b in removed:  # a skipped block's cache slot stays empty
            assert out[f"present.{b}.key"].shape[2] == 0, (removed, b)
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 3), np.int64), "position_ids": np.arange(3)[None],
             **{k: v[:1] for k, v in past.items()}}
    with pytest.raises(Exception, match="(?s)input: keep .*Got: 7 Expected: 6"):
        sess.run(None, {**feeds, "keep": np.ones(7, dtype=bool)})


def _ort_logits(session, ids: torch.Tensor, extra: dict | None = None) -> np.ndarray:
    """Logits of an onnxruntime session on `ids` from an empty cache (past inputs of length 0,
    their other dimensions read from the graph), position ids 0..T-1."""
    batch, length = ids.shape
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((batch, length), np.int64)}
    names = {i.name: i for i in session.get_inputs()}
    if "position_ids" in names:
        feeds["position_ids"] = np.broadcast_to(np.arange(length), (batch, length)).copy()
    for name, meta in names.items():
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros((batch, meta.shape[1], 0, meta.shape[3]), np.float32)
    return session.run(["logits"], {**feeds, **(extra or {})})[0]


def _close_logits(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    """fp32 logits of another runtime vs the HF model's: within 1e-4 of the logits' scale, and the
    same argmax wherever the top two are clearly apart."""
    want = want.double().numpy()
    tol = 1e-4 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=tol, rtol=0, err_msg=what)
    top2 = np.sort(want, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 10 * tol
    assert clear.mean() > 0.5 and (got.argmax(-1) == want.argmax(-1))[clear].all(), what


@pytest.mark.slow
def test_real_smollm2_to_every_runtime(smollm2, tmp_path):
    """The issue's command on the real model: all five artifacts, each run by its own runtime or
    reader and compared here with the physically pruned HF model's own logits and greedy tokens,
    computed in this test, never with the figures the exporter wrote into its manifest (about 10
    minutes here)."""
    import onnxruntime as ort

    from blockprune.export import elastic
    from blockprune.export import onnx as onnx_export

    removed = [17, 18, 19]
    out = tmp_path / "out"
    assert cli.main(["export", "--model", "smollm2-135m", "--remove", ",".join(map(str, removed)), "--format",
                     "hf,onnx,genai,gguf,onnx-elastic", "--kv-cache", "--out", str(out)]) == 0
    reference = pruned(smollm2, removed).model.eval()
    probes = probe_ids(reference.get_input_embeddings().num_embeddings, seed=3)
    with torch.inference_mode():
        want = [reference(ids, use_cache=False).logits for ids in probes]
    # hf: plain transformers reloads the directory
    reload_hf_matches(out / "hf", smollm2, removed)
    # onnx: the logits graph and the decoder with past (from an empty cache) in onnxruntime
    for name in (onnx_export.LOGITS_FILE, onnx_export.DECODER_FILE):
        session = ort.InferenceSession(str(out / "onnx" / name), providers=["CPUExecutionProvider"])
        for ids, w in zip(probes, want):
            _close_logits(_ort_logits(session, ids), w, f"onnx/{name} {tuple(ids.shape)}")
    # genai: onnxruntime-genai's own generator, greedy, against HF generate on the pruned model
    prompts = [list(smollm2.tokenizer(p).input_ids) for p in genai_export.PROMPTS]
    eos_cfg = reference.generation_config.eos_token_id
    eos = set(eos_cfg if isinstance(eos_cfg, (list, tuple)) else [eos_cfg])
    tokens = hf_greedy_until_eos(reference, prompts, 16)
    got = [until_eos(t, eos) for t in genai_greedy(out / "genai" / "fp32", prompts, 16)]
    assert got == tokens  # fp32: token for token, every prompt
    assert all(len(t) >= 1 for t in genai_greedy(out / "genai" / "int4", prompts, 4))  # int4 runs
    # gguf: transformers' own GGUF reader (the source's quantised blocks dequantised as the embedded model is)
    (written,) = (out / "gguf").glob("*.gguf")
    same_as_pruned(_gguf_model(written), smollm2, removed, atol=1e-4)
    # onnx-elastic: one graph, the keep mask per request, against each physically pruned model
    session = ort.InferenceSession(str(out / "onnx-elastic" / elastic.ELASTIC_FILE), providers=["CPUExecutionProvider"])
    for other in ([], removed, [5]):
        keep = np.ones(smollm2.num_blocks, dtype=bool)
        keep[other] = False
        model = pruned(smollm2, other).model.eval()
        for ids in probes:
            with torch.inference_mode():
                w = model(ids, use_cache=False).logits
            _close_logits(_ort_logits(session, ids, {"keep": keep}), w, f"onnx-elastic without {other}")
