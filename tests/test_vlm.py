"""Image-text models (#31): their text tower's blocks pruned, scored and decoded on prompts with images.

Every candidate's scores and generated answers are checked against an independent reference: the
physically pruned copy (`remove_blocks`: blocks deleted, config renumbered), run through the
family's own forward and `generate()` with its processor's inputs for one sample at a time, on
real easy-VQA images of different sizes in one batch. Families: LLaVA, SmolVLM, Gemma 3,
Qwen2.5-VL, Molmo2 (tiny random configs, tests/vlm_fixtures.py), and the mixture-of-experts text
towers OLMoE and Qwen3-MoE.
"""

import json

import numpy as np
import pytest
import torch

import vlm_fixtures as vf
from blockprune import cli, models
from blockprune.engine import Engine
from blockprune.engine.packing import pack
from blockprune.engine.trie import row_key
from blockprune.tasks.image_task import prompt_of
from blockprune.tasks.request import Media, Request
from test_hostile import no_model_load, one_error, snapshot  # noqa: F401

SIZES = [64, (48, 80), 96]  # one batch holds images of different sizes (different numbers of image tokens)
MASKS = np.ones((4, 6), dtype=bool)
MASKS[1, 2] = False
MASKS[2, [1, 4]] = False
MASKS[3, 0] = False


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {f: vf.build(f, root / f) for f in vf.FAMILIES + vf.MOE_FAMILIES}


def load(family, family_dirs):
    d = family_dirs[family]
    if family in vf.MOE_FAMILIES:
        return models.load(str(d), device="cpu")
    return models.load(str(d), device="cpu", processor=vf.load_processor(family, d))


def image_media(bm, n=3):
    out = []
    for (img, question, answer), size in zip(vf.images(n), SIZES):
        img = vf.resized(img, size)
        text, prompt = prompt_of(bm.processor, question, img)
        out.append((Media(key=f"{question}:{size}", prompt=prompt, text=text, image=img), answer))
    return out


def reference_inputs(processor, media: Media, length: int) -> dict:
    """The processor's inputs for one sample alone, its per-token ones widened to `length` (text after the prompt)."""
    inputs = dict(processor(text=[media.text], images=[[media.image]], return_tensors="pt"))
    ids = inputs.pop("input_ids")
    inputs.pop("attention_mask", None)
    for key, value in list(inputs.items()):
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == ids.shape:
            wide = value.new_zeros((1, length, *value.shape[2:]))
            wide[0, : ids.shape[1]] = value[0]
            inputs[key] = wide
    return inputs


def pruned(bm, mask):
    removed = [i for i in range(bm.num_blocks) if not mask[i]]
    return models.remove_blocks(bm, removed) if removed else bm


@pytest.mark.parametrize("family", vf.FAMILIES)
def test_scores_equal_those_of_physically_pruned_copies(family, family_dirs):
    bm = load(family, family_dirs)
    assert bm.image_text and bm.num_blocks == 6
    reqs = []
    for m, answer in image_media(bm):
        ans = bm.tokenizer(" " + answer, add_special_tokens=False).input_ids
        reqs.append(Request(m.prompt + tuple(ans), len(m.prompt), media=m))
    got = Engine(bm).score(reqs, MASKS).logprob
    for c, mask in enumerate(MASKS):
        copy = pruned(bm, mask)
        for r, req in enumerate(reqs):
            with torch.no_grad():
                logits = copy.model(input_ids=torch.tensor([req.tokens]),
                                    **reference_inputs(bm.processor, req.media, len(req.tokens))).logits[0].double()
            target = torch.tensor(req.tokens[req.score_from:])
            want = torch.log_softmax(logits, -1)[req.score_from - 1: -1].gather(1, target[:, None]).sum().item()
            assert got[c, r] == pytest.approx(want, abs=2e-4), (family, c, r)


@pytest.mark.parametrize("family", vf.FAMILIES)
def test_generated_answers_equal_generate_of_physically_pruned_copies(family, family_dirs):
    bm = load(family, family_dirs)
    media = [m for m, _ in image_media(bm)]
    limits = [3, 6, 9]  # rows stop at different lengths
    eos = [bm.eos_token_id]
    gen = Engine(bm).generate([m.prompt for m in media], MASKS, limits, eos=eos, media=media)
    assert gen.block_rows < gen.naive_block_rows  # shared prefixes ran once
    for c, mask in enumerate(MASKS):
        copy = pruned(bm, mask)
        for p, m in enumerate(media):
            inputs = dict(bm.processor(text=[m.text], images=[[m.image]], return_tensors="pt"))
            with torch.no_grad():
                out = copy.model.generate(**inputs, max_new_tokens=limits[p], do_sample=False, eos_token_id=eos,
                                          pad_token_id=eos[0])
            want = [int(t) for t in out[0, inputs["input_ids"].shape[1]:] if int(t) not in eos]
            assert gen.tokens[c][p] == want, (family, c, p)
            assert len(want) <= limits[p]


@pytest.mark.parametrize("family", vf.MOE_FAMILIES)
def test_mixture_of_experts_blocks_are_blocks_like_any_other(family, family_dirs):
    bm = load(family, family_dirs)
    prompts = [bm.tokenizer(t).input_ids for t in ("what color is the circle?", "is there a red square in it?")]
    reqs = [Request(tuple(p) + (5, 9, 11), len(p)) for p in prompts]
    got = Engine(bm).score(reqs, MASKS).logprob
    gen = Engine(bm).generate(prompts, MASKS, [4, 7], eos=[bm.eos_token_id])
    for c, mask in enumerate(MASKS):
        copy = pruned(bm, mask)
        for r, req in enumerate(reqs):
            with torch.no_grad():
                logits = copy.model(input_ids=torch.tensor([req.tokens])).logits[0].double()
            target = torch.tensor(req.tokens[req.score_from:])
            want = torch.log_softmax(logits, -1)[req.score_from - 1: -1].gather(1, target[:, None]).sum().item()
            assert got[c, r] == pytest.approx(want, abs=2e-4)
            with torch.no_grad():
                out = copy.model.generate(torch.tensor([prompts[r]]), max_new_tokens=[4, 7][r], do_sample=False,
                                          eos_token_id=[bm.eos_token_id], pad_token_id=bm.eos_token_id)
            assert gen.tokens[c][r] == [int(t) for t in out[0, len(prompts[r]):] if int(t) != bm.eos_token_id]


def test_the_image_is_part_of_a_rows_identity():
    """Image tokens are the same ids whatever the picture: two samples with the same text and other
    images must never share a row, a packed context or a stored state."""
    a = Media(key="img-a", prompt=(1, 7, 7, 2), text="", image=None)
    b = Media(key="img-b", prompt=(1, 7, 7, 2), text="", image=None)
    reqs = [Request((1, 7, 7, 2, 5), 4, media=a), Request((1, 7, 7, 2, 5), 4, media=b),
            Request((1, 7, 7, 2, 6), 4, media=a)]
    rows = pack(reqs, max_len=64)
    assert len(rows) == 3 and all(len(r.scored) == 1 for r in rows)
    assert row_key(rows[0]) != row_key(rows[1])
    with pytest.raises(ValueError):
        Request((1, 8, 7, 2, 5), 4, media=a)  # its tokens must start with its image's prompt


# ---- the command line, end to end ------------------------------------------------------------------
def vqa_rows(tmp_path, n=6, broken=None):
    """A vqa: JSONL of easy-VQA images saved beside it (relative paths)."""
    rows = []
    for i, (img, question, answer) in enumerate(vf.images(n)):
        name = f"img{i}.png"
        vf.resized(img, SIZES[i % 3]).save(tmp_path / name)
        rows.append({"image": name, "question": question, "answers": [answer] * 10})
    if broken:
        broken(rows, tmp_path)
    path = tmp_path / "vqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_search_scores_image_and_text_tasks_side_by_side_and_exports(family_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["search", "--model", str(family_dirs["llava"]), "--task", "vqa:easy-vqa#12", "--task",
            f"vqa:jsonl:{vqa_rows(tmp_path)}", "--task", "kl:shakespeare/hamlet#8", "--ppl-window", "32",
            "--method", "beam", "--beam-width", "2", "--max-remove", "2", "--out", str(out), "--device", "cpu",
            "--no-progress", "--no-latency", "--tolerance", "0.5", "--export", "hf"]
    assert cli.main(args) == 0
    report = (out / "REPORT.md").read_text()
    for task in ("vqa_easy_vqa", "vqa_vqa", "kl_shakespeare_hamlet"):
        assert task in report
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["tasks"]["vqa_easy_vqa"]["kind"] == "vqa"
    rec = next(json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()
               if '"task":"vqa_vqa"' in x and '"removed":[]' in x)
    assert {"vqa_acc", "answer_kl", "dense_logprob", "generated"} <= set(rec["per_sample"]) | set(rec)
    manifest = json.loads((out / "export" / "export_manifest.json").read_text())
    assert manifest["parity"]["hf"]["image_logits_max_abs_diff"] <= manifest["parity"]["hf"]["atol"]
    from transformers import AutoModelForImageTextToText, AutoProcessor

    reloaded = AutoModelForImageTextToText.from_pretrained(out / "export" / "hf")
    assert reloaded.config.text_config.num_hidden_layers == 6 - len(manifest["removed"])
    assert AutoProcessor.from_pretrained(out / "export" / "hf") is not None


def test_other_formats_refuse_an_image_text_model(family_dirs, tmp_path, capsys, no_model_load):
    out = tmp_path / "exp"
    assert cli.main(["export", "--model", str(family_dirs["llava"]), "--remove", "2", "--out", str(out),
                     "--format", "hf,gguf", "--device", "cpu"]) == 2
    one_error(capsys, "image-text model", "--format hf")
    assert not out.exists()


def search(model, spec, out):
    return cli.main(["search", "--model", str(model), "--task", spec, "--method", "given", "--sets", "2", "--out",
                     str(out), "--device", "cpu", "--no-progress", "--no-latency"])


def test_a_text_only_model_given_an_image_task_is_one_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert search(tiny_dir, "vqa:easy-vqa#4", out) == 2
    one_error(capsys, "image task needs an image-text model")
    assert not out.exists()


def _drop(rows, d):
    rows[1]["image"] = "missing.png"


def _text(rows, d):
    (d / "notes.png").write_text("not a picture")
    rows[1]["image"] = "notes.png"


def _truncated(rows, d):
    data = (d / "img0.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    rows[1]["image"] = "cut.png"


def _no_answers(rows, d):
    del rows[1]["answers"]


def _no_generation(rows, d):
    rows[1]["max_new_tokens"] = 0


@pytest.mark.parametrize("broken, needle", [(_drop, "not found"), (_text, "not an image"), (_truncated, "truncated"),
                                            (_no_answers, "answers"), (_no_generation, "max_new_tokens")])
def test_bad_image_rows_are_one_line_naming_file_and_line(family_dirs, tmp_path, capsys, broken, needle):
    path = vqa_rows(tmp_path, 3, broken)
    out = tmp_path / "run"
    assert search(family_dirs["llava"], f"vqa:jsonl:{path}", out) == 2
    one_error(capsys, f"{path}:2", needle)
    assert not out.exists()


def test_an_image_larger_than_allowed_is_one_line(family_dirs, tmp_path, capsys, monkeypatch):
    from blockprune.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 50 * 50)
    path = vqa_rows(tmp_path, 2)
    out = tmp_path / "run"
    assert search(family_dirs["llava"], f"vqa:jsonl:{path}", out) == 2
    one_error(capsys, f"{path}:1", "too large")
    assert not out.exists()


def test_a_caption_task_without_generation_is_one_line(family_dirs, tmp_path, capsys):
    img = vf.images(1)[0][0]
    img.save(tmp_path / "a.png")
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"image": "a.png", "captions": ["a red circle"], "max_new_tokens": 0}) + "\n")
    out = tmp_path / "run"
    assert search(family_dirs["llava"], f"caption:jsonl:{path}", out) == 2
    one_error(capsys, f"{path}:1", "max_new_tokens")
    assert not out.exists()


def test_a_vlm_whose_text_tower_is_not_found_is_one_line(family_dirs, tmp_path, capsys, monkeypatch):
    from blockprune.models import adapter

    monkeypatch.setattr(adapter, "BLOCK_PATHS", tuple(p for p in adapter.BLOCK_PATHS
                                                      if "language" not in p and "text" not in p))
    out = tmp_path / "run"
    assert search(family_dirs["llava"], "vqa:easy-vqa#4", out) == 2
    one_error(capsys, "text tower", "vision")
    assert not out.exists()


def test_healing_folds_into_the_text_tower_or_says_why_not(family_dirs, tmp_path, capsys):
    args = ["--task", "kl:shakespeare/hamlet#8", "--task", "vqa:easy-vqa#8", "--ppl-window", "32", "--method", "given",
            "--sets", "2;2,3", "--device", "cpu", "--no-progress", "--no-latency", "--heal", "linear",
            "--no-plain-baseline"]
    out = tmp_path / "llava"
    assert cli.main(["search", "--model", str(family_dirs["llava"]), "--out", str(out), *args]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["healing"]["plain_blocks"] == {}  # every Llama text block folds into its down_proj
    assert "vqa_easy_vqa" not in (run["settings"]["heal"]["calibration"].get("tasks") or {})  # no image in a fit
    out = tmp_path / "gemma3"
    assert cli.main(["search", "--model", str(family_dirs["gemma3"]), "--out", str(out), *args]) == 2
    one_error(capsys, "no block's MLP output can take a fold")
    assert not out.exists()


def test_an_hf_dataset_with_an_image_column_is_an_image_task(family_dirs, tmp_path, capsys):
    import datasets

    samples = vf.images(4)
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answers": datasets.Sequence(datasets.Value("string"))})
    table = {"image": [vf.resized(img, s) for (img, _, _), s in zip(samples, [64, 80, 48, 96])],
             "question": [q for _, q, _ in samples], "answers": [[a] * 3 for _, _, a in samples]}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(tmp_path / "ds")
    datasets.Dataset.from_dict({"question": ["what?"], "answers": [["x"]]}).save_to_disk(tmp_path / "noimage")
    capsys.readouterr()
    out = tmp_path / "run"
    assert search(family_dirs["llava"], f"vqa:hf:{tmp_path / 'ds'}", out) == 0
    task = json.loads((out / "run.json").read_text())["settings"]["tasks"]["vqa_ds"]
    assert task["kind"] == "vqa" and task["n"] == 4
    capsys.readouterr()
    assert search(family_dirs["llava"], f"vqa:hf:{tmp_path / 'noimage'}", tmp_path / "run2") == 2
    one_error(capsys, "row 0", "image")
    assert not (tmp_path / "run2").exists()
