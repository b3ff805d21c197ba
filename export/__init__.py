"""Export of a pruned model: a Hugging Face checkpoint and ONNX graphs, each verified, with a manifest.

`export_model(bm, removed, out)` writes into a temporary folder of blockprune's beside `out`
(`rundir.TempDir`: never inside it, a fixed-length name) and swaps it in whole only when every
requested format has been written and verified, so a failed, interrupted or killed export leaves
the old state or the complete new one (a killed export's folder is reclaimed by the next one).
`out` (a symbolic link: its target) must be new, empty, or an earlier export of the same request
(model, removed blocks, formats); another request's export is replaced only with `force`, and only
when every file in it is one its manifest lists. A user's files, a search run, the model itself
or a directory holding them are refused always (`outputs.claim`). `export_manifest.json` lists the files (sha256, size),
every parity figure, the onnxruntime providers that actually ran, and versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

from blockprune import outputs, rundir, versions
from blockprune.models import BlockModel, remove_blocks
from blockprune.outputs import PathError
from blockprune.rundir import chmod_like_user

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


def _manifest_request(manifest: dict) -> dict | None:
    try:
        old = manifest.get("request") or request_of(manifest["model"], manifest["removed"], manifest["formats"], False)
        return {**old, "kv_cache": bool(old.get("kv_cache"))}
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


def inputs_of(model, meta: dict | None = None) -> list[tuple[str, str]]:
    """What an export reads and must never write over: the model (a local directory or GGUF file),
    its source GGUF, the cache of the embedded model."""
    found = [("the model being exported", p) for p in outputs.spec_paths(str(model))] if model else []
    if meta and meta.get("gguf"):
        found.append(("the model's GGUF file", meta["gguf"]))
    return [*found, ("blockprune's cache", str(outputs.cache_root()))]


def check_out(out: str | Path, request: dict, force: bool = False, inputs=()) -> Path:
    """Refuse (one line, nothing written) an --out that would lose a user's files; returns it resolved."""
    try:
        return outputs.claim(out, "export", inputs=inputs, force=force,
                            same=lambda manifest: _manifest_request(manifest) == request)
    except PathError as exc:
        raise ExportFailed(str(exc)) from None


def export_model(bm: BlockModel, removed: Sequence[int], out: str | Path, formats: Sequence[str] = ("hf",),
                 kv_cache: bool = False, force: bool = False, elastic_sets: Sequence[Sequence[int]] = ()) -> dict:
    """Export `bm` without the `removed` blocks into `out`; returns the manifest."""
    removed = sorted({int(b) for b in removed})
    formats = check_formats(formats)
    remove_blocks(bm, removed, check_only=True)  # bad ids or removing everything: ModelError, before any write
    request = request_of(bm.name, removed, formats, kv_cache)
    inputs = inputs_of(bm.name, bm.meta)
    shown = out
    out = check_out(out, request, force, inputs)
    start = time.perf_counter()
    made: list[Path] = []
    try:
        made = rundir.make_dirs(out.parent)
        staging = rundir.TempDir(out.parent, target=out)
        tmp = staging.new
        chmod_like_user(tmp, directory=True)
    except OSError as exc:
        rundir.remove_made(made)
        raise ExportFailed(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    committed = False
    step = ""  # the part being written, named when the file system refuses it
    try:
        manifest = {"model": bm.name, "removed": removed, "kept_blocks": bm.num_blocks - len(removed),
                    "formats": list(formats), "request": request, "parity": {}, "files": [], "versions": versions()}
        pruned = None
        from_hf_gguf = "gguf" in formats and not bm.meta.get("gguf")
        if ("genai" in formats or from_hf_gguf) and "hf" not in formats:
            formats = ["hf", *formats]  # built from the verified checkpoint, which ships beside them
            manifest["formats"] = list(formats)
        if "hf" in formats:
            step = "hf/"
            t = time.perf_counter()
            (tmp / "hf").mkdir()
            pruned = hf.save(bm, removed, tmp / "hf")
            manifest["parity"]["hf"] = {**hf.verify(bm, removed, tmp / "hf"), "export_seconds": round(time.perf_counter() - t, 2)}
        if "onnx" in formats:
            step = "onnx/"
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
            step = "onnx-elastic/"
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
            step = "genai/"
            from . import genai

            for precision in genai.PRECISIONS:  # fp32 must match token for token; int4 states its agreement
                target = tmp / "genai" / precision
                target.parent.mkdir(exist_ok=True)
                info = genai.build(tmp / "hf", target, precision)
                info.update(genai.verify(pruned.model, bm.tokenizer, target, precision))
                manifest["parity"][f"genai_{precision}"] = info
        if "gguf" in formats and not from_hf_gguf:  # the source GGUF's kept blocks, as they are
            step = "gguf/"
            from . import gguf

            (tmp / "gguf").mkdir()
            source = Path(bm.meta["gguf"])
            target = tmp / "gguf" / (source.stem.replace(".", "-") + f"-pruned{len(removed)}.gguf")
            info = gguf.write_pruned(source, removed, target)
            info.update(gguf.verify(bm, removed, target))
            manifest["parity"]["gguf"] = info
        elif "gguf" in formats:  # written from the pruned checkpoint: f16 and q8_0
            step = "gguf/"
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
        step = MANIFEST
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        out = check_out(out, request, force, inputs)  # again: the directory may have changed while we verified
        staging.commit(out)  # what it held (an earlier export) goes with the temporary folder
        committed = True
        return manifest
    except hf.ParityError as exc:
        raise ExportFailed(f"parity check failed: {exc}") from None
    except ExportError as exc:  # the ONNX exporter or its onnxruntime verification
        raise ExportFailed(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise ExportFailed(f"cannot write the export to {shown}: {_where(exc, tmp) or (step + ': ' if step else '')}"
                           f"{exc.strerror or exc} (in {out.parent}); {shown} is as it was") from None
    except Exception as exc:  # safetensors reports a full disk as its own error, naming no file
        code = re.search(r"os error (\d+)", str(exc))
        if type(exc).__name__ != "SafetensorError" or not code:
            raise
        raise ExportFailed(f"cannot write the export to {shown}: {step or 'hf/'}: {os.strerror(int(code.group(1)))} "
                           f"(in {out.parent}); {shown} is as it was") from None
    finally:
        staging.close()
        if not committed:
            rundir.remove_made(made)


def _where(exc: OSError, tmp: Path) -> str:
    """'hf/model.safetensors: ' for an error on a file of the export being written (else its path)."""
    name = exc.filename
    if not name:
        return ""
    try:
        return f"{Path(name).relative_to(tmp)}: "
    except ValueError:
        return f"{name}: "
