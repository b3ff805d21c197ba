"""Task specs and the registry of their schemes: `load_task(spec, tokenizer, ...)` -> a task.

A spec is parsed once (`parse_spec`) into a `TaskSpec` (scheme, source, count); each scheme is
registered (`register_scheme`) with its loader, the syntax check of its source and how its local
paths are made absolute. The kinds of task and what each declares are in blockprune.tasks.kinds, the
built-in loaders in blockprune.tasks.loaders; both are re-exported here.

Task specs: `ppl:shakespeare/<play>`, `kl:<text source>` (`kl:shakespeare/<play>`,
`kl:jsonl:<path>`, `kl:hf:...`), `mc:<benchmark>` (ARC, SciQ, MMLU, ...: blockprune.tasks.benchmarks),
`gen:<benchmark | jsonl:path | bigbench:task>` (generative: blockprune.tasks.gen_task),
`bigbench:<task>[/<subtask>]` (where its archive is cached), `jsonl:<path>`,
`hf:<dataset>[/<config>][@<split>]` (a hub id or a local `datasets` directory),
`lm-eval:<task name | path/to/task.yaml>` (lm-evaluation-harness's own task: blockprune.tasks.lmeval). A `#N` suffix
overrides the number of samples for that task (`mc:arc_easy#30`): only a trailing `#<digits>`
counts, a `#` anywhere else is part of the spec (`jsonl:notes#2/rows.jsonl`), and a spec that
itself ends in `#<digits>` is written with one more `#` before the count or at the end
(`jsonl:take#2#`: the file `take#2`, every sample; `jsonl:take#2##5`: five of them). `split_count`
reads it, `join_count` writes it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Callable

from .kinds import (KINDS, ExactMatchTask, Kind, KLTask, MultipleChoiceTask, PerplexityTask, Task, TaskError, get_kind,
                    kind_of_task, leading_specials, lists_array, needs_dense, register_kind)
from .loaders import (Load, bigbench_rows, load_bigbench, load_hf, load_jsonl, load_kl, load_mc, load_ppl, path_of,
                      read_jsonl, select, source_hash)

DEFAULT_PPL_WINDOW = 256
_bigbench_rows = bigbench_rows  # bench/lmeval_parity.py's name for it


@dataclass(frozen=True)
class TaskSpec:
    """A parsed spec: `scheme:source`, and the `#N` sample count when it has one."""

    scheme: str
    source: str
    count: int | None = None

    @property
    def base(self) -> str:
        return f"{self.scheme}:{self.source}"

    def without_count(self) -> TaskSpec:
        return replace(self, count=None)

    def __str__(self) -> str:
        return join_count(self.base, self.count)


@dataclass(frozen=True)
class Scheme:
    """A registered scheme. `load(spec, Load) -> Task`; `check(spec, text)`: raise TaskError on a
    source that cannot be right, before anything loads (`text`: the spec as written, for the
    message); `absolute(source)`: the source with its local paths absolute (None: unchanged);
    `prefetch(sources)`: download and extract what these sources read (the demo's preparation)."""

    name: str
    usage: str
    load: Callable[[TaskSpec, Load], Task]
    check: Callable[[TaskSpec, str], None] | None = None
    absolute: Callable[[str], str | None] | None = None
    prefetch: Callable[[list[str]], None] | None = None


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    SCHEMES[scheme.name] = scheme
    return scheme


_COUNT = re.compile(r"#(\d+)$")


def split_count(spec: str) -> tuple[str, int | None]:
    """'SPEC#N' -> (SPEC, N). Only a trailing `#<digits>` is the count; any other `#` is part of the
    spec (a path may hold one). One `#` more before the count, or at the end, is the escape of a spec
    that itself ends in `#<digits>` or `#`: `jsonl:take#2#` is the file `take#2`, every sample, and
    `jsonl:take#2##5` five of its samples."""
    m = _COUNT.search(spec)
    if m:
        digits = m.group(1)
        if len(digits) > 12 or int(digits) < 1:
            raise TaskError(f"bad sample count {digits[:20]!r}{'...' if len(digits) > 20 else ''} in task spec "
                            f"{spec[: m.start()][:200]!r}: use SPEC#N with N >= 1")
        base = spec[: m.start()]
        return (base[:-1] if base.endswith("#") else base), int(digits)
    if spec.endswith("#"):
        return spec[:-1], None
    return spec, None


def join_count(base: str, count: int | None = None) -> str:
    """The spec split_count reads back as (base, count): escaped where `base` itself ends in `#<digits>` or `#`."""
    escaped = base + "#" if re.search(r"#\d*$", base) else base
    return f"{escaped}#{count}" if count else escaped


def parse_spec(spec: str | TaskSpec) -> TaskSpec:
    """The spec as a value, its syntax checked before anything is loaded. Raises TaskError (one line)."""
    if isinstance(spec, TaskSpec):
        return spec
    base, count = split_count(spec)
    scheme, sep, rest = base.partition(":")
    if not sep or not rest:
        usages = [s.usage for s in SCHEMES.values()]
        raise TaskError(f"unknown task spec {spec!r}: expected {', '.join(usages[:-1])} or {usages[-1]}")
    if scheme not in SCHEMES:
        raise TaskError(f"unknown task scheme {scheme!r} in {spec!r}: expected {', '.join(SCHEMES)}")
    parsed = TaskSpec(scheme, rest, count)
    if SCHEMES[scheme].check is not None:
        SCHEMES[scheme].check(parsed, spec)
    return parsed


def check_spec(spec: str) -> None:
    """Syntax of a task spec, checked before anything is loaded."""
    parse_spec(spec)


def absolute_spec(spec: str) -> str:
    """The spec with its local paths (jsonl:, kl:jsonl:, a local hf: directory, an lm-eval YAML file)
    made absolute, so a run reads the same files from any working directory; the count is kept."""
    base, count = split_count(spec)
    scheme, _, rest = base.partition(":")
    entry = SCHEMES.get(scheme)
    source = entry.absolute(rest) if entry is not None and entry.absolute is not None and rest else None
    return spec if source is None else join_count(f"{scheme}:{source}", count)


def prefetch(specs) -> None:
    """Fetch into the cache the data these specs read, scheme by scheme (BIG-bench's in one pass
    over its archive), without a tokenizer or a model."""
    by_scheme: dict[str, list[str]] = {}
    for spec in map(parse_spec, specs):
        by_scheme.setdefault(spec.scheme, []).append(spec.source)
    for scheme, sources in by_scheme.items():
        if SCHEMES[scheme].prefetch is not None:
            SCHEMES[scheme].prefetch(sources)


def load_task(spec: str | TaskSpec, tokenizer, eos_token_id: int | None = None, samples: int | None = None,
              seed: int = 0, ppl_window: int = DEFAULT_PPL_WINDOW, exclude=(), processor=None) -> Task:
    """Build a task from its spec. Raises TaskError (one line) on any problem. `exclude`: sample
    ids not to use (held-out validation); `processor`: an image-text model's (image tasks need it)."""
    parsed = parse_spec(spec)
    load = Load(tokenizer, eos_token_id, parsed.count or samples, seed, ppl_window, exclude, processor)
    return SCHEMES[parsed.scheme].load(parsed, load)


# ---- the built-in schemes ----------------------------------------------------------------------
def _names_only(spec: TaskSpec, text: str) -> None:
    if "#" in spec.source:  # names, never paths: a '#' in them is a mistyped count
        raise TaskError(f"bad sample count in task spec {text!r}: use SPEC#N with N >= 1 (a trailing #<digits>)")


def _check_kl(spec: TaskSpec, text: str) -> None:
    source = spec.source
    if source.startswith("shakespeare/"):
        _names_only(spec, text)
    if not (source.startswith("shakespeare/") or source.startswith("jsonl:") or source.startswith("hf:")):
        raise TaskError(f"unknown KL text source {source!r} in {text!r}: expected kl:shakespeare/<play>, "
                        "kl:jsonl:<path> ({\"text\"} rows) or kl:hf:<dataset>")


def _absolute_path(source: str) -> str:
    return os.path.abspath(path_of(source))


def _absolute_hf(source: str) -> str | None:
    name, at, split = source.partition("@")
    return os.path.abspath(path_of(name)) + at + split if path_of(name).exists() else None


def _absolute_yaml(source: str) -> str | None:
    return _absolute_path(source) if source.endswith((".yaml", ".yml")) and path_of(source).exists() else None


def _absolute_kl(source: str) -> str | None:
    scheme, _, rest = source.partition(":")
    if scheme not in ("jsonl", "hf") or not rest:
        return None
    inner = SCHEMES[scheme].absolute(rest)
    return None if inner is None else f"{scheme}:{inner}"


def _prefetch_shakespeare(sources: list[str]) -> None:
    from .. import data

    for source in sources:
        if source.startswith("shakespeare/"):
            data.shakespeare_text(source.partition("/")[2])


def _prefetch_bigbench(sources: list[str]) -> None:
    from .. import data

    data.bigbench_prefetch(sources)


def _prefetch_mc(sources: list[str]) -> None:
    from . import benchmarks

    benchmarks.prefetch("mc", sources)


def _prefetch_gen(sources: list[str]) -> None:
    from . import benchmarks
    from .. import data

    named = [s.split(":", 1)[1] for s in sources if s.startswith("bigbench:")]
    if named:
        data.bigbench_prefetch(named)
    named = [s for s in sources if ":" not in s]
    if named:
        benchmarks.prefetch("gen", named)


def _check_image(spec: TaskSpec, text: str) -> None:
    source = spec.source
    if source.startswith(("jsonl:", "hf:")) and len(source) > len("jsonl:"):
        return
    if spec.scheme == "vqa" and (source == "easy-vqa" or source in ("easy-vqa/test", "easy-vqa/train")):
        return
    forms = (f"{spec.scheme}:easy-vqa, " if spec.scheme == "vqa" else "") + \
        f"{spec.scheme}:jsonl:<path> or {spec.scheme}:hf:<dataset with an image column>"
    raise TaskError(f"unknown image source {source!r} in {text!r}: expected {forms} (rows of image, question and "
                    "answers, or image and captions)")


def _prefetch_image(sources: list[str]) -> None:
    from .. import data

    for split in {s.partition("/")[2] or "test" for s in sources if s.startswith("easy-vqa")}:
        data.easy_vqa_rows(split)


def _load_lmeval(spec: TaskSpec, load: Load) -> Task:
    from .lmeval import load_lmeval_task

    return load_lmeval_task(spec.source, load.tokenizer, load.eos_token_id, load.samples, load.seed, load.exclude)


for _scheme in (
    Scheme("ppl", "ppl:shakespeare/<play>", load_ppl, _names_only, prefetch=_prefetch_shakespeare),
    Scheme("kl", "kl:<text source>", load_kl, _check_kl, _absolute_kl, prefetch=_prefetch_shakespeare),
    Scheme("mc", "mc:<benchmark>", load_mc, _names_only, prefetch=_prefetch_mc),
    Scheme("bigbench", "bigbench:<task>[/<subtask>]", load_bigbench, _names_only, prefetch=_prefetch_bigbench),
    Scheme("jsonl", "jsonl:<path>", load_jsonl, absolute=_absolute_path),
    Scheme("hf", "hf:<dataset>", load_hf, absolute=_absolute_hf),
    Scheme("lm-eval", "lm-eval:<task name | task.yaml>", _load_lmeval, absolute=_absolute_yaml),
    Scheme("gen", "gen:<benchmark, jsonl:path or bigbench:task>", lambda spec, load: _load_gen(spec, load),
           absolute=lambda source: _absolute_kl(source), prefetch=_prefetch_gen),
    Scheme("vqa", "vqa:<easy-vqa, jsonl:path or hf:dataset>", lambda spec, load: _load_image("vqa", spec, load), _check_image,
           lambda source: _absolute_kl(source), prefetch=lambda sources: _prefetch_image(sources)),
    Scheme("docvqa", "docvqa:<jsonl:path or hf:dataset>", lambda spec, load: _load_image("docvqa", spec, load), _check_image,
           lambda source: _absolute_kl(source)),
    Scheme("caption", "caption:<jsonl:path or hf:dataset>", lambda spec, load: _load_image("caption", spec, load), _check_image,
           lambda source: _absolute_kl(source)),
):
    register_scheme(_scheme)


def _load_image(scheme, spec, load):
    from .image_task import load_image_task

    return load_image_task(scheme, spec, load)


def _load_gen(spec, load):
    from .gen_task import load_gen

    return load_gen(spec, load)
