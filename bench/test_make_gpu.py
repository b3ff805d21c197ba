"""`make install` picks the CUDA set-up by itself on a machine with an NVIDIA driver (#33 item 6):
`nvidia-smi -L` on PATH and answering -> the registry's CUDA 13 torch (`torch===2.13.0`, which a
local 2.13.0+cpu build cannot satisfy) and the `gpu` extras, with onnxruntime (CPU) removed first;
otherwise the CPU build and the `onnx` extras, as before. GPU=0/1 overrides. Read with `make -n`
(nothing runs, nothing installs) on a venv path that does not exist."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# variables a calling make or the shell may carry (`make test GPU=1` passes GPU on through MAKEFLAGS)
CLEAR = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GPU", "TORCH", "TRITON", "EXTRAS", "VENV")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def plan(tmp_path, smi_exit: int | None, *args: str) -> str:
    """The recipe `make -n install` would run, with a fake nvidia-smi exiting `smi_exit` (None: none on PATH)."""
    path = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()]
    if smi_exit is not None:
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        smi = fake / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\nexit {smi_exit}\n")
        smi.chmod(0o755)
        path.insert(0, str(fake))
    env = {k: v for k, v in os.environ.items() if k not in CLEAR}
    env["PATH"] = os.pathsep.join(path)
    done = subprocess.run(["make", "-n", "-C", str(REPO), "install", f"VENV={tmp_path / 'fresh-venv'}", *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_gpu(out: str):
    assert 'pip install -q "torch===2.13.0"' in out, out
    assert "assert torch.version.cuda" in out, out  # a CPU torch already in the venv is replaced
    assert 'pip install -q -e ".[test,gpu,lmeval,ray,vision]"' in out, out
    assert "pip uninstall -q -y onnxruntime onnxruntime-genai" in out, out  # never beside onnxruntime-gpu
    assert "onnx," not in out.replace("test,gpu", ""), out


def assert_cpu(out: str):
    assert 'pip install -q "torch==2.13.0"' in out, out
    assert 'pip install -q -e ".[test,onnx,lmeval,ray,vision]"' in out, out
    assert "gpu" not in out.split("install: ", 1)[1].split("\n", 1)[1], out  # only the echo line may name it
    assert "uninstall" not in out and "torch.version.cuda" not in out, out


def test_a_driver_that_answers_picks_the_cuda_build_and_gpu_extras(tmp_path):
    assert_gpu(plan(tmp_path, 0))


def test_no_driver_keeps_the_cpu_build(tmp_path):
    assert_cpu(plan(tmp_path, None))


def test_an_nvidia_smi_that_fails_is_no_gpu(tmp_path):
    assert_cpu(plan(tmp_path, 9))


def test_the_override_wins_both_ways(tmp_path):
    assert_gpu(plan(tmp_path, None, "GPU=1"))
    assert_cpu(plan(tmp_path, 0, "GPU=0"))
