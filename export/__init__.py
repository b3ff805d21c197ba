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

With `healing` (a fitted `blockprune.healing.heal.Healing`), each removed run's map is folded into the
block before it in a copy of the model (`hf.healed_copy`; the caller's model is not changed), and
every format is written and verified from that copy, so the exported model is the one the engine
scored healed; its perplexity on held-out windows is bounded by plain deletion's first
(`export.quality`: a broken fold is never exported as verified). A run starting at block 0 (no block before it) is refused before anything is
written; the healing (method, ridge, calibration, a hash of its window ids) is part of the
request, and the manifest's `healing` says which run was folded into which tensor and which stayed
plain. `onnx-elastic` stays plain (a healed skip would need one map per block and run length in
the graph): the manifest says so.

The formats are one table, `EXPORTERS` (as Optimum's exporters): each declares the formats it is
built from (written first and shipped beside it), the folder it writes and what it verifies, and
its `run` writes the artifact and then checks it; `export_model` is one loop over the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from blockprune.runs import outputs, rundir
from blockprune import versions
import torch

from blockprune.models import BlockModel, blocks_left, remove_blocks, remove_units
from blockprune.models.units import UnitModel, fmt_units
from blockprune.runs.outputs import PathError
from blockprune.runs.rundir import chmod_like_user

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


IMAGE_TEXT_FORMATS = ("hf",)  # what holds an image-text model whole (vision tower, processor, image inputs)


def check_image_text_formats(formats: Sequence[str], name: str) -> None:
    """An image-text model exports as an HF checkpoint only: the other formats would hold its text tower alone."""
    other = [f for f in formats if f not in IMAGE_TEXT_FORMATS]
    if other:
        raise ExportFailed(f"{name} is an image-text model: --format {','.join(other)} would hold its text tower alone "
                           "(no vision encoder, processor or image inputs); export it with --format hf, which the "
                           "family's own class loads")


def healing_identity(healing) -> dict:
    """What makes two healings the same request: method, ridge, the calibration (spec, window, number
    of windows, tokens) and a short hash of its window ids."""
    d = healing.describe()
    cal = d.get("calibration") or {}
    ids = "\n".join(str(i) for i in cal.get("sample_ids") or [])
    return {"method": d.get("method"), "ridge": d.get("ridge"), "tokens": d.get("tokens"),
            "calibration": {k: cal.get(k) for k in ("spec", "window", "n", "tokens")} if cal else None,
            "sample_ids_sha256": hashlib.sha256(ids.encode("utf-8")).hexdigest()[:16] if cal else None}


def request_of(model: str, removed: Sequence[int], formats: Sequence[str], kv_cache: bool, healing=None,
               units: str = "blocks") -> dict:
    request = {"model": model, "removed": sorted({int(b) for b in removed}), "formats": sorted(set(formats)),
               "kv_cache": bool(kv_cache and "onnx" in formats)}
    if units != "blocks":  # halves: `removed` holds unit ids (2b attention, 2b+1 MLP)
        request["units"] = units
    if healing is not None:  # a plain request has no key (so exports written before healing stay the same request)
        request["healing"] = healing_identity(healing)
    return request


def check_healing(bm: BlockModel, removed: Sequence[int], healing) -> dict:
    """The maps a healed export folds ({block: T}); one-line ExportFailed, before anything is
    written, for a run starting at block 0, a healing of another model or a run it has no map for."""
    runs = healing.runs(removed)
    first = next((r for r in runs if r["after"] < 0), None)
    if first is not None:
        raise ExportFailed(f"a healed export cannot remove the run {_fmt(first['blocks'])}: it starts at block 0, so there "
                           "is no block before it to fold its map into; keep block 0, or export without healing")
    fitted = getattr(getattr(healing, "bm", None), "num_blocks", bm.num_blocks)
    if fitted != bm.num_blocks:
        raise ExportFailed(f"the healing was fitted on a model of {fitted} blocks, not {bm.name} ({bm.num_blocks} blocks)")
    try:
        return healing.maps_for(removed)
    except ValueError as exc:  # heal.HealError: a run longer than the statistics were gathered for
        raise ExportFailed(f"cannot heal the export: {str(exc).splitlines()[0]}") from None


HALVES_FORMATS = ("hf", "gguf", "onnx")  # what holds layers without attention or without an MLP


def whole_blocks(removed: Sequence[int]) -> bool:
    """Every removed half's partner is removed too: the set removes whole blocks."""
    return all((u ^ 1) in set(removed) for u in removed)


def check_halves_formats(formats: Sequence[str], removed: Sequence[int]) -> None:
    """A model with halves removed is written as DeciLM (hf) and llama.cpp's deci (gguf) only."""
    other = [f for f in formats if f not in HALVES_FORMATS]
    if other:
        raise ExportFailed(f"--format {','.join(other)} cannot hold a model with attention or MLP halves removed "
                           f"({fmt_units(removed, 'sublayers')}): its layers are no longer alike; export it with "
                           "--format hf (a DeciLM / Nemotron-NAS checkpoint), gguf (llama.cpp's deci layout) or onnx "
                           "(a KV cache for the kept attention only)")


def _fmt(blocks) -> str:
    return "[" + ", ".join(str(b) for b in blocks) + "]"


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


# ---- the exporters: what each requires, writes and verifies ------------------------------------------
@dataclass
class _Job:
    """One export being written into `tmp`: the model, the blocks, the options, the manifest so far."""

    bm: BlockModel
    removed: list[int]
    tmp: Path
    kv_cache: bool
    elastic_sets: Sequence[Sequence[int]]
    manifest: dict
    pruned: BlockModel | None = None  # the physically pruned copy, once one exists
    plain: BlockModel | None = None  # with healing: the caller's model (bm is the folded copy)
    folded: tuple[int, ...] = ()  # with healing: the blocks whose projections hold a map


def _seconds(t: float) -> float:
    return round(time.perf_counter() - t, 2)


def _write_hf(job: _Job) -> None:
    t = time.perf_counter()
    (job.tmp / "hf").mkdir()
    if isinstance(job.bm, UnitModel):  # halves removed: the heterogeneous DeciLM / Nemotron-NAS checkpoint
        from . import decilm

        info = decilm.write(job.bm.base, job.removed, job.tmp / "hf")
        atol = 1e-4 if job.bm.dtype == torch.float32 else 2e-2
        job.manifest["parity"]["hf"] = {**info, **decilm.verify(job.bm.base, job.removed, job.tmp / "hf", atol=atol),
                                        "export_seconds": _seconds(t)}
        return
    job.pruned = hf.save(job.bm, job.removed, job.tmp / "hf")
    job.manifest["parity"]["hf"] = {**hf.verify(job.bm, job.removed, job.tmp / "hf"), "export_seconds": _seconds(t)}


def _write_onnx(job: _Job) -> None:
    from . import onnx as onnx_export

    if isinstance(job.bm, UnitModel):  # halves removed: traced from the DeciLM layout, a cache only for kept attention
        from . import onnx_halves

        t = time.perf_counter()
        (job.tmp / "onnx").mkdir()
        hf_dir = job.tmp / "hf"  # the verified DeciLM checkpoint, when hf is exported too
        info = onnx_halves.export(job.bm.base, job.removed, job.tmp / "onnx", kv_cache=job.kv_cache,
                                  decilm_dir=hf_dir if (hf_dir / "config.json").exists() else None)
        checks = onnx_halves.verify(job.bm.base, job.removed, job.tmp / "onnx")
        job.manifest["parity"]["onnx_logits"] = {**info, **checks["onnx_logits"], "export_seconds": _seconds(t)}
        if "onnx_decoder_with_past" in checks:
            job.manifest["parity"]["onnx_decoder_with_past"] = checks["onnx_decoder_with_past"]
        _record_providers(job)
        return
    job.pruned = job.pruned or remove_blocks(job.bm, job.removed)
    model = job.pruned.model
    (job.tmp / "onnx").mkdir()
    t = time.perf_counter()
    path = onnx_export.export_logits(model, job.tmp / "onnx")
    job.manifest["parity"]["onnx_logits"] = {**onnx_export.verify_logits(model, path), "export_seconds": _seconds(t)}
    if job.kv_cache:
        t = time.perf_counter()
        path = onnx_export.export_decoder_with_past(model, job.tmp / "onnx")
        job.manifest["parity"]["onnx_decoder_with_past"] = {**onnx_export.verify_decoder(model, path),
                                                            "export_seconds": _seconds(t)}
    _record_providers(job)


def _record_providers(job: _Job) -> None:
    """The onnxruntime providers that actually ran the ONNX checks (the manifest says which)."""
    job.manifest["onnxruntime_providers"] = sorted({p for k, v in job.manifest["parity"].items() if k.startswith("onnx")
                                                    for p in v.get("providers", [])})


def _write_elastic(job: _Job) -> None:
    from . import elastic
    from . import onnx as onnx_export

    bm, removed, tmp = job.plain or job.bm, job.removed, job.tmp  # healed or not, the graph is the plain model's
    t = time.perf_counter()
    work = tmp / ".elastic-work"
    (tmp / "onnx-elastic").mkdir()
    dense_graph = onnx_export.export_decoder_with_past(bm.model, work / "dense")
    target = tmp / "onnx-elastic" / elastic.ELASTIC_FILE
    info = elastic.make_elastic(dense_graph, target, bm.num_blocks, bm.block_path)
    info["export_seconds"] = _seconds(t)
    info.update(elastic.verify(bm, target, list(dict.fromkeys([(), tuple(removed), *map(tuple, job.elastic_sets)]))))
    if removed:
        pruned_graph = tmp / "onnx" / onnx_export.DECODER_FILE  # healed or not: the same modules, the same cost
        if not pruned_graph.exists():
            pruned_graph = onnx_export.export_decoder_with_past((job.pruned or remove_blocks(bm, removed)).model,
                                                                work / "pruned")
        info["speed"] = elastic.speed(target, dense_graph, pruned_graph, bm.num_blocks, removed, bm.head.weight.shape[0])
    shutil.rmtree(work, ignore_errors=True)
    if job.plain is not None:
        info["healed"] = False  # its masks, the exported set's included, were verified against the plain pruned model
    job.manifest["parity"]["onnx_elastic"] = info


def _write_genai(job: _Job) -> None:
    from . import genai

    for precision in genai.PRECISIONS:  # fp32 must match token for token; int4 states its agreement
        target = job.tmp / "genai" / precision
        target.parent.mkdir(exist_ok=True)
        info = genai.build(job.tmp / "hf", target, precision)
        info.update(genai.verify(job.pruned.model, job.bm.tokenizer, target, precision))
        job.manifest["parity"][f"genai_{precision}"] = info


def _write_gguf(job: _Job) -> None:
    from . import gguf

    (job.tmp / "gguf").mkdir()
    if isinstance(job.bm, UnitModel):  # halves removed: llama.cpp's `deci` layout, run by llama.cpp itself
        from . import gguf_deci

        target = job.tmp / "gguf" / f"model-{len(job.removed)}units-f32.gguf"
        info = gguf_deci.write(job.bm.base, job.removed, target)
        info.update(gguf_deci.verify(job.bm.base, job.removed, target))
        job.manifest["parity"]["gguf"] = info
        return
    if job.bm.meta.get("gguf"):  # the source GGUF's kept blocks, as they are
        source = Path(job.bm.meta["gguf"])
        target = job.tmp / "gguf" / (source.stem.replace(".", "-") + f"-pruned{len(job.removed)}.gguf")
        if not job.folded:
            info = gguf.write_pruned(source, job.removed, target)
            info.update(gguf.verify(job.bm, job.removed, target))
        else:  # the folded projections written at the source's type (or f16), every other tensor as it is
            replace = gguf.folded_tensors(job.bm, job.folded)
            info = gguf.write_pruned(source, job.removed, target, replace)
            reference = gguf.as_stored(job.bm, job.folded, replace, info["rewritten"])
            info.update(gguf.verify(reference, job.removed, target, unrounded=job.bm))
        job.manifest["parity"]["gguf"] = info
        return
    for outtype in ("f16", "q8_0"):  # written from the pruned checkpoint
        target = job.tmp / "gguf" / f"model-pruned{len(job.removed)}-{outtype}.gguf"
        info = gguf.write_from_hf(job.pruned.model, job.tmp / "hf", target, outtype)
        info.update(gguf.verify_from_hf(job.pruned.model, job.bm.tokenizer, target, outtype))
        job.manifest["parity"][f"gguf_{outtype}"] = info


@dataclass(frozen=True)
class Exporter:
    """One --format: the formats it is built from (`requires(bm)`: written first and shipped beside
    it), the folder it writes, what it checks (the manifest's parity entries), and `run`, which
    writes and then verifies it."""

    format: str
    folder: str
    requires: Callable[[BlockModel], tuple[str, ...]]
    writes: str
    verifies: str
    run: Callable[[_Job], None]


EXPORTERS = (  # in the order they run (a format's requirements come before it)
    Exporter("hf", "hf", lambda bm: (), "a transformers checkpoint without the blocks (safetensors, config, tokenizer)",
             "hf: logits and greedy tokens vs the masked dense model", _write_hf),
    Exporter("onnx", "onnx", lambda bm: (), "model.onnx (logits); with kv_cache the decoder with past too",
             "onnx_logits, onnx_decoder_with_past: onnxruntime vs PyTorch", _write_onnx),
    Exporter("onnx-elastic", "onnx-elastic", lambda bm: (), "one decoder with past whose `keep` input picks the blocks",
             "onnx_elastic: every keep mask vs the pruned PyTorch model, and its speed", _write_elastic),
    Exporter("genai", "genai", lambda bm: ("hf",), "ONNX Runtime GenAI models, fp32 and int4, built from hf/",
             "genai_fp32 (token for token), genai_int4 (its agreement)", _write_genai),
    Exporter("gguf", "gguf", lambda bm: () if bm.meta.get("gguf") else ("hf",),
             "the source GGUF's kept blocks, or f16 and q8_0 written from hf/",
             "gguf (or gguf_f16, gguf_q8_0): llama.cpp-format weights vs PyTorch", _write_gguf),
)
_BY_FORMAT = {e.format: e for e in EXPORTERS}
assert set(_BY_FORMAT) == set(FORMATS)


def export_model(bm: BlockModel, removed: Sequence[int], out: str | Path, formats: Sequence[str] = ("hf",),
                 kv_cache: bool = False, force: bool = False, elastic_sets: Sequence[Sequence[int]] = (),
                 healing=None) -> dict:
    """Export `bm` without the `removed` blocks into `out`, healed when `healing` (a fitted
    heal.Healing) is given; returns the manifest."""
    removed = sorted({int(b) for b in removed})
    formats = check_formats(formats)
    if bm.image_text:
        check_image_text_formats(formats, bm.name)
    if isinstance(bm, UnitModel):  # `removed` names halves
        remove_units(bm.base, removed, check_only=True)
        if not whole_blocks(removed):  # whole blocks by halves are exported as blocks (below)
            check_halves_formats(formats, removed)
    else:
        remove_blocks(bm, removed, check_only=True)  # bad ids or removing everything: ModelError, before any write
    maps = check_healing(bm, removed, healing) if healing is not None else None  # before any write too
    request = request_of(bm.name, removed, formats, kv_cache, healing, getattr(bm, "units", "blocks"))
    inputs = inputs_of(bm.name, bm.meta)
    shown = out
    out = check_out(out, request, force, inputs)
    plain, healed_runs, quality = None, None, None
    if healing is not None:  # the maps folded into a copy; the blocks are removed from it
        from . import quality as quality_mod

        plain = bm
        bm, healed_runs = hf.healed_copy(bm, healing, removed, maps)
        try:  # before anything is written: the folded model against plain deletion on held-out windows
            quality = quality_mod.check(plain, bm, removed, healing)
        except quality_mod.QualityError as exc:
            raise ExportFailed(str(exc)) from None
    if isinstance(bm, UnitModel) and whole_blocks(removed):  # whole blocks (both halves): today's plain checkpoint
        plain = plain.base if plain is not None else None
        bm, removed = bm.base, sorted({u // 2 for u in removed})
        maps = {u // 2: t for u, t in (maps or {}).items()} if maps else maps  # a half's fold is its block's
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
        manifest = {"model": bm.name, "removed": removed, "kept_blocks": blocks_left(bm, removed),
                    **({"units": bm.units, "removed_names": fmt_units(removed, bm.units)} if isinstance(bm, UnitModel)
                       else {}),
                    "formats": list(formats), "request": request, "parity": {}, "files": [], "versions": versions()}
        if healing is not None:
            manifest["healing"] = {**_healing_record(healing, healed_runs, formats), "quality": quality}
        needed = [r for f in formats for r in _BY_FORMAT[f].requires(bm) if r not in formats]
        if needed:  # built from the verified checkpoint, which ships beside them
            formats = [*dict.fromkeys(needed), *formats]
            manifest["formats"] = list(formats)
        job = _Job(bm, removed, tmp, kv_cache, elastic_sets, manifest, plain=plain, folded=tuple(sorted(maps or {})))
        for exporter in EXPORTERS:
            if exporter.format in formats:
                step = exporter.folder + "/"
                exporter.run(job)
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


def _healing_record(healing, runs: list[dict], formats: Sequence[str]) -> dict:
    """The manifest's `healing`: the fit (method, ridge, calibration, tokens) and each removed run:
    folded into which tensor, or plain and why."""
    d = healing.describe()
    record = {"method": d.get("method"), "ridge": d.get("ridge"), "calibration": d.get("calibration"),
              "tokens": d.get("tokens"), "runs": runs}
    if "onnx-elastic" in formats:
        record["elastic"] = ("plain: onnx-elastic's skip branches pass the residual stream through unchanged (a healed "
                             "skip would need one map per block and run length in the graph); its masks are the plain "
                             "model's and are verified against it")
    return record


def _where(exc: OSError, tmp: Path) -> str:
    """'hf/model.safetensors: ' for an error on a file of the export being written (else its path)."""
    name = exc.filename
    if not name:
        return ""
    try:
        return f"{Path(name).relative_to(tmp)}: "
    except ValueError:
        return f"{name}: "
