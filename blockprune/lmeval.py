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
generate_until needs free generation (and lm-eval's answer filters), which a teacher-forced
scorer cannot reproduce: it is refused in one line. The samples are a seeded subset of lm-eval's
evaluation documents, ids = doc ids.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from .kinds import ExactMatchTask, MultipleChoiceTask, Task, TaskError
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

    from .sources import hub_reachable

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

        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
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


def _encoder(tokenizer):
    """lm-eval's causal-LM pair encoding (HFLM: _encode_pair, empty context -> prefix token)."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

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


def load_lmeval_task(spec: str, tokenizer, eos_token_id: int | None, samples: int | None, seed: int,
                     exclude=()) -> Task:
    task = _load(spec)
    name = task.config.task
    output_type = task.OUTPUT_TYPE
    if output_type not in ("multiple_choice", "loglikelihood"):
        raise TaskError(f"lm-eval task {name!r} has output type {output_type}; blockprune takes multiple_choice and "
                        "loglikelihood tasks (generate_until needs free generation and lm-eval's answer filters)")
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
    if output_type == "loglikelihood":
        for doc_id in sorted(by_doc):
            (inst,) = by_doc[doc_id]
            rows.append({"prompt": inst.arguments[0], "answers": [inst.arguments[1]]})
            ids.append(str(doc_id))
        available = len(rows)
        ids, rows = select(ids, rows, samples, seed, name, exclude)
        out = ExactMatchTask(name, rows, tokenizer, ids, eos_token_id, encode=_encoder(tokenizer), terminate=False)
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
    out = MultipleChoiceTask(name, rows, tokenizer, ids, encode=_encoder(tokenizer), norm="chars")
    out.available = available
    return out
