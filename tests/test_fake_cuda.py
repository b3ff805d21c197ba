"""The CUDA path on this CPU-only build (#20): the engine driven on fake CUDA tensors.

Under `fakecuda.fake_cuda()` the model's parameters live on `cuda:0` without data, so every op
runs for its shapes and devices only: a CPU tensor meeting a CUDA one anywhere in the engine, the
packing, the prelude, the state cache or the heads raises `FakeTensorDeviceMismatchError` here,
as it would on a card. The same mode counts what a GPU run pays a host synchronisation for
(value reads, device-to-host and pageable host-to-device copies), which must stay a few per
(candidate group, row chunk) whatever the number of blocks. The values themselves are checked
by the CPU tests (test_engine, test_kernel_ops); here only devices and synchronisations.
"""

from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch
import transformers

from blockprune.engine import scoring as engine_mod
from blockprune.models import fused
from blockprune import models
from blockprune.engine import Engine
from blockprune.tasks.request import Request
from conftest import CharTokenizer, tiny_model
from fakecuda import fake_cuda

VALUE_OPS = {"_local_scalar_dense.default", "item.default", "allclose.default", "equal.default", "is_nonzero.default"}


def config(arch: str, layers: int):
    # eager attention: the CPU build cannot run SDPA's CUDA dispatch even on fake tensors
    common = dict(vocab_size=262, num_hidden_layers=layers, hidden_size=48, intermediate_size=80,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  attn_implementation="eager")
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(head_dim=12, use_sliding_window=True, sliding_window=16,
                                        max_window_layers=layers // 2, **common)
    if arch == "gemma3":  # softcapped logits: the KL head's two-sided path; not a fused-runner model
        return transformers.Gemma3TextConfig(head_dim=12, sliding_window=16, final_logit_softcapping=30.0, **common)
    raise ValueError(arch)


def requests():
    """Multiple choice (choices share their context: packed rows) and two plain sequences."""
    ctx = tuple(range(10, 22))
    mc = [Request(ctx + (40 + c, 41 + c), len(ctx)) for c in range(3)]
    return mc + [Request(tuple(range(3, 30)), 5), Request(tuple(range(50, 70)), 8)]


def masks(num_blocks: int, skip: list[list[int]]) -> np.ndarray:
    keep = np.ones((len(skip), num_blocks), dtype=bool)
    for row, blocks in enumerate(skip):
        keep[row, blocks] = False
    return keep


def fake_engine(fc, arch: str, layers: int, runner: str) -> Engine:
    bm = models.wrap(fc.model(config(arch, layers)), CharTokenizer(), f"fake-{arch}")
    assert bm.device == torch.device("cuda", 0)
    mode = {"plain": False, "fused": True, "auto": None}[runner]
    ran = []
    original = Engine._score_rows

    def spy(self, rows, *args, **kwargs):
        ran.append(any(r.packed for r in rows))
        return original(self, rows, *args, **kwargs)

    with fc.syncs(), mock.patch.object(Engine, "_score_rows", spy):  # the one-off self-checks read values: emulated
        eng = Engine(bm, fused=mode)
        limit = eng.packing_limit()
    # What fake mode can show of the packing check: a really packed row and the plain rows both ran
    # on the device (no device mixing, no error turned into "packing off") and their results were
    # compared. Not that they agree: fake tensors hold no values (`.numpy()` gives zeros on both
    # sides). test_engine and test_integration compare packed with plain values on the CPU.
    assert ran == [True, False], ran
    assert limit is not None and eng.packing_note.startswith("packing on: packed vs plain"), eng.packing_note
    return eng


@pytest.mark.parametrize("kl", [False, True])
@pytest.mark.parametrize("arch,runner", [("llama", "plain"), ("llama", "fused"), ("qwen3", "fused"),
                                         ("gemma3", "auto")])
def test_engine_runs_on_cuda_without_mixing_devices(monkeypatch, arch, runner, kl):
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")  # the kernels' references: Triton needs a real GPU
    monkeypatch.setenv("BLOCKPRUNE_FUSED", "1")  # auto mode tries the fused runner (Gemma: plain, said why)
    with fake_cuda() as fc:
        eng = fake_engine(fc, arch, 4, runner)
        assert eng.fused == (runner == "fused")
        if runner == "auto":
            assert "not the Llama pre-norm block forward" in eng.info()["fused_reason"]
        with fc.syncs() as syncs:
            first = eng.score(requests(), masks(4, [[], [2], [1]]), kl=kl)
            # beam children of the first call's sets: they start from its stored states
            second = eng.score(requests(), masks(4, [[2, 3], [1, 3], [1, 2]]), kl=kl)
        assert first.logprob.shape == second.logprob.shape == (3, 5)
        assert second.work.reused_block_rows > 0
        assert not {op for op, _ in syncs.events} & VALUE_OPS, syncs.events


def count_syncs(monkeypatch, layers: int) -> tuple[int, int, Counter]:
    """(host syncs of one score call, (group, chunk) passes it made, syncs by kind)."""
    passes = []
    original = Engine._score_rows

    def counted(self, *args, **kwargs):
        passes.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "_score_rows", counted)
    with fake_cuda() as fc:
        eng = fake_engine(fc, "llama", layers, "plain")
        eng.cache = None  # every block computed: the most forks
        keep = masks(layers, [[], [1], [2], [1, 2], [layers - 1], [0, layers - 2]])
        passes.clear()
        with fc.syncs() as syncs:
            eng.score(requests(), keep, kl=True)
    return syncs.count(), len(passes), Counter(op for op, _ in syncs.events)


def test_host_syncs_per_pass_are_few_and_independent_of_depth(monkeypatch):
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    shallow, passes_4, kinds = count_syncs(monkeypatch, 4)
    deep, passes_12, _ = count_syncs(monkeypatch, 12)
    assert passes_4 == passes_12 >= 1
    # per pass: the plan upload, the packing mask upload, the results download
    assert shallow <= 3 * passes_4, kinds
    assert deep == shallow, (deep, shallow)
    assert set(kinds) <= {"host_to_device", "device_to_host"}


ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported"


def cuda_errors() -> list[Exception]:
    """What torch raises after a kernel's illegal memory access, by type and by message."""
    errors = [RuntimeError(ILLEGAL_ACCESS), RuntimeError("CUDA error: device-side assert triggered"),
              torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")]
    if hasattr(torch, "AcceleratorError"):  # torch >= 2.8 raises CUDA errors as this type
        errors.append(torch.AcceleratorError(ILLEGAL_ACCESS))
    return errors


@pytest.mark.parametrize("error", cuda_errors(), ids=lambda e: type(e).__name__)
def test_a_cuda_error_in_the_fused_check_ends_the_run_in_one_line(monkeypatch, error):
    """After an illegal memory access the CUDA context is unusable: auto mode must not fall back to
    the plain path (which would die later, somewhere unrelated) but stop at the check, saying so."""
    monkeypatch.delenv("BLOCKPRUNE_FUSED", raising=False)  # auto mode, as on a card
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")

    def crashed(*args, **kwargs):
        raise error

    monkeypatch.setattr(fused, "verify", crashed)
    with fake_cuda() as fc:
        bm = models.wrap(fc.model(config("llama", 2)), CharTokenizer(), "fake-llama")
        for mode in (None, True):
            with fc.syncs(), pytest.raises(fused.DeviceError) as info:
                Engine(bm, fused=mode)
            message = str(info.value)
            assert "\n" not in message and "fused block runner's check" in message, message
            assert "CUDA" in message and info.value.__cause__ is error
        assert "fused_reason" not in bm.meta  # no fallback was recorded


def test_a_check_that_raises_otherwise_is_a_fused_error_not_a_fallback(monkeypatch):
    bm = tiny_model("llama", layers=3)
    monkeypatch.setenv("BLOCKPRUNE_FUSED", "1")
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    error = RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu!")

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(fused, "verify", broken)
    for mode in (None, True):  # a bug in the fused path, not a mismatch: auto mode does not hide it
        with pytest.raises(fused.FusedError, match="fused block runner's check raised RuntimeError") as info:
            Engine(bm, fused=mode)
        assert not isinstance(info.value, fused.DeviceError) and info.value.__cause__ is error
    assert not fused.device_error(error)  # "cuda:0" in a device-mismatch message is no CUDA error


def test_a_mismatch_in_the_fused_check_still_takes_the_plain_path(monkeypatch):
    bm = tiny_model("llama", layers=3)
    monkeypatch.setenv("BLOCKPRUNE_FUSED", "1")
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    monkeypatch.setattr(fused, "verify", lambda *a, **k: "block 0: fused and plain outputs differ (max abs diff 0.1)")
    eng = Engine(bm)
    assert not eng.fused and eng.info()["fused_reason"] == "block 0: fused and plain outputs differ (max abs diff 0.1)"
    with pytest.raises(fused.FusedError, match="outputs differ"):
        fused.runner_for(tiny_model("llama", layers=3), True)  # forced: the mismatch is the user's to see


def packing_check_raising(monkeypatch, error) -> Engine:
    """A plain-path engine whose packing check's packed pass raises `error`."""
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    eng = Engine(tiny_model("llama", layers=2), fused=False)
    original = Engine._score_rows

    def packed_raises(self, rows, *args, **kwargs):
        if any(r.packed for r in rows):
            raise error
        return original(self, rows, *args, **kwargs)

    monkeypatch.setattr(Engine, "_score_rows", packed_raises)
    return eng


@pytest.mark.parametrize("error", cuda_errors(), ids=lambda e: type(e).__name__)
def test_a_cuda_error_in_the_packing_check_ends_the_run_in_one_line(monkeypatch, error):
    eng = packing_check_raising(monkeypatch, error)
    with pytest.raises(fused.DeviceError) as info:
        eng.packing_limit()
    message = str(info.value)
    assert "\n" not in message and "packing check" in message and info.value.__cause__ is error, message


def test_a_model_rejecting_a_packed_row_runs_unpacked_and_other_errors_propagate(monkeypatch):
    eng = packing_check_raising(monkeypatch, ValueError("Attention mask should be of size (1, 1, 12, 12)"))
    assert eng.packing_limit() is None
    assert eng.packing_note == "packing off: the model rejects a packed row (ValueError)"

    class CompilationError(Exception):  # as Triton's: not a model rejecting a mask
        pass

    eng = packing_check_raising(monkeypatch, CompilationError("at 12:4: unsupported"))
    with pytest.raises(CompilationError):
        eng.packing_limit()


def test_packing_tolerance_fits_the_dtype():
    # bf16 rounds at 2^-8: a 1e-4 tolerance would switch packing off for every bf16 model
    assert engine_mod.packing_tolerance(torch.float32) == 1e-4
    assert engine_mod.packing_tolerance(torch.bfloat16) == 4 * 2**-7
    assert engine_mod.packing_tolerance(torch.float16) == 4 * 2**-10


def test_the_cli_says_a_device_error_in_one_line(monkeypatch, capsys, tmp_path):
    """`blockprune search` that meets a CUDA error in a check: one line on stderr, exit 1, no traceback."""
    from blockprune import api, cli

    def crashed(*args, **kwargs):
        raise fused.check_raised("the fused block runner's check", "m", torch.cuda.OutOfMemoryError("CUDA out of memory"))

    monkeypatch.setattr(api, "run_search", crashed)
    code = cli.main(["search", "--model", "smollm2-135m", "--task", "kl:shakespeare/hamlet#2",
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("blockprune: error: m: the fused block runner's check ran out of GPU memory")
    assert "\n" not in err and "Traceback" not in err
