"""Tiny random image-text models with working processors, built fully offline, for tests.

Families (`build(family, directory)` writes model + processor/tokenizer with `save_pretrained`):

=============  ==========================================  =====================================  =========================
family         model class (Auto class reloads it)         processor                              text layers at
=============  ==========================================  =====================================  =========================
llava          LlavaForConditionalGeneration (CLIP+Llama)  LlavaProcessor + LlavaImageProcessorPil  model.model.language_model
smolvlm        SmolVLMForConditionalGeneration             Idefics3Processor + SmolVLMImageProc.Pil model.model.text_model
gemma3         Gemma3ForConditionalGeneration (SigLIP)     Gemma3Processor + Gemma3ImageProc.Pil    model.model.language_model
qwen2_5_vl     Qwen2_5_VLForConditionalGeneration          Qwen2_5_VLProcessor without video  (*)   model.model.language_model
molmo2         Molmo2ForConditionalGeneration              Molmo2Processor without video      (**)  model.model.language_model
olmoe          OlmoeForCausalLM (AutoModelForCausalLM)     tokenizer                                model.model
qwen3_moe      Qwen3MoeForCausalLM (AutoModelForCausalLM)  tokenizer                                model.model
=============  ==========================================  =====================================  =========================

Every VLM reloads with `transformers.AutoModelForImageTextToText.from_pretrained(dir)`, the MoE ones
with `AutoModelForCausalLM`; llava, smolvlm and gemma3 processors reload with `AutoProcessor`.

Sizes: text towers hidden 64, 4 heads, 2 kv heads, head_dim 16, `layers` blocks (default 6),
max_position_embeddings 512, vocab = len(tokenizer); vision towers 2 layers of width 32 on 32x32
crops/tiles with 8x8 patches. Per-layer settings worth pruning tests: gemma3 layer_types
[sliding, sliding, full] repeated (sliding_window 16); molmo2 rope_scaling_layers = odd layers
(linear rope, factor 2); qwen3_moe decoder_sparse_step=2 (dense MLP in even layers, 8 experts top-2 in
odd ones); olmoe 8 experts top-2 in every layer. Image tokens per image: llava 16 and gemma3 4 (every
image resized to 32x32); smolvlm 4 per 32x32 tile, longest edge resized to 96, up to 3x3 tiles + a global
one (a square image 40, 48x80 28); qwen2_5_vl grid/4 between 32*32 and 96*96 pixels (64x64 16, 48x80 15,
96x96 36); molmo2 a 2x2 low-res view plus up to 2 overlapping crops (varies with the aspect ratio).

Why smolvlm uses Idefics3Processor: SmolVLMProcessor needs the `num2words` package (refused in its
__init__) and a SmolVLMVideoProcessor (torchvision). Idefics3Processor builds the same prompt for the
same tokens; the image processor is SmolVLM's own (SmolVLMImageProcessorPil).

(*)/(**) What is bypassed without torchvision (this venv's torch is a CPU build; PyPI's torchvision
does not import beside it):

* Qwen2_5_VLProcessor and Molmo2Processor take a `video_processor`, and every video processor class
  needs torchvision; `None` is refused by ProcessorMixin's type check (which, without torchvision,
  even fails with "VIDEO_PROCESSOR_MAPPING has no attribute '_extra_content'").
  `qwen2_5_vl_processor_class()` / `molmo2_processor_class()` (made by `_no_video_processor`) are
  subclasses of the family's OWN processor whose `__init__` has no `video_processor` parameter, so
  ProcessorMixin's attribute list (taken from the `__init__` signature) is image_processor and
  tokenizer. The family's `__init__` body runs unchanged (image/video token strings and ids, Molmo2's
  token-id lists and options); only its final ProcessorMixin.__init__ call is routed through
  `_DropVideo`, which leaves the video processor out. Everything done for images is the family's own
  code: `__call__`, `replace_image_token` (token expansion), `create_mm_token_type_ids`, the chat
  template rendering and the image processor. Added besides `__init__`: `to_dict`/`from_dict` (save
  the family's processor class name and the video processor's settings, `video_config`, as the
  "video_processor" entry of processor_config.json) and a `__call__` guard that refuses `videos=`
  (NotImplementedError; ProcessorMixin would skip them silently). So the saved directory is a normal
  family directory: where torchvision is installed `AutoProcessor.from_pretrained` builds the real
  Qwen2_5_VLProcessor / Molmo2Processor (with Qwen2VLVideoProcessor / Molmo2VideoProcessor) from it,
  and its outputs equal these subclasses' bit for bit (checked with a side-installed torchvision).
  Without torchvision AutoProcessor raises (Qwen2.5-VL: ImportError "Qwen2VLVideoProcessor requires
  the Torchvision library"; Molmo2: ValueError "Could not load any image processor class ...
  Missing optional dependencies: torchvision"), and `load_processor` reloads through the subclass's
  `from_pretrained`.
* Qwen2.5-VL has a PIL image processor (Qwen2VLImageProcessorPil), used as is.
* Molmo2's only image processor, Molmo2ImageProcessor, is a TorchvisionBackend: it instantiates
  without torchvision, and all of its Molmo2 code (crop tiling with overlap margins, patchify,
  pooling indices, image grids) is plain torch, but the backend's `resize` and `normalize` call
  torchvision.transforms.v2.functional. `molmo2_image_processor_class()` overrides exactly these two
  with the torch ops torchvision runs for float tensors (`F.interpolate(..., align_corners=False,
  antialias=...)` and `(x - mean) / std` per channel); Molmo2 resizes in float, so the pixels equal
  torchvision's (checked on 17x17 to 200x37 images). It saves as "Molmo2ImageProcessor".

`images(n)` gives real easy-vqa images (blockprune.data.easy_vqa when present, else the easy-vqa wheel
read directly), `resized(img, size)` makes other sizes. The tokenizer is one byte-level BPE trained
in-process on a fixed text (`base_tokenizer()`), with each family's special tokens added as single ids.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FAMILIES = ("llava", "smolvlm", "gemma3", "qwen2_5_vl", "molmo2")
MOE_FAMILIES = ("olmoe", "qwen3_moe")

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MAX_POS = 64, 4, 2, 16, 512
VOCAB_BPE = 512  # the trained BPE (256 bytes + merges); each family's special tokens come after it

# --------------------------------------------------------------------------- tokenizer

_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
_SHAPES = ("circle", "rectangle", "triangle")
_ANSWERS = _COLORS + _SHAPES + ("yes", "no")
_ENGLISH = """\
The quick brown fox jumps over the lazy dog. What is in the picture? Describe the image in one sentence.
A small red circle sits in the middle of a white image. There is a blue rectangle on the left side.
Answer the question with one word. Is there a shape in the image? Yes, there is. No, there is not.
What color is the square? It is green. How many shapes are there? There are two shapes and one of them is yellow.
Please look at the photo and tell me what you see. I see a triangle, a circle and a rectangle.
You are a helpful assistant. The user asks a question and the assistant answers it.
This is a test of a tiny language model. It reads text, looks at pictures and writes short answers.
Where is the dog? The dog is under the table. Which one is bigger, the circle or the triangle?
Can you help me? Of course I can help you. Thank you very much. You are welcome.
The weather today is sunny and warm, and the children are playing in the park with their friends.
"""


def _corpus() -> list[str]:
    """The fixed training text: easy-vqa-style questions and answers, ordinary English, chat words."""
    lines = []
    for c in _COLORS:
        for t in ("is there a {} shape?", "is there not a {} shape in the image?", "does the image contain a {} shape?",
                  "is a {} shape present?", "what is the {} shape?", "is no {} shape present?"):
            lines.append(t.format(c))
    for s in _SHAPES:
        for t in ("is there a {}?", "what color is the {}?", "what is the color of the {}?",
                  "does the image not contain a {}?", "is there a {} in the image?"):
            lines.append(t.format(s))
    lines += ["what color is the shape?", "what shape is in the image?", "what shape does the image contain?",
              "what shape is present?", "what is the color of the shape?"]
    lines += [" ".join(_ANSWERS), " " + " ".join(_ANSWERS), "\n".join(_ANSWERS)]
    lines += _ENGLISH.splitlines()
    lines += ["user assistant system model User: Assistant: USER: ASSISTANT:", "\n\n", "answer: circle\nanswer: yes"]
    return lines


@functools.cache
def _bpe_json() -> str:
    """A byte-level BPE (vocab VOCAB_BPE, no special tokens) trained on `_corpus()`, as JSON (cached)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_BPE, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return tok.to_str()


def base_tokenizer(specials=(), bos=None, eos="</s>", pad="<pad>", named=None, chat_template=None,
                   bos_prefix=False):
    """The shared BPE with `specials` (plus bos/eos/pad) added as special single ids in that order.

    named: {"image_token": "<image>", ...} -> tokenizer.image_token / tokenizer.image_token_id (saved and
    reloaded as transformers' model-specific special tokens). bos_prefix: the tokenizer prepends bos
    (as Llama's does)."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe_json())
    order = []
    for t in (pad, bos, eos, *specials):
        if t and t not in order:
            order.append(t)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in order])
    if bos_prefix and bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    kwargs = dict(tokenizer_object=tok, eos_token=eos, pad_token=pad)
    if bos:
        kwargs["bos_token"] = bos
    if named:
        kwargs["extra_special_tokens"] = dict(named)
    out = PreTrainedTokenizerFast(**kwargs)
    if chat_template:
        out.chat_template = chat_template
    return out


# --------------------------------------------------------------------------- chat templates
# Each renders a user turn (an image, then text) and the assistant generation prompt as the family's
# real template does; content may also be a plain string.

LLAVA_CHAT = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

SMOLVLM_CHAT = (  # SmolVLM-Instruct's template
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

GEMMA3_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

QWEN2_5_VL_CHAT = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

MOLMO2_CHAT = (  # ChatML, images first in the turn (the processor prepends bos, here eos as bos is None)
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}<|image|>{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CHATML = (  # Qwen3
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TULU_CHAT = (  # OLMoE-Instruct
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
    "{% endif %}{{ '\n' if message['role'] != 'assistant' else eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def family_tokenizer(family: str):
    """The shared BPE with `family`'s special tokens, bos/eos/pad and chat template."""
    if family == "llava":
        return base_tokenizer(["<image>"], bos="<s>", eos="</s>", pad="<pad>", bos_prefix=True,
                              named={"image_token": "<image>"})
    if family == "smolvlm":
        rowcol = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
        return base_tokenizer(["<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                               "<global-img>", *rowcol], bos="<|im_start|>", eos="<end_of_utterance>",
                              pad="<|endoftext|>",
                              named={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                     "global_image_token": "<global-img>",
                                     "end_of_utterance_token": "<end_of_utterance>"})
    if family == "gemma3":
        return base_tokenizer(["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                               "<image_soft_token>"], bos="<bos>", eos="<eos>", pad="<pad>",
                              named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                     "eoi_token": "<end_of_image>"})
    if family == "qwen2_5_vl":
        return base_tokenizer(["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                               "<|video_pad|>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                              named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                     "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    if family == "molmo2":
        return base_tokenizer(["<|im_start|>", "<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>",
                               "<frame_start>", "<im_end>", "<frame_end>", "<im_low>", "<|image|>", "<|video|>"],
                              bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                              named={"image_token": "<|image|>", "video_token": "<|video|>"})
    if family == "olmoe":
        return base_tokenizer([], bos="<|endoftext|>", eos="<|endoftext|>", pad="<|padding|>",
                              chat_template=TULU_CHAT)
    if family == "qwen3_moe":
        return base_tokenizer(["<|im_start|>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                              chat_template=CHATML)
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES + MOE_FAMILIES}")


# --------------------------------------------------------------------------- processors without video


def _no_video_processor(parent, init):
    """A subclass of `parent` (a ProcessorMixin whose __init__ takes video_processor) without video.

    `init` is the subclass's __init__: the parent's parameters less video_processor, plus `video_config`
    (ProcessorMixin takes the processor's attributes from this signature, and saves the other named
    parameters); it sets self.video_config and calls `parent.__init__(self, ..., video_processor=None, ...)`.
    The parent's __init__ body runs as is; its final ProcessorMixin.__init__(...) call reaches
    `_DropVideo`, which leaves the video processor out.

    video_config: the video processor's settings as a dict with "video_processor_type" (never built
    here); saved as the "video_processor" entry of processor_config.json, so that AutoProcessor can
    rebuild the family's full processor from the directory where torchvision is installed."""
    import inspect

    from transformers.processing_utils import ProcessorMixin

    want = [p for p in inspect.signature(parent.__init__).parameters if p != "video_processor"]
    have = [p for p in inspect.signature(init).parameters if p != "video_config"]
    if want != have:  # a transformers update changed the family processor's signature
        raise RuntimeError(f"{parent.__name__}.__init__ takes {want}; the video-less subclass takes {have}")
    parent_attributes = parent.get_attributes()

    class _DropVideo(ProcessorMixin):
        def __init__(self, *args, **kwargs):
            named = dict(zip(parent_attributes, args))  # the parent passes its attributes positionally
            named.update(kwargs)
            named.pop("video_processor", None)
            ProcessorMixin.__init__(self, **named)

    def to_dict(self):
        out = parent.to_dict(self)
        out.pop("video_config", None)
        if self.video_config:
            out["video_processor"] = dict(self.video_config)
        out["processor_class"] = parent.__name__  # what AutoProcessor builds where torchvision is installed
        return out

    @classmethod
    def from_dict(cls, processor_dict, **kwargs):
        processor_dict = dict(processor_dict)
        if isinstance(processor_dict.get("video_processor"), dict):
            processor_dict["video_config"] = processor_dict.pop("video_processor")
        return ProcessorMixin.from_dict.__func__(cls, processor_dict, **kwargs)

    def __call__(self, *args, **kwargs):
        # ProcessorMixin.__call__ skips videos silently when there is no video processor: refuse them
        if kwargs.get("videos") is not None or (len(args) > 2 and args[2] is not None):
            raise NotImplementedError(f"{type(self).__name__} has no video processor (it needs torchvision)")
        return parent.__call__(self, *args, **kwargs)

    name = parent.__name__.replace("Processor", "ImageOnlyProcessor")
    return type(name, (parent, _DropVideo), {"__init__": init, "to_dict": to_dict, "from_dict": from_dict,
                                             "__call__": __call__, "__module__": __name__,
                                             "__doc__": f"{parent.__name__} without its video processor."})


@functools.cache
def qwen2_5_vl_processor_class():
    """Qwen2_5_VLProcessor without video (see the module docstring)."""
    from transformers import Qwen2_5_VLProcessor

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, video_config=None, **kwargs):
        self.video_config = video_config
        Qwen2_5_VLProcessor.__init__(self, image_processor=image_processor, tokenizer=tokenizer,
                                     video_processor=None, chat_template=chat_template, **kwargs)

    return _no_video_processor(Qwen2_5_VLProcessor, __init__)


@functools.cache
def molmo2_processor_class():
    """Molmo2Processor without video (see the module docstring)."""
    from transformers import Molmo2Processor

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_use_col_tokens=True,
                 use_single_crop_col_tokens=None, use_single_crop_start_token=True, video_use_col_tokens=False,
                 use_frame_special_tokens=True, video_config=None, **kwargs):
        self.video_config = video_config
        Molmo2Processor.__init__(self, image_processor=image_processor, video_processor=None, tokenizer=tokenizer,
                                 chat_template=chat_template, image_use_col_tokens=image_use_col_tokens,
                                 use_single_crop_col_tokens=use_single_crop_col_tokens,
                                 use_single_crop_start_token=use_single_crop_start_token,
                                 video_use_col_tokens=video_use_col_tokens,
                                 use_frame_special_tokens=use_frame_special_tokens, **kwargs)

    return _no_video_processor(Molmo2Processor, __init__)


@functools.cache
def molmo2_image_processor_class():
    """Molmo2ImageProcessor with the two torchvision calls of its backend (resize, normalize) in torch."""
    import torch
    from torch.nn import functional as F
    from transformers.image_utils import PILImageResampling
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    modes = {PILImageResampling.NEAREST: "nearest", PILImageResampling.BILINEAR: "bilinear",
             PILImageResampling.BICUBIC: "bicubic"}

    class Molmo2ImageProcessorTorch(Molmo2ImageProcessor):
        """Molmo2ImageProcessor whose resize/normalize are torch ops (what torchvision runs for float tensors)."""

        def resize(self, image, size, resample=None, antialias=True, **kwargs):
            if not (size.height and size.width):
                raise NotImplementedError(f"Molmo2 resizes to a height and width, not {size}")
            mode = modes[PILImageResampling(resample if resample is not None else PILImageResampling.BILINEAR)]
            if not image.is_floating_point():
                raise NotImplementedError("Molmo2 resizes float tensors; torchvision's uint8 path is not emulated")
            shape = image.shape
            flat = image.reshape(-1, *shape[-3:])
            out = F.interpolate(flat, size=[size.height, size.width], mode=mode,
                                align_corners=False if mode != "nearest" else None,
                                antialias=antialias if mode != "nearest" else False)
            return out.reshape(*shape[:-2], size.height, size.width)

        def normalize(self, image, mean, std, inplace=False, **kwargs):
            mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            std = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            if not inplace:
                image = image.clone()
            return image.sub_(mean).div_(std)

        def to_dict(self):
            out = super().to_dict()
            out["image_processor_type"] = "Molmo2ImageProcessor"
            return out

    Molmo2ImageProcessorTorch.__module__ = __name__
    return Molmo2ImageProcessorTorch


# --------------------------------------------------------------------------- families


def _text_kwargs(tok, layers):
    return dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


# LLaVA at about 1B parameters (bench/bench_vlm.py --shape 1b: timing only, random weights): a TinyLlama-shaped
# text tower (hidden 2048, 5632, 32 heads, 4 kv heads, vocabulary 32000) and a CLIP ViT-B/16 at 224 (196 tokens)
LLAVA_1B = {"text": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
                         vocab_size=32000, max_position_embeddings=2048),
            "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, projection_dim=512)}


def _llava(layers, shape: str = "tiny"):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import (
        LlavaImageProcessorPil,
    )

    big = shape == "1b"
    # tiny: any image -> 32x32 -> 4x4 patches (+ CLS, dropped by "default") = 16 image tokens
    img, patch = (224, 16) if big else (32, 8)
    tok = family_tokenizer("llava")
    proc = LlavaProcessor(image_processor=LlavaImageProcessorPil(size={"shortest_edge": img},
                                                                 crop_size={"height": img, "width": img}),
                          tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_CHAT)
    vision = LLAVA_1B["vision"] if big else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2, image_size=img, patch_size=patch,
                                                   projection_dim=32)
    text = {**_text_kwargs(tok, layers), **(LLAVA_1B["text"] if big else {})}
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**vision),
                      text_config=LlamaConfig(**text), image_token_index=tok.image_token_id,
                      image_seq_length=(img // patch) ** 2, vision_feature_select_strategy="default",
                      vision_feature_layer=-2, pad_token_id=tok.pad_token_id)
    return cfg, proc, tok


def _smolvlm(layers):
    from transformers import Idefics3Processor, LlamaConfig, SmolVLMConfig
    from transformers.models.smolvlm.image_processing_pil_smolvlm import (
        SmolVLMImageProcessorPil,
    )

    # the image is resized to longest edge 96, then split into up to 3x3 tiles of 32 (+ 1 global 32x32 tile), each
    # (32/8)^2 / 2^2 = 4 image tokens: a square image -> 10 tiles, 48x80 -> 3x2 + 1 = 7
    tile, patch, scale = 32, 8, 2
    tok = family_tokenizer("smolvlm")
    ip = SmolVLMImageProcessorPil(size={"longest_edge": 3 * tile}, max_image_size={"longest_edge": tile},
                                  do_image_splitting=True)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(tile // patch) ** 2 // scale ** 2,
                             chat_template=SMOLVLM_CHAT)
    cfg = SmolVLMConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=tile, patch_size=patch),
                        text_config=LlamaConfig(**_text_kwargs(tok, layers)),
                        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale,
                        pad_token_id=tok.pad_token_id)
    return cfg, proc, tok


def _gemma3(layers):
    from transformers import Gemma3Config, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import (
        Gemma3ImageProcessorPil,
    )

    img, patch, mm = 32, 8, 4  # any image -> 32x32 -> 4x4 patches, avg-pooled 2x2 -> 4 soft tokens
    tok = family_tokenizer("gemma3")
    proc = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": img, "width": img}),
                           tokenizer=tok, chat_template=GEMMA3_CHAT, image_seq_length=mm)
    cid = tok.convert_tokens_to_ids
    text = _text_kwargs(tok, layers)
    text.update(head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=16,
                layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(layers)])
    cfg = Gemma3Config(text_config=text,
                       vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=2, image_size=img,
                                          patch_size=patch),
                       mm_tokens_per_image=mm, boi_token_index=cid("<start_of_image>"),
                       eoi_token_index=cid("<end_of_image>"), image_token_index=cid("<image_soft_token>"))
    return cfg, proc, tok


def _qwen2_5_vl(layers):
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    patch, merge, tpatch = 8, 2, 2  # a 64x64 image: grid (1, 8, 8) -> 16 image tokens; 96x96: 36
    tok = family_tokenizer("qwen2_5_vl")
    ip = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=tpatch,
                                  min_pixels=32 * 32, max_pixels=96 * 96)
    video = dict(video_processor_type="Qwen2VLVideoProcessor", patch_size=patch, merge_size=merge,
                 temporal_patch_size=tpatch)
    proc = qwen2_5_vl_processor_class()(image_processor=ip, tokenizer=tok, chat_template=QWEN2_5_VL_CHAT,
                                        video_config=video)
    cid = tok.convert_tokens_to_ids
    text = _text_kwargs(tok, layers)
    text.update(bos_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [2, 3, 3]})  # sums to head_dim / 2
    cfg = Qwen2_5_VLConfig(text_config=text,
                           vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                              patch_size=patch, spatial_merge_size=merge,
                                              temporal_patch_size=tpatch, window_size=32, out_hidden_size=HIDDEN,
                                              fullatt_block_indexes=[1]),
                           image_token_id=cid("<|image_pad|>"), video_token_id=cid("<|video_pad|>"),
                           vision_start_token_id=cid("<|vision_start|>"), vision_end_token_id=cid("<|vision_end|>"))
    return cfg, proc, tok


def _molmo2_image_processor_kwargs():
    return dict(size={"height": 32, "width": 32}, patch_size=8, pooling_size=[2, 2], max_crops=2,
                overlap_margins=[1, 1])


def _molmo2(layers):
    from transformers import Molmo2Config

    crop, patch = 32, 8
    tok = family_tokenizer("molmo2")
    ip = molmo2_image_processor_class()(**_molmo2_image_processor_kwargs())
    video = dict(video_processor_type="Molmo2VideoProcessor", size={"height": crop, "width": crop},
                 patch_size=patch, pooling_size=[2, 2])
    proc = molmo2_processor_class()(image_processor=ip, tokenizer=tok, chat_template=MOLMO2_CHAT, video_config=video)
    cid = tok.convert_tokens_to_ids
    text = _text_kwargs(tok, layers)
    text.update(additional_vocab_size=8, head_dim=HEAD_DIM, bos_token_id=None,
                rope_scaling_layers=list(range(1, layers, 2)),  # odd layers use the scaled rope
                rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    cfg = Molmo2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=16, image_size=[crop, crop], patch_size=patch),
        adapter_config=dict(vision_feature_layer=[-1, -2], hidden_size=32, num_attention_heads=2,
                            num_key_value_heads=2, head_dim=16, intermediate_size=64, text_hidden_size=HIDDEN),
        text_config=text,
        image_start_token_id=cid("<im_start>"), low_res_image_start_token_id=cid("<low_res_im_start>"),
        image_end_token_id=cid("<im_end>"), image_patch_id=cid("<im_patch>"),
        frame_start_token_id=cid("<frame_start>"), frame_end_token_id=cid("<frame_end>"))
    return cfg, proc, tok


def _olmoe(layers):
    from transformers import OlmoeConfig

    tok = family_tokenizer("olmoe")
    return OlmoeConfig(**_text_kwargs(tok, layers), num_experts=8, num_experts_per_tok=2), None, tok


def _qwen3_moe(layers):
    from transformers import Qwen3MoeConfig

    tok = family_tokenizer("qwen3_moe")
    kw = _text_kwargs(tok, layers)
    kw.update(bos_token_id=None)
    # decoder_sparse_step=2: dense MLP in layers 0, 2, 4, sparse MoE in 1, 3, 5
    cfg = Qwen3MoeConfig(**kw, head_dim=HEAD_DIM, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                         decoder_sparse_step=2, mlp_only_layers=[])
    return cfg, None, tok


_BUILDERS = {"llava": _llava, "smolvlm": _smolvlm, "gemma3": _gemma3, "qwen2_5_vl": _qwen2_5_vl, "molmo2": _molmo2,
             "olmoe": _olmoe, "qwen3_moe": _qwen3_moe}


def build(family: str, directory: Path, layers: int = 6, seed: int = 0, shape: str = "tiny", dtype=None) -> Path:
    """Write a random fp32 `family` model (`layers` text blocks; weights fixed by `seed`) and its processor
    (VLMs) or tokenizer (MoE) into `directory`; return it. The global torch RNG is left as it was.
    `shape="1b"` (llava only): LLAVA_1B's sizes, for timing; `dtype`: the weights' (default float32)."""
    import torch
    import transformers

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES + MOE_FAMILIES}")
    directory = Path(directory)
    if shape != "tiny" and family != "llava":
        raise ValueError(f"shape {shape!r} exists for llava only")
    cfg, proc, tok = _BUILDERS[family](layers, shape) if family == "llava" else _BUILDERS[family](layers)
    auto = transformers.AutoModelForCausalLM if family in MOE_FAMILIES else transformers.AutoModelForImageTextToText
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(cfg, dtype=dtype or torch.float32)
    model.eval()
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id = tok.pad_token_id, tok.eos_token_id
    gc.bos_token_id = tok.bos_token_id
    model.save_pretrained(directory)
    (proc or tok).save_pretrained(directory)
    return directory


def load_processor(family: str, directory: Path):
    """The processor saved by `build` (the tokenizer for MoE families).

    llava, smolvlm, gemma3: AutoProcessor. qwen2_5_vl, molmo2: the video-less subclass's from_pretrained
    (AutoProcessor needs torchvision for them); for molmo2 with the torch-only image processor."""
    import transformers

    directory = Path(directory)
    if family in MOE_FAMILIES:
        return transformers.AutoTokenizer.from_pretrained(directory)
    if family == "qwen2_5_vl":
        return qwen2_5_vl_processor_class().from_pretrained(directory)
    if family == "molmo2":
        saved = json.loads((directory / "processor_config.json").read_text())["image_processor"]
        ip = molmo2_image_processor_class().from_dict(saved)
        return molmo2_processor_class().from_pretrained(directory, image_processor=ip)
    if family in FAMILIES:
        return transformers.AutoProcessor.from_pretrained(directory)
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES + MOE_FAMILIES}")


def text_layers(model):
    """The text tower's decoder layers: model.model.text_model.layers (smolvlm/idefics3),
    model.model.language_model.layers (other VLMs) or model.model.layers (causal LMs)."""
    inner = model.model
    for name in ("language_model", "text_model"):
        if hasattr(inner, name):
            return getattr(inner, name).layers
    return inner.layers


# --------------------------------------------------------------------------- easy-vqa images

EASY_VQA_WHEEL = "easy-vqa==1.0"


def _wheel() -> Path:
    """The easy-vqa wheel: in blockprune's cache (dl/) or our own temp cache, else `pip download` it there."""
    roots = []
    env = os.environ.get("BLOCKPRUNE_CACHE")
    roots.append((Path(env).expanduser() if env else Path.home() / ".cache" / "blockprune") / "dl")
    own = Path(tempfile.gettempdir()) / "blockprune-test-easy-vqa"
    roots.append(own)
    for root in roots:
        found = sorted(glob.glob(str(root / "easy_vqa-1.0-*.whl")))
        if found:
            return Path(found[0])
    own.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=own) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, EASY_VQA_WHEEL],
                       check=True, stdout=subprocess.DEVNULL)
        got = glob.glob(os.path.join(tmp, "easy_vqa-1.0-*.whl"))[0]
        os.replace(got, own / os.path.basename(got))
    return Path(glob.glob(str(own / "easy_vqa-1.0-*.whl"))[0])


@functools.lru_cache(maxsize=4)
def _wheel_rows(split: str) -> tuple:
    """(wheel member of the image, question, answer) of each question of `split`, from the wheel itself."""
    with zipfile.ZipFile(_wheel()) as zf:
        table = json.loads(zf.read(f"easy_vqa/data/{split}/questions.json"))
    return tuple((f"easy_vqa/data/{split}/images/{image_id}.png", q, a) for q, a, image_id in table)


def _rows(split: str = "test") -> list[tuple]:
    """[(image Path or wheel member name, question, answer)] from blockprune.data.easy_vqa if present, else
    from the wheel."""
    try:
        from blockprune.data.easy_vqa import easy_vqa_rows
    except ImportError:
        easy_vqa_rows = None
    if easy_vqa_rows is not None:
        try:
            rows = easy_vqa_rows(split)
        except Exception as exc:  # e.g. no cache offline: read the wheel ourselves  # noqa: BLE001
            print(f"vlm_fixtures: blockprune.data.easy_vqa failed ({exc}); reading the wheel", file=sys.stderr)
        else:
            return [(Path(r["image"]), r["question"],
                     r["answers"][0] if isinstance(r["answers"], (list, tuple)) else r["answers"]) for r in rows]
    return list(_wheel_rows(split))


def images(n: int) -> list[tuple]:
    """n real easy-vqa test images (64x64 RGB PIL), each with a question and its answer: (image, question,
    answer), one question per distinct image, in the file's order (deterministic)."""
    from PIL import Image

    out, seen, zf = [], set(), None
    try:
        for src, q, a in _rows("test"):
            if src in seen:
                continue
            seen.add(src)
            if isinstance(src, Path):
                with Image.open(src) as img:
                    out.append((img.convert("RGB"), q, a))
            else:
                zf = zf or zipfile.ZipFile(_wheel())
                with Image.open(io.BytesIO(zf.read(src))) as img:
                    out.append((img.convert("RGB"), q, a))
            if len(out) == n:
                return out
    finally:
        if zf is not None:
            zf.close()
    raise ValueError(f"easy-vqa's test split has fewer than {n} images")


def resized(img, size):
    """`img` resized (bicubic) to `size`: an int (square) or (width, height) as PIL counts it."""
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else size
    return img.resize((int(w), int(h)), Image.Resampling.BICUBIC)


def conversation(question: str, image=None) -> list[dict]:
    """One user turn: the image (if given) then the question, in the processors' message format."""
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def vlm_inputs(processor, samples, padding_side: str = "left"):
    """Batched model inputs for [(image, question), ...]: the processor renders each prompt with its chat
    template (add_generation_prompt) and then processes texts + images together, padding to the longest."""
    texts = [processor.apply_chat_template(conversation(q, img), add_generation_prompt=True, tokenize=False)
             for img, q in samples]
    processor.tokenizer.padding_side = padding_side
    return processor(text=texts, images=[[img] for img, _ in samples], return_tensors="pt", padding=True)
