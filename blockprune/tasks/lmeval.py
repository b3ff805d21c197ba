"""lm-evaluation-harness tasks as blockprune tasks (`--task lm-eval:<name>` or `lm-eval:<path.yaml>`).

lm-eval itself loads the task (its registry, or a YAML file and its folder as `include_path`),
its documents, prompts, choices, target delimiter and few-shot examples, and builds its own
requests (`build_all_requests`, with lm-eval's default few-shot seed). blockprune only turns them
into engine requests, tokenised as lm-eval's HF model does for a causal LM: trailing spaces of the
context move to the continuation, the continuation's tokens are those of the whole string after
the context's (both encoded with the tokenizer's default special tokens, so BOS where it adds
one), and an empty context is the BOS (else EOS) token. acc and acc_norm follow lm-eval's
definitions (acc_norm divides by the choice's length in characters).

Supported output types: multiple_choice (one gold index or gold string): acc, acc_norm, p_gold;
loglikelihood (LAMBADA-style: one continuation): an exact-match task whose match is lm-eval's
`acc` (every continuation token is the greedy one) and whose gold_logprob is its log-likelihood.
generate_until (greedy only): lm-eval builds each request (the prompt with its few-shot context
as lm-eval formats it, `until` and `max_gen_toks` from its generation_kwargs, normalised as its HF
model does; EOS also stops), blockprune decodes it under every candidate in one batch (a
GenerationTask: kind "generate"), and lm-eval's own filter ensembles and `process_results` score
the generated strings, so the per-sample figures are lm-eval's: each metric is stored per sample
under its name (`<metric>,<filter>` when the task has several filter ensembles), the first
higher-is-better one is also the task's `match` (value = its mean); `f1` stays blockprune's token
F1. Sampling configs (do_sample, temperature > 0, repeats), other decoding options, corpus-level
metrics (aggregation other than mean) and filters or metrics needing a package that is not
installed are refused in one line when the task loads. The samples are a seeded subset of
lm-eval's evaluation documents, ids = doc ids.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import dataclasses
import math

import numpy as np

from .gen_task import GenerationTask
from .kinds import ExactMatchTask, MultipleChoiceTask, Task, TaskError, pair_encoder
from .loaders import select

FEWSHOT_SEED = 1234  # lm_eval.evaluator.simple_evaluate's default


def _quiet() -> None:
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def _silenced():
    """lm-eval draws its own progress bars while it builds requests; blockprune draws its own."""
    return contextlib.redirect_stderr(io.StringIO())


def _offline() -> bool:
    """No hub here: let datasets and the hub client use their caches at once instead of retrying
    for most of a minute."""
    import os

    from ..data import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        try:
            import datasets.config
            import huggingface_hub.constants

            datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
        except (ImportError, AttributeError):
            pass
        return True
    return False


def _load(spec: str):
    offline = _offline()
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TaskError("lm-eval tasks need lm-evaluation-harness: pip install 'blockprune[lmeval]'") from None
    _quiet()
    path = Path(spec).expanduser()
    if spec.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise TaskError(f"lm-eval task file not found: {path}")
        import yaml

        class _Loader(yaml.SafeLoader):  # lm-eval's own tags (!function ...) are lm-eval's to resolve
            pass

        _Loader.add_multi_constructor("!", lambda loader, tag, node: None)
        try:
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise TaskError(f"{path}: not a YAML task file ({str(exc).splitlines()[0]})") from None
        name = config.get("task") if isinstance(config, dict) else None
        if not isinstance(name, str):
            raise TaskError(f"{path}: no `task:` name in the YAML file")
        manager = TaskManager(include_path=str(path.parent.resolve()), include_defaults=False)
    else:
        name, manager = spec, TaskManager()
    if name not in manager.all_tasks:
        raise TaskError(f"lm-eval has no task {name!r}" + (f" in {path.parent}" if path.suffix else ""))
    try:
        with _silenced():
            found = manager.load([name])["tasks"]
    except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many kinds; one line each
        text = str(exc).strip()
        raise TaskError(f"lm-eval could not load {name!r}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"
                        + (" (the hub is unreachable: only datasets in the local cache or local files load)"
                           if offline else "")) from None
    leaves = list(found.values())
    if len(leaves) != 1:
        names = sorted(t.config.task for t in leaves)
        raise TaskError(f"lm-eval {name!r} is a group of {len(leaves)} tasks; name one: {', '.join(names[:8])}")
    return leaves[0]


def load_lmeval_task(spec: str, tokenizer, eos_token_id: int | None, samples: int | None, seed: int,
                     exclude=()) -> Task:
    task = _load(spec)
    name = task.config.task
    output_type = task.OUTPUT_TYPE
    if output_type not in ("multiple_choice", "loglikelihood", "generate_until"):
        raise TaskError(f"lm-eval task {name!r} has output type {output_type}; blockprune takes multiple_choice, "
                        "loglikelihood and generate_until tasks")
    if output_type == "generate_until":
        _check_generation_config(task)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)
    try:
        with _silenced():
            task.build_all_requests(rank=0, world_size=1)  # every doc, in order: few-shot draws as lm-eval's own run
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip()
        raise TaskError(f"lm-eval could not build {name!r}: {text.splitlines()[0] if text else type(exc).__name__}") from None
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    rows, ids = [], []
    if output_type == "generate_until":
        return _generation_task(task, by_doc, tokenizer, eos_token_id, samples, seed, exclude)
    if output_type == "loglikelihood":
        for doc_id in sorted(by_doc):
            (inst,) = by_doc[doc_id]
            rows.append({"prompt": inst.arguments[0], "answers": [inst.arguments[1]]})
            ids.append(str(doc_id))
        available = len(rows)
        ids, rows = select(ids, rows, samples, seed, name, exclude)
        out = ExactMatchTask(name, rows, tokenizer, ids, eos_token_id, encode=pair_encoder(tokenizer), terminate=False)
        out.available = available
        return out
    for doc_id in sorted(by_doc):
        insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
        doc = insts[0].doc
        choices = list(task.doc_to_choice(doc))
        gold = task.doc_to_target(doc)
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -1
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise TaskError(f"lm-eval {name!r} doc {doc_id}: the target {gold!r} is not one index into its "
                            f"{len(choices)} choices")
        contexts = {inst.arguments[0] for inst in insts}
        if len(insts) != len(choices) or len(contexts) != 1:
            raise TaskError(f"lm-eval {name!r} doc {doc_id}: expected one context and {len(choices)} continuations")
        rows.append({"context": insts[0].arguments[0], "choices": [inst.arguments[1] for inst in insts],
                     "norm_choices": choices, "label": gold})
        ids.append(str(doc_id))
    available = len(rows)
    ids, rows = select(ids, rows, samples, seed, name, exclude)
    out = MultipleChoiceTask(name, rows, tokenizer, ids, encode=pair_encoder(tokenizer), norm="chars")
    out.available = available
    return out


# ---- generate_until -------------------------------------------------------------------------
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default when a task names none
_MAX_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
_NEUTRAL = {"num_beams": 1, "repetition_penalty": 1.0, "top_p": 1.0, "num_return_sequences": 1}
_IGNORED_WHEN_GREEDY = ("top_k", "top_p")  # HF's generate ignores them without sampling
_OWN_FIELDS = ("match", "f1", "dense_logprob", "dense_tokens", "gold_logprob", "gold_tokens")


def _check_generation_config(task) -> None:
    """Greedy decoding of one response per document, or a one-line refusal."""
    name, config = task.config.task, task.config
    kwargs = dict(config.generation_kwargs or {})
    temperature = kwargs.get("temperature", 0.0)
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        raise TaskError(f"lm-eval task {name!r}: temperature {temperature!r} is not a number") from None
    if kwargs.get("do_sample") or temperature > 0:
        raise TaskError(f"lm-eval task {name!r} samples (do_sample: {kwargs.get('do_sample', False)}, temperature: "
                        f"{temperature}); blockprune decodes greedily only (do_sample: false, temperature: 0)")
    if (config.repeats or 1) != 1:
        raise TaskError(f"lm-eval task {name!r} asks for {config.repeats} responses per document (repeats); "
                        "blockprune decodes one greedy response")
    other = sorted(k for k in kwargs if k not in ("until", "do_sample", "temperature", *_MAX_ALIASES,
                                                 *_IGNORED_WHEN_GREEDY)
                   and not (k in _NEUTRAL and kwargs[k] == _NEUTRAL[k]))
    if other:
        raise TaskError(f"lm-eval task {name!r}: generation option {', '.join(other)} is not plain greedy decoding; "
                        "blockprune decodes greedily with until and max_gen_toks only")
    from lm_eval.api.metrics import mean

    aggregation = task.aggregation()
    corpus = [m for m in task._metric_fn_list if aggregation.get(m) is not mean]
    if corpus:
        raise TaskError(f"lm-eval task {name!r}: metric {', '.join(corpus)} is aggregated over the corpus, not a mean "
                        "of per-sample values; blockprune scores per sample")
    if not any(task.higher_is_better().get(m, True) for m in task._metric_fn_list):
        raise TaskError(f"lm-eval task {name!r} has no higher-is-better metric to be its match")


def _missing_package(exc: BaseException) -> str | None:
    """The package an ImportError is about (None: not an import error)."""
    if not isinstance(exc, ImportError):
        return None
    return getattr(exc, "name", None) or (str(exc).split("'")[1] if str(exc).count("'") >= 2 else str(exc))


def _lm_eval_encoding(tokenizer):
    """HFLM.tok_batch_encode of one context (a causal LM, add_bos_token unset): the tokenizer's
    default special tokens, none when the context starts with the BOS string itself."""
    bos = getattr(tokenizer, "bos_token", None)

    def encode(context: str) -> list[int]:
        if bos and context.startswith(bos):
            return list(tokenizer(context, add_special_tokens=False).input_ids)
        return list(tokenizer(context).input_ids)
    return encode


class LmEvalGenerationTask(GenerationTask):
    """A GenerationTask whose requests lm-eval built and whose outputs lm-eval's filters and
    metrics score (same kind "generate", same decoding path)."""

    def __init__(self, name, rows, tokenizer, ids, eos_token_id, where, lm_task, instances):
        given = dict(lm_task.config.generation_kwargs or {})
        key = next((k for k in _MAX_ALIASES if k in given), "max_gen_toks")
        self.limit_key = f"generation_kwargs {key} (the task's YAML)"  # named as the user wrote it
        super().__init__(name, rows, tokenizer, ids, eos_token_id, where)
        from .request import Request

        self.lm_task = lm_task
        self.instances = instances
        encode = _lm_eval_encoding(tokenizer)
        delim = lm_task.config.target_delimiter or ""
        for s, row in enumerate(rows):
            # the prompt tokens as lm-eval's HF model encodes them; the gold answer teacher-forced
            # after the target delimiter, as lm-eval writes a few-shot example's answer
            prompt = encode(row["prompt"])
            gold = list(tokenizer(delim + self.answers[s][0], add_special_tokens=False).input_ids) or self.eos[:1]
            if not gold:
                raise TaskError(f"{name}: doc {ids[s]}: its gold answer is empty and the tokenizer has no EOS")
            self.prompts[s] = prompt
            self.requests[s] = Request(tuple(prompt) + tuple(gold), len(prompt))
        self.filters = [f.name for f in lm_task._filters]
        metrics = list(lm_task._metric_fn_list)
        better = lm_task.higher_is_better()
        self.metric_keys = {}  # (filter, lm-eval metric) -> per-sample field
        for f in self.filters:
            for m in metrics:
                key = m if len(self.filters) == 1 else f"{m},{f}"
                self.metric_keys[(f, m)] = f"lm_eval_{key}" if key in _OWN_FIELDS else key
        self.match_key = next((self.filters[0], m) for m in metrics if better.get(m, True))
        self.lm_eval_metric = self.metric_keys[self.match_key]

    def lm_eval_scores(self, texts: dict[int, str]) -> dict[tuple[str, str], dict[int, float]]:
        """{sample: generated string} -> lm-eval's per-sample metric values by (filter, metric):
        every filter ensemble on the strings as lm-eval applies it (FilterEnsemble.apply over the
        instances), then `process_results(doc, [filtered])`."""
        samples = sorted(texts)
        insts = [dataclasses.replace(self.instances[s], resps=[texts[s]], filtered_resps={}) for s in samples]
        out: dict[tuple[str, str], dict[int, float]] = {k: {} for k in self.metric_keys}
        for ensemble in self.lm_task._filters:
            ensemble.apply(insts)
            for s, inst in zip(samples, insts):
                values = self.lm_task.process_results(inst.doc, [inst.filtered_resps[ensemble.name]])
                for (f, m) in self.metric_keys:
                    if f != ensemble.name:
                        continue
                    v = values.get(m)
                    try:
                        v = float(v)
                    except (TypeError, ValueError):
                        v = math.nan
                    if not math.isfinite(v):
                        raise ValueError(f"{self.name}: lm-eval's {m} of sample {self.sample_ids[s]} is {values.get(m)!r}, "
                                         "not a finite number")
                    out[(f, m)][s] = v
        return out

    def per_sample(self, logprob, greedy, kl=None, generated=None):
        out = super().per_sample(logprob, greedy, kl, generated=generated)
        texts = self.last_texts
        fields = {key: np.full((logprob.shape[0], self.n), np.nan) for key in self.metric_keys.values()}
        for c in range(texts.shape[0]):
            done = {s: texts[c, s] for s in range(self.n) if texts[c, s] is not None}
            if not done:
                continue
            for k, values in self.lm_eval_scores(done).items():
                for s, v in values.items():
                    fields[self.metric_keys[k]][c, s] = v
        out.update(fields)
        out["match"] = fields[self.lm_eval_metric].copy()
        return out


def _generation_task(task, by_doc, tokenizer, eos_token_id, samples, seed, exclude) -> Task:
    from lm_eval.models.utils import normalize_gen_kwargs

    name = task.config.task
    eos_text = getattr(tokenizer, "eos_token", None)
    rows, ids = [], []
    for doc_id in sorted(by_doc):
        insts = by_doc[doc_id]
        if len(insts) != 1 or len(insts[0].arguments) != 2:
            raise TaskError(f"lm-eval {name!r} doc {doc_id}: expected one text-only request (context, generation "
                            "kwargs)")
        inst = insts[0]
        context, gen_kwargs = inst.arguments
        kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), DEFAULT_MAX_GEN_TOKS)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0:
            raise TaskError(f"lm-eval {name!r} doc {doc_id} samples; blockprune decodes greedily only")
        until = [u for u in (kwargs.get("until") or []) if isinstance(u, str) and u]
        if eos_text and eos_text not in until:  # as HFLM: the EOS string stops too
            until.append(eos_text)
        gold = task.doc_to_target(inst.doc)
        if task.config.doc_to_choice is not None:
            gold = task.doc_to_choice(inst.doc)[gold]
        answers = [str(g) for g in gold] if isinstance(gold, (list, tuple)) else [str(gold)]
        rows.append({"prompt": context, "answers": answers or [""], "max_new_tokens": int(kwargs["max_gen_toks"]),
                     "until": until, "_inst": inst})
        ids.append(str(doc_id))
    available = len(rows)
    ids, rows = select(ids, rows, samples, seed, name, exclude)
    insts = [r.pop("_inst") for r in rows]
    out = LmEvalGenerationTask(name, rows, tokenizer, ids, eos_token_id, [f"doc {i}" for i in ids], task, insts)
    out.available = available
    # a dry run of the filters and metrics on the gold answers: a missing package, or a metric that
    # is no number per sample, is refused now, before anything is decoded or written
    try:
        out.lm_eval_scores({s: out.answers[s][0] for s in range(out.n)})
    except ImportError as exc:
        raise TaskError(f"lm-eval task {name!r}: its filters or metrics need the package "
                        f"{_missing_package(exc)!r}, which is not installed") from None
    except ValueError as exc:
        raise TaskError(str(exc).splitlines()[0]) from None
    except Exception as exc:  # noqa: BLE001 - lm-eval's filters and metrics raise many kinds; one line each
        text = str(exc).strip()
        raise TaskError(f"lm-eval task {name!r}: its filters or metrics fail on a gold answer: {type(exc).__name__}: "
                        f"{text.splitlines()[0] if text else ''}") from None
    return out
