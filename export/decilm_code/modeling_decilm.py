"""A DeciLM-layout (Nemotron-NAS) decoder, as exported by blockprune: a Llama whose layers may each
lack their attention or their MLP.

Layer i follows `config.block_configs[i]`:

    h = h + self_attn(input_layernorm(h))          unless attention.no_op
    h = h + mlp(post_attention_layernorm(h))       unless ffn.no_op

A half that is a no-op has no modules and no weights: the layer passes the hidden states through
for it. The KV cache has one slot per layer that keeps its attention, numbered over those layers
only (`cache_slot`), so an attention-free layer takes no cache memory and the cache's length (and
`get_seq_length()`, read from slot 0) is right even when layer 0 has no attention.

Attention: RMSNorm pre-norm, rotary position embeddings (the config's `rope_parameters`, or the
legacy `rope_theta` / `rope_scaling`), grouped-query attention with
`num_attention_heads // n_heads_in_group` key/value heads, a causal mask combined with the padding
mask. MLP: gated (`down(act(gate(x)) * up(x))`), its width given by `ffn_mult`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_decilm import DeciLMConfig

# the output's cache field: `cache` in transformers 5, `past_key_values` before
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def ffn_intermediate_size(ffn_mult, hidden_size):
    """The MLP width of `ffn_mult`: 2/3 of ffn_mult * hidden, rounded up to a multiple of 256."""
    n = int(2 * ffn_mult * hidden_size / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


def rope_parameters(config):
    """The rotary settings as one dict with `rope_type` and `rope_theta` (new or legacy config fields)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    return params


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin of each position. The frequencies are computed at the first call, on the positions'
    device (not a buffer: nothing to load, nothing built on the meta device while loading), once:
    no sequence-length-dependent scaling."""

    def __init__(self, config, head_dim):
        super().__init__()
        self.config, self.head_dim = config, head_dim
        self.rope_type = rope_parameters(config)["rope_type"]
        if self.rope_type in ("dynamic", "longrope"):
            raise ValueError(f"rope_type {self.rope_type!r} is not supported by this DeciLM code")
        self.frequencies = None

    def compute(self, device):
        if self.rope_type == "default":
            steps = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=device) / self.head_dim
            return 1.0 / (rope_parameters(self.config)["rope_theta"] ** steps), 1.0
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv_freq, scaling = ROPE_INIT_FUNCTIONS[self.rope_type](self.config, device)
        return inv_freq.to(device=device, dtype=torch.float), scaling

    def forward(self, position_ids, dtype):
        if self.frequencies is None or self.frequencies[0].device != position_ids.device:
            self.frequencies = self.compute(position_ids.device)
        inv_freq, scaling = self.frequencies
        freqs = position_ids[..., None].float() * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + turned * sin[:, None]


class Attention(nn.Module):
    def __init__(self, config, n_heads_in_group, cache_slot):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = self.heads // n_heads_in_group
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.cache_slot = cache_slot
        out_bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = bool(getattr(config, "qkv_bias", out_bias))
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=out_bias)

    def forward(self, x, cos, sin, mask, cache):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.cache_slot)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, config, intermediate):
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(config.hidden_size, intermediate, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DeciLMDecoderLayer(nn.Module):
    def __init__(self, config, block, cache_slot):
        super().__init__()
        if block.attention.get("replace_with_linear") or block.ffn.get("replace_with_linear"):
            raise ValueError("replace_with_linear blocks are not supported by this DeciLM code")
        self.input_layernorm = self.self_attn = self.post_attention_layernorm = self.mlp = None
        if not block.attention.no_op:
            self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.self_attn = Attention(config, block.attention.n_heads_in_group, cache_slot)
        if not block.ffn.no_op:
            width = (ffn_intermediate_size(block.ffn.ffn_mult, config.hidden_size) if "ffn_mult" in block.ffn
                     else block.ffn.intermediate_size)
            self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp = MLP(config, width)

    def forward(self, h, cos, sin, mask, cache):
        if self.self_attn is not None:
            h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache)
        if self.mlp is not None:
            h = h + self.mlp(self.post_attention_layernorm(h))
        return h


def causal_mask(attention_mask, length, past, device):
    """[batch or 1, 1, length, past + length] booleans: a query sees the keys at or before it that are
    not padding; a padded query sees itself too (an all-masked row would give NaN)."""
    keys = torch.arange(past + length, device=device)
    queries = torch.arange(past, past + length, device=device)
    mask = (keys[None, :] <= queries[:, None])[None, None]
    if attention_mask is not None and attention_mask.dim() == 2:
        mask = mask & attention_mask[:, None, None, : past + length].bool()
        mask = mask | (keys[None, :] == queries[:, None])
    return mask


class DeciLMPreTrainedModel(PreTrainedModel):
    config_class = DeciLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["DeciLMDecoderLayer"]

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)

    @classmethod
    def _supports_default_dynamic_cache(cls):
        # generate() would size a cache by num_hidden_layers; forward() makes one with a slot per attention layer
        return False


class DeciLMModel(DeciLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        slots, layers = 0, []
        for block in config.block_configs:
            layers.append(DeciLMDecoderLayer(config, block, slots))
            slots += not block.attention.no_op
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.rotary_emb = RotaryEmbedding(config, head_dim)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, past_key_values=None, **kwargs):
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = (cache if cache is not None else past_key_values) if use_cache else None
        if use_cache and cache is None:
            cache = DynamicCache()  # slots added as the attention layers first write them
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + h.shape[1], device=h.device)[None]
        cos, sin = self.rotary_emb(position_ids, h.dtype)
        mask = causal_mask(attention_mask, h.shape[1], past, h.device)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache)
        return self.norm(h), cache


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, past_key_values=None, **kwargs):
        hidden, cache = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                                   past_key_values=past_key_values)
        return CausalLMOutputWithPast(logits=self.lm_head(hidden), **{CACHE_FIELD: cache})
