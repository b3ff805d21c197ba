"""Configuration of a DeciLM-layout (Nemotron-NAS) decoder, as exported by blockprune.

A Llama configuration plus `block_configs`: one entry per layer, each `{"attention": {...}, "ffn":
{...}}`. An attention entry with `no_op: true` means the layer has no attention (no weights, no KV
cache); an ffn entry with `no_op: true` means it has no MLP. A kept attention has
`num_attention_heads // n_heads_in_group` key/value heads; a kept MLP's width is given by `ffn_mult`
(see `modeling_decilm.ffn_intermediate_size`). The entries read as attributes
(`config.block_configs[3].attention.no_op`), which is how vLLM's `nemotron_nas.py` reads them, and
serialise back to plain JSON objects.
"""

from transformers import LlamaConfig


class Spec(dict):
    """A JSON object whose keys also read as attributes (a missing key is an AttributeError)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _spec(value):
    return Spec({k: _spec(v) for k, v in value.items()}) if isinstance(value, dict) else value


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        super().__init__(**kwargs)
        self.block_configs = [_spec(dict(b)) for b in (block_configs or [])]
        if self.block_configs and len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(f"block_configs has {len(self.block_configs)} entries for "
                             f"{self.num_hidden_layers} layers")
