"""Finding an export and checking that it is the one wanted: which model, without which blocks.

`blockprune bench` measures exports written by `blockprune export` (the ONNX decoder with past,
the ONNX Runtime GenAI model). `find_decoder` / `find_genai` return the artifact of an export
directory after checking its manifest against the model and the removed blocks; what is missing
or of another request is refused in one line (`ExportNotFound`), naming the command that writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from . import MANIFEST
from .onnx import DECODER_FILE


class ExportNotFound(Exception):
    """No export of the wanted model and blocks where one was given (one-line message)."""


def same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_manifest(root: Path, bm, removed: Sequence[int]) -> None:
    """The export in `root` must be of this model (`bm.name`, `bm.num_blocks`) without exactly these blocks."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExportNotFound(f"{root}: no readable {MANIFEST}, cannot tell which model the export is") from None
    if not same_model(str(manifest.get("model")), bm.name):
        raise ExportNotFound(f"{root} is an export of {manifest.get('model')!r}, not {bm.name!r}")
    if sorted(manifest.get("removed", [])) != sorted(removed):
        raise ExportNotFound(f"{root} is an export without blocks {manifest.get('removed')}, not {list(removed)}")
    if manifest.get("kept_blocks") != bm.num_blocks - len(removed):
        raise ExportNotFound(f"{root} keeps {manifest.get('kept_blocks')} blocks; {bm.name} without {list(removed)} "
                             f"keeps {bm.num_blocks - len(removed)}")


def export_command(bm, removed: Sequence[int], d: Path, fmt: str) -> str:
    """The `blockprune export` command that writes what is missing (never over what `d` holds)."""
    # never suggest writing over what the directory holds (an HF export, a user's files)
    suffix = fmt.split()[0]
    target = d if not d.exists() or (d.is_dir() and not any(d.iterdir())) else d.parent / f"{d.name}-{suffix}"
    return (f"blockprune export --model {bm.name} --remove {','.join(map(str, removed)) or repr('')} "
            f"--format {fmt} --out {target}")


def find_decoder(directory: str | Path, bm, removed: Sequence[int]) -> Path:
    """The decoder-with-past graph of an export of `bm` without `removed`, checked against its manifest.

    `directory` is an export directory (with `export_manifest.json` and `onnx/`) or its `onnx/`.
    """
    d = Path(directory)
    what = "the dense model" if not removed else f"blocks {list(removed)} removed"
    root = d.parent if (d / DECODER_FILE).exists() and not (d / MANIFEST).exists() else d
    graph = root / "onnx" / DECODER_FILE
    if not graph.exists():
        raise ExportNotFound(f"no ONNX decoder with past for {what} in {d} (write one with: "
                             f"{export_command(bm, removed, d, 'onnx --kv-cache')})")
    check_manifest(root, bm, removed)
    return graph


def find_genai(directory: str | Path, bm, removed: Sequence[int]) -> Path:
    """The fp32 ONNX Runtime GenAI model of an export of `bm` without `removed`."""
    d = Path(directory)
    what = "the dense model" if not removed else f"blocks {list(removed)} removed"
    model_dir = d / "genai" / "fp32"
    if not (model_dir / "genai_config.json").exists():
        raise ExportNotFound(f"no ONNX Runtime GenAI model for {what} in {d} (write one with: "
                             f"{export_command(bm, removed, d, 'genai')})")
    check_manifest(d, bm, removed)
    return model_dir
