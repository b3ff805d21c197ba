"""Generative tasks: what the model says, decoded greedily under every candidate.

`gen:jsonl:PATH` rows are `{"prompt": str, "answers": [str, ...]}` with optional `"max_new_tokens"`
(default 32) and `"until"` (stop strings; default: EOS only). `gen:<benchmark>` (basic_arithmetic,
triviaqa, nq_open: blockprune.tasks.benchmarks) and `gen:bigbench:<task>` (a BIG-bench task's generative
examples, `target`, where its archive is cached) are stopped at their stop strings (a newline) and
at their longest answer's tokens plus ANSWER_SLACK (a short-answer task then decodes a few tokens,
not 32). Every candidate decodes every prompt greedily in
one batch (blockprune.engine.decode); the output is cut at the first stop string (excluded), and scored by
exact match after normalisation (case, surrounding whitespace and punctuation, English articles:
SQuAD's rule) and by token F1, each the best over the answers.

Beside them, two scores from the same pass with the whole signal of every sample: the per-token
log-prob of the dense model's own greedy continuation under the candidate (`dense_logprob`, no
labels: the default ranking score) and of the gold answer (`gold_logprob`). The dense continuation
is decoded once per task (`prepare`) and scored teacher-forced by the engine like any request.
The generated text of every sample is kept in the store (`generated`), for the report to show.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .kinds import Task, TaskError, kind_of_task, leading_specials
from .request import Request

DEFAULT_MAX_NEW = 32
ANSWER_SLACK = 8  # a labelled benchmark's token limit: the longest answer's tokens plus this (at most 32)
MAX_NEW_LIMIT = 1024  # more is refused: one sample would decode for minutes
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no English articles, single spaces (SQuAD's answer normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best F1 over the answers of the normalised tokens' overlap (both empty: 1)."""
    pred = normalize(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize(answer).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def cut_at_stop(text: str, until: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string (excluded), and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass(frozen=True)
class Decoder:
    """A generative task's prompts, stop strings, token limits and EOS: greedy decoding of its
    samples under every candidate of `keep` (blockprune.engine.decode), here or on a Ray worker."""

    prompts: list
    until: list
    max_new: list
    eos: list
    media: list | None = None  # per sample, the image its prompt holds (image tasks)

    def generate(self, engine, tokenizer, keep: np.ndarray, samples) -> list[list[list[int]]]:
        samples = list(samples)
        prompts = [self.prompts[s] for s in samples]
        until = [self.until[s] for s in samples]

        def stop(c, i, toks):
            if not until[i]:
                return False
            tail = tokenizer.decode(toks[-16:], skip_special_tokens=True)
            return any(u in tail for u in until[i]) or cut_at_stop(tokenizer.decode(toks), until[i])[1]

        media = [self.media[s] for s in samples] if self.media else None
        return engine.generate(prompts, keep, [self.max_new[s] for s in samples], eos=self.eos, stop=stop,
                               media=media).tokens


@kind_of_task("generate")
class GenerationTask(Task):
    limit_key = '"max_new_tokens"'  # the token limit as its rows name it (in messages)

    def __init__(self, name: str, rows: list[dict], tokenizer, ids: list[str], eos_token_id: int | None,
                 where: Sequence[str] | None = None):
        super().__init__(name, ids)
        self.tokenizer = tokenizer
        self.eos = [] if eos_token_id is None else [int(eos_token_id)]
        self.prefix = pre = leading_specials(tokenizer)
        self.prompts: list[list[int]] = []
        self.answers: list[list[str]] = []
        self.max_new: list[int] = []
        self.until: list[list[str]] = []
        self.where = where = list(where or ids)  # each sample's place in its file (FILE:LINE), for messages
        for s, row in enumerate(rows):
            answers = row.get("answers")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise TaskError(f"{name}: {where[s]}: \"answers\" must be a non-empty list of strings")
            limit = row.get("max_new_tokens", DEFAULT_MAX_NEW)
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_NEW_LIMIT:
                raise TaskError(f"{name}: {where[s]}: {self.limit_key} must be an integer from 1 to {MAX_NEW_LIMIT}, "
                                f"not {limit!r}")
            until = row.get("until", [])
            if isinstance(until, str):
                until = [until]
            if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
                raise TaskError(f"{name}: {where[s]}: \"until\" must be a list of non-empty stop strings")
            prompt = pre + tokenizer(str(row["prompt"]), add_special_tokens=False).input_ids
            if len(prompt) == len(pre):
                raise TaskError(f"{name}: {where[s]}: empty prompt")
            self.prompts.append(prompt)
            self.answers.append(answers)
            self.max_new.append(limit)
            self.until.append(until)
            # the gold answer, teacher-forced (gold_logprob); the dense continuation comes in prepare()
            gold = tokenizer(answers[0], add_special_tokens=False).input_ids or list(self.eos[:1])
            if not gold:
                raise TaskError(f"{name}: {where[s]}: its first answer is empty and the tokenizer has no EOS")
            self.requests.append(Request(tuple(prompt) + tuple(gold), len(prompt)))
            self.request_sample.append(s)
        self.dense_request: list[int] = []
        self.dense_text: list[str] = []
        self.media: list = []  # image tasks: the image each prompt holds (blockprune.tasks.image_task)

    def gold_tokens(self, sample):
        return tuple(self.requests[sample].tokens)  # the prompt and its first answer

    # ---- what the engine needs ------------------------------------------------------------
    def check_positions(self, limit: int | None) -> None:
        """A prompt plus its token limit must fit the model's positions."""
        if not limit:
            return
        for s, (prompt, n) in enumerate(zip(self.prompts, self.max_new)):
            if len(prompt) + n > limit:
                raise TaskError(f"{self.name}: {self.where[s]}: its prompt ({len(prompt)} tokens) plus "
                                f"{self.limit_key} {n} exceeds the model's {limit} positions")

    @property
    def prepared(self) -> bool:
        return len(self.dense_request) == self.n

    def prepare(self, engine) -> None:
        """Decode the dense model's greedy continuation of every prompt (once) and add it as a
        teacher-forced request: the candidates' `dense_logprob`."""
        if self.prepared:
            return
        keep = np.ones((1, engine.model.num_blocks), dtype=bool)
        tokens = self.generate(engine, keep, range(self.n))[0]
        for s, toks in enumerate(tokens):
            target = toks or list(self.eos[:1]) or [self.prompts[s][-1]]
            self.dense_request.append(len(self.requests))
            self.requests.append(Request(tuple(self.prompts[s]) + tuple(target), len(self.prompts[s]),
                                         media=self.media[s] if self.media else None))
            self.request_sample.append(s)
            self.dense_text.append(self.text(toks, s))

    def text(self, tokens: Sequence[int], sample: int) -> str:
        out = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        return cut_at_stop(out, self.until[sample])[0]

    def decoder(self) -> "Decoder":
        """What decoding needs, without the tokenizer (a Ray worker has its own)."""
        return Decoder(self.prompts, self.until, self.max_new, self.eos, self.media or None)

    def generate(self, engine, keep: np.ndarray, samples) -> list[list[list[int]]]:
        """[candidate][i] -> tokens of samples[i] (stop strings and EOS end a row early)."""
        return self.decoder().generate(engine, self.tokenizer, keep, samples)

    # ---- scores ---------------------------------------------------------------------------
    def per_sample(self, logprob, greedy, kl=None, generated=None):
        if not self.prepared:
            raise ValueError(f"{self.name}: prepare(engine) first (the dense continuation)")
        gold_req = list(range(self.n))  # one gold request per sample, made first
        out = {"dense_logprob": logprob[:, self.dense_request],
               "dense_tokens": np.broadcast_to(np.array([self.requests[r].num_scored for r in self.dense_request],
                                                        dtype=float), (logprob.shape[0], self.n)).copy(),
               "gold_logprob": logprob[:, gold_req],
               "gold_tokens": np.broadcast_to(np.array([self.requests[r].num_scored for r in gold_req], dtype=float),
                                              (logprob.shape[0], self.n)).copy()}
        match = np.full((logprob.shape[0], self.n), np.nan)
        f1 = np.full((logprob.shape[0], self.n), np.nan)
        texts = np.empty((logprob.shape[0], self.n), dtype=object)
        if generated is not None:  # [C][N] token lists (None where a sample was not generated)
            for c, row in enumerate(generated):
                for s, toks in enumerate(row):
                    if toks is None:
                        continue
                    text = self.text(toks, s)
                    texts[c, s] = text
                    match[c, s] = exact_match(text, self.answers[s])
                    f1[c, s] = token_f1(text, self.answers[s])
        out.update(match=match, f1=f1)
        self.last_texts = texts
        return out

    def value(self, per_sample):
        return np.asarray(per_sample["match"], dtype=float).mean(axis=-1)


def _answer_limit(row: dict, tokenizer) -> None:
    """A labelled row's token limit, unless it has one: its longest answer's tokens plus ANSWER_SLACK."""
    longest = max(len(tokenizer(str(a), add_special_tokens=False).input_ids) for a in row["answers"])
    row.setdefault("max_new_tokens", min(DEFAULT_MAX_NEW, longest + ANSWER_SLACK))


def load_gen(spec, load) -> Task:
    """`gen:<benchmark>`, `gen:jsonl:<path>` or `gen:bigbench:<task>[/<subtask>]`."""
    from . import loaders

    scheme, _, rest = spec.source.partition(":")
    if not rest:  # a benchmark of blockprune.tasks.benchmarks
        from . import benchmarks

        rows, bench_ids = benchmarks.rows("gen", spec.source)
        for r, i in zip(rows, bench_ids):
            r["id"] = i
            _answer_limit(r, load.tokenizer)
        where = [f"{spec.source} row {i}" for i in bench_ids]
        name = "gen_" + spec.source.replace("/", "_")
    elif scheme == "jsonl":
        path = loaders.path_of(rest)
        rows = loaders.read_jsonl(path)
        where = [f"{path}:{r.pop('_line')}" for r in rows]
        name = f"gen_{path.stem}"
    elif scheme == "bigbench":
        from .. import data

        task, _, sub = rest.partition("/")
        try:
            raw = data.bigbench_task(task, sub or None)
        except data.DataError as exc:
            raise TaskError(str(exc)) from None
        # generative: an example's target, even where it also has target_scores (multiple choice)
        raw = {**raw, "examples": [{k: v for k, v in ex.items() if k != "target_scores"}
                                   for ex in raw.get("examples", []) if "target" in ex]}
        rows = [r for r in loaders.bigbench_rows(raw, rest) if "answers" in r] if raw["examples"] else []
        if not rows:
            raise TaskError(f"gen:bigbench:{rest}: the task has no generative examples (a target per example)")
        for r in rows:
            r["prompt"] = r["prompt"].rstrip()
            r.setdefault("until", ["\n"])
            _answer_limit(r, load.tokenizer)
        where = [f"example {i}" for i in range(len(rows))]
        name = "gen_" + rest.replace("/", "_")
    else:
        raise TaskError(f"unknown generative source {spec.source!r}: expected gen:<benchmark>, gen:jsonl:<path> "
                        "or gen:bigbench:<task>")
    for r, w in zip(rows, where):
        if "prompt" not in r or "answers" not in r:
            raise TaskError(f"{name}: {w}: a generative row needs \"prompt\" and \"answers\"")
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    digest = loaders.source_hash([[i, r] for i, r in zip(ids, rows)])
    ids_sel, rows_sel = loaders.select(ids, rows, load.samples, load.seed, name, load.exclude)
    at = {i: w for i, w in zip(ids, where)}
    task = GenerationTask(name, rows_sel, load.tokenizer, ids_sel, load.eos_token_id, [at[i] for i in ids_sel])
    task.available = len(rows)
    task.source_hash = digest
    return task
