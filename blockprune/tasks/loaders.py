"""The built-in loaders: task data (BIG-bench, Shakespeare, JSONL files, `datasets`) to tasks.

A loader gets the spec's source and a `Load` (tokenizer, sample count, seed, window, held-out
exclusions) and returns a task (blockprune.tasks.kinds); blockprune.tasks registers each under its
scheme. Rows are validated here, in one of three layouts:

* multiple choice  `{"context": str, "choices": [str, ...], "label": int}`
* perplexity       `{"text": str}` (the texts, joined, cut into windows; `kl:` sources too)
* exact match      `{"prompt": str, "answers": [str, ...]}`

Every task built from rows or a text keeps `source_hash`, a hash of its whole source (all rows,
or the text) before any sample is chosen: run.json binds a run to it (see blockprune.runs.store).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .kinds import (ExactMatchTask, KLTask, MultipleChoiceTask, PerplexityTask, Task, TaskError, leading_specials,
                    pair_encoder)


@dataclass(frozen=True)
class Load:
    """What every loader gets beside the spec: `samples` (None: all; the spec's #N when it has
    one), the seed of the sample choice, the perplexity window, and sample ids not to use."""

    tokenizer: Any
    eos_token_id: int | None = None
    samples: int | None = None
    seed: int = 0
    ppl_window: int = 256
    exclude: Sequence[str] = ()
    processor: Any = None  # an image-text model's processor (image tasks build their prompts with it)


def select(ids: list[str], rows: list[Any], samples: int | None, seed: int, name: str, exclude=()):
    """A seeded random subset of `samples` rows (all rows, in order, when samples is None).

    `exclude`: sample ids that must not be chosen (held-out validation draws from the rest, with
    its own seeded order)."""
    if exclude:
        gone = set(exclude)
        pairs = [(i, r) for i, r in zip(ids, rows) if i not in gone]
        if not pairs:
            raise TaskError(f"{name}: every sample was used by the search; none is left to hold out")
        ids, rows = [p[0] for p in pairs], [p[1] for p in pairs]
    if not rows:
        raise TaskError(f"{name}: no samples")
    if samples is None or samples >= len(rows):
        return ids, rows
    order = list(range(len(rows)))
    random.Random(f"{seed}:{name}" + (":held-out" if exclude else "")).shuffle(order)
    keep = sorted(order[:samples])
    return [ids[i] for i in keep], [rows[i] for i in keep]


def _check_rows(name: str, rows: list[dict], where: list[str]) -> str:
    """Validate rows of one layout; returns it (the kind of task they make). `where[i]` locates row i in messages."""
    layouts = {
        "multiple_choice": ("context", "choices", "label"),
        "perplexity": ("text",),
        "exact_match": ("prompt", "answers"),
    }
    first = rows[0]
    layout = next((k for k, keys in layouts.items() if all(key in first for key in keys)), None)
    if layout is None:
        raise TaskError(f"{name}: {where[0]}: row has none of the field sets {{context, choices, label}}, {{text}}, {{prompt, answers}}")
    for row, loc in zip(rows, where):
        missing = [k for k in layouts[layout] if k not in row]
        if missing:
            raise TaskError(f"{name}: {loc}: missing field(s) {', '.join(missing)}")
        if layout == "multiple_choice":
            ch = row["choices"]
            if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
                raise TaskError(f"{name}: {loc}: 'choices' must be a list of at least 2 strings")
            label = row["label"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(ch):
                got = f"the boolean {str(label).lower()}" if isinstance(label, bool) else _short(label)
                raise TaskError(f"{name}: {loc}: 'label' must be an integer index into choices (0..{len(ch) - 1}), "
                                f"not {got}")
            if not isinstance(row["context"], str):
                raise TaskError(f"{name}: {loc}: 'context' must be a string")
        elif layout == "perplexity":
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise TaskError(f"{name}: {loc}: 'text' must be a non-empty string")
        else:
            ans = row["answers"]
            if isinstance(ans, str):
                row["answers"] = ans = [ans]
            if not isinstance(ans, list) or not ans or not all(isinstance(a, str) and a for a in ans):
                raise TaskError(f"{name}: {loc}: 'answers' must be a non-empty list of strings")
            if not isinstance(row["prompt"], str):
                raise TaskError(f"{name}: {loc}: 'prompt' must be a string")
    return layout


def _short(value, limit: int = 40) -> str:
    """repr() of a value from a user's file, cut to fit a one-line message (a 5,000-digit label)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for str() (Python's 4300-digit limit)
        return f"an integer of more than {limit} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def source_hash(rows_or_text) -> str:
    """A short content hash of a task's whole source: its rows (as parsed) or its text."""
    if isinstance(rows_or_text, str):
        data = rows_or_text.encode("utf-8", "surrogatepass")
    else:
        data = json.dumps(rows_or_text, sort_keys=True, ensure_ascii=True, default=str).encode("ascii")
    return hashlib.sha256(data).hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict]:
    """blockprune.data.jsonl.read_jsonl, its refusals as TaskErrors (the same one line)."""
    from ..data import DataError, jsonl

    try:
        return jsonl.read_jsonl(path)
    except DataError as exc:
        raise TaskError(str(exc)) from None


def _from_rows(name, rows, where, ids, tokenizer, eos, samples, seed, window, kl=False, exclude=(),
               mc_options=None) -> Task:
    layout = _check_rows(name, rows, where)
    if kl and layout != "perplexity":
        raise TaskError(f"{name}: a kl: source needs {{\"text\"}} rows, these are {layout.replace('_', ' ')} rows")
    if layout == "perplexity":
        text = "\n\n".join(r["text"] for r in rows)
        return text_task(name, text, tokenizer, samples, seed, window, kl, exclude)
    available = len(rows)
    digest = source_hash([[i, r] for i, r in zip(ids, rows)])
    ids, rows = select(ids, rows, samples, seed, name, exclude)
    task = MultipleChoiceTask(name, rows, tokenizer, ids, **(mc_options or {})) if layout == "multiple_choice" else \
        ExactMatchTask(name, rows, tokenizer, ids, eos)
    task.available = available
    task.source_hash = digest
    return task


def text_task(name, text, tokenizer, samples, seed, window, kl=False, exclude=()) -> PerplexityTask:
    if window < 2:
        raise TaskError(f"{name}: perplexity window must be at least 2 tokens")
    tokens = tokenizer(text, add_special_tokens=False).input_ids
    windows = [tokens[i : i + window] for i in range(0, len(tokens) - window + 1, window)]
    if not windows:
        raise TaskError(f"{name}: text has {len(tokens)} tokens, fewer than one window of {window}")
    ids = [f"w{i}" for i in range(len(windows))]
    available = len(windows)
    ids, windows = select(ids, windows, samples, seed, name, exclude)
    task = (KLTask if kl else PerplexityTask)(name, windows, ids, leading_specials(tokenizer))
    task.available = available
    task.source_hash = source_hash(text)
    return task


def bigbench_rows(task: dict, name: str) -> list[dict]:
    """BIG-bench examples as multiple-choice rows (or exact-match rows for generative tasks)."""
    prefix = task.get("task_prefix", "")
    in_pre = task.get("example_input_prefix", "\nQ: ")
    out_pre = task.get("example_output_prefix", "\nA: ")
    rows = []
    for ex in task.get("examples", []):
        context = (prefix + in_pre + ex["input"] + out_pre).rstrip()
        if "target_scores" in ex:
            choices = list(ex["target_scores"].keys())
            scores = list(ex["target_scores"].values())
            rows.append({"context": context, "choices": [" " + c.strip() for c in choices], "label": int(np.argmax(scores))})
        elif "target" in ex:
            answers = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
            rows.append({"prompt": context + " ", "answers": [str(a).strip() for a in answers if str(a).strip()]})
    if not rows:
        raise TaskError(f"bigbench:{name}: no usable examples (a task with subtasks needs bigbench:<task>/<subtask>)")
    return rows


def path_of(rest: str) -> Path:
    return Path(os.path.expanduser(rest))


def _shakespeare(source: str, load: Load, kl: bool) -> Task:
    from .. import data

    where, _, play = source.partition("/")
    if where != "shakespeare" or not play:
        raise TaskError(f"unknown perplexity source {source!r}: expected ppl:shakespeare/<play>")
    try:
        text = data.shakespeare_text(play)
    except data.DataError as exc:
        raise TaskError(str(exc)) from None
    return text_task(f"{'kl_' if kl else ''}shakespeare_{play}", text, load.tokenizer, load.samples, load.seed,
                     load.ppl_window, kl, load.exclude)


def load_ppl(spec, load: Load) -> Task:
    """`ppl:shakespeare/<play>`."""
    return _shakespeare(spec.source, load, kl=False)


def load_bigbench(spec, load: Load) -> Task:
    """`bigbench:<task>[/<subtask>]`."""
    from .. import data

    task, _, sub = spec.source.partition("/")
    try:
        raw = data.bigbench_task(task, sub or None)
    except data.DataError as exc:
        raise TaskError(str(exc)) from None
    rows = bigbench_rows(raw, spec.source)
    ids = [str(i) for i in range(len(rows))]
    return _from_rows(spec.source.replace("/", "_"), rows, [f"example {i}" for i in ids], ids, load.tokenizer,
                      load.eos_token_id, load.samples, load.seed, load.ppl_window, exclude=load.exclude)


def load_mc(spec, load: Load) -> Task:
    """`mc:<benchmark>` (blockprune.tasks.benchmarks: arc_easy, sciq, mmlu/<subject>, ...), encoded and
    length-normalised (acc_norm: per character) as lm-eval's HF model does it."""
    from . import benchmarks

    rows, ids = benchmarks.rows("mc", spec.source)
    for r in rows:  # lm-eval normalises by the choice's own characters, without the target delimiter
        r["norm_choices"] = [c[1:] for c in r["choices"]]
    return _from_rows(spec.source.replace("/", "_"), rows, [f"{spec.source} row {i}" for i in ids], ids,
                      load.tokenizer, load.eos_token_id, load.samples, load.seed, load.ppl_window,
                      exclude=load.exclude, mc_options={"encode": pair_encoder(load.tokenizer), "norm": "chars"})


def _jsonl(source: str, load: Load, kl: bool) -> Task:
    path = path_of(source)
    rows = read_jsonl(path)
    where = [f"{path}:{r.pop('_line')}" for r in rows]
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    return _from_rows(f"{'kl_' if kl else ''}{path.stem}", rows, where, ids, load.tokenizer, load.eos_token_id,
                      load.samples, load.seed, load.ppl_window, kl, load.exclude)


def load_jsonl(spec, load: Load) -> Task:
    """`jsonl:<path>`."""
    return _jsonl(spec.source, load, kl=False)


def load_hf(spec, load: Load) -> Task:
    """`hf:<dataset>[/<config>][@<split>]`."""
    return _hf_task(spec.source, load.tokenizer, load.eos_token_id, load.samples, load.seed, load.ppl_window,
                    exclude=load.exclude)


def load_kl(spec, load: Load) -> Task:
    """`kl:shakespeare/<play>`, `kl:jsonl:<path>` ({"text"} rows) or `kl:hf:<dataset>`."""
    source = spec.source
    if source.startswith("shakespeare/"):
        return _shakespeare(source, load, kl=True)
    scheme, _, rest = source.partition(":")
    if scheme == "jsonl":
        return _jsonl(rest, load, kl=True)
    return _hf_task(rest, load.tokenizer, load.eos_token_id, load.samples, load.seed, load.ppl_window, True,
                    load.exclude)


def _hf_task(rest: str, tokenizer, eos, samples, seed, window, kl=False, exclude=()) -> Task:
    """`hf:<dataset>[/<config>][@<split>]`: rows already in one of the JSONL layouts."""
    rows, name = hf_rows(rest)
    name = ("kl_" if kl else "") + name
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    return _from_rows(name, rows, [f"row {i}" for i in range(len(rows))], ids, tokenizer, eos, samples, seed, window, kl,
                      exclude)


def hf_rows(rest: str) -> tuple[list[dict], str]:
    """(rows, name) of `hf:<dataset>[/<config>][@<split>]`: a hub dataset or a local `save_to_disk` directory."""
    try:
        import datasets
    except ImportError:
        raise TaskError("hf: task specs need the 'datasets' package (pip install datasets)") from None
    name_part, _, split = rest.partition("@")
    path = Path(name_part)
    try:
        if path.exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split or next(iter(ds))]
        else:
            dataset, _, config = name_part.partition("/") if name_part.count("/") > 1 else (name_part, "", "")
            ds = datasets.load_dataset(dataset, config or None, split=split or "test")
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line
        raise TaskError(f"hf:{rest}: cannot load dataset ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    rows = [dict(r) for r in ds]
    if not rows:
        raise TaskError(f"hf:{rest}: empty dataset")
    return rows, (path.name if path.exists() else name_part.replace("/", "_"))
