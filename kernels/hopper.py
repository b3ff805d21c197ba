"""Every Triton kernel compiled for Hopper (sm_90) on any machine, GPU or not.

Triton compiles for a target it is told about without a GPU present: `triton.compile(ASTSource(
kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))` yields TTIR, TTGIR, PTX and a
cubin, and `cuobjdump --dump-resource-usage` (shipped inside Triton's NVIDIA backend) reads the
cubin's registers, stack, shared and local memory. `configurations()` lists exactly the variants
the dispatchers choose (their own `head_settings` / `row_settings`) for the hidden sizes and
vocabularies of real models, `compile_config()` compiles one and reports what a card would care
about: that it compiles, spills nothing (LOCAL 0), fits the 227 KB of shared memory an H100/H200
block may use, runs bf16/fp16 heads on tensor cores (wgmma in the PTX), and widens the row strides
to 64 bits before they multiply a position or vocabulary index (positions x hidden and vocabulary x
hidden pass 2^31 at real sizes), and pipelines the heads' loads over the shared-memory buffers
num_stages asks for. The heads compile as a launch on a card specialises them (`jit_specialization`:
Triton's own rule, unit strides constant, aligned pointers and sizes divisible by 16); compiled
without it their loads were neither vectorised nor pipelined. tests/test_hopper_compile.py checks
them all; bench/compile_table.py writes the table.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

HOPPER = ("cuda", 90, 32)
SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90 (opt-in maximum)
HIDDEN = (576, 2048, 4096, 8192)
VOCAB = (49152, 128256, 262144)
HEAD_POSITIONS = (1, 4096)  # a single position and the engine's head chunk
TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Config:
    kernel: str
    label: str  # what the dispatcher was asked: dtype, hidden, vocabulary, positions
    signature: dict
    constexprs: dict
    options: dict
    wide_strides: tuple[str, ...]  # stride arguments that must be widened to int64
    tensor_cores: bool  # whether the PTX must use tensor-core instructions
    # arguments the JIT marks divisible by 16 at launch (`jit_specialization`): pointers from the
    # allocator, hidden sizes and row strides; without them the loads are not vectorised or pipelined
    divisible: tuple[str, ...] = ()
    key: tuple = field(init=False)

    def __post_init__(self):
        self.divisible = tuple(self.divisible)
        self.key = (self.kernel, tuple(sorted(self.signature.items())), tuple(sorted(self.constexprs.items())),
                    tuple(sorted(self.options.items())), tuple(sorted(self.divisible)))


def _kernel(kernel: str):
    from . import gather_norm_triton, kl_head_triton, residual_add_triton, scoring_head_triton

    return {"scoring_head": scoring_head_triton._scoring_head_kernel, "kl_head": kl_head_triton._kl_head_kernel,
            "gather_norm": gather_norm_triton._gather_norm_kernel,
            "residual_add": residual_add_triton._residual_add_kernel}[kernel]


def _jit(kernel: str):
    import triton

    fn = _kernel(kernel)
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError("TRITON_INTERPRET=1 is set: kernels compile in a process without it (compile_all)")
    return fn


def _signature(kernel: str, pointers: dict, constexprs: dict, floats: tuple = ()) -> dict:
    import inspect

    names = list(inspect.signature(getattr(_kernel(kernel), "fn", _kernel(kernel))).parameters)
    sig = {n: "i32" for n in names}
    sig.update({n: "fp32" for n in floats})
    sig.update(pointers)
    sig.update({n: "constexpr" for n in constexprs})
    return sig


def jit_specialization(values: dict) -> tuple[dict, dict, tuple[str, ...]]:
    """What Triton's JIT makes of these launch arguments (its own `native_specialize_impl`, as at a
    launch on a card): (signature entries, constexprs: integers equal to 1, names marked divisible
    by 16). Arguments the kernel does not specialise on (do_not_specialize) are left out of `values`."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    sig, const, divisible = {}, {}, []
    for name, value in values.items():
        kind, attr = native_specialize_impl(BaseBackend, value, False, True, True)
        sig[name] = kind
        if kind == "constexpr":
            const[name] = attr
        elif attr == "D":
            divisible.append(name)
    return sig, const, tuple(divisible)


def _head_launch(kernel: str, dtype: torch.dtype, positions: int, hidden: int, splits: int) -> dict:
    """Representative launch values of a head kernel, as its wrapper passes them for contiguous
    inputs (fresh allocations, so 16-byte aligned): unit inner strides, row strides = hidden size,
    the partials' planes at their real offsets. P, V and V_SPLIT are not specialised on; the vector
    strides (targets, bias, index) stay runtime values, as the 64-bit check reads them."""
    t = lambda dt=dtype: torch.empty(16, dtype=dt)  # an aligned pointer of that type
    if kernel == "scoring_head":
        part = torch.empty((3, splits, positions), dtype=torch.float32)
        return {"hidden_ptr": t(), "weight_ptr": t(), "targets_ptr": t(torch.int64), "bias_ptr": t(),
                "max_ptr": part[0], "sum_ptr": part[1], "tgt_ptr": part[2], "D": hidden,
                "stride_hp": hidden, "stride_hd": 1, "stride_wv": hidden, "stride_wd": 1}
    return {"hidden_ptr": t(), "dense_ptr": t(), "weight_ptr": t(), "targets_ptr": t(torch.int64), "bias_ptr": t(),
            "index_ptr": t(torch.int64), "part_ptr": t(torch.float32), "D": hidden,
            "stride_hp": hidden, "stride_hd": 1, "stride_dp": hidden, "stride_dd": 1, "stride_wv": hidden,
            "stride_wd": 1}


def head_configs() -> list[Config]:
    from .scoring_head_triton import head_settings

    out = []
    for dtype, t in TYPES.items():
        for hidden in HIDDEN:
            for vocab in VOCAB:
                for positions in HEAD_POSITIONS:
                    label = f"{t} hidden {hidden} vocab {vocab} positions {positions}"
                    for bias, softcap in ((False, False), (True, True)):
                        cfg = head_settings(positions, hidden, vocab, dtype, dtype, interpreted=False, programs=528)
                        const = {"HAS_BIAS": bias, "HAS_SOFTCAP": softcap,
                                 **{k: cfg[k] for k in ("NATIVE_DOT", "BLOCK_P", "BLOCK_V", "BLOCK_D")}}
                        ptrs, ones, divisible = jit_specialization(
                            _head_launch("scoring_head", dtype, positions, hidden, cfg["splits"]))
                        const.update(ones)
                        out.append(Config("scoring_head", label, _signature("scoring_head", ptrs, const, ("softcap",)),
                                          const, cfg["launch"], ("stride_hp", "stride_wv"), cfg["NATIVE_DOT"],
                                          divisible))
                        # the engine calls the KL kernel only with a softcap, without an index; the
                        # indexed variant is the op's public API
                        cfg = head_settings(positions, hidden, vocab, dtype, dtype, interpreted=False, programs=528,
                                            two_tiles=True)
                        for index in ((False, True) if softcap else (False,)):
                            kconst = {"HAS_BIAS": bias, "HAS_SOFTCAP": softcap, "HAS_INDEX": index,
                                      **{k: cfg[k] for k in ("NATIVE_DOT", "BLOCK_P", "BLOCK_V", "BLOCK_D")}}
                            kptrs, ones, divisible = jit_specialization(
                                _head_launch("kl_head", dtype, positions, hidden, cfg["splits"]))
                            kconst.update(ones)
                            out.append(Config("kl_head", label, _signature("kl_head", kptrs, kconst, ("softcap",)),
                                              kconst, cfg["launch"], ("stride_hp", "stride_dp", "stride_wv"),
                                              cfg["NATIVE_DOT"], divisible))
    return out


def row_configs() -> list[Config]:
    from .gather_norm_triton import row_settings

    out = []
    for dtype, t in TYPES.items():
        for hidden in HIDDEN:
            for positions in (1, 64 * 512):
                block_m, block_d, warps = row_settings(positions, hidden, on_gpu=True)
                label = f"{t} hidden {hidden} positions {positions}"
                tiles = {"BLOCK_M": block_m, "BLOCK_D": block_d}
                for kind in ("rms", "layer"):
                    const = {"IS_RMS": kind == "rms", "HAS_BIAS": kind == "layer", "HAS_OFFSET": False,
                             "CAST_EARLY": kind == "rms", **tiles}
                    ptrs = {"hidden_ptr": f"*{t}", "idx_ptr": "*i64", "weight_ptr": f"*{t}", "bias_ptr": f"*{t}",
                            "out_ptr": f"*{t}"}
                    out.append(Config("gather_norm", label, _signature("gather_norm", ptrs, const, ("eps", "offset")),
                                      const, {"num_warps": warps}, ("stride_hn", "stride_on"), False))
                ptrs = {"hidden_ptr": f"*{t}", "idx_ptr": "*i64", "out_ptr": f"*{t}"}
                out.append(Config("residual_add", label, _signature("residual_add", ptrs, tiles), tiles,
                                  {"num_warps": warps}, ("stride_hn", "stride_on"), False))
    return out


def configurations() -> list[Config]:
    """Every distinct compiled variant the dispatchers can choose at the sizes above (variants that
    differ only in runtime values, such as the vocabulary, compile once: the first label is kept)."""
    unique: dict[tuple, Config] = {}
    for cfg in head_configs() + row_configs():
        unique.setdefault(cfg.key, cfg)
    return list(unique.values())


def _cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resource_usage(cubin: bytes) -> dict:
    """cuobjdump's REG, STACK, SHARED and LOCAL for the cubin's one function."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(_cuobjdump()), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[-1]))
    return {k.lower(): int(v) for k, v in fields.items()}


def compile_config(cfg: Config) -> dict:
    """Compile for sm_90 and report registers, shared memory (static + dynamic), spills, tensor-core
    instructions and which row strides are widened to int64."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit(cfg.kernel)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in cfg.divisible}
    kernel = triton.compile(ASTSource(fn, cfg.signature, cfg.constexprs, attrs), target=GPUTarget(*HOPPER),
                            options=cfg.options)
    usage = resource_usage(kernel.asm["cubin"])
    ttir, ptx = kernel.asm["ttir"], kernel.asm["ptx"]
    # the software pipeline's shared-memory ring: buffers per operand (the leading dimension of the
    # loop's multi-buffered allocations; 0 when the loads are not pipelined)
    rings = [int(n) for n in re.findall(r"!ttg\.memdesc<(\d+)x\d+x\d+x[a-z0-9]+, [^>]*mutable>", kernel.asm["ttgir"])]
    widened = [s for s in cfg.wide_strides if re.search(rf"arith\.extsi %{s} : i32 to i64", ttir)]
    mma = sorted(set(re.findall(r"\b(wgmma\.mma_async|mma\.sync)\b", ptx)))
    return {"kernel": cfg.kernel, "config": cfg.label,
            "constexprs": {k: v for k, v in cfg.constexprs.items()}, "options": cfg.options,
            "registers": usage.get("reg"), "stack": usage.get("stack"), "local": usage.get("local"),
            "shared": usage.get("shared", 0) + int(kernel.metadata.shared), "tensor_core": mma,
            "buffers": max(rings, default=0), "async_copy": "cp.async" in ptx,
            "needs_tensor_core": cfg.tensor_cores, "wide_strides": widened, "needs_wide": list(cfg.wide_strides)}


def _row(cfg: Config) -> dict:
    return {"kernel": cfg.kernel, "label": cfg.label, "signature": cfg.signature, "constexprs": cfg.constexprs,
            "options": cfg.options, "wide_strides": list(cfg.wide_strides), "tensor_cores": cfg.tensor_cores,
            "divisible": list(cfg.divisible)}


def compile_all(configs: list[Config] | None = None, timeout: float = 600) -> list[dict]:
    """compile_config for each (default: every configuration) in a child process without
    TRITON_INTERPRET (under it, @triton.jit builds interpreted functions, which do not compile)."""
    import json
    import os
    import sys

    configs = configurations() if configs is None else configs
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "blockprune.kernels.hopper"], input=json.dumps([_row(c) for c in configs]),
                          capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"compiling for sm_90 failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def _main() -> None:
    import json
    import sys

    rows = json.loads(sys.stdin.read())
    configs = [Config(r["kernel"], r["label"], r["signature"], r["constexprs"], r["options"], tuple(r["wide_strides"]),
                      r["tensor_cores"], tuple(r.get("divisible", ()))) for r in rows]
    print(json.dumps([compile_config(c) for c in configs]))


def problems(row: dict) -> list[str]:
    """What is wrong with one compiled variant for a Hopper card (empty: nothing)."""
    out = []
    if row["local"] or row["stack"]:
        out.append(f"spills: LOCAL {row['local']} STACK {row['stack']}")
    if row["shared"] > SHARED_LIMIT:
        out.append(f"shared memory {row['shared']} B > {SHARED_LIMIT} B")
    if row["needs_tensor_core"] and not row["tensor_core"]:
        out.append("no tensor-core instruction (wgmma/mma) in the PTX")
    stages = row.get("options", {}).get("num_stages", 0)
    if stages >= 2 and "buffers" in row:
        # wgmma reads both operands from shared memory: one buffer per stage; mma.sync and FMA dots
        # hold the current stage in registers: one fewer
        wanted = stages if "wgmma.mma_async" in row["tensor_core"] else stages - 1
        if row["buffers"] < wanted:
            out.append(f"loads pipelined over {row['buffers']} shared buffers, num_stages={stages} asks {wanted}")
    missing = sorted(set(row["needs_wide"]) - set(row["wide_strides"]))
    if missing:
        out.append(f"32-bit offsets: {', '.join(missing)} multiplied in int32")
    return out


if __name__ == "__main__":
    _main()
