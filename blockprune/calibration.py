"""The calibration windows a repair map is fitted on, disjoint from everything that is scored.

`--calibration SOURCE[#N]` names a text source as `kl:` and `ppl:` tasks do (`shakespeare/hamlet`,
`jsonl:PATH` of `{"text"}` rows, `hf:...`), cut into windows of `--ppl-window` tokens at the same
offsets the tasks cut; N windows are drawn with their own seeded order. Without it, the first text
task's source is used. Windows any search task scores (same source and window) are excluded, and
so are windows equal in content to any scored window (the same text named another way); the
held-out check later excludes the calibration's windows too (run.json records their ids). A
calibration of fewer than MIN_TOKENS_PER_DIM tokens per hidden dimension is refused: the map has
hidden² parameters and overfits below it (bench/results/heal_calibration.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .kinds import TaskError
from .tasks import load_task, parse_spec, split_count

MIN_TOKENS_PER_DIM = 8  # refused below (measured: bench/heal_calibration.py)
DEFAULT_TOKENS_PER_DIM = 16  # the default count of windows gives about this many tokens


class CalibrationError(ValueError):
    """A calibration that cannot fit a map as asked (one-line message)."""


@dataclass
class Calibration:
    spec: str  # the text source, without #N
    window: int
    sample_ids: list[str]
    windows: list[tuple[int, ...]]
    skip: int  # tokens at the start of each window fitted as context only (BOS, the first token)

    @property
    def tokens(self) -> int:
        return sum(len(w) - self.skip for w in self.windows)

    def describe(self) -> dict:
        return {"spec": self.spec, "window": self.window, "n": len(self.windows), "tokens": self.tokens,
                "sample_ids": self.sample_ids}


def check_spec(source_spec: str) -> None:
    """The syntax of --calibration, before anything loads (one-line CalibrationError)."""
    source, _ = split_count(source_spec)
    source = source.removeprefix("kl:").removeprefix("ppl:")
    try:
        parse_spec(f"kl:{source}")
    except TaskError as exc:
        raise CalibrationError(f"--calibration {source_spec}: {exc}") from None


def from_record(record: dict, tokenizer, eos_token_id) -> Calibration:
    """The windows run.json's calibration record names (to refit the same maps: validate, export)."""
    text = load_task(f"kl:{record['spec']}", tokenizer, eos_token_id, None, 0, record["window"])
    by_id = {sid: tuple(r.tokens) for sid, r in zip(text.sample_ids, text.requests)}
    missing = [sid for sid in record["sample_ids"] if sid not in by_id]
    if missing:
        raise CalibrationError(f"calibration {record['spec']}: window {missing[0]} is no longer in the text")
    skip = text.requests[0].score_from if text.requests else 1
    return Calibration(record["spec"], record["window"], list(record["sample_ids"]),
                       [by_id[sid] for sid in record["sample_ids"]], skip)


def text_source(task_spec: str) -> str | None:
    """The text source of a `kl:` or `ppl:` task spec (without #N), else None."""
    spec = parse_spec(task_spec)
    return spec.source if spec.scheme in ("kl", "ppl") else None


def default_source(task_specs: Sequence[str]) -> str | None:
    return next((s for s in map(text_source, task_specs) if s), None)


def select(source_spec: str | None, tokenizer, eos_token_id, hidden: int, seed: int, window: int,
           tasks: Sequence = (), task_specs: Sequence[str] = (), exclude_ids: Sequence[str] = ()) -> Calibration:
    """The calibration windows (see the module doc). `tasks` / `task_specs`: the search's loaded
    tasks and their specs, whose scored windows are excluded; `exclude_ids`: more window ids of
    the same source not to use."""
    if source_spec is None:
        source_spec = default_source(task_specs)
        if source_spec is None:
            raise CalibrationError("--heal linear needs --calibration SOURCE[#N] (a text source as in kl: specs, "
                                   "e.g. shakespeare/hamlet#128): no task is a text task to calibrate on")
    source, count = split_count(source_spec)
    source = source.removeprefix("kl:").removeprefix("ppl:")
    needed = MIN_TOKENS_PER_DIM * hidden
    exclude = set(exclude_ids)
    scored = set()
    for spec, task in zip(task_specs, tasks):
        same = text_source(spec) == source
        for r in task.requests:
            scored.add(tuple(r.tokens))
        if same and getattr(task, "sample_ids", None):
            exclude.update(task.sample_ids)
    if count is None:
        count = -(-DEFAULT_TOKENS_PER_DIM * hidden // max(1, window - 1))
    try:
        text = load_task(f"kl:{source}", tokenizer, eos_token_id, count, seed + 7919, window, exclude=sorted(exclude))
    except TaskError as exc:
        raise CalibrationError(f"--calibration {source}: {exc}") from None
    skip = text.requests[0].score_from if text.requests else 1
    windows = [tuple(r.tokens) for r in text.requests]
    overlap = [sid for sid, w in zip(text.sample_ids, windows) if w in scored]
    if overlap:
        raise CalibrationError(f"--calibration {source}: window {overlap[0]} is a window the search scores "
                               "(the same text as a task); calibrate on a text or windows the search does not score")
    cal = Calibration(source, window, list(text.sample_ids), windows, skip)
    if cal.tokens < needed:
        have = len(windows)
        per = max(1, window - skip)
        raise CalibrationError(f"--calibration {source}: {cal.tokens} tokens ({have} windows of {window}) are too few to "
                               f"fit a {hidden}x{hidden} map: it needs at least {needed} ({MIN_TOKENS_PER_DIM} per hidden "
                               f"dimension), i.e. #{-(-needed // per)} windows or a longer text")
    return cal
