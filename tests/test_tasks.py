"""Tasks turn samples into requests and per-request scores back into metrics."""

import json
import math

import numpy as np
import pytest
import torch

from blockprune.engine import Engine
from blockprune.tasks import ExactMatchTask, KLTask, MultipleChoiceTask, PerplexityTask, TaskError, load_task
from conftest import CharTokenizer


def test_multiple_choice_tokenizes_context_and_choice_separately():
    tok = CharTokenizer()
    t = MultipleChoiceTask("mc", [{"context": "ab", "choices": [" c", " dd"], "label": 1}], tok, ["0"])
    assert [r.tokens for r in t.requests] == [tuple(tok("ab").input_ids + tok(" c").input_ids),
                                              tuple(tok("ab").input_ids + tok(" dd").input_ids)]
    assert [r.score_from for r in t.requests] == [2, 2]
    # choice 0 has the higher total log-prob (-2 vs -2.5), choice 1 the higher per byte (-0.83 vs -1)
    lp = np.array([[-2.0, -2.5]])
    ps = t.per_sample(lp, np.zeros_like(lp, dtype=bool))
    assert ps["correct"].tolist() == [[0.0]] and ps["correct_norm"].tolist() == [[1.0]]
    lp = np.array([[-4.0, -3.0]])
    assert t.per_sample(lp, np.zeros_like(lp, dtype=bool))["correct"].tolist() == [[1.0]]


def test_multiple_choice_keeps_every_choice_and_the_expected_accuracy():
    tok = CharTokenizer()
    rows = [{"context": "ab", "choices": [" c", " dé"], "label": 1},  # " dé": 3 characters, 4 bytes
            {"context": "x", "choices": [" y", " z", " w"], "label": 0}]
    t = MultipleChoiceTask("mc", rows, tok, ["0", "1"])
    lp = np.array([[-2.0, -4.0, -1.0, -1.0, -3.0]])
    ps = t.per_sample(lp, np.zeros_like(lp, dtype=bool))
    assert ps["choice_logprob"][0].tolist() == [[-2.0, -4.0], [-1.0, -1.0, -3.0]]
    assert ps["choice_bytes"][0].tolist() == [[2, 4], [2, 2, 2]]
    assert ps["choice_chars"][0].tolist() == [[2, 3], [2, 2, 2]]
    assert ps["choice_tokens"][0].tolist() == [[2, 4], [2, 2, 2]]  # byte-level tokenizer
    # p_gold_norm: sample 0 per-byte scores -1 and -1 -> 1/2; sample 1: -0.5, -0.5, -1.5 ->
    # e^-0.5 / (2 e^-0.5 + e^-1.5) = 1 / (2 + e^-1) = 0.4223188
    assert ps["p_gold_norm"][0] == pytest.approx([0.5, 1 / (2 + math.exp(-1))])
    # p_gold on the summed log-probs: sample 0: e^-4 / (e^-2 + e^-4) = 1 / (1 + e^2) = 0.1192029;
    # sample 1: e^-1 / (2 e^-1 + e^-3) = 1 / (2 + e^-2) = 0.4683105
    assert ps["p_gold"][0] == pytest.approx([1 / (1 + math.exp(2)), 1 / (2 + math.exp(-2))])


def test_exact_match_keeps_the_gold_answers_log_prob():
    tok = CharTokenizer()
    t = ExactMatchTask("em", [{"prompt": "Q:", "answers": [" ab", " b"]}], tok, ["0"], eos_token_id=2)
    ps = t.per_sample(np.array([[-1.5, -0.2]]), np.array([[False, True]]))
    # the first answer is the gold one: " ab" + EOS = 4 tokens, log-prob -1.5
    assert ps["gold_logprob"].tolist() == [[-1.5]] and ps["gold_tokens"].tolist() == [[4.0]]
    assert ps["match"].tolist() == [[1.0]]


def test_kl_task_from_rows_and_too_short_source(tmp_path):
    tok = CharTokenizer()
    p = tmp_path / "calib.jsonl"
    p.write_text(json.dumps({"text": "y" * 40}) + "\n")
    t = load_task(f"kl:jsonl:{p}", tok, eos_token_id=2, ppl_window=16)
    assert isinstance(t, KLTask) and t.name == "kl_calib" and t.n == 2
    ps = t.per_sample(np.array([[-30.0, -15.0]]), np.zeros((1, 2), dtype=bool), kl=np.array([[3.0, 1.5]]))
    assert t.value(ps) == pytest.approx([4.5 / 30])  # 15 scored tokens per window
    with pytest.raises(TaskError, match="fewer than one window"):
        load_task(f"kl:jsonl:{p}", tok, eos_token_id=2, ppl_window=64)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 0}) + "\n")
    with pytest.raises(TaskError, match="needs"):
        load_task(f"kl:jsonl:{mc}", tok, eos_token_id=2)
    with pytest.raises(TaskError, match="KL text source"):
        load_task("kl:bigbench:emoji_movie", tok, eos_token_id=2)


def test_perplexity_windows_are_fixed_and_metric_is_token_weighted():
    tok = CharTokenizer()
    t = load_task_from_rows(tok, [{"text": "x" * 50}], window=16)
    assert isinstance(t, PerplexityTask)
    assert [len(r.tokens) for r in t.requests] == [16, 16, 16]  # 50 tokens -> 3 full windows, tail dropped
    lp = np.array([[-15.0, -30.0, -45.0]])
    assert t.value(t.per_sample(lp, lp < 0)) == pytest.approx([np.exp(90 / 45)])


def load_task_from_rows(tok, rows, window=256, samples=None):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    p = d / "task.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_task(f"jsonl:{p}", tok, eos_token_id=2, samples=samples, ppl_window=window)


def test_exact_match_needs_every_answer_token_and_eos():
    tok = CharTokenizer()
    t = ExactMatchTask("em", [{"prompt": "Q:", "answers": [" a", " b"]}], tok, ["0"], eos_token_id=2)
    assert t.requests[0].tokens == tuple(tok("Q:").input_ids + tok(" a").input_ids + [2])
    greedy = np.array([[False, True], [False, False]])
    assert t.per_sample(np.zeros((2, 2)), greedy)["match"].tolist() == [[1.0], [0.0]]


@pytest.mark.parametrize("content, message", [
    ("", "empty task file"),
    ('{"context": "a", "choices": ["b", "c"], "label": 0}\n{"context": "a", "choices": ["b"], "label": 0}\n', ":2: 'choices'"),
    ('{"text": "hello"}\nnot json\n', ":2: malformed JSON"),
    ('{"foo": 1}\n', "field sets"),
    ('{"context": "a", "choices": ["b", "c"], "label": 5}\n', "'label'"),
    ('{"prompt": "a", "answers": []}\n', "'answers'"),
])
def test_malformed_jsonl_names_the_line(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(TaskError, match=message):
        load_task(f"jsonl:{p}", CharTokenizer(), eos_token_id=2)


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown task spec"),
    ("foo:bar", "unknown task scheme"),
    ("ppl:wikipedia/x", "unknown perplexity source"),
    ("jsonl:/no/such/file.jsonl", "not found"),
])
def test_unknown_specs(spec, message):
    with pytest.raises(TaskError, match=message):
        load_task(spec, CharTokenizer())


def test_sampling_is_seeded_and_a_subset():
    rows = [{"context": f"c{i}", "choices": [" a", " b"], "label": i % 2} for i in range(20)]
    a = load_task_from_rows(CharTokenizer(), rows, samples=5)
    b = load_task_from_rows(CharTokenizer(), rows, samples=5)
    assert a.sample_ids == b.sample_ids and len(a.sample_ids) == 5 and len(set(a.sample_ids)) == 5


def test_hf_datasets_path_with_a_local_directory(tmp_path):
    import datasets  # in the test extra: a missing package must fail, not skip
    rows = {"context": ["x", "y"], "choices": [[" a", " b"], [" c", " d"]], "label": [0, 1]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    t = load_task(f"hf:{tmp_path / 'ds'}", CharTokenizer())
    assert isinstance(t, MultipleChoiceTask) and t.n == 2 and t.labels == [0, 1]


# ---- the real model -----------------------------------------------------------------------------
def test_greedy_match_in_one_pass_agrees_with_generate(smollm2):
    """One teacher-forced pass decides greedy match; generate() must agree on real prompts."""
    from blockprune.engine import Request

    tok, eos = smollm2.tokenizer, smollm2.eos_token_id
    chat = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    prompts = ["The capital of France is", "1, 2, 3, 4, 5,", chat.format("What color is the sky? One word."),
               chat.format("Say yes or no: is fire hot?"), chat.format("What is 2+2? Answer with a number.")]
    requests, expected, em_rows, em_expected = [], [], [], []
    for p in prompts:
        ids = tok(p, add_special_tokens=False).input_ids
        with torch.inference_mode():
            out = smollm2.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                         eos_token_id=eos, pad_token_id=eos)
        gen = out[0, len(ids):].tolist()
        requests.append(Request(tuple(ids + gen), len(ids)))  # what greedy produced: all argmax
        expected.append(True)
        requests.append(Request(tuple(ids + gen[:-1] + [(gen[-1] + 1) % len(tok)]), len(ids)))  # one token off
        expected.append(False)
        if eos in gen:
            answer = tok.decode(gen[: gen.index(eos)])
            em_rows += [{"prompt": p, "answers": [answer]}, {"prompt": p, "answers": [answer + " and more"]}]
            em_expected += [1.0, 0.0]
    scores = Engine(smollm2).score(requests, np.ones((1, smollm2.num_blocks), dtype=bool))
    assert scores.greedy[0].tolist() == expected
    assert em_rows, "the chat prompts should finish with EOS within 12 tokens"
    t = ExactMatchTask("em", em_rows, tok, [str(i) for i in range(len(em_rows))], eos)
    scores = Engine(smollm2).score(t.requests, np.ones((1, smollm2.num_blocks), dtype=bool))
    assert t.per_sample(scores.logprob, scores.greedy)["match"][0].tolist() == em_expected
