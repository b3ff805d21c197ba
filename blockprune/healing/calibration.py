"""The calibration windows a repair map is fitted on, disjoint from everything that is scored.

`--calibration SOURCE[#N]` names a text source as `kl:` and `ppl:` tasks do (`shakespeare/hamlet`,
`jsonl:PATH` of `{"text"}` rows, `hf:...`), cut into windows of `--ppl-window` tokens at the same
offsets the tasks cut; N windows are drawn with their own seeded order. Without it, the default mix:
the first text task's unscored windows and half of every other task's unscored samples, at most
MAX_TASK_SAMPLES of each (context and gold answer; the rest stays for the held-out check). Measured: a map fitted on a text
alone halves the text's KL but costs multiple choice (SmolLM2, [17, 18, 19]: general_knowledge
p_gold 0.374 plain -> 0.272 healed on Hamlet), one fitted on the tasks' prompts alone keeps
multiple choice and loses the text; the mix keeps both (KL 0.351 -> 0.206, p_gold 0.352). What "disjoint" covers: the
scored windows of the calibration's own source are excluded by id; a calibration window
token-identical to any scored window is refused; and a calibration text sharing more than
SHARED_WORDS_LIMIT of its 4-word sequences (spelling normalised, so the First Folio's `Speake`
is `Speak`) with another scored text source is refused as the same text named another way
(Hamlet's folio edition against Hamlet: 65%; two plays: under 1%). Task samples (questions,
prompts) are kept apart by id only. The held-out check later excludes the calibration's windows
too (run.json records their ids), and its text the healing never saw is chosen by the same
content test. A
calibration of fewer than MIN_TOKENS_PER_DIM tokens per hidden dimension is refused: the map has
hidden² parameters and overfits below it (bench/results/heal_calibration.md).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from ..tasks.kinds import TaskError
from ..tasks import load_task, parse_spec, split_count

MIN_TOKENS_PER_DIM = 4  # refused below: healing loses its gain there (bench/results/heal_calibration.md)
DEFAULT_TOKENS_PER_DIM = 16  # the default count of windows gives about this many tokens
# the default mix takes at most this many unscored samples of each task: the mix measured took 30 and
# 100 (bench/results/heal_calibration.md), and a benchmark's half can be thousands (HellaSwag: 5,000),
# which would make the dense pass the search's longest step and the fit about one task's prompts
MAX_TASK_SAMPLES = 64


class CalibrationError(ValueError):
    """A calibration that cannot fit a map as asked (one-line message)."""


@dataclass
class Calibration:
    spec: str | None  # the text source, without #N (None: the tasks' samples only)
    window: int
    sample_ids: list[str]  # the text's windows
    windows: list[tuple[int, ...]]  # the text's windows, then the tasks' samples
    skip: int  # tokens at the start of each window fitted as context only (BOS, the first token)
    tasks: dict = field(default_factory=dict)  # {task name: {"spec", "sample_ids"}}: samples fitted on

    @property
    def tokens(self) -> int:
        return sum(len(w) - self.skip for w in self.windows)

    def describe(self) -> dict:
        return {"spec": self.spec, "window": self.window, "n": len(self.windows), "tokens": self.tokens,
                "sample_ids": self.sample_ids,
                **({"tasks": {k: {**v, "n": len(v["sample_ids"])} for k, v in self.tasks.items()}} if self.tasks else {})}


FORMS = "shakespeare/<play>, jsonl:<path> of {\"text\"} rows or hf:<dataset>[@split], with #N windows"


def check_spec(source_spec: str) -> None:
    """The syntax of --calibration, before anything loads (one-line CalibrationError)."""
    from ..tasks import SCHEMES

    source, _ = split_count(source_spec)
    scheme = source.partition(":")[0]
    if scheme in SCHEMES and scheme not in ("kl", "ppl", "jsonl", "hf"):
        raise CalibrationError(f"--calibration {source_spec}: a {scheme}: task is no calibration text; --calibration "
                               f"takes a text source: {FORMS} (without it, a healed search already fits on the "
                               "text task's and half of the other tasks' unscored samples)")
    source = source.removeprefix("kl:").removeprefix("ppl:")
    try:
        parse_spec(f"kl:{source}")
    except TaskError as exc:
        raise CalibrationError(f"--calibration {source_spec} is not a text source ({str(exc).replace('kl:', '')}); "
                               f"--calibration takes {FORMS}") from None


# ---- the same text named another way: compared by content ---------------------------------------
SHARED_WORDS_LIMIT = 0.10  # a calibration text sharing more of its word sequences with a scored text is refused
_GRAM = 4


def _words(text: str) -> list[str]:
    """The words of `text`, lower case, spelled alike across editions (u/v, i/j/y, doubled letters and
    a final e are the First Folio's: `Speake to me` and `Speak to me` are the same words)."""
    out = []
    for word in re.sub(r"[^a-z]+", " ", text.lower()).split():
        word = re.sub(r"(.)\1+", r"\1", word.replace("v", "u").replace("j", "i").replace("y", "i"))
        out.append(word[:-1] if len(word) > 3 and word.endswith("e") else word)
    return out


def _grams(text: str) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i:i + _GRAM]) for i in range(len(w) - _GRAM + 1)}


def shared_words(text: str, other: str) -> float:
    """The share of `text`'s 4-word sequences (words as `_words` spells them) that `other` holds too:
    another edition of the same play shares about 65% (Hamlet's folio and modern texts), two plays
    under 1%."""
    mine = _grams(text)
    return len(mine & _grams(other)) / len(mine) if mine else 0.0


def source_text(source: str, tokenizer, eos_token_id, window: int) -> str:
    """The whole text of a text source (every window, decoded)."""
    task = load_task(f"kl:{source}", tokenizer, eos_token_id, None, 0, window)
    return "".join(tokenizer.decode(list(r.tokens), skip_special_tokens=True) for r in task.requests)


def _refuse_shared_text(source: str, windows, tokenizer, eos_token_id, window: int, task_specs) -> None:
    """A calibration text that is a scored text named another way (another edition, a copy in a
    JSONL file) is refused: compared by content, since no window of it is token-identical."""
    mine = "".join(tokenizer.decode(list(w), skip_special_tokens=True) for w in windows)
    for other in dict.fromkeys(s for s in map(text_source, task_specs) if s and s != source):
        share = shared_words(mine, source_text(other, tokenizer, eos_token_id, window))
        if share > SHARED_WORDS_LIMIT:
            raise CalibrationError(f"--calibration {source}: {share:.0%} of its 4-word sequences (spelling normalised) "
                                   f"are in {other}, which the search scores (another edition of the same text?); "
                                   "the maps would be fitted on what is scored: calibrate on a text the search does not "
                                   "score")


def from_record(record: dict, tokenizer, eos_token_id) -> Calibration:
    """The windows run.json's calibration record names (to refit the same maps: validate, export)."""
    windows, skip = [], 1
    if record.get("spec"):
        text = load_task(f"kl:{record['spec']}", tokenizer, eos_token_id, None, 0, record["window"])
        by_id = {sid: tuple(r.tokens) for sid, r in zip(text.sample_ids, text.requests)}
        missing = [sid for sid in record["sample_ids"] if sid not in by_id]
        if missing:
            raise CalibrationError(f"calibration {record['spec']}: window {missing[0]} is no longer in the text")
        skip = text.requests[0].score_from if text.requests else 1
        windows = [by_id[sid] for sid in record["sample_ids"]]
    tasks = {}
    for name, info in (record.get("tasks") or {}).items():
        full = load_task(info["spec"], tokenizer, eos_token_id, None, 0, record["window"])
        index = {sid: i for i, sid in enumerate(full.sample_ids)}
        missing = [sid for sid in info["sample_ids"] if sid not in index]
        if missing:
            raise CalibrationError(f"calibration: {name} has no sample {missing[0]} any more")
        windows += [full.gold_tokens(index[sid]) for sid in info["sample_ids"]]
        tasks[name] = {"spec": info["spec"], "sample_ids": list(info["sample_ids"])}
    return Calibration(record.get("spec"), record["window"], list(record.get("sample_ids", [])), windows, skip, tasks)


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
    the same source not to use. Without `source_spec`, the default mix: the first text task's
    unscored windows and half of every other task's unscored samples, at most MAX_TASK_SAMPLES
    each (context + gold answer)."""
    mixed = source_spec is None
    if mixed:
        source_spec = default_source(task_specs)
    scored = {tuple(r.tokens) for task in tasks for r in task.requests}
    ids: list[str] = []
    windows: list[tuple[int, ...]] = []
    skip = 1
    source = None
    if source_spec is not None:
        source, count = split_count(source_spec)
        source = source.removeprefix("kl:").removeprefix("ppl:")
        exclude = set(exclude_ids)
        for spec, task in zip(task_specs, tasks):
            if text_source(spec) == source and getattr(task, "sample_ids", None):
                exclude.update(task.sample_ids)
        if count is None:
            count = -(-DEFAULT_TOKENS_PER_DIM * hidden // max(1, window - 1))
        try:
            text = load_task(f"kl:{source}", tokenizer, eos_token_id, count, seed + 7919, window, exclude=sorted(exclude))
        except TaskError as exc:
            raise CalibrationError(f"--calibration {source}: {exc}") from None
        skip = text.requests[0].score_from if text.requests else 1
        ids, windows = list(text.sample_ids), [tuple(r.tokens) for r in text.requests]
    task_part: dict[str, dict] = {}
    if mixed:
        for spec, task in zip(task_specs, tasks):
            if text_source(spec) is not None or task.gold_tokens(0) is None:
                continue
            try:
                full = load_task(str(parse_spec(spec).without_count()), tokenizer, eos_token_id, None, seed, window,
                                 exclude=list(task.sample_ids))
            except TaskError:
                continue  # every sample is scored: none to calibrate on
            picked = sorted(random.Random(f"{seed}:calibration:{task.name}").sample(
                range(full.n), min(full.n // 2, MAX_TASK_SAMPLES)))
            if not picked:
                continue
            task_part[task.name] = {"spec": str(parse_spec(spec).without_count()),
                                    "sample_ids": [full.sample_ids[i] for i in picked]}
            windows += [full.gold_tokens(i) for i in picked]
        if not windows:
            raise CalibrationError("--heal linear needs --calibration SOURCE[#N] (a text source as in kl: specs, e.g. "
                                   "shakespeare/hamlet#128): no task has a text or unscored samples to calibrate on")
    where = source or "the tasks' unscored samples"
    overlap = [w for w in windows if w in scored]
    if overlap:
        raise CalibrationError(f"--calibration {where}: a calibration window is a window the search scores "
                               "(the same text as a task); calibrate on a text or windows the search does not score")
    if source is not None:  # the same text named another way, compared by content
        _refuse_shared_text(source, windows[:len(ids)], tokenizer, eos_token_id, window, task_specs)
    cal = Calibration(source, window, ids, windows, skip, task_part)
    needed = MIN_TOKENS_PER_DIM * hidden
    if cal.tokens < needed:
        per = max(1, window - skip)
        raise CalibrationError(f"--calibration {where}: {cal.tokens} tokens ({len(windows)} windows of {window}) are too "
                               f"few to fit a {hidden}x{hidden} map: it needs at least {needed} ({MIN_TOKENS_PER_DIM} per "
                               f"hidden dimension), i.e. #{-(-needed // per)} windows or a longer text")
    return cal
