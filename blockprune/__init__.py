"""blockprune: find which transformer blocks can be removed with the least loss, and ship the result."""

__version__ = "0.1.0"


def versions() -> dict:
    """Versions of blockprune and the libraries its results depend on (optional ones when installed)."""
    import torch
    import transformers

    out = {"blockprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript", "triton"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out
