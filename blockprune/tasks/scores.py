"""Named scores of a task, and how each turns per-sample records into a drop.

A task's stored record keeps what every sample said (per-choice log-probs, the gold answer's
log-prob, per-window NLL or KL), not only whether it was right. A score reads those fields as a
per-sample (numerator, denominator) pair; a metric is a function of the two sums, so a paired
bootstrap resamples the pairs. Three forms:

* `mean`    quality q = sum num / sum den (den = 1 per sample): acc, acc_norm, exact_match, p_gold.
            drop = 1 - q / q_dense (the plain difference q_dense - q when q_dense = 0).
* `loglik`  q = exp(-sum NLL / sum tokens), the per-token geometric-mean probability: perplexity
            (q = 1/ppl) and gold_logprob. drop = 1 - q / q_dense = 1 - exp(-(NLL - NLL_dense) per token).
* `kl`      mean KL(p_dense || p_candidate) per token, in nats: drop = the KL itself (dense: 0).

How they mix in a mean over tasks: a relative drop of a `loglik` score is 1 - exp(-dNLL) ~ dNLL
for small losses; the KL is the dNLL of text sampled from the dense model itself, so 1 - exp(-KL)
is the relative loss of that text's per-token probability and KL ~ that loss for small values. A
KL of 0.05 nats/token sits on the same scale as a 5% relative drop; large KLs grow faster (a
relative drop is capped at 1, KL is not), which only makes a harmful set look worse.

Which score ranks (`--rank-by`): by default, per task kind, the lowest-variance faithful one:
p_gold (expected accuracy: the probability the model puts on the gold choice among the choices,
a softmax over their summed log-probs, i.e. the soft version of acc), gold_logprob, perplexity
(NLL), kl. The thresholded metrics (acc, acc_norm, exact_match) are shown beside them in every
table. p_gold_norm, the softmax over length-normalised (per-byte) scores, i.e. soft acc_norm, is
kept too, but it is not the default: dividing log-probs by 5-10 bytes flattens the softmax to
near uniform (SmolLM2 on emoji_movie: 0.209 with 5 choices), which shrinks every drop 3-4x
against accuracy's (block 2 removed: acc -23%, p_gold_norm -6%), so a 5% tolerance on it would
pass a set that loses a fifth of the accuracy. p_gold keeps accuracy's scale with a smaller
standard error (README, "How candidates are compared").

Each task kind declares its scores, its metric, the one shown and what the engine must do for it
(`Kind`, registered by name in KINDS: the built-in kinds here, a new one with `register_kind`, a
new score with `register`); BY_KIND, METRIC and SHOWN are views of those declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np



class ScoreError(Exception):
    """A score that does not exist, or that a task (or an old store) does not have."""


@dataclass(frozen=True)
class Score:
    name: str
    form: str  # mean | loglik | kl
    num: str  # per-sample field of the numerator
    den: str | None  # per-sample field of the denominator (None: 1 per sample)
    negate: bool  # the numerator field holds a log-prob (loglik wants an NLL)
    what: str

    def fields(self) -> tuple[str, ...]:
        return (self.num,) if self.den is None else (self.num, self.den)

    def arrays(self, per_sample: dict) -> tuple[np.ndarray, np.ndarray]:
        """(numerator, denominator) per sample from a record's per-sample dict."""
        missing = [f for f in self.fields() if f not in per_sample]
        if missing:
            raise ScoreError(f"score {self.name!r} needs per-sample {', '.join(missing)}, which the record lacks")
        num = np.asarray(per_sample[self.num], dtype=float)
        if self.negate:
            num = -num
        den = np.ones_like(num) if self.den is None else np.asarray(per_sample[self.den], dtype=float)
        return num, den

    def quality(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """Higher-is-better quality from the sums (for `kl`: minus the KL)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = num / den
        if self.form == "loglik":
            return np.exp(-ratio)
        return -ratio if self.form == "kl" else ratio

    def value(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """The score as people read it: accuracy, perplexity, mean log-prob per token, KL per token."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = num / den
        if self.name == "perplexity":
            return np.exp(ratio)
        return -ratio if self.form == "loglik" else ratio

    def drop(self, base: tuple[np.ndarray, np.ndarray], cand: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Drop of candidate sums against the dense model's sums (any broadcastable shapes)."""
        q = self.quality(*cand)
        if self.form == "kl":
            return -q
        q0 = self.quality(*base)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(q0 > 0, 1.0 - q / np.where(q0 > 0, q0, 1.0), q0 - q)


SCORES = {s.name: s for s in [
    Score("p_gold", "mean", "p_gold", None, False,
          "expected accuracy: probability on the gold choice (softmax over the choices' summed log-probs)"),
    Score("p_gold_norm", "mean", "p_gold_norm", None, False,
          "soft acc_norm: softmax over the choices' length-normalised (per-byte) log-probs"),
    Score("acc", "mean", "correct", None, False, "accuracy (argmax of the choices' summed log-probs)"),
    Score("acc_norm", "mean", "correct_norm", None, False, "accuracy of the length-normalised log-probs"),
    Score("exact_match", "mean", "match", None, False, "greedy decoding reproduces an answer"),
    Score("gold_logprob", "loglik", "gold_logprob", "gold_tokens", True,
          "mean log-prob per token of the gold answer (and EOS)"),
    Score("perplexity", "loglik", "nll", "ntok", False, "perplexity (NLL per token)"),
    Score("kl", "kl", "kl", "ntok", False, "KL(dense || candidate) per token, nats"),
    Score("dense_logprob", "loglik", "dense_logprob", "dense_tokens", True,
          "per-token log-prob of the dense model's own greedy continuation (no labels)"),
    Score("f1", "mean", "f1", None, False, "token F1 of the generated answer (normalised) against the best answer"),
]}


# ---- task kinds: what each declares --------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """What a kind of task declares. `scores`: the score names (blockprune.tasks.scores) its records
    hold, the first the default ranking score; `metric`: its own value (`Task.value`); `shown`: the
    thresholded metric shown beside the ranking score (default: `metric`); `needs_dense`: the
    engine scores the dense model in the same pass and gives the per-request KL to it;
    `text_windows`: its requests are windows of one text, scored after their first token, whose
    perplexity a plain forward recomputes (validate's check outside the engine); `generates`: its
    samples are also decoded greedily under every candidate (blockprune.engine.decode) and its
    `per_sample` reads the generated tokens (`generated=`)."""

    name: str
    scores: tuple[str, ...]
    metric: str
    higher_is_better: bool = True
    shown: str | None = None
    needs_dense: bool = False
    text_windows: bool = False
    generates: bool = False

    def __post_init__(self):
        if not self.scores:
            raise ValueError(f"task kind {self.name!r} declares no scores")
        if self.shown is None:
            object.__setattr__(self, "shown", self.metric)
        for what in ("metric", "shown"):
            if getattr(self, what) not in self.scores:
                raise ValueError(f"task kind {self.name!r}: its {what} {getattr(self, what)!r} is not one of its "
                                 f"scores {', '.join(self.scores)}")

    @property
    def default_score(self) -> str:
        return self.scores[0]


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Make a kind known to the search, the runners and the analysis (by its name)."""
    unknown = [s for s in kind.scores if s not in SCORES]
    if unknown:
        raise ValueError(f"task kind {kind.name!r}: no score named {', '.join(map(repr, unknown))} "
                         "(register it first: scores.register)")
    if KINDS.get(kind.name, kind) != kind:
        raise ValueError(f"task kind {kind.name!r} is registered already, with other declarations")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ScoreError(f"unknown task kind {name!r}: registered kinds are {', '.join(KINDS)}") from None


def needs_dense(task) -> bool:
    """Whether the engine must score the dense model beside `task`'s candidates (a task of an
    unregistered kind, e.g. a planner's stand-in, needs nothing)."""
    kind = KINDS.get(task.kind)
    return bool(kind and kind.needs_dense)


def kind_of_metric(metric: str) -> Kind:
    """The first registered kind whose metric this is (run.json written before it kept the kind)."""
    for kind in KINDS.values():
        if kind.metric == metric:
            return kind
    raise ScoreError(f"no task kind has the metric {metric!r}")


# The built-in kinds (their tasks: blockprune.tasks.kinds). The thresholded metric papers report is shown
# beside the ranking score; for KL the text's perplexity.
for _kind in (
    Kind("multiple_choice", ("p_gold", "p_gold_norm", "acc", "acc_norm"), metric="acc"),
    Kind("exact_match", ("gold_logprob", "exact_match"), metric="exact_match"),
    Kind("generate", ("dense_logprob", "gold_logprob", "exact_match", "f1"), metric="exact_match", generates=True),
    Kind("perplexity", ("perplexity",), metric="perplexity", higher_is_better=False, text_windows=True),
    Kind("kl", ("kl", "perplexity"), metric="kl", higher_is_better=False, shown="perplexity", needs_dense=True,
         text_windows=True),
):
    register_kind(_kind)


class _ByKind(Mapping):
    """{kind name: one of its declarations}, live: a kind registered later is in it."""

    def __init__(self, pick):
        self._pick = pick

    def __getitem__(self, name):
        kind = KINDS.get(name)
        if kind is None:
            raise KeyError(name)
        return self._pick(kind)

    def __iter__(self):
        return iter(KINDS)

    def __len__(self):
        return len(KINDS)


# Per task kind, read from its registration (KINDS): the scores it has (the first ranks by
# default); its metric; SHOWN, the one shown beside the ranking score.
BY_KIND = _ByKind(lambda k: k.scores)
METRIC = _ByKind(lambda k: k.metric)
SHOWN = _ByKind(lambda k: k.shown)


def register(score: Score) -> Score:
    """Make a score known by name (a kind registered from outside the package may bring its own)."""
    if SCORES.get(score.name, score) != score:
        raise ValueError(f"score {score.name!r} is registered already, with another definition")
    SCORES[score.name] = score
    return score


def get(name: str) -> Score:
    try:
        return SCORES[name]
    except KeyError:
        raise ScoreError(f"unknown score {name!r}: choose from {', '.join(SCORES)}") from None


def check_rank_by(spec: str | None) -> None:
    """The score names of a `--rank-by` value, checked before any task is loaded."""
    for entry in [e.strip() for e in (spec or "").split(",") if e.strip()]:
        task, sep, name = entry.rpartition("=")
        if (sep and not task) or (not sep and name in ("default", "metric")):
            if sep:
                raise ScoreError(f"--rank-by {entry!r}: expected TASK=SCORE")
            continue
        get(name)


def resolve_rank_by(spec: str | None, kinds: dict[str, str]) -> dict[str, str]:
    """{task: score} from a `--rank-by` value and the tasks' kinds.

    `spec`: empty/None or `default` (each kind's lowest-variance faithful score), `metric` (each
    kind's thresholded metric), or comma-separated entries `SCORE` (every task that has it) and
    `TASK=SCORE` (one task). A score no named task has, or an unknown task, is an error.
    """
    chosen = {t: BY_KIND[k][0] for t, k in kinds.items()}
    for entry in [e.strip() for e in (spec or "").split(",") if e.strip()]:
        task, sep, name = entry.rpartition("=")
        if not sep and name in ("default", "metric"):
            chosen.update({t: BY_KIND[k][0] if name == "default" else METRIC[k] for t, k in kinds.items()})
            continue
        get(name)
        if sep:
            if task not in kinds:
                raise ScoreError(f"--rank-by {entry!r}: no task named {task!r} (tasks: {', '.join(kinds)})")
            if name not in BY_KIND[kinds[task]]:
                raise ScoreError(f"--rank-by {entry!r}: task {task} ({kinds[task]}) has no score {name!r}; "
                                 f"it has {', '.join(BY_KIND[kinds[task]])}")
            chosen[task] = name
            continue
        having = [t for t, k in kinds.items() if name in BY_KIND[k]]
        if not having:
            raise ScoreError(f"--rank-by {name!r}: no task has this score (tasks' kinds: {', '.join(sorted(set(kinds.values())))})")
        chosen.update({t: name for t in having})
    return chosen

