"""Run from a checkout's root, `kernels/` (blockprune.kernels) is also importable as a top-level
`kernels`, the name of Hugging Face's package that transformers >= 5.25 imports while it builds a
model. CI's fresh install crashed there (`cannot import name 'CUDAProperties' from 'kernels'`).
These run a real interpreter with the checkout's root first on sys.path, as `python -m` there does."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys
import kernels
import transformers
cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                               num_key_value_heads=1, num_hidden_layers=2, vocab_size=40)
model = transformers.AutoModelForCausalLM.from_config(cfg)
import blockprune.kernels
print(json.dumps({"kernels": kernels.__file__, "ours": blockprune.kernels.__file__,
                  "scoring_head": hasattr(blockprune.kernels, "scoring_head"),
                  "blocks": len(model.model.layers)}))
"""


def _installed_kernels() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_transformers_builds_a_model_from_the_checkout_root():
    proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["blocks"] == 2 and seen["scoring_head"]
    assert Path(seen["ours"]).resolve() == ROOT / "kernels" / "__init__.py"
    if _installed_kernels():  # transformers >= 5.25 requires it: the name must be the installed one
        assert Path(seen["kernels"]).resolve().parent != ROOT / "kernels"

