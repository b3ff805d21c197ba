"""Per-sample scores of generated answers on image tasks: VQA accuracy, ANLS and CIDEr-D.

`vqa_accuracy(prediction, answers)`: VQAv2's accuracy, as the official evaluation script computes it
(github.com/GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py, Agrawal et al.). Both the
prediction and the answers go through `normalize_vqa`: newlines and tabs to spaces, surrounding spaces
stripped, then its processPunctuation (each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted
everywhere where the text has it beside a space or holds a digit,digit comma -- so "1,000" reads "1000" --
else replaced by spaces; a period not followed by a digit is deleted, so "2.5" keeps its) and its
processDigitArticle (lower case, the number words none..ten to digits, the articles a/an/the dropped,
contractions written without their apostrophe restored: "dont" -> "don't"). With the 10 human answers of
VQAv2 the accuracy is the average over the 10 leave-one-out subsets of min(#answers in the subset equal to
the prediction / 3, 1): 0, 0.3, 0.6, 0.9 and 1 for 0, 1, 2, 3 and 4+ matching answers. Other counts: 4 or
more answers, the same leave-one-out average; 1 to 3 answers, 1.0 when the prediction equals one of them
after normalisation, else 0.0 (a single-answer set such as easy-VQA's is then normalised exact match).
One difference: the official script (since its 2021 fix) normalises the prediction and the answers only
where the human answers differ, and compares them raw where all agree; here both are always normalised,
so "Two" scores 1 against ten "2"s (VQAv2's annotation files hold answers already normalised, on which the
two agree).

`anls(prediction, answers, threshold=0.5)`: DocVQA's Average Normalized Levenshtein Similarity of one
sample (Biten et al., ICCV 2019): the best over the answers of 1 - NL, NL = the Levenshtein distance of the
lower-cased, whitespace-stripped strings over the longer one's length, and 0 where NL >= threshold (both
strings empty: NL = 0). The edit distance is rapidfuzz's.

`cider_d(predictions, references)`: CIDEr-D (Vedantam et al., CVPR 2015) as the COCO caption evaluation
computes it, through pycocoevalcap's kept implementation (its `cider` module is CIDEr-D: tf-idf n-gram
vectors for n = 1..4, clipped hypothesis weights, a Gaussian length penalty with sigma 6, the mean over n
and over the references, times 10). Captions are tokenised by `coco_tokenize`, standing in for the
PTBTokenizer that the COCO evaluation runs through Java. The document frequencies (the idf) come from the
references of all the samples given -- the corpus, as the official per-image scores do -- so a sample's
score depends on the others: score a whole split at once. One sample alone scores 0 (every n-gram of its
references is in every document). The length penalty compares pycocoevalcap's lengths, which count a
caption's bigrams.

Edge cases: an empty prediction is scored like any other string (VQA: it matches only answers that
normalise to nothing; ANLS: 1 - NL against each answer; CIDEr-D: 0). An empty answer list, or a sample
of `cider_d` with no reference, raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# ---- VQA accuracy (vqaEval.py) -------------------------------------------------------------
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
              "?", "!")
# the official pattern, its typo included: "(?!<=" is a lookahead, so it drops a period not followed by a digit
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP_COUNT = 32  # the official call passes re.UNICODE (32) where sub() takes its count
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = frozenset({"a", "an", "the"})


# contractions as written; vqaEval's table maps each written without one of its apostrophes back to it
# ("dont" -> "don't", "couldnt've" and "couldn'tve" -> "couldn't've"). Its keys with capitals (Im, Ive, ...) never
# match the lower-cased words, as in the official script.
_WRITTEN = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd
    he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't
    must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've
    somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll that's
    there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't
    what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
    why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"""


def _contractions() -> dict[str, str]:
    table = {}
    for word in _WRITTEN.split():
        cuts = [i for i, ch in enumerate(word) if ch == "'"]
        table.update({word[:i] + word[i + 1:]: word for i in cuts})
    table["somebody'd"] = "somebodyd"  # sic: the one entry of the official table that runs backwards
    return table


_CONTRACTIONS = _contractions()


def _vqa_punctuation(text: str) -> str:
    """vqaEval's processPunctuation."""
    out = text
    delete = _COMMA_STRIP.search(text) is not None
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if delete or p + " " in text or " " + p in text else " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _vqa_digit_article(text: str) -> str:
    """vqaEval's processDigitArticle."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)


def normalize_vqa(text: str) -> str:
    """An answer as the official VQA evaluation compares it (see the module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digit_article(_vqa_punctuation(text))


def _check_answers(answers: Sequence[str], score: str) -> None:
    if not answers:
        raise ValueError(f"{score}: the answer list is empty: a sample needs at least one answer")


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction: with 4+ answers the leave-one-out average of min(#matches / 3, 1),
    with 1-3 answers normalised exact match (see the module docstring)."""
    _check_answers(answers, "vqa_accuracy")
    pred = normalize_vqa(prediction)
    matches = [normalize_vqa(a) == pred for a in answers]
    if len(matches) < 4:
        return float(any(matches))
    hits = sum(matches)
    # leaving out a matching answer leaves hits - 1 matches, leaving out another leaves hits
    return sum(min((hits - m) / 3, 1.0) for m in matches) / len(matches)


# ---- ANLS (DocVQA) --------------------------------------------------------------------------
def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """The best over the answers of 1 - NL, 0 where NL >= threshold (see the module docstring)."""
    _check_answers(answers, "anls")
    from rapidfuzz.distance import Levenshtein

    pred = prediction.strip().lower()
    best = 0.0
    for answer in answers:
        gold = answer.strip().lower()
        longer = max(len(pred), len(gold))
        nl = Levenshtein.distance(pred, gold) / longer if longer else 0.0
        if nl < threshold:
            best = max(best, 1.0 - nl)
    return best


# ---- CIDEr-D (COCO captions) ----------------------------------------------------------------
# what pycocoevalcap's ptbtokenizer.py drops from the Java tokenizer's output. Its bracket entries are
# upper case while the output is lower-cased (-lowerCase), so brackets survive as -lrb-, -rrb-, ...
COCO_PUNCTUATIONS = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                               "-", "--", "...", ";"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PTB_TOKEN = re.compile(r"""
      \.{3,}                                   # an ellipsis (PTB writes ...)
    | -{2,}                                     # a dash (PTB writes --)
    | [?!]{2,}                                  # ?! ?? !!! stay one token, which COCO does not drop
    | (?:[^\W\d_]\.){2,}                        # an acronym: u.s. p.m.
    | (?:mr|mrs|ms|dr|st|jr|sr|prof|mt|ave|vs|etc)\.(?!\w)   # a few abbreviations keep their period
    | can(?=not\b)                              # cannot -> can not
    | [^\W\d_]+(?=n't\b)                        # the word before n't: is n't, ca n't, wo n't
    | (?:n't|'s|'m|'d|'ll|'re|'ve)\b            # clitics
    | \w+(?:(?:[-/.&@]|'(?!(?:s|m|d|ll|re|ve)\b)|(?<=\d)[,:](?=\d))\w+)*   # words, numbers: 1,000-piece 3:30
    | \S                                        # any other character alone
""", re.VERBOSE)


def _ptb_form(token: str) -> str:
    """A token as PTBTokenizer writes it: .... as ..., ---- as --, a double quote as '', brackets by name."""
    if len(token) > 2 and set(token) == {"."}:
        return "..."
    if len(token) > 1 and set(token) == {"-"}:
        return "--"
    return "''" if token == '"' else _BRACKETS.get(token, token)


def coco_tokenize(caption: str) -> str:
    """A caption as the COCO caption evaluation compares it: lower case, split as Stanford's PTBTokenizer
    splits it (punctuation and clitics apart: "isn't" -> "is n't", "dog's" -> "dog 's"; hyphenated words,
    numbers and acronyms whole; brackets as -lrb- -rrb- ...), the tokens of COCO_PUNCTUATIONS dropped,
    joined by single spaces. A regular-expression stand-in for the Java tokenizer (checked against
    stanford-corenlp-3.4.1 on common captions): rarer constructions may split differently (abbreviations
    beyond a few titles, a sentence end that PTB decides by the next word's case, "10:30am")."""
    tokens = (_ptb_form(t) for t in _PTB_TOKEN.findall(caption.lower().replace("\n", " ")))
    return " ".join(t for t in tokens if t not in COCO_PUNCTUATIONS)


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Each prediction's CIDEr-D against its references, the idf from all the references given (the corpus,
    as the official per-image scores): see the module docstring."""
    if len(predictions) != len(references):
        raise ValueError(f"cider_d: {len(predictions)} predictions but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"cider_d: sample {i} has no reference: a sample needs at least one")
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError("cider_d needs pycocoevalcap: pip install pycocoevalcap (or blockprune[vision])") from e
    refs = {i: [coco_tokenize(r) for r in rs] for i, rs in enumerate(references)}
    if not any(r for rs in refs.values() for r in rs):
        return np.zeros(len(predictions))  # no reference has a word: no n-gram to share (and no idf)
    res = {i: [coco_tokenize(p)] for i, p in enumerate(predictions)}
    _, scores = Cider().compute_score(refs, res)
    return np.asarray(scores, dtype=np.float64)
