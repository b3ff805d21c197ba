"""The Python API behind the CLI: load, validate, search, persist, analyse."""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from . import evolve, models, report, rundir, scores, search, sources, versions
from .engine import Engine
from .store import RUN_FILE, Store, StoreError, refuse_changed_content
from .tasks import DEFAULT_PPL_WINDOW, absolute_spec, check_spec, load_task, split_count

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The embedded default: a real model and real data from package registries (see blockprune.data).
# The KL task ranks by KL to the dense model and shows Hamlet's perplexity beside it. Tolerance 10%:
# the KL task reads it in nats/token, and on SmolLM2 no single block costs less than about 0.09
# nats/token of KL, so at 5% no removal could pass its per-task guard.
DEMO = {
    "model": "smollm2-135m",
    "tasks": [
        "kl:shakespeare/hamlet#16",
        "bigbench:general_knowledge#30",
        "bigbench:emoji_movie#40",
    ],
    "method": "beam",
    "beam_width": 2,
    "max_remove": 2,
    "samples": None,
    "ppl_window": 64,
    "tolerance": 0.10,
    "held_out": True,
    "seed": 0,
    "export_formats": ("hf",),  # ONNX: `blockprune export --format onnx` (about 3 more minutes here)
}


@dataclass
class SearchOutput:
    out: Path
    recommendations: dict
    result: search.SearchResult
    seconds: float


def run_search(
    model: str,
    tasks: Sequence[str],
    out: str | Path,
    method: str = "beam",
    beam_width: int = 3,
    max_remove: int = 3,
    samples: int | None = 50,
    seed: int = 0,
    ppl_window: int = DEFAULT_PPL_WINDOW,
    protected: Sequence[int] = (),
    min_depth: int = 1,
    max_candidates: int = 5000,
    candidates_per_pass: int = 256,
    device: str | None = None,
    dtype: str = "auto",
    budget_gb: float | None = None,
    progress: bool = True,
    lang: str = "en",
    tolerance: float = report.DEFAULT_TOLERANCE,
    export_formats: Sequence[str] = (),
    kv_cache: bool = True,
    exact: bool = False,
    population: int = 8,
    generations: int = 3,
    offspring: int = 16,
    latency: bool = True,
    rank_by: str | None = None,
    held_out: bool = False,
    held_out_samples: int | None = None,
    sets: Sequence[Sequence[int]] = (),
    workers: int | None = None,
    ray_address: str | None = None,
) -> SearchOutput:
    """Search which blocks of `model` to remove, scoring every candidate on every task.

    Beam, greedy and evolutionary steps race unless `exact` (see search.Racing): sets that cannot
    reach the beam are dropped after a few samples, the rest are scored on every sample.
    Results go to `out` as they complete; calling again with the same arguments resumes. At the
    end the report is written; with `held_out` the recommendations are re-scored on samples the
    search did not use (`blockprune validate`) and the report shows both; with `export_formats`
    the balanced recommendation is exported to `out/export`. `rank_by`: see scores.resolve_rank_by.
    `workers` / `ray_address`: score on Ray workers, one model replica each (blockprune.cluster);
    the scores and the store are the same as in one process.
    """
    start = time.perf_counter()
    # every option is checked before the model is loaded or anything is written
    if not tasks:
        raise search.SearchError("give at least one --task")
    dtype = resolve_dtype(dtype, device)
    if samples is not None and samples < 1:
        raise search.SearchError("--samples must be at least 1")
    if min(population, generations, offspring) < 1:
        raise search.SearchError("--population, --generations and --offspring must be at least 1")
    if candidates_per_pass < 1:
        raise search.SearchError("--candidates-per-pass must be at least 1")
    if ppl_window < 2:
        raise search.SearchError("--ppl-window must be at least 2 tokens")
    if method not in search.METHODS:
        raise search.SearchError(f"unknown method {method!r}: choose one of {', '.join(search.METHODS)}")
    sets = [tuple(sorted(int(b) for b in s)) for s in sets]
    if method == "given" and not sets:
        raise search.SearchError("--method given needs --sets '17,18,19;4,13' or --sets-file FILE")
    if sets and method != "given":
        raise search.SearchError(f"--sets are scored by --method given, not {method}")
    for spec in tasks:
        check_spec(spec)
    if held_out and samples is None:  # every sample searched: nothing could be held out, after the whole search
        every = next((spec for spec in tasks if split_count(spec)[1] is None), None)
        if every is not None:
            raise search.SearchError(f"--held-out re-scores samples the search did not use, but --samples 0 uses every "
                                     f"sample of {every}; give --samples N (or {every}#N), or drop --held-out")
    if budget_gb is not None and not (isinstance(budget_gb, (int, float)) and math.isfinite(budget_gb) and budget_gb > 0):
        raise search.SearchError(f"--budget-gb must be a positive number of GiB, not {budget_gb}")
    report.check_options(lang, tolerance)
    scores.check_rank_by(rank_by)  # score names, before anything is loaded
    search.check_rank_by_entries(rank_by)
    if export_formats:
        from .export import check_formats

        check_formats(export_formats)
    models.check_device(device)
    cluster_opts = None
    if workers is not None or ray_address:
        from . import cluster

        cluster.check_options(workers, ray_address)
        cluster_opts = {"workers": workers, "address": ray_address}
    inputs = rundir.search_inputs(model, tasks)
    out = rundir.claim(out, "run", inputs=inputs)  # resolved; never a user's directory or an input
    _refuse_old_store(out)
    if export_formats:  # OUT/export: new, or the run's own earlier export (never a user's files in it)
        from .export import MANIFEST

        rundir.claim(out / "export", "export", inputs=inputs, force=(out / "export" / MANIFEST).exists(),
                     what="the run's export folder")
    budget = max(1, int(budget_gb * 2**30)) if budget_gb else None
    with rundir.lock(out, "search in"), _pool(cluster_opts, model, dtype, device, budget, candidates_per_pass,
                                              progress) as pool:
        return _search_locked(
            model, tasks, out, method, beam_width, max_remove, samples, seed, ppl_window, protected, min_depth,
            max_candidates, candidates_per_pass, device, dtype, budget, progress, lang, tolerance, export_formats,
            kv_cache, exact, population, generations, offspring, latency, rank_by, held_out, held_out_samples, start,
            sets, pool)


def resolve_dtype(dtype: str, device) -> str:
    """--dtype: "auto" is bfloat16 on CUDA (tensor cores in the blocks and the scoring head; fp32
    would run the head on CUDA cores) and float32 elsewhere; a named dtype is checked."""
    if dtype == "auto":
        return "bfloat16" if sources.check_device(device).type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise search.SearchError(f"unknown dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return dtype


def _search_locked(model, tasks, out, method, beam_width, max_remove, samples, seed, ppl_window, protected, min_depth,
                   max_candidates, candidates_per_pass, device, dtype, budget, progress, lang, tolerance,
                   export_formats, kv_cache, exact, population, generations, offspring, latency, rank_by, held_out,
                   held_out_samples, start, sets, pool=None) -> SearchOutput:
    model_hash = sources.content_hash(model)
    _refuse_changed_model(out, model_hash)  # before minutes of loading a model the run was not scored on
    bm = models.load(model, device=device, dtype=DTYPES[dtype])
    model_hash = model_hash or sources.content_hash(model)  # an embedded model exists once loaded
    search.validate(bm.num_blocks, max_remove, protected, min_depth, method, beam_width, max_candidates)
    search.check_sets(sets, bm.num_blocks, protected, min_depth)
    loaded = [load_task(spec, bm.tokenizer, bm.eos_token_id, samples, seed, ppl_window) for spec in tasks]
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise search.SearchError(f"duplicate task names: {', '.join(names)}")
    for t in loaded:
        check_length(t, bm)
        check_tokens(t, bm)
        if held_out and t.n >= t.available:  # refused now, not after the whole search
            raise search.SearchError(f"--held-out: {t.name} has {t.available} samples and the search uses all of them, "
                                     "so none is left to hold out; lower --samples (or SPEC#N), or drop --held-out")
    try:
        ranking = scores.resolve_rank_by(rank_by, {t.name: t.kind for t in loaded})
    except scores.ScoreError as exc:
        raise search.SearchError(str(exc)) from None
    settings = {
        "model": sources.absolute_model(model),  # the same model from any working directory
        "num_blocks": bm.num_blocks,
        "dtype": dtype,
        "seed": seed,
        "samples": samples,
        "ppl_window": ppl_window,
        "method": method,
        "beam_width": beam_width,
        "max_remove": max_remove,
        "protected": sorted(protected),
        "min_depth": min_depth,
        "racing": not exact,
        "rank_by": ranking,
        **({"evolution": {"population": population, "generations": generations, "offspring": offspring}}
           if method == "evolutionary" else {}),
        **({"sets": [list(x) for x in sorted(set(sets), key=lambda x: (len(x), x))]} if method == "given" else {}),
        # leading special tokens (BOS) every request starts with; absent when the tokenizer adds none
        **({"prefix_tokens": loaded[0].prefix} if loaded[0].prefix else {}),
        "tasks": {
            t.name: {"spec": absolute_spec(spec), "kind": t.kind, "metric": t.metric, "higher_is_better": t.higher_is_better,
                     "n": t.n, "available": t.available, "sample_ids": t.sample_ids}
            for spec, t in zip(tasks, loaded)
        },
    }
    _keep_stored_spelling(Path(out), settings)
    content = {"model": model_hash, "tasks": {t.name: t.source_hash for t in loaded if getattr(t, "source_hash", None)}}
    store = Store(Path(out), settings, extra={"versions": versions(), "device": str(bm.device), "tolerance": tolerance,
                                              "prefix_tokens": loaded[0].prefix}, content=content)
    engine = Engine(bm, budget_bytes=budget)
    store.set_info("engine", engine.info())  # fused runner or why not, packing limit: how the scores were made
    if pool is not None:
        _attach_pool(pool, engine, loaded, store)
    evaluator = search.Evaluator(engine, loaded, store, batch_candidates=candidates_per_pass, progress=progress,
                                 racing=None if exact else search.Racing(), rank_by=ranking, runner=pool)
    result = search.run(method, evaluator, max_remove=max_remove, beam_width=beam_width, protected=protected,
                        min_depth=min_depth, max_candidates=max_candidates, seed=seed,
                        evolution=evolve.Settings(population=population, generations=generations, offspring=offspring),
                        sets=sets)
    if pool is not None:  # the replicas' memory back before latency, held-out and export
        pool.close()
    store.finish()
    analysis = report.build_analysis(out)
    for note in analysis.get("warnings", []):
        print(f"blockprune: warning: {note}", file=sys.stderr)
    if latency:  # measured speedups of the report's candidates (DIR/latency.json), before the report reads them
        _bench_latency(out, bm, tolerance, progress, analysis)
    if held_out:
        from . import heldout

        if progress:
            print("blockprune: re-scoring the recommendations on held-out samples", file=sys.stderr, flush=True)
        heldout.score_held_out(out, bm, held_out_samples, tolerance, analysis=analysis)
    recs = report.write_report(out, lang=lang, tolerance=tolerance, analysis=analysis)
    balanced = recs["recommendations"]["balanced"]
    if export_formats and not balanced["k"]:  # said, never a silent no-op
        print(f"blockprune: warning: nothing exported: no balanced recommendation at tolerance {tolerance:.1%} (no set "
              "removes a block within it); see the report, or raise --tolerance", file=sys.stderr)
    if export_formats and balanced["k"]:
        from .export import MANIFEST

        target = Path(out) / "export"  # the run's own export of an earlier balanced set may be replaced
        levels = [r["removed"] for r in recs["recommendations"].values() if isinstance(r, dict) and r.get("removed")]
        export(bm, balanced["removed"], target, formats=export_formats, kv_cache=kv_cache,
               force=(target / MANIFEST).exists(), elastic_sets=levels)
    return SearchOutput(Path(out), recs, result, time.perf_counter() - start)


@contextmanager
def _pool(opts: dict | None, model: str, dtype: str, device, budget, batch_candidates: int, progress: bool):
    """Ray workers for the search (None without --workers / --ray-address), started before this
    process loads the model so they load theirs meanwhile; stopped however the search ends."""
    if opts is None:
        yield None
        return
    from . import cluster

    if progress:
        print(f"blockprune: starting {opts['workers'] or 'one per GPU (or machine) of the cluster:'} Ray worker(s)"
              f"{' at ' + opts['address'] if opts['address'] else ''}", file=sys.stderr, flush=True)
    pool = cluster.Pool(model, dtype, workers=opts["workers"], address=opts["address"], device=device,
                        budget_bytes=budget, batch_candidates=batch_candidates)
    try:
        yield pool
    finally:
        pool.close()


def _attach_pool(pool, engine: Engine, tasks, store: Store) -> None:
    """Check the replicas against `engine` and hand them the tasks; what the workers do goes into
    run.json's "cluster" list (one entry per session: a resumed run keeps the earlier sessions')."""
    pool.setup(engine, tasks)
    sessions = list(store.run_info.get("cluster", []))
    index = len(sessions)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def record(summary: dict) -> None:
        sessions[index:] = [{"started": started, **summary}]
        store.set_info("cluster", sessions)

    pool.on_step = record
    record(pool.summary())


def check_tokens(task, bm: models.BlockModel) -> None:
    """Refuse token ids the model has no embedding row for (a tokenizer larger than the model's vocabulary)."""
    vocab = bm.head.weight.shape[0]
    for r, req in enumerate(task.requests):
        if req.tokens and max(req.tokens) >= vocab:
            sample = task.sample_ids[task.request_sample[r]] if task.request_sample else r
            raise search.SearchError(f"{task.name}: sample {sample} has token id {max(req.tokens)}, but the model's "
                                     f"vocabulary has {vocab} entries (its tokenizer is larger than its embedding)")


def _keep_stored_spelling(out: Path, settings: dict) -> None:
    """A run written before run.json kept absolute paths resumes where its relative --model or task
    path names the same file from here (its content hashes are recorded on this resume)."""
    import json

    try:
        stored = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))["settings"]
        old_tasks = stored.get("tasks") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    old = stored.get("model")
    if isinstance(old, str) and old != settings["model"] and sources.absolute_model(old) == settings["model"]:
        settings["model"] = old
    for name, task in settings["tasks"].items():
        spec = old_tasks.get(name, {}).get("spec") if isinstance(old_tasks.get(name), dict) else None
        if isinstance(spec, str) and spec != task["spec"] and absolute_spec(spec) == task["spec"]:
            task["spec"] = spec


def _refuse_changed_model(out: Path, model_hash: str | None) -> None:
    """A run whose model files changed since it was scored is refused before the model loads."""
    import json

    try:
        stored = json.loads((Path(out) / RUN_FILE).read_text(encoding="utf-8")).get("content")
    except (OSError, ValueError, AttributeError):
        return  # no run yet (or corrupt: the store says so)
    refuse_changed_content(Path(out), stored, {"model": model_hash}, "resume")


def check_length(task, bm: models.BlockModel) -> None:
    """Refuse a request longer than the model's positions (it would run for minutes on garbage)."""
    limit = bm.max_positions
    if not limit or not task.requests:
        return
    longest = max(range(len(task.requests)), key=lambda r: len(task.requests[r].tokens))
    n = len(task.requests[longest].tokens)
    if n > limit:
        sample = task.sample_ids[task.request_sample[longest]] if hasattr(task, "request_sample") else longest
        raise search.SearchError(f"{task.name}: sample {sample} is {n} tokens long, more than the model's {limit} "
                                 "positions; shorten it (or lower --ppl-window)")


def _refuse_old_store(out: Path) -> None:
    """A run directory written before blockprune kept per-sample signals cannot be resumed; a
    directory of other files is not a run directory (nothing in it may be overwritten)."""
    import json

    from .store import RESULTS_FILE

    if out.is_dir() and not (out / RUN_FILE).exists() and not (out / RESULTS_FILE).exists():
        stray = sorted(p.name for p in out.iterdir() if p.name != rundir.LOCK_FILE)
        if stray:
            raise StoreError(f"--out {out} is not empty and is not a blockprune run directory "
                             f"(holds {', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}); "
                             "give a new or empty directory")

    try:
        settings = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # none yet (or corrupt: the store says so)
    if isinstance(settings, dict) and "rank_by" not in settings:
        raise StoreError(f"{out} was written by an older blockprune (no per-choice log-probs or ranking scores); "
                         f"`blockprune report {out}` still reads it, but resuming needs a new --out directory")


def _bench_latency(out: str | Path, bm: models.BlockModel, tolerance: float, progress: bool, analysis: dict) -> None:
    """Latency is an extra: a failure is reported on one line and the search's report still written."""
    from . import latency

    try:
        latency.bench_run(out, bm, tolerance, progress=progress, analysis=analysis)
    except Exception as exc:  # noqa: BLE001
        print(f"blockprune: warning: latency not measured: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)


def export(model: str | models.BlockModel, removed: Sequence[int], out: str | Path, formats: Sequence[str] = ("hf",),
           kv_cache: bool = False, device: str | None = None, dtype: str = "float32", force: bool = False,
           elastic_sets: Sequence[Sequence[int]] = ()) -> dict:
    """Write `model` without the `removed` blocks as a verified HF checkpoint and/or ONNX; returns the manifest.
    `out` must be new, empty or an export of the same request unless `force` (never a search run)."""
    from .export import check_formats, check_out, export_model, inputs_of, request_of

    formats = check_formats(formats)
    if dtype not in DTYPES:
        raise search.SearchError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if not isinstance(model, models.BlockModel):
        models.check_device(device)
        check_out(out, request_of(model, removed, formats, kv_cache), force, inputs_of(model))  # before the model loads
    bm = model if isinstance(model, models.BlockModel) else models.load(model, device=device, dtype=DTYPES[dtype])
    return export_model(bm, removed, out, formats=formats, kv_cache=kv_cache, force=force, elastic_sets=elastic_sets)


def validate(directory: str | Path, samples: int | None = None, device: str | None = None, lang: str = "en",
             tolerance: float | None = None) -> dict:
    """Re-score a run's recommendations on held-out samples (validation.json) and rewrite its report.
    `tolerance` None: the one the run was searched with."""
    from . import heldout

    store = Store.open_existing(Path(directory))
    tolerance = report.run_tolerance(directory) if tolerance is None else tolerance
    report.check_options(lang, tolerance)
    if samples is not None and samples < 1:
        raise search.SearchError("--samples must be at least 1")
    models.check_device(device)
    settings = store.run_info["settings"]
    # the run's own model (an absolute path in run.json), unchanged since: before it loads
    refuse_changed_content(Path(directory), store.run_info.get("content"),
                           {"model": sources.content_hash(settings["model"])}, "validate")
    with rundir.lock(directory, "validate"):
        bm = models.load(settings["model"], device=device, dtype=DTYPES[settings.get("dtype", "float32")])
        result = heldout.score_held_out(directory, bm, samples, tolerance)
        report.write_report(directory, lang=lang, tolerance=tolerance)
    return result


def write_report(directory: str | Path, lang: str = "en", tolerance: float | None = None) -> dict:
    """Regenerate a run's report from its store; refused while another process writes the run."""
    Store.open_existing(Path(directory))  # a run directory, before anything is locked or written
    with rundir.lock(directory, "report on"):
        return report.write_report(directory, lang=lang, tolerance=tolerance)


def prepare_demo() -> None:
    """Download the embedded default's packages, extract the demo's tasks, convert the model."""
    from . import data

    try:
        data.fetch_all()
        data.bigbench_prefetch([spec.split(":", 1)[1].split("#")[0] for spec in DEMO["tasks"] if spec.startswith("bigbench:")])
        for spec in DEMO["tasks"]:
            if spec.startswith(("ppl:shakespeare/", "kl:shakespeare/")):
                data.shakespeare_text(spec.split("/", 1)[1].split("#")[0])
        models.resolve(DEMO["model"])
    except OSError as exc:
        raise data.DataError(f"cannot write the cache {data.cache_dir()}: {exc.strerror or exc} "
                             "(set BLOCKPRUNE_CACHE to a writable directory)") from None


def run_demo(out: str | Path = "runs/demo", **overrides) -> SearchOutput:
    """The embedded default: SmolLM2-135M on Shakespeare and three BIG-bench tasks."""
    settings = {**DEMO, **overrides}
    return run_search(out=out, **settings)
