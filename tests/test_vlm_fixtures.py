"""The tiny offline image-text (and MoE text) fixtures of tests/vlm_fixtures.py: each family builds,
saves, reloads with the Auto classes, processes a padded batch of two easy-vqa images of different
sizes through its own processor and chat template, runs a forward pass and generates."""

import json

import pytest
import torch
import transformers
import vlm_fixtures as vf

# expected rendering of one user turn (image, then text) plus the generation prompt
PROMPTS = {
    "llava": "USER: <image>\n{q} ASSISTANT:",
    "smolvlm": "<|im_start|>User:<image>{q}<end_of_utterance>\nAssistant:",
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>{q}<end_of_turn>\n<start_of_turn>model\n",
    "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n",
    "molmo2": "<|im_start|>user\n<|image|>{q}<|im_end|>\n<|im_start|>assistant\n",
}
# the token that stands for image features in the processed ids
IMAGE_TOKEN = {"llava": "<image>", "smolvlm": "<image>", "gemma3": "<image_soft_token>",
               "qwen2_5_vl": "<|image_pad|>", "molmo2": "<im_patch>"}
# families whose number of image tokens depends on the image's size (LLaVA and Gemma 3 resize to 32x32)
SIZE_DEPENDENT = {"smolvlm", "qwen2_5_vl", "molmo2"}
SIZES = ((48, 80), 96)  # (width, height) and square: two sizes in one batch
NO_VIDEO = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "molmo2": "Molmo2Processor"}


@pytest.fixture(scope="module")
def samples():
    return vf.images(2)


def test_tokenizer_is_shared_deterministic_and_reasonable():
    a, b = vf.family_tokenizer("llava"), vf.family_tokenizer("qwen2_5_vl")
    words = "what color is the shape? circle yes red blue"
    assert a.tokenize(words) == b.tokenize(words)  # one BPE under every family's special tokens
    for word in ("circle", "yes", "red", "blue", "triangle", "color", "shape"):
        assert len(a(" " + word, add_special_tokens=False).input_ids) == 1, word
    assert len(a("The dog is under the table.", add_special_tokens=False).input_ids) <= 12
    assert vf._bpe_json() == vf._bpe_json.__wrapped__()  # retraining gives the same tokenizer
    for family in vf.FAMILIES + vf.MOE_FAMILIES:
        tok = vf.family_tokenizer(family)
        assert tok.eos_token_id is not None and tok.pad_token_id is not None, family
        assert len(tok) > vf.VOCAB_BPE


@pytest.mark.parametrize("family", vf.FAMILIES)
def test_vlm_family(family, tmp_path, samples):
    directory = vf.build(family, tmp_path / family)
    assert directory == tmp_path / family
    model = transformers.AutoModelForImageTextToText.from_pretrained(directory).eval()
    assert next(model.parameters()).dtype == torch.float32
    processor = vf.load_processor(family, directory)
    tok = processor.tokenizer
    assert len(tok) == model.config.text_config.vocab_size

    # where the text tower's blocks are
    inner = model.model.text_model if family == "smolvlm" else model.model.language_model
    assert vf.text_layers(model) is inner.layers
    assert len(inner.layers) == 6 == model.config.text_config.num_hidden_layers

    # the processor renders the family's chat template
    (img1, q1, _), (img2, q2, _) = samples
    rendered = processor.apply_chat_template(vf.conversation(q1, img1), add_generation_prompt=True, tokenize=False)
    assert rendered == PROMPTS[family].format(q=q1)

    # a padded batch of two images of different sizes, processed together
    batch = [(vf.resized(img1, SIZES[0]), q1), (vf.resized(img2, SIZES[1]), q2 + " answer with one word.")]
    inputs = vf.vlm_inputs(processor, batch)
    ids = inputs["input_ids"]
    assert ids.shape[0] == 2 and (inputs["attention_mask"][:, 0] == 0).any()  # left padding
    n_image = (ids == tok.convert_tokens_to_ids(IMAGE_TOKEN[family])).sum(1).tolist()
    assert min(n_image) > 0
    assert (n_image[0] != n_image[1]) == (family in SIZE_DEPENDENT), n_image

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (*ids.shape, len(tok)) and torch.isfinite(logits).all()

    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 4
    assert torch.equal(out[:, :ids.shape[1]], ids)


@pytest.mark.parametrize("family", sorted(NO_VIDEO))
def test_video_less_processor(family, tmp_path):
    """The saved directory names the family's own processor (with its video settings); AutoProcessor
    rebuilds it where torchvision is installed and needs torchvision otherwise."""
    directory = vf.build(family, tmp_path / family)
    saved = json.loads((directory / "processor_config.json").read_text())
    assert saved["processor_class"] == NO_VIDEO[family]
    assert saved["video_processor"]["video_processor_type"].endswith("VideoProcessor")
    processor = vf.load_processor(family, directory)
    assert isinstance(processor, getattr(transformers, NO_VIDEO[family]))
    assert processor.get_attributes() == ["image_processor", "tokenizer"] and processor.video_config
    if transformers.utils.is_torchvision_available():
        assert type(transformers.AutoProcessor.from_pretrained(directory)).__name__ == NO_VIDEO[family]
    else:
        # qwen2_5_vl: ImportError (Qwen2VLVideoProcessor), molmo2: ValueError (no Molmo2ImageProcessor backend)
        with pytest.raises((ImportError, ValueError), match="[Tt]orchvision"):
            transformers.AutoProcessor.from_pretrained(directory)
    with pytest.raises(NotImplementedError, match="no video processor"):
        processor(text=["<|video|>"], videos=[[torch.zeros(3, 32, 32, dtype=torch.uint8)] * 2])
    # saving the reloaded processor again writes the same settings
    processor.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "processor_config.json").read_text()) == saved


@pytest.mark.parametrize("family", vf.MOE_FAMILIES)
def test_moe_family(family, tmp_path, samples):
    directory = vf.build(family, tmp_path / family)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    tok = vf.load_processor(family, directory)
    assert len(model.model.layers) == 6 == len(vf.text_layers(model))
    assert any(hasattr(layer.mlp, "experts") for layer in model.model.layers)
    if family == "qwen3_moe":  # decoder_sparse_step=2: dense MLPs in the even layers
        assert [hasattr(layer.mlp, "experts") for layer in model.model.layers] == [False, True] * 3
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for _, q, _ in samples]
    texts[1] += " answer with one word."
    tok.padding_side = "left"
    inputs = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs, output_router_logits=True)
    assert out.logits.shape == (*inputs.input_ids.shape, len(tok)) and torch.isfinite(out.logits).all()
    assert out.router_logits is not None and len(out.router_logits) > 0
    gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert inputs.input_ids.shape[1] < gen.shape[1] <= inputs.input_ids.shape[1] + 4


def test_build_is_seeded_and_leaves_the_global_rng(tmp_path):
    from safetensors.torch import load_file

    state = torch.random.get_rng_state()
    a = load_file(vf.build("llava", tmp_path / "a", layers=3, seed=0) / "model.safetensors")
    assert torch.equal(torch.random.get_rng_state(), state)
    b = load_file(vf.build("llava", tmp_path / "b", layers=3, seed=0) / "model.safetensors")
    c = load_file(vf.build("llava", tmp_path / "c", layers=3, seed=1) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["text_config"]["num_hidden_layers"] == 3


def test_images_and_resized(samples):
    assert len(samples) == 2
    for img, question, answer in samples:
        assert img.mode == "RGB" and img.size == (64, 64)
        assert question.endswith("?") and answer
    assert vf.resized(samples[0][0], (48, 80)).size == (48, 80)
    assert vf.resized(samples[0][0], 96).size == (96, 96)
