"""Search over removal sets. Sees only scores: `Evaluator.evaluate(sets)` -> mean drop per set.

Methods (every candidate is scored on every task):
* sensitivity: every single block.
* greedy: grow one set, each step adding the block whose removal costs least.
* beam: keep the W best sets of each size; children are the beam's sets plus one block,
  set-equivalent children evaluated once.
* exhaustive: every set of size 1..K (refused above a candidate limit).
* evolutionary: a population per size, mutated by swapping blocks (blockprune.search.evolve).
* given: exactly the sets a user names (a paper's set, another tool's answer), and dense.
* block-influence / angular: one-shot baselines from the dense model's hidden states, one set per
  size, then scored like the others (blockprune.search.oneshot).
Beam, greedy and evolutionary steps race (`Racing`): candidates that cannot reach the beam are
dropped after a few samples; what is kept is scored on every sample of every task.
Ties in mean drop are broken by the sorted block ids, so a search is deterministic. A set's drop
on a task is the drop of the task's ranking score (`--rank-by`, see blockprune.tasks.scores: by default
the lowest-variance faithful one), so ranking and racing use every sample's full signal.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

from . import evolve, oneshot
from .evaluator import Evaluated, Evaluator, Racing, rank
from ..runs.store import key_of

__all__ = ["METHODS", "SearchError", "SearchResult", "Evaluated", "Evaluator", "Racing", "run", "validate",
           "parse_sets", "read_sets_file", "check_sets", "check_rank_by_entries"]

METHODS = ("sensitivity", "greedy", "beam", "exhaustive", "evolutionary", "block-influence", "angular", "given")


class SearchError(Exception):
    """Search settings that cannot work (one-line message)."""


@dataclass
class SearchResult:
    method: str
    steps: list[list[tuple[int, ...]]] = field(default_factory=list)  # kept sets per size (beam/greedy)
    evaluated: list[tuple[int, ...]] = field(default_factory=list)


def parse_sets(text: str, units: str = "blocks") -> list[tuple[int, ...]]:
    """'17,18,19;4,13' (or one set per line) -> [(17, 18, 19), (4, 13)]; with halves as units
    '17a,22a;19m' -> [(34, 44), (39,)] (blockprune.models.units); syntax only."""
    from ..runs.names import parse_unit

    sets = []
    for part in text.replace("\n", ";").split(";"):
        part = part.split("#", 1)[0].strip()
        if not part:
            continue
        try:
            ids = [parse_unit(x, units, None) for x in part.replace(" ", ",").split(",") if x.strip()]
        except ValueError as exc:
            what = "block ids" if units == "blocks" else "halves (17a, 17m)"
            raise SearchError(f"--sets: {part!r} is not a comma-separated list of {what}: {exc}") from None
        if not ids:
            continue
        if len(set(ids)) != len(ids):
            raise SearchError(f"--sets: {part!r} names a {'block' if units == 'blocks' else 'unit'} twice")
        sets.append(key_of(ids))
    if not sets:
        raise SearchError("--sets: no set given (e.g. --sets '17,18,19;4,13')")
    return list(dict.fromkeys(sets))


SETS_FILE_LIMIT = 16 * 2**20  # bytes: far more than any list of sets or recommendations file


def read_sets_file(path: str, units: str = "blocks") -> list[tuple[int, ...]]:
    """A text file (one set per line, `#` comments) or another run's pruning_recommendations.json
    (its recommendations and the best set per k). At most SETS_FILE_LIMIT bytes are read
    (`/dev/zero` or a model file given by mistake is refused, not read whole)."""
    import json
    from pathlib import Path

    try:
        with open(Path(path).expanduser(), "rb") as f:
            raw = f.read(SETS_FILE_LIMIT + 1)
        if len(raw) > SETS_FILE_LIMIT:
            raise SearchError(f"--sets-file {path}: more than {SETS_FILE_LIMIT // 2**20} MiB, so not a list of sets")
        if b"\0" in raw:
            raise SearchError(f"--sets-file {path}: holds NUL bytes, so it is not a text file of sets")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchError(f"--sets-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if text.lstrip().startswith("{"):
        try:
            recs = json.loads(text)
            theirs = recs.get("units", "blocks")
            sets = [tuple(r["removed"]) for r in recs["recommendations"].values() if isinstance(r, dict) and r.get("removed")]
            sets += [tuple(v["best"]["removed"]) for v in recs.get("independent_best", {}).values()]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise SearchError(f"--sets-file {path}: JSON, but not a blockprune pruning_recommendations.json") from None
        if theirs != units:
            raise SearchError(f"--sets-file {path}: its sets are of --units {theirs}, this search's of --units {units}")
        from ..runs.names import unit_name

        return parse_sets(";".join(",".join(unit_name(u, units) for u in s) for s in sets), units)
    return parse_sets(text, units)


def check_rank_by_entries(spec: str | None) -> None:
    """Refuse `--rank-by` entries that name different scores for the same tasks (the later one
    would silently win): one task given twice, `default` with `metric`, or two bare scores that
    tasks of one kind both have. A TASK=SCORE entry may refine a bare one, and a bare one `default`."""
    from ..tasks.scores import BY_KIND

    tasks: dict[str, str] = {}
    bases: list[str] = []
    bare: list[str] = []
    for entry in [e.strip() for e in (spec or "").split(",") if e.strip()]:
        task, sep, name = entry.rpartition("=")
        if sep:
            if task in tasks and tasks[task] != name:
                raise SearchError(f"--rank-by: task {task} is given two scores ({task}={tasks[task]}, {entry}); give one")
            tasks[task] = name
        elif name in ("default", "metric"):
            if bases and bases[0] != name:
                raise SearchError(f"--rank-by: {bases[0]} and {name} contradict each other; give one")
            bases.append(name)
        else:
            for other in bare:
                shared = sorted(k for k, names in BY_KIND.items() if name in names and other in names and name != other)
                if shared:
                    raise SearchError(f"--rank-by: {other} and {name} are both scores of {shared[0].replace('_', ' ')} "
                                      f"tasks, so they contradict each other; give one (or TASK=SCORE per task)")
            bare.append(name)


def check_sets(sets: Sequence[tuple[int, ...]], num_blocks: int, protected: Sequence[int] = (), min_depth: int = 1) -> None:
    """--method given's sets against the model (Settings.check_blocks, and search.run for direct callers)."""
    for s in sets:
        bad = [b for b in s if not 0 <= b < num_blocks]
        if bad:
            raise SearchError(f"set {list(s)}: block ids {bad} out of range 0..{num_blocks - 1}")
        if set(s) & set(protected):
            raise SearchError(f"set {list(s)} removes protected block(s) {sorted(set(s) & set(protected))}")
        if num_blocks - len(s) < max(1, min_depth):
            raise SearchError(f"set {list(s)} keeps {num_blocks - len(s)} of {num_blocks} blocks, fewer than "
                              f"--min-depth {max(1, min_depth)}")


def check_limits(num_blocks: int, max_remove: int, protected: Sequence[int] = (), min_depth: int = 1,
             method: str = "beam", beam_width: int = 1, max_candidates: int = 5000) -> list[int]:
    """The checks that need the block count (Settings.check_blocks runs them once the model is loaded,
    search.run again for direct callers); return the blocks that may be removed."""
    if method not in METHODS:
        raise SearchError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    bad = sorted(b for b in protected if not 0 <= b < num_blocks)
    if bad:
        raise SearchError(f"protected block ids {bad} out of range 0..{num_blocks - 1}")
    if method != "given":  # given sets say how many blocks they remove; --max-remove is not used
        if max_remove < 1:
            raise SearchError("--max-remove must be at least 1")
        if max_remove >= num_blocks:
            raise SearchError(f"--max-remove {max_remove} must be less than the number of blocks ({num_blocks})")
    if not 0 <= min_depth <= num_blocks:
        raise SearchError(f"--min-depth must be in 0..{num_blocks}")
    if min_depth >= num_blocks:
        raise SearchError(f"--min-depth {min_depth} keeps all {num_blocks} blocks: nothing can be removed")
    if method == "beam" and beam_width < 1:
        raise SearchError("--beam-width must be at least 1")
    allowed = [b for b in range(num_blocks) if b not in set(protected)]
    if not allowed:
        raise SearchError("every block is protected: nothing to remove")
    if method == "exhaustive":
        k_max = min(max_remove, num_blocks - min_depth, len(allowed))
        count = sum(math.comb(len(allowed), k) for k in range(1, k_max + 1))
        if count > max_candidates:
            raise SearchError(
                f"exhaustive search over {len(allowed)} blocks up to {k_max} removed is {count} candidates, "
                f"more than --max-candidates {max_candidates}; lower --max-remove or use beam"
            )
    return allowed




def run(method: str, ev: Evaluator, max_remove: int = 3, beam_width: int = 3, protected: Sequence[int] = (),
        min_depth: int = 1, max_candidates: int = 5000, evolution: "evolve.Settings | None" = None,
        seed: int = 0, sets: Sequence[Sequence[int]] = ()) -> SearchResult:
    """Run one search method. Beam, greedy and evolutionary steps race (when `ev.racing` is set);
    sensitivity, exhaustive, the one-shot baselines and given sets are scored exactly."""
    num_blocks = ev.num_blocks
    if method == "given":
        keys = list(dict.fromkeys(key_of(s) for s in sets))
        if not keys:
            raise SearchError("--method given needs --sets or --sets-file")
        check_sets(keys, num_blocks, protected, min_depth)
        result = SearchResult(method)
        res = ev.evaluate(keys)
        for k in sorted({len(s) for s in keys}):
            result.steps.append(rank({s: e for s, e in res.items() if len(s) == k}))
        result.evaluated.extend(res)
        return result
    allowed = check_limits(num_blocks, max_remove, protected, min_depth, method, beam_width, max_candidates)
    k_max = min(1 if method == "sensitivity" else max_remove, num_blocks - min_depth, len(allowed))
    result = SearchResult(method)
    if method == "exhaustive":
        for k in range(1, k_max + 1):
            res = ev.evaluate(list(itertools.combinations(allowed, k)))
            result.steps.append(rank(res))
            result.evaluated.extend(res)
        return result
    if method in oneshot.METHODS:
        sets = oneshot.sets_for(method, ev.engine.model, ev.tasks, allowed, k_max)
        res = ev.evaluate(sets)
        result.steps = [[s] for s in sets]
        result.evaluated.extend(res)
        return result
    if method == "evolutionary":
        return evolve.run(ev, allowed, k_max, evolution or evolve.Settings(), seed=seed, result=result)
    width = {"greedy": 1, "sensitivity": len(allowed), "beam": beam_width}[method]
    beam: list[tuple[int, ...]] = [()]
    for _ in range(k_max):
        children = list(dict.fromkeys(key_of(p + (b,)) for p in beam for b in allowed if b not in p))
        if not children:
            break
        # racing keeps scoring to the end only what can still reach the beam
        res = ev.evaluate(children) if method == "sensitivity" else ev.race(children, keep=width)
        ranked = rank(res)
        result.evaluated.extend(res)
        beam = ranked[:width]
        result.steps.append(beam)
        ev.retain(beam)  # the next step's children start from the beam's states
    return result

