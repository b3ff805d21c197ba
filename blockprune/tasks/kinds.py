"""Task kinds: what each kind of task asks of the engine and which scores it has, and the tasks.

A task turns its samples into `Request`s for the engine (log-likelihood of a continuation, a
perplexity window, a greedy-match target) and turns the engine's per-request log-probabilities and
greedy flags back into per-sample scores and one metric. It never sees blocks or candidates.

Each kind is registered once, as data (`scores.Kind`; the built-in ones in blockprune.tasks.scores, a
new one with `@kind_of_task(Kind(...))` on its task class): the scores it has (the first ranks by
default), its own metric (`Task.value`, what run.json records), the thresholded metric shown
beside the ranking score, and what the engine must do for it (`needs_dense`: score the dense model
in the same pass and return the per-request KL).
The evaluator, the runners, validate and the analysis read these declarations; none of them tests
a kind's name. A kind registered from outside the package flows through the search the same way.

Kinds and what each record keeps per sample (see blockprune.tasks.scores for the scores read from it):
* multiple choice  acc (and acc_norm, p_gold). Context and each choice are tokenized separately
  (no special tokens) and concatenated; a choice's score is the sum of its tokens' log-probs;
  acc_norm divides it by the choice's length in bytes. p_gold is the model's probability of the
  gold choice among the choices (a softmax over the summed log-probs: expected accuracy),
  p_gold_norm the same over the length-normalised scores (soft acc_norm). Kept: correct,
  correct_norm, p_gold, p_gold_norm, choice_logprob and choice_tokens / choice_bytes / choice_chars.
* perplexity       perplexity over fixed windows (see `PerplexityTask`). Kept: nll, ntok per window.
* exact match      exact_match: greedy decoding reproduces an answer followed by EOS, checked in
  one teacher-forced pass (every answer token and the EOS must be the argmax at its position).
  Kept: match, and the first (gold) answer's gold_logprob (summed over its tokens and the EOS) and
  gold_tokens.
* KL to the dense model: windows as for perplexity, scored by the mean per-token
  KL(p_dense || p_candidate) (no labels). Kept: kl, ntok, nll per window.

Every request starts with the tokenizer's own leading special tokens where it adds them by
default (BOS for Gemma, Llama 3, Mistral: `leading_specials`), never scored, so a model is measured
in the regime it is used in; run.json records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .request import Request
from .scores import KINDS, Kind, get_kind, kind_of_metric, needs_dense, register_kind  # noqa: F401


class TaskError(Exception):
    """Bad task spec or task data; the message is one line."""


def leading_specials(tokenizer) -> list[int]:
    """The tokens a tokenizer puts before any text by default (BOS for Gemma, Llama 3, Mistral;
    none for GPT-2-style tokenizers). Every request starts with them, as the model was trained and
    as lm-evaluation-harness runs it; they are context, never scored."""
    try:
        plain = list(tokenizer("a", add_special_tokens=False).input_ids)
        full = list(tokenizer("a").input_ids)
    except (TypeError, AttributeError):
        return []
    for i in range(len(full) - len(plain) + 1):
        if plain and full[i : i + len(plain)] == plain:
            return full[:i]
    return []


def generates(task) -> bool:
    """The task's samples are decoded under every candidate (its kind declares `generates`)."""
    try:
        return get_kind(task.kind).generates
    except Exception:  # noqa: BLE001 - an unregistered stand-in generates nothing
        return False


def kind_of_task(kind: Kind | str):
    """Class decorator: make `kind` the class's `kind` (its name), registering it when it is a
    `Kind` (a name must be registered already: the built-in kinds are, in blockprune.tasks.scores)."""
    kind = register_kind(kind) if isinstance(kind, Kind) else get_kind(kind)

    def mark(cls):
        cls.kind = kind.name
        return cls
    return mark


@dataclass
class Task:
    """Common part: a name, its samples' ids, and the requests they make."""

    name: str
    sample_ids: list[str]
    requests: list[Request] = field(default_factory=list)
    request_sample: list[int] = field(default_factory=list)  # sample index of each request
    prefix: list[int] = field(default_factory=list)  # leading special tokens of every request (never scored)

    kind = "base"  # a registered Kind's name (`@kind_of_task`)
    available = 0  # samples the source has (the task uses a seeded subset of them)

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    @property
    def metric(self) -> str:
        return get_kind(self.kind).metric

    @property
    def higher_is_better(self) -> bool:
        return get_kind(self.kind).higher_is_better

    def per_sample(self, logprob: np.ndarray, greedy: np.ndarray, kl: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Engine output [C, R] (log-prob, greedy flag and, for KL tasks, summed KL per request)
        -> named per-sample arrays [C, N] (object arrays where a sample holds a list)."""
        raise NotImplementedError

    def value(self, per_sample: dict[str, np.ndarray]) -> np.ndarray:
        """Per-sample arrays [C, N] (or [N]) -> the task metric per candidate."""
        raise NotImplementedError

    def record_extras(self, per_sample: dict[str, np.ndarray]) -> dict[str, float]:
        """Summary values a whole record keeps beside `value` (none by default)."""
        return {}

    def gold_tokens(self, sample: int) -> tuple[int, ...] | None:
        """A sample as text the model should continue: its context and gold answer (calibration
        for healing, blockprune.healing.calibration); None for kinds without one (text windows)."""
        return None


@kind_of_task("multiple_choice")
class MultipleChoiceTask(Task):

    def __init__(self, name: str, rows: list[dict], tokenizer, ids: list[str], encode=None, norm: str = "bytes"):
        """`encode(context, choice) -> (context ids, choice ids)`: by default the leading special
        tokens + the context, and the choice, tokenized apart. `norm`: what acc_norm divides a
        choice's log-prob by, its length in "bytes" or in "chars" (lm-evaluation-harness; a row's
        `norm_choices`, when given, are the strings measured)."""
        super().__init__(name, ids)
        self.labels = []
        self._gold_of: list[int] = []  # each sample's gold choice request
        self.choice_bytes: list[int] = []
        self.choice_chars: list[int] = []
        self.choice_tokens: list[int] = []
        self.norm_len: list[int] = []
        self.norm = norm
        self.prefix = pre = leading_specials(tokenizer)
        if encode is None:
            def encode(context, choice):
                return (pre + tokenizer(context, add_special_tokens=False).input_ids,
                        tokenizer(choice, add_special_tokens=False).input_ids)
        for s, row in enumerate(rows):
            measured = row.get("norm_choices", row["choices"])
            for j, choice in enumerate(row["choices"]):
                ctx, cont = encode(row["context"], choice)
                if not cont:
                    raise TaskError(f"{name}: sample {ids[s]} has an empty choice")
                if not ctx:  # nothing to condition on: score from the second token
                    self.requests.append(Request(tuple(cont), 1))
                else:
                    self.requests.append(Request(tuple(ctx + cont), len(ctx)))
                self.request_sample.append(s)
                self.choice_bytes.append(max(1, len(choice.encode("utf-8"))))
                self.choice_chars.append(max(1, len(choice)))
                self.choice_tokens.append(len(cont))
                self.norm_len.append(max(1, len(measured[j]) if norm == "chars" else len(measured[j].encode("utf-8"))))
            self.labels.append(int(row["label"]))
            self._gold_of.append(len(self.requests) - len(row["choices"]) + int(row["label"]))
        self.labels_arr = np.array(self.labels)
        self._bounds = np.searchsorted(np.array(self.request_sample), np.arange(len(rows) + 1))

    def gold_tokens(self, sample):
        return tuple(self.requests[self._gold_of[sample]].tokens)

    def per_sample(self, logprob, greedy, kl=None):
        norm = logprob / np.array(self.norm_len)[None, :]
        num_cands = logprob.shape[0]
        acc, acc_norm, p_gold, p_gold_norm = [], [], [], []
        lists = {f: lists_array(num_cands, self.n) for f in ("choice_logprob", "choice_tokens", "choice_bytes", "choice_chars")}
        for s in range(self.n):
            lo, hi = self._bounds[s], self._bounds[s + 1]
            y = self.labels[s]
            acc.append(np.argmax(logprob[:, lo:hi], axis=1) == y)
            acc_norm.append(np.argmax(norm[:, lo:hi], axis=1) == y)
            p_gold.append(_softmax_at(logprob[:, lo:hi], y))
            p_gold_norm.append(_softmax_at(norm[:, lo:hi], y))
            for c in range(num_cands):
                lists["choice_logprob"][c, s] = logprob[c, lo:hi].tolist()
                lists["choice_tokens"][c, s] = self.choice_tokens[lo:hi]
                lists["choice_bytes"][c, s] = self.choice_bytes[lo:hi]
                lists["choice_chars"][c, s] = self.choice_chars[lo:hi]
        return {"correct": np.stack(acc, 1).astype(float), "correct_norm": np.stack(acc_norm, 1).astype(float),
                "p_gold": np.stack(p_gold, 1), "p_gold_norm": np.stack(p_gold_norm, 1), **lists}

    def value(self, per_sample):
        return np.asarray(per_sample["correct"], dtype=float).mean(axis=-1)

    def record_extras(self, per_sample):
        return {"acc_norm": float(np.mean(per_sample["correct_norm"]))}


def pair_encoder(tokenizer):
    """lm-eval's causal-LM pair encoding (HFLM: _encode_pair, empty context -> prefix token); the
    mc: benchmarks encode with it too, so their log-likelihoods are lm-eval's."""
    bos = getattr(tokenizer, "bos_token_id", None)
    prefix_id = bos if bos is not None else getattr(tokenizer, "eos_token_id", None)

    def encode(context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = list(tokenizer(continuation, add_special_tokens=False).input_ids)
            return ([prefix_id], cont) if cont[:1] != [prefix_id] else (cont[:1], cont[1:])
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = list(tokenizer(context + continuation).input_ids)
        ctx = list(tokenizer(context).input_ids)
        return ctx, whole[len(ctx):]
    return encode


@kind_of_task("exact_match")
class ExactMatchTask(Task):

    def __init__(self, name: str, rows: list[dict], tokenizer, ids: list[str], eos_token_id: int | None,
                 encode=None, terminate: bool = True):
        """`encode(prompt, answer) -> (prompt ids, answer ids)` (default: leading special tokens +
        prompt, and answer, tokenized apart); `terminate`: the answer must be followed by EOS
        (greedy generation stops there); False: only the answer's tokens are checked (lm-eval's
        loglikelihood `acc`, is_greedy)."""
        super().__init__(name, ids)
        if terminate and eos_token_id is None:
            raise TaskError(f"{name}: exact match needs an EOS token, and the tokenizer has none")
        self.gold_request: list[int] = []
        self.prefix = pre = leading_specials(tokenizer)
        if encode is None:
            def encode(prompt, answer):
                return (pre + tokenizer(prompt, add_special_tokens=False).input_ids,
                        tokenizer(answer, add_special_tokens=False).input_ids)
        for s, row in enumerate(rows):
            self.gold_request.append(len(self.requests))  # the first answer is the gold one
            for answer in row["answers"]:
                prompt, target = encode(row["prompt"], answer)
                if not prompt or len(prompt) == len(pre):
                    raise TaskError(f"{name}: sample {ids[s]} has an empty prompt")
                target = list(target) + ([eos_token_id] if terminate else [])
                if not target:
                    raise TaskError(f"{name}: sample {ids[s]} has an empty answer")
                self.requests.append(Request(tuple(prompt) + tuple(target), len(prompt)))
                self.request_sample.append(s)

    def gold_tokens(self, sample):
        return tuple(self.requests[self.gold_request[sample]].tokens)

    def per_sample(self, logprob, greedy, kl=None):
        match = np.zeros((greedy.shape[0], self.n))
        for r, s in enumerate(self.request_sample):
            match[:, s] = np.maximum(match[:, s], greedy[:, r])
        gold_tokens = np.array([self.requests[r].num_scored for r in self.gold_request], dtype=float)
        return {"match": match, "gold_logprob": logprob[:, self.gold_request],
                "gold_tokens": np.broadcast_to(gold_tokens, match.shape).copy()}

    def value(self, per_sample):
        return np.asarray(per_sample["match"], dtype=float).mean(axis=-1)


@kind_of_task("perplexity")
class PerplexityTask(Task):
    """Perplexity over fixed windows.

    The text is tokenized once (no special tokens) and cut into consecutive, non-overlapping
    windows of `window` tokens starting at token 0 (a shorter tail is dropped). Each window is one
    sample; its first token is context only, the other window-1 tokens are scored (after the
    tokenizer's leading special tokens, e.g. BOS, where it adds them by default). Perplexity is
    exp(total NLL / total scored tokens) over the chosen windows.
    """

    def __init__(self, name: str, windows: list[list[int]], ids: list[str], prefix: Sequence[int] = ()):
        super().__init__(name, ids)
        self.prefix = list(prefix)
        for s, w in enumerate(windows):  # the same tokens are scored with or without a prefix
            self.requests.append(Request(tuple(self.prefix) + tuple(w), len(self.prefix) + 1))
            self.request_sample.append(s)

    def per_sample(self, logprob, greedy, kl=None):
        ntok = np.array([r.num_scored for r in self.requests], dtype=float)
        return {"nll": -logprob, "ntok": np.broadcast_to(ntok, logprob.shape).copy()}

    def value(self, per_sample):
        nll = np.asarray(per_sample["nll"], dtype=float)
        ntok = np.asarray(per_sample["ntok"], dtype=float)
        return np.exp(nll.sum(axis=-1) / ntok.sum(axis=-1))


@kind_of_task("kl")
class KLTask(PerplexityTask):
    """Mean per-token KL(p_dense || p_candidate) over the windows of a calibration text.

    Needs no labels (EvoPress's objective): the engine scores the dense model in the same pass
    (its keep-mask is a path of the trie) and compares the two distributions at every scored
    position. The candidate's perplexity on the text is kept beside it.
    """

    def per_sample(self, logprob, greedy, kl=None):
        if kl is None:
            raise ValueError("a KL task needs the engine's KL output (score(..., kl=True))")
        out = super().per_sample(logprob, greedy)
        return {"kl": np.asarray(kl, dtype=float), **out}

    def value(self, per_sample):
        kl = np.asarray(per_sample["kl"], dtype=float)
        return kl.sum(axis=-1) / np.asarray(per_sample["ntok"], dtype=float).sum(axis=-1)


def _softmax_at(scores: np.ndarray, label: int) -> np.ndarray:
    """[C, choices] scores -> [C] softmax probability of the label's column."""
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z[:, label] / z.sum(axis=1)


def lists_array(rows: int, cols: int) -> np.ndarray:
    """An empty [rows, cols] object array, for per-sample fields that hold a list."""
    return np.empty((rows, cols), dtype=object)
