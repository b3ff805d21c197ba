"""The held-out check of a run's advice: `blockprune validate RUN [--samples N]` (`score_held_out`).

(Not the option checks of `search`, nor the entry point `api.validate` that loads the model and
rewrites the report around this.)

A recommendation chosen as the best of many sets on one sample subset is optimistic on that
subset (the winner's curse). This re-scores the run's recommended sets and the dense model on
samples of each task that the search never used (the run's sample ids are excluded; the rest are
drawn with their own seeded order), computes their drops with the same ranking scores and their own paired-bootstrap intervals, and
writes `validation.json`. The report then asks two questions of each recommendation: does its rule
hold on the held-out samples (confirmed, contradicted, or undecided: advice.held_out_verdict), and
does a held-out drop differ from the search's by more than the two samples' noise allows (the
search's samples were lucky or unlucky: stats.shift)?

Perplexity and KL tasks (whose text's perplexity is kept) are also checked outside the engine: the blocks are deleted from a copy of the
model (`models.remove_blocks`, as the export does) and each held-out window runs through plain
transformers; the perplexity it gives is stored beside the engine's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..analysis import advice, stats
from .. import models, report
from ..engine import Engine
from ..tasks.kinds import get_kind
from ..runs.outputs import VALIDATION_FILE
from ..runs.store import Store, atomic_write_json, refuse_changed_content
from ..tasks import load_task, parse_spec


class HeldOutError(Exception):
    """A run whose advice cannot be checked on held-out samples (one-line message)."""


def _set_key(removed) -> str:
    return ",".join(str(int(b)) for b in removed)


def recommended_sets(directory: str | Path, tolerance: float, analysis: dict | None = None,
                     recs: dict | None = None, store: Store | None = None) -> tuple[dict, list[tuple[int, ...]]]:
    a = analysis if analysis is not None else report.build_analysis(directory, store=store)
    recs = recs if recs is not None else advice.recommendations(advice.by_k(a["candidates"]), tolerance)
    sets = [tuple(recs[level]["removed"]) for level in advice.LEVELS if recs[level]["k"]]
    from ..report import budgets as budget_report  # the best set per --budget is checked too

    run_info = (store if store is not None else Store.open_existing(Path(directory))).run_info
    sets += budget_report.budget_sets(budget_report.of_run(Path(directory), run_info, a))
    return a, list(dict.fromkeys(sets))


# a healed run's second text: the first of these its calibration text is not (nor another edition of)
UNSEEN_TEXTS = ("shakespeare/macbeth", "shakespeare/hamlet", "shakespeare/othello")
UNSEEN_WINDOWS = 24


def healed_copy(bm: models.BlockModel, removed, healing) -> models.BlockModel:
    """The model with `removed` deleted after its runs' maps are folded in (as the export writes it)."""
    import copy

    from ..healing import heal

    folded = copy.deepcopy(bm)
    heal.fold_into(folded, healing.maps_for(removed))
    return models.prune(folded, removed)


def run_healing(directory: Path, store: Store, bm: models.BlockModel):
    """The healing a healed run was searched with, refitted from run.json's record (None for a plain run)."""
    record = store.run_info["settings"].get("heal")
    if not record:
        return None
    from ..healing import calibration, heal

    cal = calibration.from_record(record["calibration"], bm.tokenizer, bm.eos_token_id)
    settings = store.run_info["settings"]
    longest = max([len(r["blocks"]) for x in settings.get("sets", []) for r in heal.runs_of(x)] or
                  [settings.get("max_remove", 1)])
    healing = heal.Healing.fit(bm, cal.windows, longest, record["ridge"], cal.describe(), skip=cal.skip)
    healing.calibration_windows = cal
    return healing


@torch.inference_mode()
def plain_perplexity(bm: models.BlockModel, removed, windows: list[tuple[int, ...]], score_from: int = 1,
                     healing=None) -> float:
    """Perplexity of the model with `removed` deleted (healed first with `healing`), one plain
    forward per window (tokens before `score_from` are context: the first one, after any leading
    special tokens)."""
    if healing is not None and removed:
        pruned = healed_copy(bm, removed, healing)
    else:
        pruned = models.prune(bm, removed) if removed else bm
    nll, count = 0.0, 0
    for w in windows:
        ids = torch.tensor([w], device=bm.device)
        logits = pruned.model(input_ids=ids).logits[0, score_from - 1 : -1].double()
        nll -= torch.log_softmax(logits, -1).gather(1, ids[0, score_from:, None]).sum().item()
        count += len(w) - score_from
    return float(np.exp(nll / count))


def score_held_out(directory: str | Path, bm: models.BlockModel, samples: int | None = None,
                 tolerance: float = advice.DEFAULT_TOLERANCE, plain_check: bool = True,
                 analysis: dict | None = None, store: Store | None = None, recs: dict | None = None,
                 healing=None) -> dict:
    """Score the recommendations and dense on held-out samples; write DIR/validation.json.
    `analysis`, `store`, `recs` (the recommendations at `tolerance`): the run's, when the caller has them.
    A healed run's sets are scored healed (`healing`: the search's; else refitted from run.json), its
    held-out windows exclude the calibration's, and plain transformers also measures the folded
    model on a second text the healing never saw (unseen_source), healed and plain."""
    directory = Path(directory)
    store = store if store is not None else Store.open_existing(directory)
    info_all = store.run_info
    settings = info_all["settings"]
    if settings["num_blocks"] != bm.block_count:
        raise HeldOutError(f"{directory} was searched on a model with {settings['num_blocks']} blocks, "
                                 f"this one has {bm.block_count}")
    if settings.get("units", "blocks") != getattr(bm, "units", "blocks"):
        bm = models.unit_model(bm, settings["units"])  # the run's units: its sets index halves
    a, sets = recommended_sets(directory, tolerance, analysis, recs, store)
    if not sets:
        raise HeldOutError(f"{directory}: no recommendation at tolerance {tolerance:.1%}; nothing to validate")
    if healing is None:
        healing = run_healing(directory, store, bm)
    cal = (settings.get("heal") or {}).get("calibration") or {}
    engine = Engine(bm, heal=healing)
    keys = [()] + sets
    masks = np.ones((len(keys), bm.num_blocks), dtype=bool)
    for i, s in enumerate(keys):
        masks[i, list(s)] = False
    out = {"tolerance": tolerance, "seed": settings["seed"], "tasks": {}, "dense": {}, "sets": {}}
    per_set = {k: {"removed": list(k), "drops": {}, "metric_drops": {}, "values": {}, "task_ci95": {}, "task_se": {}}
               for k in sets}
    rng = np.random.default_rng(settings["seed"])
    replicates = a.get("replicates", stats.DEFAULT_REPLICATES)
    task_reps: dict[tuple, list[np.ndarray]] = {k: [] for k in sets}
    for name, info in settings["tasks"].items():
        spec = str(parse_spec(info["spec"]).without_count())  # without its #N (still escaped)
        n = samples or info["n"]
        exclude = list(info["sample_ids"])
        if cal and _text_source(info["spec"]) == cal.get("spec"):  # never a window the maps were fitted on
            exclude += cal["sample_ids"]
        exclude += ((cal.get("tasks") or {}).get(name) or {}).get("sample_ids", [])  # nor a sample
        task = load_task(spec, bm.tokenizer, bm.eos_token_id, n, settings["seed"], settings["ppl_window"],
                         processor=bm.processor,
                         exclude=exclude)
        if task.name != name:
            raise HeldOutError(f"task {spec} now loads as {task.name}, the run calls it {name}")
        # the held-out samples come from the data the search used (its whole source is hashed)
        refuse_changed_content(directory, info_all.get("content"),
                               {"tasks": {name: getattr(task, "source_hash", None)}}, "validate")
        kl = get_kind(task.kind).needs_dense
        if hasattr(task, "prepare"):  # generative: the dense continuation, then every set decodes
            task.prepare(engine)
        res = engine.score(task.requests, masks, kl=kl)
        if get_kind(task.kind).generates:
            per_sample = task.per_sample(res.logprob, res.greedy, res.kl,
                                         generated=task.generate(engine, masks, range(task.n)))
        else:
            per_sample = task.per_sample(res.logprob, res.greedy, res.kl)
        score, metric = a["rank_by"][name], a["tasks"][name]["shown"]
        arrays = {sc: stats.per_sample_arrays(per_sample, sc) for sc in {score, metric}}
        values = task.value(per_sample)
        out["tasks"][name] = {"n": task.n, "sample_ids": task.sample_ids, "score": score, "metric": metric}
        out["dense"][name] = {"value": float(values[0])}
        for i, k in enumerate(sets, 1):
            drop = {sc: stats.point_drop(sc, (num[0], den[0]), (num[i], den[i])) for sc, (num, den) in arrays.items()}
            per_set[k]["drops"][name] = drop[score]
            per_set[k]["metric_drops"][name] = drop[metric]
            per_set[k]["values"][name] = float(values[i])
        # the held-out drops' own paired bootstrap, as the search's (stats.bootstrap)
        num, den = arrays[score]
        reps = stats.drop_replicates(score, (num[0], den[0]), (num[1:], den[1:]),
                                     stats.resample_counts(task.n, replicates, rng))
        for i, k in enumerate(sets):
            per_set[k]["task_ci95"][name] = list(stats.interval(reps[i]))
            per_set[k]["task_se"][name] = float(np.std(reps[i], ddof=1))
            task_reps[k].append(reps[i])
        if plain_check and get_kind(task.kind).text_windows:
            windows = [r.tokens for r in task.requests]
            start = task.requests[0].score_from
            out["dense"][name]["plain_perplexity"] = plain_perplexity(bm, (), windows, start)
            for k in sets:
                per_set[k].setdefault("plain_perplexity", {})[name] = plain_perplexity(bm, k, windows, start, healing)
                if healing is not None:  # the same set without its maps, for the healing's gain
                    per_set[k].setdefault("unhealed_perplexity", {})[name] = plain_perplexity(bm, k, windows, start)
    if healing is not None and plain_check:
        out["unseen_text"] = unseen_text(bm, sets, healing, settings, cal)
    for k in sets:
        per_set[k]["mean_drop"] = float(np.mean(list(per_set[k]["drops"].values())))
        mean_reps = np.mean(task_reps[k], axis=0)
        per_set[k].update(ci95=list(stats.interval(mean_reps)), se=float(np.std(mean_reps, ddof=1)),
                          upper95=stats.upper(mean_reps, 0.95), upper80=stats.upper(mean_reps, 0.80))
        out["sets"][_set_key(k)] = per_set[k]
    atomic_write_json(directory / VALIDATION_FILE, out)
    return out


def _text_source(spec: str) -> str | None:
    from ..healing.calibration import text_source

    return text_source(spec)


def unseen_source(bm: models.BlockModel, cal: dict, window: int) -> str:
    """The first of UNSEEN_TEXTS the healing never saw: not its calibration text, nor another
    edition of it (calibration.shared_words)."""
    from ..healing import calibration

    spec = cal.get("spec")
    if not spec:
        return UNSEEN_TEXTS[0]
    fitted = calibration.source_text(spec, bm.tokenizer, bm.eos_token_id, window)
    for source in UNSEEN_TEXTS:
        if source != spec and calibration.shared_words(
                calibration.source_text(source, bm.tokenizer, bm.eos_token_id, window), fitted) \
                <= calibration.SHARED_WORDS_LIMIT:
            return source
    raise HeldOutError(f"every text of {', '.join(UNSEEN_TEXTS)} shares its words with the calibration {spec}")


def unseen_text(bm: models.BlockModel, sets, healing, settings: dict, cal: dict) -> dict:
    """Perplexity by plain transformers on a text the healing never saw, dense / healed / plain per set."""
    source = unseen_source(bm, cal, settings["ppl_window"])
    used = {_text_source(info["spec"]) for info in settings["tasks"].values()}
    task = load_task(f"ppl:{source}", bm.tokenizer, bm.eos_token_id, UNSEEN_WINDOWS, settings["seed"] + 1,
                     settings["ppl_window"])
    windows = [r.tokens for r in task.requests]
    start = task.requests[0].score_from
    out = {"spec": source, "windows": task.n, "searched_on": source in used,
           "dense": plain_perplexity(bm, (), windows, start), "sets": {}}
    for k in sets:
        out["sets"][_set_key(k)] = {"healed": plain_perplexity(bm, k, windows, start, healing),
                                    "plain": plain_perplexity(bm, k, windows, start)}
    return out


validate_run = score_held_out  # its name before #22
