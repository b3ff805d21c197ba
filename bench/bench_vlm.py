"""The replaced system's experiment, shaped as it ran it, on a tiny random image-text model (#31).

The system blockprune replaces beam-searched the 16 text blocks of MolmoE-1B on eight image sets,
decoding every candidate's answer to every sample with one `generate()` each. Here: a random
LLaVA-shaped model with 16 text blocks (tests/vlm_fixtures.py; no weights can be downloaded), four
image tasks of 64 easy-VQA samples each (the test split's questions by kind: shape, colour,
yes/no about a shape, yes/no about a colour; real PNGs, VQA accuracy), beam width 3, up to 4
blocks removed, racing on. blockprune's search runs end to end (`api.run_search`); the replaced
system's method -- the pruned copy's `generate()` per candidate and sample, the image through the
vision tower each time -- is measured on a sample of the candidates the search scored on every
sample and extrapolated to every (candidate, sample) pair the replaced system would have decoded
(every candidate on every sample: it did not race), stated as such. The answers of the measured
pairs are asserted equal to the texts blockprune stored. Also measured: the vision prelude's share
of the search (time inside the vision tower and projector, by forward hooks).

    .venv/bin/python bench/bench_vlm.py [--samples 64] [--naive-candidates 6] \
        [--out bench/results/vlm_seed_cpu.json]

On a card (bench/gpu.sh): `--device cuda --dtype bfloat16 --shape 1b --synthetic`: a ~1B LLaVA-shaped
random model (tests/vlm_fixtures.LLAVA_1B: a TinyLlama-shaped text tower of 16 blocks, a CLIP
ViT-B/16 at 224) on random images and questions (the card's machine reaches no registry), the
answers' agreement counted rather than asserted (bf16 kernels differ with the batch), the naive
method timed within `--budget` seconds. Run alone: a second heavy process on 2 cores distorts both.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after an installed or linked package: the checkout's blockprune/ lacks kernels/
sys.path.insert(0, str(ROOT / "tests"))

import vlm_fixtures as vf  # noqa: E402
from blockprune import api, data, models, search  # noqa: E402
from blockprune.engine import Engine  # noqa: E402
from blockprune.runs.store import Store  # noqa: E402
from blockprune.search import Evaluator, Racing  # noqa: E402
from blockprune.tasks import load_task  # noqa: E402

KINDS = {  # the four tasks: easy-VQA test questions by kind
    "shape": lambda q, a: q.startswith("what") and "shape" in q,
    "color": lambda q, a: q.startswith("what") and "color" in q,
    "yesno_shape": lambda q, a: a in ("yes", "no") and any(s in q for s in ("circle", "rectangle", "triangle")),
    "yesno_color": lambda q, a: a in ("yes", "no") and not any(s in q for s in ("circle", "rectangle", "triangle")),
}


def synthetic_rows(directory: Path, count: int, seed: int = 0) -> list[dict]:
    """Random 256x256 images with easy-VQA-like questions (for a machine without the easy-vqa data)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (directory / "images").mkdir(exist_ok=True)
    rows = []
    questions = [("what shape is in the image?", "circle"), ("what color is the shape?", "blue"),
                 ("is there a red triangle?", "no"), ("is the shape green?", "yes")]
    for i in range(count):
        path = directory / "images" / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB").save(path)
        q, a = questions[i % len(questions)]
        rows.append({"image": path, "question": q, "answers": [a]})
    return rows


def task_files(directory: Path, samples: int, seed: int = 0, synthetic: bool = False) -> list[str]:
    """Four vqa:jsonl: tasks of `samples` easy-VQA test questions each (a seeded choice per kind)."""
    rows = synthetic_rows(directory, 4 * 4 * samples, seed) if synthetic else data.easy_vqa_rows("test")
    rng = np.random.default_rng(seed)
    specs = []
    for name, keep in KINDS.items():
        pool = [r for r in rows if keep(r["question"], r["answers"][0])]
        picked = [pool[i] for i in sorted(rng.choice(len(pool), size=min(samples, len(pool)), replace=False))]
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"image": str(r["image"]), "question": r["question"],
                                            "answers": r["answers"]}) + "\n" for r in picked))
        specs.append(f"vqa:jsonl:{path}")
    return specs


class VisionTimer:
    """Seconds spent inside the vision tower and the projector (forward hooks)."""

    def __init__(self, model):
        self.seconds, self.calls, self._t0 = 0.0, 0, {}
        inner = getattr(model, "model", model)
        self.modules = [m for name in ("vision_tower", "multi_modal_projector") if (m := getattr(inner, name, None))]
        for m in self.modules:
            m.register_forward_pre_hook(self._start)
            m.register_forward_hook(self._stop)

    def _start(self, module, args):
        self._t0[id(module)] = time.perf_counter()

    def _stop(self, module, args, out):
        self.seconds += time.perf_counter() - self._t0.pop(id(module))
        self.calls += 1


@torch.inference_mode()
def naive_answers(bm, task, removed, samples) -> tuple[list[str], float, int]:
    """The replaced system's method for one candidate: its pruned copy, `generate()` per sample
    (the image through the vision tower each time). (texts, seconds of generate(), block tokens:
    every kept block on the prompt's tokens, then on one token per step)."""
    copy = models.remove_blocks(bm, removed) if removed else bm
    texts, seconds, rows = [], 0.0, 0
    for s in samples:
        m = task.media[s]
        inputs = {k: v.to(bm.device) for k, v in
                  bm.processor(text=[m.text], images=[[m.image]], return_tensors="pt").items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(bm.dtype)
        t0 = time.perf_counter()
        out = copy.model.generate(**inputs, max_new_tokens=task.max_new[s], do_sample=False, eos_token_id=task.eos,
                                  pad_token_id=task.eos[0], stop_strings=task.until[s], tokenizer=bm.tokenizer)
        seconds += time.perf_counter() - t0
        toks = out[0, inputs["input_ids"].shape[1]:].tolist()
        rows += (bm.num_blocks - len(removed)) * (inputs["input_ids"].shape[1] + len(toks) - 1)
        toks = toks[: next((i for i, t in enumerate(toks) if t in task.eos), len(toks))]
        texts.append(task.text(toks, s))
    return texts, seconds, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--naive-candidates", type=int, default=6, help="candidates the naive method is timed on")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--shape", default="tiny", choices=["tiny", "1b"])
    ap.add_argument("--synthetic", action="store_true", help="random images and questions instead of easy-VQA's")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the naive method's timing")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench-vlm-"))
    dtype = getattr(torch, args.dtype)
    model_dir = vf.build("llava", work / "model", layers=args.layers, shape=args.shape, dtype=dtype)
    specs = task_files(work, args.samples, synthetic=args.synthetic)
    exact = args.dtype == "float32" and args.device == "cpu"  # answers asserted equal only where both are exact
    out = work / "run"
    start = time.perf_counter()  # the search as a user runs it (it loads its own model)
    api.run_search(out=out, model=str(model_dir), tasks=specs, method="beam", beam_width=3, max_remove=4, samples=None,
                   device=args.device, dtype=args.dtype, progress=False, latency=False)
    search_seconds = time.perf_counter() - start
    store = Store.open_existing(out)
    work_recs = [r for r in (json.loads(x) for x in (out / "results.jsonl").read_text().splitlines())
                 if r.get("type") == "work"]
    block_tokens = sum(r.get("block_tokens", 0) for r in work_recs)
    whole = [c for c in store.candidates() if all(store.has(c, t) for t in store.settings["tasks"])]
    candidates = sorted(set(store.candidates()) | set(store.partial_candidates()), key=lambda c: (len(c), c))
    n_samples = sum(t["n"] for t in store.settings["tasks"].values())
    # the vision prelude's share: the same search again in this process, its vision tower hooked
    bm = models.load(str(model_dir), device=args.device, dtype=dtype)
    timer = VisionTimer(bm.model)
    loaded = [load_task(s, bm.tokenizer, bm.eos_token_id, None, 0, 256, processor=bm.processor) for s in specs]
    evaluator = Evaluator(Engine(bm), loaded, Store(work / "hooked", {"bench": "vision share"}), progress=False,
                          racing=Racing(), rank_by={t.name: "dense_logprob" for t in loaded})
    t0 = time.perf_counter()
    search.run("beam", evaluator, max_remove=4, beam_width=3)
    hooked_seconds = time.perf_counter() - t0
    # the replaced system's method on a sample of the candidates scored on every sample
    rng = np.random.default_rng(0)
    timed = [whole[i] for i in sorted(rng.choice(len(whole), size=min(args.naive_candidates, len(whole)),
                                                 replace=False))]
    naive_seconds, naive_rows, compared, same = 0.0, 0, 0, 0
    tasks = {t.name: t for t in loaded}
    pairs_timed = 0
    for removed in timed:
        if args.budget and naive_seconds > args.budget:
            break
        for name, task in tasks.items():
            texts, secs, rows = naive_answers(bm, task, list(removed), range(task.n))
            pairs_timed += task.n
            naive_seconds += secs
            naive_rows += rows
            stored = store.get(removed, name).get("generated")
            for a, b in zip(texts, stored):
                compared += 1
                same += int(a == b)
    per_pair = naive_seconds / pairs_timed
    pairs_all = len(candidates) * n_samples  # the replaced system decoded every candidate on every sample
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "model": f"random LLaVA-shaped ({args.shape}), {args.layers} text blocks (tests/vlm_fixtures.py), {args.dtype}, "
                 f"{args.device}" + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else ""),
        "images": "random 256x256" if args.synthetic else "easy-VQA test split (real 64x64 PNGs)",
        "tasks": {Path(s).stem: args.samples for s in specs},
        "search": {"method": "beam", "beam_width": 3, "max_remove": 4, "racing": True,
                   "candidates": len(candidates), "candidates_on_every_sample": len(whole),
                   "candidates_stopped_by_racing": len(candidates) - len(whole),
                   "wall_seconds": round(search_seconds, 2), "block_tokens": int(block_tokens)},
        "vision_prelude": {"seconds": round(timer.seconds, 3), "calls": timer.calls,
                           "share_of_search": round(timer.seconds / hooked_seconds, 4),
                           "search_seconds_hooked": round(hooked_seconds, 2)},
        "replaced_method": {"what": "generate() of the pruned copy per candidate and sample (image through the "
                                    "vision tower each time), timed on a sample of candidates and extrapolated",
                            "candidates_timed": [list(c) for c in timed], "pairs_timed": pairs_timed,
                            "seconds_timed": round(naive_seconds, 2), "seconds_per_pair": per_pair,
                            "pairs_all": pairs_all, "extrapolated_seconds": round(per_pair * pairs_all, 1),
                            "block_tokens_timed": naive_rows,
                            "block_tokens_extrapolated": int(naive_rows / pairs_timed * pairs_all)},
        "ratio": round(per_pair * pairs_all / search_seconds, 2),
        "block_token_ratio": round(naive_rows / pairs_timed * pairs_all / max(1, block_tokens), 2),
        "answers_compared": compared, "answers_same": same,
    }
    if exact:
        assert same == compared, f"{compared - same} of {compared} answers differ from generate()"
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
