"""Export of a pruned model: a Hugging Face checkpoint and ONNX graphs, each verified, with a manifest.

`export_model(bm, removed, out)` writes into a temporary directory beside `out` and renames it
into place only when every requested format has been written and verified, so a failed or
interrupted export leaves nothing behind. `out` must be new, empty, or an earlier export of the
same request (model, removed blocks, formats); anything else (a user's files, another export) is
refused unless `force`, and a search run's directory is refused always. `export_manifest.json` lists the files (sha256, size),
every parity figure, the onnxruntime providers that actually ran, and versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from blockprune import versions
from blockprune.models import BlockModel, remove_blocks
from blockprune.rundir import PathError, chmod_like_user
from blockprune.rundir import check_out as check_out_dir

from . import hf
from .onnx import ExportError

FORMATS = ("hf", "onnx", "genai", "gguf", "onnx-elastic")
MANIFEST = "export_manifest.json"


class ExportFailed(Exception):
    """An export that could not be written or verified (one-line message)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_formats(formats: Sequence[str]) -> list[str]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportFailed(f"unknown export format(s) {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def request_of(model: str, removed: Sequence[int], formats: Sequence[str], kv_cache: bool) -> dict:
    return {"model": model, "removed": sorted({int(b) for b in removed}), "formats": sorted(set(formats)),
            "kv_cache": bool(kv_cache and "onnx" in formats)}


def check_out(out: str | Path, request: dict, force: bool = False) -> Path:
    """Refuse (one line, nothing written) an --out that would lose a user's files."""
    out = Path(out)
    try:
        check_out_dir(out)
    except PathError as exc:
        raise ExportFailed(str(exc)) from None
    if not out.is_dir() or not any(out.iterdir()):
        return out
    from blockprune.store import RESULTS_FILE, RUN_FILE

    if (out / RUN_FILE).exists() or (out / RESULTS_FILE).exists():
        raise ExportFailed(f"--out {out} is a search run directory; export into a new directory (e.g. {out / 'export'})")
    try:
        old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        old_request = old.get("request") or request_of(old["model"], old["removed"], old["formats"], False)
        old_request = {**old_request, "kv_cache": bool(old_request.get("kv_cache"))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old_request = None
    if force or old_request == request:
        return out
    what = ("an export of another request" if old_request is not None
            else "not empty and not a blockprune export")
    raise ExportFailed(f"--out {out} is {what}; give a new directory, or --force to replace it")


def export_model(bm: BlockModel, removed: Sequence[int], out: str | Path, formats: Sequence[str] = ("hf",),
                 kv_cache: bool = False, force: bool = False, elastic_sets: Sequence[Sequence[int]] = ()) -> dict:
    """Export `bm` without the `removed` blocks into `out`; returns the manifest."""
    removed = sorted({int(b) for b in removed})
    formats = check_formats(formats)
    remove_blocks(bm, removed, check_only=True)  # bad ids or removing everything: ModelError, before any write
    request = request_of(bm.name, removed, formats, kv_cache)
    out = check_out(out, request, force)
    start = time.perf_counter()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        chmod_like_user(tmp, directory=True)
    except OSError as exc:
        raise ExportFailed(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    try:
        manifest = {"model": bm.name, "removed": removed, "kept_blocks": bm.num_blocks - len(removed),
                    "formats": list(formats), "request": request, "parity": {}, "files": [], "versions": versions()}
        pruned = None
        from_hf_gguf = "gguf" in formats and not bm.meta.get("gguf")
        if ("genai" in formats or from_hf_gguf) and "hf" not in formats:
            formats = ["hf", *formats]  # built from the verified checkpoint, which ships beside them
            manifest["formats"] = list(formats)
        if "hf" in formats:
            t = time.perf_counter()
            (tmp / "hf").mkdir()
            pruned = hf.save(bm, removed, tmp / "hf")
            manifest["parity"]["hf"] = {**hf.verify(bm, removed, tmp / "hf"), "export_seconds": round(time.perf_counter() - t, 2)}
        if "onnx" in formats:
            from . import onnx as onnx_export

            pruned = pruned or remove_blocks(bm, removed)
            (tmp / "onnx").mkdir()
            t = time.perf_counter()
            path = onnx_export.export_logits(pruned.model, tmp / "onnx")
            manifest["parity"]["onnx_logits"] = {**onnx_export.verify_logits(pruned.model, path),
                                                 "export_seconds": round(time.perf_counter() - t, 2)}
            if kv_cache:
                t = time.perf_counter()
                path = onnx_export.export_decoder_with_past(pruned.model, tmp / "onnx")
                manifest["parity"]["onnx_decoder_with_past"] = {**onnx_export.verify_decoder(pruned.model, path),
                                                                "export_seconds": round(time.perf_counter() - t, 2)}
            manifest["onnxruntime_providers"] = sorted({p for k, v in manifest["parity"].items() if k.startswith("onnx")
                                                        for p in v.get("providers", [])})
        if "onnx-elastic" in formats:
            from . import elastic
            from . import onnx as onnx_export

            t = time.perf_counter()
            work = tmp / ".elastic-work"
            (tmp / "onnx-elastic").mkdir()
            dense_graph = onnx_export.export_decoder_with_past(bm.model, work / "dense")
            target = tmp / "onnx-elastic" / elastic.ELASTIC_FILE
            info = elastic.make_elastic(dense_graph, target, bm.num_blocks, bm.block_path)
            info["export_seconds"] = round(time.perf_counter() - t, 2)
            info.update(elastic.verify(bm, target, list(dict.fromkeys([(), tuple(removed), *map(tuple, elastic_sets)]))))
            if removed:
                pruned_graph = tmp / "onnx" / onnx_export.DECODER_FILE
                if not pruned_graph.exists():
                    pruned_graph = onnx_export.export_decoder_with_past((pruned or remove_blocks(bm, removed)).model,
                                                                        work / "pruned")
                info["speed"] = elastic.speed(target, dense_graph, pruned_graph, bm.num_blocks, removed,
                                              bm.head.weight.shape[0])
            shutil.rmtree(work, ignore_errors=True)
            manifest["parity"]["onnx_elastic"] = info
        if "genai" in formats:
            from . import genai

            for precision in genai.PRECISIONS:  # fp32 must match token for token; int4 states its agreement
                target = tmp / "genai" / precision
                target.parent.mkdir(exist_ok=True)
                info = genai.build(tmp / "hf", target, precision)
                info.update(genai.verify(pruned.model, bm.tokenizer, target, precision))
                manifest["parity"][f"genai_{precision}"] = info
        if "gguf" in formats and not from_hf_gguf:  # the source GGUF's kept blocks, as they are
            from . import gguf

            (tmp / "gguf").mkdir()
            source = Path(bm.meta["gguf"])
            target = tmp / "gguf" / (source.stem.replace(".", "-") + f"-pruned{len(removed)}.gguf")
            info = gguf.write_pruned(source, removed, target)
            info.update(gguf.verify(bm, removed, target))
            manifest["parity"]["gguf"] = info
        elif "gguf" in formats:  # written from the pruned checkpoint: f16 and q8_0
            from . import gguf

            (tmp / "gguf").mkdir()
            for outtype in ("f16", "q8_0"):
                target = tmp / "gguf" / f"model-pruned{len(removed)}-{outtype}.gguf"
                info = gguf.write_from_hf(pruned.model, tmp / "hf", target, outtype)
                info.update(gguf.verify_from_hf(pruned.model, bm.tokenizer, target, outtype))
                manifest["parity"][f"gguf_{outtype}"] = info
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            manifest["files"].append({"path": str(path.relative_to(tmp)), "sha256": _sha256(path), "size": path.stat().st_size})
        manifest["seconds"] = round(time.perf_counter() - start, 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        out = check_out(out, request, force)  # again: the directory may have changed while we verified
        if out.exists():
            old = out.parent / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        return manifest
    except hf.ParityError as exc:
        raise ExportFailed(f"parity check failed: {exc}") from None
    except ExportError as exc:  # the ONNX exporter or its onnxruntime verification
        raise ExportFailed(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise ExportFailed(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
