"""Tasks as data: samples in, scoring requests out, per-sample scores back.

A task turns its samples into `Request`s for the engine (log-likelihood of a continuation, a
perplexity window, a greedy-match target) and turns the engine's per-request log-probabilities and
greedy flags back into per-sample scores and one metric. It never sees blocks or candidates.

Kinds and their JSONL rows (what each record keeps per sample is listed; see blockprune.scores
for the scores read from it):
* multiple choice  `{"context": str, "choices": [str, ...], "label": int}` -> acc (and acc_norm,
  p_gold). Context and each choice are tokenized separately (no special tokens) and concatenated;
  a choice's score is the sum of its tokens' log-probs; acc_norm divides it by the choice's length
  in bytes. p_gold is the model's probability of the gold choice among the choices (a softmax over
  the summed log-probs: expected accuracy), p_gold_norm the same over the length-normalised
  scores (soft acc_norm). Kept: correct, correct_norm, p_gold, p_gold_norm, choice_logprob and
  choice_tokens / choice_bytes / choice_chars.
* perplexity       `{"text": str}` -> perplexity over fixed windows (see `PerplexityTask`). Kept:
  nll, ntok per window.
* exact match      `{"prompt": str, "answers": [str, ...]}` -> exact_match: greedy decoding
  reproduces an answer followed by EOS, checked in one teacher-forced pass (every answer token
  and the EOS must be the argmax at its position). Kept: match, and the first (gold) answer's
  gold_logprob (summed over its tokens and the EOS) and gold_tokens.
* KL to the dense model, from `{"text"}` rows or a play: windows as for perplexity, scored by
  the mean per-token KL(p_dense || p_candidate) (no labels). Kept: kl, ntok, nll per window.

Every request starts with the tokenizer's own leading special tokens where it adds them by
default (BOS for Gemma, Llama 3, Mistral: `leading_specials`), never scored, so a model is measured
in the regime it is used in; run.json records them.

Task specs: `ppl:shakespeare/<play>`, `kl:<text source>` (`kl:shakespeare/<play>`,
`kl:jsonl:<path>`, `kl:hf:...`), `bigbench:<task>[/<subtask>]`, `jsonl:<path>`,
`hf:<dataset>[/<config>][@<split>]` (a hub id or a local `datasets` directory),
`lm-eval:<task name | path/to/task.yaml>` (lm-evaluation-harness's own task: blockprune.lmeval). A `#N` suffix
overrides the number of samples for that task (`bigbench:emoji_movie#30`): only a trailing `#<digits>`
counts, a `#` anywhere else is part of the spec (`jsonl:notes#2/rows.jsonl`), and a spec that
itself ends in `#<digits>` is written with one more `#` before the count or at the end
(`jsonl:take#2#`: the file `take#2`, every sample; `jsonl:take#2##5`: five of them). `split_count`
reads it, `join_count` writes it.

Every task built from rows or a text keeps `source_hash`, a hash of its whole source (all rows,
or the text) before any sample is chosen: run.json binds a run to it (see blockprune.store).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .engine import Request

DEFAULT_PPL_WINDOW = 256


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


@dataclass
class Task:
    """Common part: a name, its samples' ids, and the requests they make."""

    name: str
    sample_ids: list[str]
    requests: list[Request] = field(default_factory=list)
    request_sample: list[int] = field(default_factory=list)  # sample index of each request
    prefix: list[int] = field(default_factory=list)  # leading special tokens of every request (never scored)

    kind = "base"
    metric = ""
    higher_is_better = True
    available = 0  # samples the source has (the task uses a seeded subset of them)

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    def per_sample(self, logprob: np.ndarray, greedy: np.ndarray, kl: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Engine output [C, R] (log-prob, greedy flag and, for KL tasks, summed KL per request)
        -> named per-sample arrays [C, N] (object arrays where a sample holds a list)."""
        raise NotImplementedError

    def value(self, per_sample: dict[str, np.ndarray]) -> np.ndarray:
        """Per-sample arrays [C, N] (or [N]) -> the task metric per candidate."""
        raise NotImplementedError



class MultipleChoiceTask(Task):
    kind = "multiple_choice"
    metric = "acc"
    higher_is_better = True

    def __init__(self, name: str, rows: list[dict], tokenizer, ids: list[str], encode=None, norm: str = "bytes"):
        """`encode(context, choice) -> (context ids, choice ids)`: by default the leading special
        tokens + the context, and the choice, tokenized apart. `norm`: what acc_norm divides a
        choice's log-prob by, its length in "bytes" or in "chars" (lm-evaluation-harness; a row's
        `norm_choices`, when given, are the strings measured)."""
        super().__init__(name, ids)
        self.labels = []
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
        self.labels_arr = np.array(self.labels)
        self._bounds = np.searchsorted(np.array(self.request_sample), np.arange(len(rows) + 1))

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


class ExactMatchTask(Task):
    kind = "exact_match"
    metric = "exact_match"
    higher_is_better = True

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

    def per_sample(self, logprob, greedy, kl=None):
        match = np.zeros((greedy.shape[0], self.n))
        for r, s in enumerate(self.request_sample):
            match[:, s] = np.maximum(match[:, s], greedy[:, r])
        gold_tokens = np.array([self.requests[r].num_scored for r in self.gold_request], dtype=float)
        return {"match": match, "gold_logprob": logprob[:, self.gold_request],
                "gold_tokens": np.broadcast_to(gold_tokens, match.shape).copy()}

    def value(self, per_sample):
        return np.asarray(per_sample["match"], dtype=float).mean(axis=-1)


class PerplexityTask(Task):
    """Perplexity over fixed windows.

    The text is tokenized once (no special tokens) and cut into consecutive, non-overlapping
    windows of `window` tokens starting at token 0 (a shorter tail is dropped). Each window is one
    sample; its first token is context only, the other window-1 tokens are scored (after the
    tokenizer's leading special tokens, e.g. BOS, where it adds them by default). Perplexity is
    exp(total NLL / total scored tokens) over the chosen windows.
    """

    kind = "perplexity"
    metric = "perplexity"
    higher_is_better = False

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


class KLTask(PerplexityTask):
    """Mean per-token KL(p_dense || p_candidate) over the windows of a calibration text.

    Needs no labels (EvoPress's objective): the engine scores the dense model in the same pass
    (its keep-mask is a path of the trie) and compares the two distributions at every scored
    position. The candidate's perplexity on the text is kept beside it.
    """

    kind = "kl"
    metric = "kl"
    higher_is_better = False

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


# ---- building tasks from specs -----------------------------------------------------------------
def _select(ids: list[str], rows: list[Any], samples: int | None, seed: int, name: str, exclude=()):
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
    """Validate rows of one kind; returns the kind. `where[i]` locates row i in messages."""
    kinds = {
        "multiple_choice": ("context", "choices", "label"),
        "perplexity": ("text",),
        "exact_match": ("prompt", "answers"),
    }
    first = rows[0]
    kind = next((k for k, keys in kinds.items() if all(key in first for key in keys)), None)
    if kind is None:
        raise TaskError(f"{name}: {where[0]}: row has none of the field sets {{context, choices, label}}, {{text}}, {{prompt, answers}}")
    for row, loc in zip(rows, where):
        missing = [k for k in kinds[kind] if k not in row]
        if missing:
            raise TaskError(f"{name}: {loc}: missing field(s) {', '.join(missing)}")
        if kind == "multiple_choice":
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
        elif kind == "perplexity":
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
    return kind


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
    if not path.is_file():
        raise TaskError(f"jsonl task file not found: {path}")
    rows = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read {path}: {exc.strerror or exc}") from None
    for lineno, data in enumerate(raw.splitlines(), 1):
        try:
            line = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise TaskError(f"{path}:{lineno}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {exc.start + 1})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        except RecursionError:
            raise TaskError(f"{path}:{lineno}: JSON nested too deeply to be a task row") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise TaskError(f"{path}:{lineno}: unreadable JSON value ({' '.join(str(exc).split())[:120]})") from None
        if not isinstance(row, dict):
            raise TaskError(f"{path}:{lineno}: a row must be a JSON object")
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # "\ud800": a lone surrogate, which no tokenizer can encode
            raise TaskError(f"{path}:{lineno}: a string holds a lone UTF-16 surrogate (an escape such as \\ud800 "
                            "without its pair), which is not text") from None
        except RecursionError:
            raise TaskError(f"{path}:{lineno}: JSON nested too deeply to be a task row") from None
        row["_line"] = lineno
        rows.append(row)
    if not rows:
        raise TaskError(f"{path}: empty task file")
    return rows


def _from_rows(name, rows, where, ids, tokenizer, eos, samples, seed, window, kl=False, exclude=()) -> Task:
    kind = _check_rows(name, rows, where)
    if kl and kind != "perplexity":
        raise TaskError(f"{name}: a kl: source needs {{\"text\"}} rows, these are {kind.replace('_', ' ')} rows")
    if kind == "perplexity":
        text = "\n\n".join(r["text"] for r in rows)
        return _ppl_task(name, text, tokenizer, samples, seed, window, kl, exclude)
    available = len(rows)
    digest = source_hash([[i, r] for i, r in zip(ids, rows)])
    ids, rows = _select(ids, rows, samples, seed, name, exclude)
    task = MultipleChoiceTask(name, rows, tokenizer, ids) if kind == "multiple_choice" else \
        ExactMatchTask(name, rows, tokenizer, ids, eos)
    task.available = available
    task.source_hash = digest
    return task


def _ppl_task(name, text, tokenizer, samples, seed, window, kl=False, exclude=()) -> PerplexityTask:
    if window < 2:
        raise TaskError(f"{name}: perplexity window must be at least 2 tokens")
    tokens = tokenizer(text, add_special_tokens=False).input_ids
    windows = [tokens[i : i + window] for i in range(0, len(tokens) - window + 1, window)]
    if not windows:
        raise TaskError(f"{name}: text has {len(tokens)} tokens, fewer than one window of {window}")
    ids = [f"w{i}" for i in range(len(windows))]
    available = len(windows)
    ids, windows = _select(ids, windows, samples, seed, name, exclude)
    task = (KLTask if kl else PerplexityTask)(name, windows, ids, leading_specials(tokenizer))
    task.available = available
    task.source_hash = source_hash(text)
    return task


def _bigbench_rows(task: dict, name: str) -> list[dict]:
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


SCHEMES = ("ppl", "kl", "bigbench", "jsonl", "hf", "lm-eval")
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


def _path_of(rest: str) -> Path:
    return Path(os.path.expanduser(rest))


def absolute_spec(spec: str) -> str:
    """The spec with its local paths (jsonl:, kl:jsonl:, a local hf: directory, an lm-eval YAML file)
    made absolute, so a run reads the same files from any working directory; the count is kept."""
    base, count = split_count(spec)
    scheme, _, rest = base.partition(":")
    prefix = ""
    if scheme == "kl" and rest.startswith(("jsonl:", "hf:")):
        prefix, (scheme, _, rest) = "kl:", rest.partition(":")
    if scheme == "jsonl" and rest:
        rest = os.path.abspath(_path_of(rest))
    elif scheme == "hf" and rest:
        name, at, split = rest.partition("@")
        if _path_of(name).exists():
            rest = os.path.abspath(_path_of(name)) + at + split
    elif scheme == "lm-eval" and rest.endswith((".yaml", ".yml")) and _path_of(rest).exists():
        rest = os.path.abspath(_path_of(rest))
    else:
        return spec
    return join_count(f"{prefix}{scheme}:{rest}", count)


def check_spec(spec: str) -> None:
    """Syntax of a task spec, checked before anything is loaded."""
    base, _ = split_count(spec)
    scheme, sep, rest = base.partition(":")
    if not sep or not rest:
        raise TaskError(f"unknown task spec {spec!r}: expected ppl:shakespeare/<play>, kl:<text source>, "
                        "bigbench:<task>[/<subtask>], jsonl:<path>, hf:<dataset> or lm-eval:<task name | task.yaml>")
    if scheme not in SCHEMES:
        raise TaskError(f"unknown task scheme {scheme!r} in {spec!r}: expected {', '.join(SCHEMES)}")
    if scheme in ("ppl", "bigbench") or (scheme == "kl" and rest.startswith("shakespeare/")):
        if "#" in rest:  # names, never paths: a '#' in them is a mistyped count
            raise TaskError(f"bad sample count in task spec {spec!r}: use SPEC#N with N >= 1 (a trailing #<digits>)")
    if scheme == "kl":
        source = rest
        if not (source.startswith("shakespeare/") or source.startswith("jsonl:") or source.startswith("hf:")):
            raise TaskError(f"unknown KL text source {source!r} in {spec!r}: expected kl:shakespeare/<play>, "
                            "kl:jsonl:<path> ({\"text\"} rows) or kl:hf:<dataset>")


def load_task(spec: str, tokenizer, eos_token_id: int | None = None, samples: int | None = None,
              seed: int = 0, ppl_window: int = DEFAULT_PPL_WINDOW, exclude=()) -> Task:
    """Build a task from its spec. Raises TaskError (one line) on any problem. `exclude`: sample
    ids not to use (held-out validation)."""
    from . import data

    check_spec(spec)
    spec, count = split_count(spec)
    if count:
        samples = count
    scheme, _, rest = spec.partition(":")
    if scheme == "lm-eval":
        from .lmeval import load_lmeval_task

        return load_lmeval_task(rest, tokenizer, eos_token_id, samples, seed, exclude)
    kl = scheme == "kl"
    if kl:
        scheme, _, rest = ("ppl", "", rest) if rest.startswith("shakespeare/") else rest.partition(":")
    if scheme == "ppl":
        source, _, play = rest.partition("/")
        if source != "shakespeare" or not play:
            raise TaskError(f"unknown perplexity source {rest!r}: expected ppl:shakespeare/<play>")
        try:
            text = data.shakespeare_text(play)
        except data.DataError as exc:
            raise TaskError(str(exc)) from None
        return _ppl_task(f"{'kl_' if kl else ''}shakespeare_{play}", text, tokenizer, samples, seed, ppl_window, kl, exclude)
    if scheme == "bigbench":
        task, _, sub = rest.partition("/")
        try:
            raw = data.bigbench_task(task, sub or None)
        except data.DataError as exc:
            raise TaskError(str(exc)) from None
        name = rest.replace("/", "_")
        rows = _bigbench_rows(raw, rest)
        ids = [str(i) for i in range(len(rows))]
        return _from_rows(name, rows, [f"example {i}" for i in ids], ids, tokenizer, eos_token_id, samples, seed, ppl_window,
                          exclude=exclude)
    if scheme == "jsonl":
        path = _path_of(rest)
        rows = read_jsonl(path)
        where = [f"{path}:{r.pop('_line')}" for r in rows]
        ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
        return _from_rows(f"{'kl_' if kl else ''}{path.stem}", rows, where, ids, tokenizer, eos_token_id, samples, seed,
                          ppl_window, kl, exclude)
    return _hf_task(rest, tokenizer, eos_token_id, samples, seed, ppl_window, kl, exclude)


def _hf_task(rest: str, tokenizer, eos, samples, seed, window, kl=False, exclude=()) -> Task:
    """`hf:<dataset>[/<config>][@<split>]`: rows already in one of the JSONL layouts."""
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
    name = ("kl_" if kl else "") + (path.name if path.exists() else name_part.replace("/", "_"))
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    return _from_rows(name, rows, [f"row {i}" for i in range(len(rows))], ids, tokenizer, eos, samples, seed, window, kl,
                      exclude)
