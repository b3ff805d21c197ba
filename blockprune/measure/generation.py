"""The timed generations `blockprune bench` measures: one greedy generation each, as a runtime serves it.

(Not to be confused with the engine's block runners, `blockprune.models.fused`, or the runners of work
units, `shard.LocalRunner` and `cluster.Pool`.) Each one is called with prompt ids [batch, prompt]
and `gen_len`, and returns the prefill time (to the first new token), every further decode
step's time, the generated tokens and the KV cache's bytes. TorchGeneration: the model's own KV
cache, as `generate()` does it. OrtGeneration: the exported decoder with past, presents fed back
as the next past. GenaiGeneration: an ONNX Runtime GenAI model (`onnxruntime_genai.Generator`),
greedy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .. import models


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TorchGeneration:
    """Greedy generation with the model's own KV cache, as `generate()` does it."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, prefill_inputs: dict | None = None):
        from ..export.onnx import cache_kwarg

        self.prefill_inputs = prefill_inputs or {}  # an image-text model's image inputs (its prompt's image)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.cache_kwarg = cache_kwarg(model)
        self.weights_bytes = models.weights_bytes(model)

    @torch.inference_mode()
    def __call__(self, ids: np.ndarray, gen_len: int) -> dict:
        from ..models.adapter import output_cache

        ids_t = torch.as_tensor(ids, device=self.device)
        batch, prompt = ids_t.shape
        mask = torch.ones((batch, prompt + gen_len), dtype=torch.long, device=self.device)
        sync(self.device)
        t0 = time.perf_counter()
        out = self.model(input_ids=ids_t, attention_mask=mask[:, :prompt], use_cache=True, logits_to_keep=1,
                         **self.prefill_inputs)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        cache = output_cache(out)
        sync(self.device)
        t1 = time.perf_counter()
        prefill = t1 - t0
        tokens, steps = [token], []
        for step in range(1, gen_len):
            out = self.model(input_ids=token, attention_mask=mask[:, :prompt + step], use_cache=True, logits_to_keep=1,
                             **{self.cache_kwarg: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            cache = output_cache(out)
            tokens.append(token)
            sync(self.device)
            t2 = time.perf_counter()
            steps.append(t2 - t1)
            t1 = t2
        kv = 0
        for layer in getattr(cache, "layers", []) or []:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    kv += t.numel() * t.element_size()
        return {"prefill": prefill, "steps": steps, "tokens": torch.cat(tokens, 1).cpu().numpy(), "kv_bytes": kv}


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtGeneration:
    """Greedy generation with the exported decoder with past: presents fed back as the next past."""

    backend = "onnxruntime"

    def __init__(self, graph: Path, device: torch.device):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()  # the same cores PyTorch uses
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(graph), sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        self.threads = options.intra_op_num_threads
        inputs = self.session.get_inputs()
        self.past = [(i.name, i.shape, _ORT_TYPES.get(i.type, np.float32)) for i in inputs if i.name.startswith("past_key_values.")]
        self.num_layers = len(self.past) // 2
        self.weights_bytes = sum(p.stat().st_size for p in graph.parent.glob(graph.name + "*"))

    def __call__(self, ids: np.ndarray, gen_len: int) -> dict:
        batch, prompt = ids.shape
        ids = ids.astype(np.int64)
        mask = np.ones((batch, prompt + gen_len), dtype=np.int64)
        past = {name: np.zeros((batch, shape[1], 0, shape[3]), dtype=dtype) for name, shape, dtype in self.past}
        names = [name for name, _, _ in self.past]
        t0 = time.perf_counter()
        positions = np.broadcast_to(np.arange(prompt, dtype=np.int64), (batch, prompt))
        out = self.session.run(None, {"input_ids": ids, "attention_mask": mask[:, :prompt], "position_ids": positions, **past})
        token = out[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        t1 = time.perf_counter()
        prefill = t1 - t0
        tokens, steps = [token], []
        for step in range(1, gen_len):
            past = dict(zip(names, out[1:]))
            positions = np.full((batch, 1), prompt + step - 1, dtype=np.int64)
            out = self.session.run(None, {"input_ids": token, "attention_mask": mask[:, :prompt + step],
                                          "position_ids": positions, **past})
            token = out[0][:, -1].argmax(-1)[:, None].astype(np.int64)
            tokens.append(token)
            t2 = time.perf_counter()
            steps.append(t2 - t1)
            t1 = t2
        return {"prefill": prefill, "steps": steps, "tokens": np.concatenate(tokens, 1),
                "kv_bytes": int(sum(a.nbytes for a in out[1:]))}


class GenaiGeneration:
    """Greedy generation with onnxruntime-genai: `append_tokens` (the prompt) then one
    `generate_next_token` per token; the first token's call belongs to the prefill."""

    backend = "genai"

    def __init__(self, model_dir: Path):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir))
        cfg = json.loads((Path(model_dir) / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
        self.num_layers = cfg["num_hidden_layers"]
        self.kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_size"] * 4
        self.weights_bytes = sum(p.stat().st_size for p in Path(model_dir).glob("model.onnx*"))
        self.providers = ["cpu"]
        self.threads = None

    def __call__(self, ids: np.ndarray, gen_len: int) -> dict:
        batch, prompt = ids.shape
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=prompt + gen_len, batch_size=batch)
        gen = self.og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids.astype(np.int32))
        gen.generate_next_token()
        t1 = time.perf_counter()
        prefill = t1 - t0
        steps = []
        for _ in range(1, gen_len):
            gen.generate_next_token()
            t2 = time.perf_counter()
            steps.append(t2 - t1)
            t1 = t2
        tokens = np.stack([np.asarray(gen.get_sequence(b))[prompt:prompt + gen_len] for b in range(batch)])
        return {"prefill": prefill, "steps": steps, "tokens": tokens.astype(np.int64),
                "kv_bytes": int(self.kv_per_token * batch * (prompt + gen_len))}
