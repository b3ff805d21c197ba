"""Image tasks: a question about an image, or an image to caption, answered by an image-text model.

Specs (each `#N` for N samples):

* `vqa:easy-vqa` (the embedded set: easy-VQA's test split, from the `easy-vqa` wheel), `vqa:jsonl:PATH`
  of `{"image", "question", "answers"}` rows: scored by VQA accuracy (blockprune.tasks.image_scores:
  the official VQAv2 normalisation, min(matches/3, 1) averaged over the leave-one-out subsets);
* `docvqa:jsonl:PATH` (the same rows): scored by ANLS (DocVQA, ST-VQA);
* `caption:jsonl:PATH` of `{"image", "captions"}` rows: scored by CIDEr-D (COCO's implementation).

Image paths are relative to the JSONL file; rows may set `"prompt"` (the question as the model is
asked it), `"max_new_tokens"` and `"until"` as `gen:jsonl` rows do. The prompt is the processor's:
its chat template renders a user turn holding the image and the text, its own call expands the
image tokens (`prompt_of`); nothing is templated here. Decoding is greedy under every candidate,
stopped at the stop strings (default a newline) and EOS.

Beside the thresholded metric, the same pass gives scores with the whole signal of every sample:
the log-prob of the dense model's own answer under the candidate (`dense_logprob`, the default
ranking score), of the gold answer (`gold_logprob`: the most frequent answer, or the first
caption), and the KL to the dense model on the dense answer's tokens (`answer_kl`). An image
task's samples are no calibration text for healing (`gold_tokens` is None).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from .gen_task import ANSWER_SLACK, GenerationTask
from .kinds import Task, TaskError
from .request import Media, Request
from .scores import SCORES, Kind, Score, register_kind

SHORT_ANSWER = 32  # a question's token limit: its longest answer's tokens plus ANSWER_SLACK, at most this
CAPTION = 64  # a caption's, likewise
VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."
CAPTION_PROMPT = "Describe this image in one sentence."

for _score in (
    Score("vqa_acc", "mean", "vqa_acc", None, False, "VQA accuracy: min(matches/3, 1) over the leave-one-out subsets"),
    Score("anls", "mean", "anls", None, False, "average normalized Levenshtein similarity (DocVQA)"),
    Score("cider", "mean", "cider", None, False, "CIDEr-D of the generated caption against the references"),
    Score("answer_kl", "kl", "answer_kl", "dense_tokens", False,
          "KL(dense || candidate) per token on the dense model's own answer"),
):
    SCORES.setdefault(_score.name, _score)


def prompt_of(processor, text: str, image) -> tuple[str, tuple[int, ...]]:
    """(the rendered prompt, its token ids) of one image and its text, both the processor's own: its
    chat template renders a user turn holding the image then the text and the assistant's turn;
    its call expands the image tokens."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = processor(text=[rendered], images=[[image]], return_tensors="pt")["input_ids"][0]
    return rendered, tuple(int(t) for t in ids)


class ImageTask(GenerationTask):
    """A generative task whose prompts hold images (`media`, one per sample). Subclasses name the
    metric: `metric_field` and `metric(texts, references) -> per-sample values`."""

    metric_field = "match"
    reference_key = "answers"

    def __init__(self, name: str, rows: list[dict], processor, ids: list[str], eos_token_id: int | None,
                 where: Sequence[str]):
        Task.__init__(self, name, ids)
        self.tokenizer = processor.tokenizer
        self.processor = processor
        self.eos = [] if eos_token_id is None else [int(eos_token_id)]
        self.prefix = []  # the processor's prompt holds any leading special token itself
        self.where = list(where)
        self.prompts, self.answers, self.max_new, self.until, self.media = [], [], [], [], []
        for s, row in enumerate(rows):
            refs = row[self.reference_key]
            rendered, prompt = prompt_of(processor, row["prompt"], row["pil"])
            key = f"{row['key']}:{hashlib.sha256(rendered.encode()).hexdigest()[:8]}"
            self.media.append(Media(key=key, prompt=prompt, text=rendered, image=row["pil"]))
            self.prompts.append(list(prompt))
            self.answers.append(list(refs))
            self.max_new.append(int(row["max_new_tokens"]))
            until = row.get("until", ["\n"])
            self.until.append([until] if isinstance(until, str) else list(until))
            gold = Counter(refs).most_common(1)[0][0]  # the most frequent answer (the first of the ties)
            gold_ids = self.tokenizer(" " + gold.strip(), add_special_tokens=False).input_ids or self.eos[:1]
            if not gold_ids:
                raise TaskError(f"{name}: {self.where[s]}: its answer is empty and the tokenizer has no EOS")
            self.requests.append(Request(prompt + tuple(gold_ids), len(prompt), media=self.media[s]))
            self.request_sample.append(s)
        self.dense_request: list[int] = []
        self.dense_text: list[str] = []

    def gold_tokens(self, sample):
        return None  # its tokens hold image tokens: no calibration text without the image

    def score_texts(self, texts: list[str], references: list[list[str]]) -> list[float]:
        raise NotImplementedError

    def per_sample(self, logprob, greedy, kl=None, generated=None):
        out = super().per_sample(logprob, greedy, kl, generated)
        value = np.full(out["match"].shape, np.nan)
        for c in range(value.shape[0]):
            done = [s for s in range(self.n) if self.last_texts[c, s] is not None]
            if done:
                value[c, done] = self.score_texts([self.last_texts[c, s] for s in done], [self.answers[s] for s in done])
        out[self.metric_field] = value
        if kl is not None:
            out["answer_kl"] = kl[:, self.dense_request]
        return out

    def value(self, per_sample):
        return np.asarray(per_sample[self.metric_field], dtype=float).mean(axis=-1)


class VQATask(ImageTask):
    kind = "vqa"
    metric_field = "vqa_acc"

    def score_texts(self, texts, references):
        from .image_scores import vqa_accuracy

        return [vqa_accuracy(t, refs) for t, refs in zip(texts, references)]


class DocVQATask(ImageTask):
    kind = "docvqa"
    metric_field = "anls"

    def score_texts(self, texts, references):
        from .image_scores import anls

        return [anls(t, refs) for t, refs in zip(texts, references)]


class CaptionTask(ImageTask):
    kind = "caption"
    metric_field = "cider"
    reference_key = "captions"

    def score_texts(self, texts, references):
        """CIDEr-D with the document frequencies of every reference of the task (its corpus), so a
        sample's value does not depend on which others are scored with it (racing scores subsets)."""
        from .image_scores import cider_d

        index = {id(r): s for s, r in enumerate(self.answers)}
        preds = [""] * self.n
        for t, refs in zip(texts, references):
            preds[index[id(refs)]] = t
        values = cider_d(preds, self.answers)
        return [float(values[index[id(refs)]]) for refs in references]


for _kind in (
    Kind("vqa", ("dense_logprob", "gold_logprob", "answer_kl", "vqa_acc", "exact_match"), metric="vqa_acc",
         generates=True, needs_dense=True),
    Kind("docvqa", ("dense_logprob", "gold_logprob", "answer_kl", "anls", "exact_match"), metric="anls",
         generates=True, needs_dense=True),
    Kind("caption", ("dense_logprob", "gold_logprob", "answer_kl", "cider"), metric="cider", generates=True,
         needs_dense=True),
):
    register_kind(_kind)
TASKS: dict[str, type[ImageTask]] = {"vqa": VQATask, "docvqa": DocVQATask, "caption": CaptionTask}


# ---- loading -----------------------------------------------------------------------------------------
def _rows(scheme: str, source: str) -> tuple[str, list[dict], list[str]]:
    """(task name, rows with "image" paths and "key"s, each row's place for messages)."""
    from .. import data
    from . import loaders

    layout = "caption" if scheme == "caption" else "vqa"
    name, _, rest = source.partition(":")
    try:
        if name == "easy-vqa" or name.startswith("easy-vqa/"):
            if scheme == "caption":
                raise TaskError("caption:easy-vqa: easy-VQA has questions, not captions; use vqa:easy-vqa")
            split = name.partition("/")[2] or "test"
            rows = data.easy_vqa_rows(split)
            for r in rows:
                r["key"] = f"easy-vqa/{r['image'].name}"  # its wheel names each picture once
            return f"{scheme}_easy_vqa" + ("" if split == "test" else f"_{split}"), rows, \
                [f"easy-vqa {r['id']}" for r in rows]
        if name == "jsonl" and rest:
            path = loaders.path_of(rest)
            rows = data.read_image_rows(path, layout)
            return f"{scheme}_{path.stem}", rows, [r["where"] for r in rows]
        if name == "hf" and rest:
            rows, stem = loaders.hf_rows(rest)
            where = [f"hf:{rest} row {i}" for i in range(len(rows))]
            return f"{scheme}_{stem}", [_hf_image_row(r, i, w, layout) for i, (r, w) in enumerate(zip(rows, where))], where
    except data.DataError as exc:
        raise TaskError(str(exc)) from None
    raise TaskError(f"unknown image source {source!r} in {scheme}:{source}: expected "
                    + ("vqa:easy-vqa, " if scheme == "vqa" else "") + f"{scheme}:jsonl:<path> or {scheme}:hf:<dataset>")


def _hf_image_row(row: dict, index: int, where: str, layout: str) -> dict:
    """A `datasets` row with an image column (a PIL image, as the Image feature gives it) in a
    JSONL layout's fields; the image's identity is a hash of its pixels."""
    from .. import data
    from ..data import images

    image = row.get("image")
    if not hasattr(image, "convert"):
        raise TaskError(f"{where}: no \"image\" column holding an image (a datasets Image feature)")
    if image.width * image.height > images.MAX_PIXELS:
        raise TaskError(f"{where}: its image is too large ({image.width}x{image.height} pixels, more than "
                        f"{images.MAX_PIXELS:,})")
    pil = image.convert("RGB")
    key = hashlib.sha256(f"{pil.size}".encode() + pil.tobytes()).hexdigest()[:16]
    fields = {k: v for k, v in row.items() if k != "image" and isinstance(v, (str, int, list))}
    try:
        checked = images.check_row({**fields, "image": "hf"}, layout, where)
    except data.DataError as exc:
        raise TaskError(str(exc)) from None
    return {**checked, "id": str(row.get("id", index)), "image": None, "pil": pil, "key": key, "where": where}


def load_image_task(scheme: str, spec, load, open_image: Callable | None = None) -> ImageTask:
    """A task of `vqa:`, `docvqa:` or `caption:` (see the module doc) for an image-text model's processor."""
    from .. import data
    from . import loaders

    if load.processor is None:
        raise TaskError(f"{spec}: an image task needs an image-text model (one with a vision tower and a processor "
                        "that builds its prompts); this model is text-only")
    name, rows, where = _rows(scheme, spec.source)
    ids = [str(r["id"]) for r in rows]
    digest = loaders.source_hash([[i, {k: v for k, v in r.items() if k not in ("image", "pil", "where")}]
                                  for i, r in zip(ids, rows)])
    at = dict(zip(ids, where))
    ids_sel, rows_sel = loaders.select(ids, rows, load.samples, load.seed, name, load.exclude)
    limit, template = (CAPTION, CAPTION_PROMPT) if scheme == "caption" else (SHORT_ANSWER, VQA_PROMPT)
    refs_key = TASKS[scheme].reference_key
    for i, r in zip(ids_sel, rows_sel):
        try:
            if "pil" not in r:  # a file (an hf: row holds its image already)
                r["pil"] = data.open_image(r["image"], at[i])
        except data.DataError as exc:
            raise TaskError(str(exc)) from None
        r.setdefault("prompt", template.format(question=r.get("question", "")))
        if "max_new_tokens" not in r:
            longest = max(len(load.tokenizer(" " + a, add_special_tokens=False).input_ids) for a in r[refs_key])
            r["max_new_tokens"] = min(limit, longest + ANSWER_SLACK)
    task = TASKS[scheme](name, rows_sel, load.processor, ids_sel, load.eos_token_id, [at[i] for i in ids_sel])
    task.available = len(rows)
    task.source_hash = digest
    return task
