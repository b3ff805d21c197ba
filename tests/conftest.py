import functools
import os
import re

import torch

# Without a GPU, Triton kernels run on CPU only through the interpreter, which must be chosen
# before any kernel module is imported. With CUDA the compiled kernels are tested.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # references are fp32: no TF32 rounding in the matmuls they are compared with
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

import pytest  # noqa: E402

torch.manual_seed(0)


# ---- which Triton the kernel tests ran -------------------------------------------------------
# A test that runs a Triton kernel is marked `@TRITON` and runs once per backend in its id:
# `[interpreter]` (TRITON_INTERPRET=1: the kernel's Python, on CPU) or `[compiled]` (the kernel
# compiled for the GPU). Only the backend this process has runs; the other is skipped with its
# reason, so a CPU run never passes for a test of the compiled kernel. The header and the summary
# say which ran.
TRITON_BACKENDS = ("interpreter", "compiled")


@functools.cache
def triton_backend_here() -> str:
    """What the kernels are in this process: the decorated kernel's own type, not the environment."""
    try:
        import triton

        from blockprune.kernels import gather_norm_triton
    except Exception as exc:  # noqa: BLE001 - `make test` installs Triton: the kernel tests then fail, loudly
        return f"unavailable ({type(exc).__name__}: {exc})"
    jit = isinstance(gather_norm_triton._gather_norm_kernel, triton.runtime.jit.JITFunction)
    return "compiled" if jit else "interpreter"


def _skip_reason(wanted: str, here: str) -> str:
    if wanted == "compiled":
        why = "no CUDA device" if not torch.cuda.is_available() else "TRITON_INTERPRET=1 is set"
        return f"compiled Triton kernel not tested: {why}, kernels run in the interpreter ([interpreter] variant)"
    return f"interpreter not tested: this process compiles the Triton kernels ({here})"


@pytest.fixture(params=TRITON_BACKENDS)
def triton_backend(request):
    here = triton_backend_here()
    if here not in TRITON_BACKENDS:  # never skipped for it: a kernel test without Triton fails
        pytest.fail(f"the Triton kernels cannot be loaded: {here}")
    if request.param != here:
        pytest.skip(_skip_reason(request.param, here))
    return here


TRITON = pytest.mark.usefixtures("triton_backend")  # marks a test that runs a Triton kernel


def pytest_report_header(config):
    here = triton_backend_here()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    env = f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')}"
    if here not in TRITON_BACKENDS:
        return [f"triton kernels: {here} ({device}, {env}); the kernel tests fail"]
    other = "compiled" if here == "interpreter" else "interpreter"
    return [f"triton kernels: {here} ({device}, {env}); the [{other}] variants of the kernel tests are skipped"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "Triton kernel not tested" in str(r.longrepr)
               or "interpreter not tested" in str(r.longrepr)]
    ran = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
           if r.when == "call" and re.search(rf"[\[-]{triton_backend_here()}[\]-]", r.nodeid)]
    if skipped or ran:
        terminalreporter.write_line(f"triton kernels: {len(ran)} kernel tests ran {triton_backend_here()}, "
                                    f"{len(skipped)} variants of the other backend skipped (pytest -rs lists them)")


class CharTokenizer:
    """A tiny byte-level tokenizer for unit tests (ids 3..258; 2 is EOS)."""

    eos_token_id = 2

    class _Out:
        def __init__(self, ids):
            self.input_ids = ids

    def __call__(self, text, add_special_tokens=False):
        return self._Out([3 + b for b in text.encode("utf-8")])


def distinct_norms(bm, seed: int = 0):
    """`bm` with every norm weight scaled by its own random factor in [0.5, 1.5): a random init
    leaves them all ones, so a test of code that picks a norm (the fused runner's gather+norm) would
    pass with the wrong one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in bm.model.named_parameters():
            if "norm" in name:
                p.mul_(0.5 + torch.rand(p.shape, generator=gen))
    return bm


def tiny_model(arch: str = "llama", layers: int = 6, seed: int = 0):
    """A small random-initialised causal LM of the given architecture, wrapped as a BlockModel."""
    import transformers

    from blockprune import models

    torch.manual_seed(seed)
    common = dict(vocab_size=262, num_hidden_layers=layers)
    if arch == "llama":
        cfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=256, **common)
    elif arch == "qwen3":
        cfg = transformers.Qwen3Config(hidden_size=48, intermediate_size=80, num_attention_heads=4, head_dim=12,
                                       num_key_value_heads=2, max_position_embeddings=256, use_sliding_window=True,
                                       sliding_window=5, max_window_layers=layers // 2, **common)
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=262, n_layer=layers, n_embd=48, n_head=4, n_positions=256)
    elif arch == "gemma3":
        cfg = transformers.Gemma3TextConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4, head_dim=12,
                                            num_key_value_heads=2, max_position_embeddings=256, sliding_window=5,
                                            final_logit_softcapping=30.0, **common)
    elif arch == "neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4,
                                         max_position_embeddings=256, **common)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(hidden_size=48, intermediate_size=80, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=256, **common)
    else:
        raise ValueError(arch)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return models.wrap(model, CharTokenizer(), f"tiny-{arch}")


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded model (SmolLM2-135M-Instruct from the registry package, converted once)."""
    from blockprune import data, models

    if not (data.cache_dir() / "dl").exists():
        pytest.fail("the embedded model is not in the cache: run `make data` (or `blockprune fetch`) first")
    return models.load("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A small random Llama saved as a plain HF directory with the real SmolLM2 tokenizer, so the
    real loading code (from_pretrained on a path) runs in fast tests."""
    import transformers

    from blockprune import models

    tok_dir = models.resolve("smollm2-135m")  # converted once into the cache
    tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                                   tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def jsonl_tasks(tmp_path_factory):
    """Three small JSONL tasks, one of each kind."""
    import json

    d = tmp_path_factory.mktemp("tasks")
    mc = [{"context": f"Question {i}: which number comes after {i}?", "choices": [f" {i + 1}", f" {i + 7}", " banana"],
           "label": 0} for i in range(8)]
    ppl = [{"text": "To be, or not to be, that is the question. " * 6 + f"Line {i}."} for i in range(4)]
    em = [{"prompt": f"Repeat the word {w}:", "answers": [f" {w}"]} for w in ["apple", "river", "stone", "cloud", "light"]]
    for name, rows in [("mc", mc), ("ppl", ppl), ("em", em)]:
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d
