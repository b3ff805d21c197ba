"""ONNX export of a pruned model: graph I/O per kept layer, onnxruntime parity on unseen shapes."""

import time

import pytest
import torch
from torch import nn

from blockprune.models import remove_blocks
from conftest import tiny_model

import onnxruntime  # noqa: E402,F401 - in the [onnx] extra `make test` installs: missing must fail, not skip
import onnxscript  # noqa: E402,F401
import onnx  # noqa: E402

from blockprune.export import onnx as onnx_export  # noqa: E402
from blockprune.export.onnx import ExportError  # noqa: E402


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def llama_onnx(tmp_path_factory):
    """A tiny Llama without block 1 (3 kept layers), exported once to both graphs."""
    pruned = remove_blocks(tiny_model("llama", 4), [1])
    out = tmp_path_factory.mktemp("onnx-llama")
    return pruned.model, onnx_export.export_logits(pruned.model, out), onnx_export.export_decoder_with_past(pruned.model, out)


def test_logits_graph_matches_pytorch_on_unseen_shapes(llama_onnx):
    model, logits_path, _ = llama_onnx
    assert logits_path.name == "model.onnx"
    result = onnx_export.verify_logits(model, logits_path)
    assert result["ok"] and result["max_abs_diff"] <= 1e-4
    assert result["outputs"] == ["logits"] and result["inputs"] == ["input_ids", "attention_mask"]
    export_shape = [onnx_export.EXPORT_BATCH, onnx_export.EXPORT_SEQUENCE]
    assert [s["input_ids"] for s in result["shapes"]] == [[2, 7], [1, 13]] and export_shape not in result["shapes"]
    assert [s["logits"] for s in result["shapes"]] == [[2, 7, 262], [1, 13, 262]]
    assert "CPUExecutionProvider" in result["providers"]


def test_logits_graph_has_dynamic_batch_and_sequence(llama_onnx):
    _, logits_path, _ = llama_onnx
    graph = onnx.load(str(logits_path), load_external_data=False).graph
    for value in (*graph.input, *graph.output):
        batch, sequence = _dims(value)[:2]
        assert isinstance(batch, str) and isinstance(sequence, str), (value.name, _dims(value))


def test_decoder_io_names_follow_the_kept_layers(llama_onnx):
    _, _, decoder_path = llama_onnx
    assert decoder_path.name == "decoder_with_past.onnx"
    graph = onnx.load(str(decoder_path), load_external_data=False).graph
    inputs = [v.name for v in graph.input]
    outputs = [v.name for v in graph.output]
    assert inputs == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(3) for kind in ("key", "value")]
    assert outputs == ["logits"] + [f"present.{i}.{kind}" for i in range(3) for kind in ("key", "value")]
    past = {v.name: _dims(v) for v in graph.input}["past_key_values.2.value"]
    assert isinstance(past[0], str) and isinstance(past[2], str) and past[1] == 2 and past[3] == 12


def test_decoder_prefill_and_one_decode_step_match_full_recompute(llama_onnx):
    model, _, decoder_path = llama_onnx
    result = onnx_export.verify_decoder(model, decoder_path)
    assert result["ok"] and result["kept_layers"] == 3
    assert result["prefill_max_abs_diff"] <= 1e-4 and result["decode_max_abs_diff"] <= 1e-4
    steps = {s["step"]: s for s in result["shapes"]}
    assert steps["prefill"]["past_sequence_length"] == 0 and steps["prefill"]["input_ids"] == [2, 9]
    assert steps["decode"]["past_sequence_length"] == 9 and steps["decode"]["input_ids"] == [2, 1]
    assert steps["decode_from_torch_cache"]["logits"] == [2, 1, 262]


def test_parity_failure_raises_export_error(llama_onnx):
    _, logits_path, decoder_path = llama_onnx
    other = remove_blocks(tiny_model("llama", 4, seed=1), [1]).model  # same layout, other weights
    with pytest.raises(ExportError, match="logits differ from PyTorch") as logits_error:
        onnx_export.verify_logits(other, logits_path)
    with pytest.raises(ExportError, match="prefill logits differ from PyTorch") as decoder_error:
        onnx_export.verify_decoder(other, decoder_path)
    assert "\n" not in str(logits_error.value) and "\n" not in str(decoder_error.value)


def test_decoder_for_another_layer_count_raises_export_error(llama_onnx):
    _, _, decoder_path = llama_onnx
    unpruned = tiny_model("llama", 4).model  # 4 layers: the graph has past for 3
    with pytest.raises(ExportError, match=r"input names differ.*past_key_values\.3\.key"):
        onnx_export.verify_decoder(unpruned, decoder_path)


def test_model_without_a_cache_argument_cannot_export_a_decoder(tmp_path):
    class NoCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

        def get_input_embeddings(self):
            return self.embed

        def forward(self, input_ids, attention_mask=None):
            return self.embed(input_ids)

    with pytest.raises(ExportError, match="NoCache.forward takes no `cache`"):
        onnx_export.export_decoder_with_past(NoCache(), tmp_path)
    assert not (tmp_path / "decoder_with_past.onnx").exists()


def test_untraceable_model_raises_a_one_line_export_error(tmp_path):
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.embed

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            hidden = self.embed(input_ids)
            if hidden.sum() > 0:  # a branch on a value: no static graph
                hidden = hidden * 2
            return type("Output", (), {"logits": hidden})

    with pytest.raises(ExportError, match="logits graph: torch.onnx.export failed for DataDependent") as error:
        onnx_export.export_logits(DataDependent(), tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3", "gpt2", "gemma3"])
def test_other_architectures_export_and_match(arch, tmp_path):
    # Qwen3 and Gemma 3 have sliding-window layers (window 5): the 9-token prefill crosses it.
    model = remove_blocks(tiny_model(arch, 4), [1]).model
    logits = onnx_export.verify_logits(model, onnx_export.export_logits(model, tmp_path))
    decoder = onnx_export.verify_decoder(model, onnx_export.export_decoder_with_past(model, tmp_path))
    assert logits["ok"] and decoder["ok"] and decoder["kept_layers"] == 3
    assert decoder["outputs"][-1] == "present.2.value"


@pytest.mark.slow
def test_smollm2_pruned_exports_and_matches(smollm2, tmp_path):
    pruned = remove_blocks(smollm2, [20, 24, 26])
    model = pruned.model
    kept = pruned.num_blocks
    assert kept == 27
    start = time.perf_counter()
    logits_path = onnx_export.export_logits(model, tmp_path)  # 0.5 GB of weights: one file
    logits_seconds = time.perf_counter() - start
    start = time.perf_counter()
    # Threshold 0 forces the external-data layout that models over 1.5 GB get.
    decoder_path = onnx_export.export_decoder_with_past(model, tmp_path, external_data_threshold=0)
    decoder_seconds = time.perf_counter() - start
    assert not (tmp_path / "model.onnx.data").exists() and (tmp_path / "decoder_with_past.onnx.data").exists()
    with torch.inference_mode():
        logits = onnx_export.verify_logits(model, logits_path)
        decoder = onnx_export.verify_decoder(model, decoder_path)
    print(f"\nSmolLM2-135M without [20, 24, 26]: export logits {logits_seconds:.1f}s, decoder {decoder_seconds:.1f}s; "
          f"logits max|diff| {logits['max_abs_diff']:.2e}, decoder prefill {decoder['prefill_max_abs_diff']:.2e}, "
          f"decode {decoder['decode_max_abs_diff']:.2e}; tolerances "
          f"{[round(s['tolerance'], 6) for s in logits['shapes'] + decoder['shapes']]}; "
          f"providers {decoder['providers']}")
    assert logits["ok"] and decoder["ok"] and decoder["kept_layers"] == kept
    assert decoder["outputs"][-2:] == [f"present.{kept - 1}.key", f"present.{kept - 1}.value"]
