"""Image-task scores (blockprune.tasks.image_scores): VQA accuracy, ANLS and CIDEr-D on hand-worked cases,
every expected value worked out in the comments, never taken from the code under test."""

import math
import sys

import numpy as np
import pytest

from blockprune.tasks import image_scores as S


# ---- VQA accuracy ---------------------------------------------------------------------------
@pytest.mark.parametrize("m, expected", [
    # m of the 10 answers match. Leaving out a matching answer leaves m - 1 matches, another leaves m:
    # accuracy = (m * min((m-1)/3, 1) + (10-m) * min(m/3, 1)) / 10
    (0, 0.0),   # 0 + 10 * 0 = 0
    (1, 0.3),   # 1 * 0 + 9 * 1/3 = 3 -> 0.3
    (2, 0.6),   # 2 * 1/3 + 8 * 2/3 = 18/3 = 6 -> 0.6
    (3, 0.9),   # 3 * 2/3 + 7 * 1 = 9 -> 0.9
    (4, 1.0),   # 4 * 1 + 6 * 1 = 10 -> 1
    (10, 1.0),  # 10 * min(9/3, 1) = 10 -> 1
])
def test_vqa_leave_one_out_by_hand(m, expected):
    answers = ["yes"] * m + ["no"] * (10 - m)
    assert S.vqa_accuracy("yes", answers) == pytest.approx(expected)
    assert S.vqa_accuracy("yes", answers[::-1]) == pytest.approx(expected)  # the order does not matter


def test_vqa_other_answer_counts():
    # 4 answers, 1 match: leaving it out leaves 0 (-> 0), leaving out one of the 3 others leaves 1 (-> 1/3):
    # (0 + 3 * 1/3) / 4 = 0.25
    assert S.vqa_accuracy("cat", ["cat", "dog", "dog", "dog"]) == pytest.approx(0.25)
    # 4 answers, 2 matches: (2 * 1/3 + 2 * 2/3) / 4 = 0.5
    assert S.vqa_accuracy("cat", ["cat", "cat", "dog", "dog"]) == pytest.approx(0.5)
    # 1 to 3 answers: normalised exact match with any of them
    assert S.vqa_accuracy("A Dog", ["dog"]) == 1.0  # single answer (easy-VQA): "a" dropped, lower case
    assert S.vqa_accuracy("cat", ["dog"]) == 0.0
    assert S.vqa_accuracy("cat", ["dog", "cat"]) == 1.0
    assert S.vqa_accuracy("cat", ["dog", "bird", "fish"]) == 0.0


@pytest.mark.parametrize("prediction, answer", [
    ("Two", "2"),          # lower case, then the number word to its digit
    ("the dog.", "dog"),   # the article dropped, the final period (not before a digit) dropped
    ("dont", "don't"),     # the contractions table restores the apostrophe
    ("yes!", "yes"),       # "!" touches no space: replaced by a space, then split away
    ("1,000", "1000"),     # a digit,digit comma in the text: punctuation deleted, not spaced
    ("none", "0"),         # "none" is in the number words
])
def test_vqa_normalisation_matches(prediction, answer):
    assert S.vqa_accuracy(prediction, [answer]) == 1.0
    assert S.vqa_accuracy(prediction, [answer] * 10) == 1.0


def test_normalize_vqa_by_hand():
    assert S.normalize_vqa("Two") == "2"
    assert S.normalize_vqa("the dog.") == "dog"
    assert S.normalize_vqa("An Apple") == "apple"
    assert S.normalize_vqa("dont") == "don't"
    assert S.normalize_vqa("couldnt've") == "couldn't've" and S.normalize_vqa("couldn'tve") == "couldn't've"
    assert S.normalize_vqa("yes!") == "yes"
    assert S.normalize_vqa("\tyes\n") == "yes"
    assert S.normalize_vqa("1,000") == "1000"
    # no digit,digit comma and no space beside it: the comma becomes a space
    assert S.normalize_vqa("red,blue") == "red blue"
    # "," followed by a space: every "," is deleted (not spaced) in that text
    assert S.normalize_vqa("red, blue") == "red blue"
    # with a digit,digit comma anywhere, the hyphen and brackets are deleted too: "1000piece set"
    assert S.normalize_vqa("a 1,000-piece (set)") == "1000piece set"
    # a period before a digit stays; one at the end goes
    assert S.normalize_vqa("2.5") == "2.5"
    assert S.normalize_vqa("2.5.") == "2.5"
    assert S.vqa_accuracy("2.5", ["25"]) == 0.0
    # the official table maps "somebody'd" backwards, to "somebodyd"
    assert S.normalize_vqa("somebody'd") == "somebodyd"


def test_vqa_edge_cases():
    with pytest.raises(ValueError, match="answer list is empty"):
        S.vqa_accuracy("yes", [])
    assert S.vqa_accuracy("", ["yes"]) == 0.0
    assert S.vqa_accuracy("", ["the"]) == 1.0  # "the" normalises to nothing, as the empty prediction does
    assert S.vqa_accuracy("", ["yes"] * 10) == 0.0


# ---- ANLS -----------------------------------------------------------------------------------
def test_anls_by_hand():
    assert S.anls("invoice", ["invoice"]) == 1.0
    # one substitution in a 10-character answer: NL = 1/10, score 0.9
    assert S.anls("abcdefghij", ["abcdefghiX"]) == pytest.approx(0.9)
    # "abcd" vs "abxy": 2 substitutions / 4 = NL 0.5 >= 0.5 -> 0
    assert S.anls("abcd", ["abxy"]) == 0.0
    # "abcde" vs "abxyz": 3 / 5 = 0.6 -> 0
    assert S.anls("abcde", ["abxyz"]) == 0.0
    # "abcd" vs "abcx": 1 / 4 = 0.25 -> 0.75; with threshold 0.2, NL 0.25 >= 0.2 -> 0
    assert S.anls("abcd", ["abcx"]) == pytest.approx(0.75)
    assert S.anls("abcd", ["abcx"], threshold=0.2) == 0.0
    # case and surrounding whitespace ignored
    assert S.anls("  Hello World ", ["hello world"]) == 1.0
    # the best answer: "invoice 42" (10 chars) vs "receipt" -> 0 (NL >= 0.5); vs "invoice 41": 1/10 -> 0.9;
    # vs "invoice 42x" (11 chars): 1 insertion / 11 -> 10/11 = 0.909...
    assert S.anls("invoice 42", ["receipt", "invoice 41", "invoice 42x"]) == pytest.approx(10 / 11)


def test_anls_edge_cases():
    with pytest.raises(ValueError, match="answer list is empty"):
        S.anls("x", [])
    assert S.anls("", ["abc"]) == 0.0  # 3 edits / 3 = NL 1
    assert S.anls("", [""]) == 1.0 and S.anls("  ", [""]) == 1.0  # both empty: NL 0


# ---- CIDEr-D ----------------------------------------------------------------------------------
@pytest.mark.parametrize("caption, tokens", [
    ("A man (in a red hat) rides a bike.", "a man -lrb- in a red hat -rrb- rides a bike"),
    ('The dog\'s ball isn\'t "red", it\'s blue!', "the dog 's ball is n't red it 's blue"),
    ("Can't stop, won't stop, cannot; I'm here.", "ca n't stop wo n't stop can not i 'm here"),
    ("Two people -- one tall -- stand near a black-and-white sign...",
     "two people one tall stand near a black-and-white sign"),
    ("A 1,000-piece puzzle costs $2.50 at 3:30 p.m. in the U.S.",
     "a 1,000-piece puzzle costs $ 2.50 at 3:30 p.m. in the u.s."),
    ("He said 'hello' and `left' [then] {else}", "he said hello and left -lsb- then -rsb- -lcb- else -rcb-"),
    ("Wow!! A 12.5% sale: #1", "wow !! a 12.5 % sale # 1"),
    ("Mr. Smith's car.\nThe end", "mr. smith 's car the end"),
])
def test_coco_tokenize_by_hand(caption, tokens):
    # expected: what stanford-corenlp-3.4.1's PTBTokenizer -lowerCase writes, less ptbtokenizer.py's
    # PUNCTUATIONS (whose -LRB- ... are upper case, so the lower-cased -lrb- ... stay)
    assert S.coco_tokenize(caption) == tokens


def test_cider_d_by_hand():
    # 2 samples (N = 2), one reference each. "cat" is in 1 document: idf = log 2 - log 1 = log 2.
    # Prediction "cat" vs reference "cat": unigram vectors (log 2) and (log 2): clipped dot min(l, l) * l
    # over |l| |l| = 1; no bigram+ in either: 0; length difference 0: penalty 1.
    # Mean over n = 1..4: (1 + 0 + 0 + 0) / 4 = 0.25; over 1 reference; times 10 -> 2.5
    assert S.cider_d(["cat", "dog"], [["cat"], ["dog"]]) == pytest.approx([2.5, 2.5])
    # "a" is in both documents: idf log 2 - log 2 = 0. "a cat" vs "a cat": unigrams (0, l) . (0, l) / l^2 = 1,
    # bigram (a cat) in 1 document: 1; trigram+: 0 -> 10 * (1 + 1) / 4 = 5
    assert S.cider_d(["a cat", "a dog"], [["a cat"], ["a dog"]]) == pytest.approx([5.0, 5.0])
    # Clipping and the length penalty: "cat cat" vs "cat". Hypothesis unigram weight 2 l (tf 2), norm 2 l;
    # reference l, norm l: min(2l, l) * l / (2l * l) = 1/2 (without clipping: 2l * l / 2l^2 = 1).
    # Bigram (cat cat) is not in the reference: 0. Lengths (pycocoevalcap counts bigrams): 1 and 0,
    # penalty exp(-1 / (2 * 6^2)) = exp(-1/72). Score 10 * (1/2) / 4 * exp(-1/72) = 1.25 exp(-1/72) = 1.2328
    scores = S.cider_d(["cat cat", "dog"], [["cat"], ["dog"]])
    assert scores == pytest.approx([1.25 * math.exp(-1 / 72), 2.5])
    # tokenisation first: case and punctuation do not change a score
    assert S.cider_d(["Cat!", "DOG."], [["a cat."], ["the dog"]]) == pytest.approx(
        S.cider_d(["cat", "dog"], [["a cat"], ["the dog"]]))


CORPUS = [["a man riding a horse", "a person rides a brown horse"],
          ["two dogs playing in the snow", "dogs play in snow"],
          ["a plate of pasta with sauce", "pasta on a white plate"]]


def test_cider_d_on_a_small_corpus():
    from pycocoevalcap.cider.cider import Cider

    right = S.cider_d(["A man riding a horse.", "Two dogs playing in the snow!", "Pasta on a white plate"], CORPUS)
    wrong = S.cider_d(["A plate of pasta.", "Two dogs playing in the snow!", "Pasta on a white plate"], CORPUS)
    assert right.shape == (3,) and right.dtype == np.float64
    assert right[0] > wrong[0] > 0  # "a plate of pasta" shares "a" with sample 0's references
    assert right[1:] == pytest.approx(wrong[1:])  # the idf comes from the references only
    # no n-gram of "pizza oven" is in sample 0's references: 0
    assert S.cider_d(["pizza oven", "dogs play in snow", "pasta"], CORPUS)[0] == 0.0
    # an empty prediction: 0
    assert S.cider_d(["", "dogs play in snow", "pasta"], CORPUS)[0] == 0.0
    # the same as pycocoevalcap's Cider on the captions tokenised by hand (the tokeniser is tested above)
    gts = {i: refs for i, refs in enumerate(CORPUS)}
    res = {0: ["a man riding a horse"], 1: ["two dogs playing in the snow"], 2: ["pasta on a white plate"]}
    _, direct = Cider().compute_score(gts, res)
    assert right == pytest.approx(np.asarray(direct))


def test_cider_d_edge_cases():
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        S.cider_d(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="sample 1 has no reference"):
        S.cider_d(["a", "b"], [["a"], []])
    # one sample alone: every n-gram of its references is in every document (idf 0): 0
    assert S.cider_d(["a cat"], [["a cat"]]) == pytest.approx([0.0])
    # no reference has a word: 0, not pycocoevalcap's failure on an empty idf table
    assert S.cider_d(["a cat", "dog"], [["..."], ["!"]]) == pytest.approx([0.0, 0.0])
    assert S.cider_d([], []).shape == (0,)


def test_cider_d_without_pycocoevalcap(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)  # its import now fails
    with pytest.raises(ImportError, match=r"pip install pycocoevalcap"):
        S.cider_d(["a cat"], [["a cat"]])
