"""Hugging Face checkpoint export: reload with plain transformers, parity with the masked model."""

import json

import pytest
import torch
import transformers

from blockprune import cli, models
from blockprune.export import MANIFEST, ExportFailed, export_model
from blockprune.export.hf import masked_logits
from conftest import tiny_model
from reference import pruned, reload_hf_matches


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3", "gpt2", "neox"])
def test_reloaded_checkpoint_matches_the_masked_model(arch, tmp_path):
    bm = tiny_model(arch, layers=5)
    export_model(bm, [1, 3], tmp_path / "out")
    reload_hf_matches(tmp_path / "out" / "hf", bm, [1, 3])  # plain transformers vs the physically pruned model
    cfg = transformers.AutoConfig.from_pretrained(tmp_path / "out" / "hf")
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    assert layers == 3
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        assert cfg.layer_types == [bm.model.config.layer_types[i] for i in (0, 2, 4)]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
    idx = [m.layer_idx for m in reloaded.modules() if hasattr(m, "layer_idx") and "Attention" in type(m).__name__]
    assert sorted(set(idx)) == [0, 1, 2]
    files = {f["path"] for f in json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]}
    assert "hf/model.safetensors" in files and "hf/config.json" in files


def test_sliding_window_layout_survives_export(tmp_path):
    # Qwen3 with sliding windows on the first half: remove a windowed block and a full one.
    bm = tiny_model("qwen3", layers=6)
    ids = torch.randint(3, 250, (1, 16))  # longer than the window of 5
    export_model(bm, [0, 4], tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
    with torch.inference_mode():
        diff = (reloaded(ids).logits - masked_logits(bm, ids, [0, 4])).abs().max().item()
        physical = (reloaded(ids).logits - pruned(bm, [0, 4]).model(ids, use_cache=False).logits).abs().max().item()
    assert diff < 1e-5 and physical < 1e-5


def test_gpt2_inverse_layer_scaling_is_refused(tmp_path):
    bm = tiny_model("gpt2", layers=4)
    bm.model.config.scale_attn_by_inverse_layer_idx = True
    for m in bm.model.modules():
        if hasattr(m, "scale_attn_by_inverse_layer_idx"):
            m.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(ExportFailed, match="scale_attn_by_inverse_layer_idx"):
        export_model(bm, [1], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_bad_exports_write_nothing(tiny_dir, tmp_path, capsys):
    for extra, message in [(["--remove", "0,1,2,3,4,5"], "cannot remove all"), (["--remove", "9"], "out of range"),
                           (["--remove", "1", "--format", "tflite"], "unknown export format")]:
        code = cli.main(["export", "--model", str(tiny_dir), "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # an unwritable destination, even for root
    code = cli.main(["export", "--model", str(tiny_dir), "--remove", "1", "--out", str(blocker / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("blockprune: error: --out") and "which is a file" in err and "\n" not in err


def test_export_cli_writes_a_reloadable_checkpoint(tiny_dir, tmp_path):
    assert cli.main(["export", "--model", str(tiny_dir), "--remove", "2,4", "--out", str(tmp_path / "o")]) == 0
    manifest = json.loads((tmp_path / "o" / MANIFEST).read_text())
    assert manifest["removed"] == [2, 4] and manifest["kept_blocks"] == 4
    bm = models.load(str(tmp_path / "o" / "hf"), device="cpu")
    assert bm.num_blocks == 4


def _tiny(cfg):
    from conftest import CharTokenizer

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return models.wrap(model, CharTokenizer(), f"tiny-{cfg.model_type}")


PER_LAYER = {
    # Qwen3-MoE: block 0 dense by list, every 2nd block sparse by period -> renumbering breaks both
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        vocab_size=262, hidden_size=48, intermediate_size=80, moe_intermediate_size=32, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_experts=4, num_experts_per_tok=2,
        decoder_sparse_step=2, mlp_only_layers=[0], max_position_embeddings=256),
    # SmolLM3: no RoPE on every 4th block, as a per-layer list
    "smollm3": lambda: transformers.SmolLM3Config(
        vocab_size=262, hidden_size=48, intermediate_size=80, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, no_rope_layers=[1, 1, 1, 0, 1, 1],
        pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


@pytest.mark.parametrize("arch", sorted(PER_LAYER))
def test_per_layer_config_lists_stay_true_of_the_kept_blocks(arch, tmp_path):
    bm = _tiny(PER_LAYER[arch]())
    removed = [2, 3] if arch == "qwen3_moe" else [1, 2]
    export_model(bm, removed, tmp_path / "out")
    reload_hf_matches(tmp_path / "out" / "hf", bm, removed)
    cfg = transformers.AutoConfig.from_pretrained(tmp_path / "out" / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
    if arch == "qwen3_moe":  # originally sparse: blocks 1, 3, 5; kept 0, 1, 4, 5 -> sparse at new 1 and 3
        sparse = [i for i, layer in enumerate(reloaded.model.layers) if "Sparse" in type(layer.mlp).__name__]
        assert sparse == [1, 3] and cfg.mlp_only_layers == [0, 2]
    else:  # kept 0, 3, 4, 5: block 3 (now 1) has no RoPE
        assert cfg.no_rope_layers == [1, 0, 1, 1]
