"""Independent references for tests and bench/: what one writes without blockprune's engine or exporter.

A removal set's reference is a physically pruned copy of the model (`models.remove_blocks`) run
with plain HF forwards, one unpadded sequence at a time; an artifact's reference is that copy
compared with the artifact reloaded by its own runtime (plain transformers, onnxruntime,
onnxruntime-genai), never with the figures the exporter wrote into its manifest.

    from reference import naive_scores, pruned, greedy, reload_hf_matches   # tests/ and bench/

Halves (#32): `half_removed(bm, units)` is the HF model whose removed halves' modules output zeros
(unit 2b: block b's attention, 2b+1: its MLP), run by its own forward: a block then adds nothing
for them, which is what removing them means, written without blockprune's unit code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def pruned(bm, removed):
    """The model with `removed` physically deleted (a deep copy), or the model itself when nothing is."""
    from blockprune import models

    return models.remove_blocks(bm, removed) if len(removed) else bm


@torch.inference_mode()
def naive_scores(bm, requests, removed) -> tuple[np.ndarray, np.ndarray]:
    """Per request: the float64 log-probability of the scored tokens and whether greedy decoding
    reproduces all of them, from a plain forward of the physically pruned copy (full logits)."""
    return scores_of(pruned(bm, removed).model, requests)


@torch.inference_mode()
def scores_of(model, requests) -> tuple[np.ndarray, np.ndarray]:
    """naive_scores of an HF model as it is: one plain forward per request, full logits, float64."""
    lp, gr = [], []
    for r in requests:
        logits = model(input_ids=torch.tensor([r.tokens]), use_cache=False).logits[0].double()
        pos = torch.arange(r.score_from - 1, len(r.tokens) - 1)
        tgt = torch.tensor(r.tokens[r.score_from:])
        lp.append(torch.log_softmax(logits, -1)[pos, tgt].sum().item())
        gr.append(bool((logits[pos].argmax(-1) == tgt).all()))
    return np.array(lp), np.array(gr)


@torch.inference_mode()
def naive_kl(bm, requests, removed) -> np.ndarray:
    """Per request: the sum over its scored positions of KL(p_dense || p_pruned), float64, full logits."""
    return kl_against(bm, pruned(bm, removed), requests)


@torch.inference_mode()
def greedy(model, ids: np.ndarray, gen_len: int) -> np.ndarray:
    """HF generate, greedy, exactly gen_len new tokens (EOS never stops it): (batch, gen_len)."""
    ids_t = torch.as_tensor(np.asarray(ids))
    out = model.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=gen_len,
                         min_new_tokens=gen_len, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, ids_t.shape[1]:].numpy()


def probe_ids(vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """Fixed random prompts of two shapes the exporters do not use for their own checks."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (1, 11), generator=g), torch.randint(3, vocab, (2, 19), generator=g)]


@torch.inference_mode()
def same_as_pruned(model, bm, removed, atol: float = 1e-5, tokens: bool = True) -> float:
    """`model` (an artifact reloaded by its own reader) vs the physically pruned model: logits on
    probe prompts within `atol`, and (`tokens`) the same greedy tokens with a KV cache. Returns the max diff."""
    reference = pruned(bm, removed).model.eval()
    model = model.eval()
    vocab = reference.get_input_embeddings().num_embeddings
    worst = 0.0
    for ids in probe_ids(vocab):
        diff = (model(ids).logits.float() - reference(ids, use_cache=False).logits.float()).abs().max().item()
        worst = max(worst, diff)
        assert diff <= atol, f"the reloaded model differs from the pruned model by {diff:.3g} > {atol}"
    if tokens:
        ids = probe_ids(vocab)[0]
        np.testing.assert_array_equal(greedy(model, ids, 8), greedy(reference, ids, 8))
    return worst


def reload_hf_matches(hf_dir: Path, bm, removed, atol: float = 1e-5) -> float:
    """Reload `hf_dir` with plain transformers and compare it with the physically pruned model (`same_as_pruned`)."""
    import transformers

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    return same_as_pruned(reloaded, bm, removed, atol)


def genai_greedy(model_dir: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy tokens from onnxruntime-genai itself (its Generator, no blockprune code)."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    out = []
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new_tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        out.append(list(gen.get_sequence(0))[len(ids):])
    return out


def hf_greedy_until_eos(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy HF generate per prompt, stopping at (and keeping) the model's EOS as a runtime does."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    out = []
    with torch.inference_mode():
        for ids in prompts:
            seq = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=sorted(eos) or None, pad_token_id=min(eos) if eos else 0)
            out.append(until_eos(seq[0, len(ids):].tolist(), eos))
    return out


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Tokens up to and including the first EOS (runtimes differ in what they pad after it)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def folded_kl(bm, healing, requests, removed) -> float:
    """Mean per-token KL(p_dense || p_pruned) of a copy with `healing`'s maps folded into its weights
    (blockprune.healing.heal.fold_into, as the export writes them; None: plain) and `removed` deleted."""
    import copy

    from blockprune.healing import heal

    folded = copy.deepcopy(bm)
    if healing is not None:
        heal.fold_into(folded, healing.maps_for(removed))
    kl = kl_against(bm, pruned(folded, removed), requests)
    return float(kl.sum() / sum(r.num_scored for r in requests))


@torch.inference_mode()
def kl_against(dense_bm, pruned_bm, requests) -> np.ndarray:
    """Per request: the sum over its scored positions of KL(p_dense || p_pruned), float64, full logits."""
    out = []
    for r in requests:
        ids = torch.tensor([r.tokens])
        dense = torch.log_softmax(dense_bm.model(ids, use_cache=False).logits[0].double(), -1)
        cut = torch.log_softmax(pruned_bm.model(ids, use_cache=False).logits[0].double(), -1)
        pos = torch.arange(r.score_from - 1, len(r.tokens) - 1)
        out.append((dense[pos].exp() * (dense[pos] - cut[pos])).sum().item())
    return np.array(out)


class _ZeroAttention(torch.nn.Module):
    def forward(self, hidden_states=None, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class _ZeroMLP(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def half_removed(bm, removed_units):
    """A deep copy of the HF model with the removed halves' modules replaced by zeros."""
    import copy

    from blockprune import models
    from blockprune.models import units as units_mod

    model = copy.deepcopy(bm.model)
    blocks = models.find_blocks(model)[1]
    for u in removed_units:
        block = blocks[u // 2]
        layout = units_mod.layout_of(block)
        if u % 2 == 0:
            setattr(block, layout.attn, _ZeroAttention())
        else:
            setattr(block, layout.mlp, _ZeroMLP())
    return model


def half_removed_scores(bm, requests, removed_units) -> tuple[np.ndarray, np.ndarray]:
    """naive_scores for halves: `scores_of` the copy whose removed halves output zeros (`half_removed`)."""
    return scores_of(half_removed(bm, removed_units), requests)
