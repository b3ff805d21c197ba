"""Blocks against halves on SmolLM2-135M (#32): for each unit kind its own greedy search, healed
and plain, and for k = 2, 4, 6, 8, 10 units removed the best set's quality and costs.

    .venv/bin/python bench/units_table.py [--units blocks,attention,mlp,sublayers] [--runs DIR]

Each search: `run_search(units=..., heal="linear")` (racing greedy, KL to dense on Hamlet windows
of 64 tokens; its plain baseline in OUT/plain is the same search without healing). Then for the
best set per k of each (the plain search's own best, not the healed sets it also scored), on data
no search saw and no map was fitted on: KL to dense on 24 other Hamlet windows (the engine, healed
sets healed), perplexity on those windows and on 24 Macbeth windows by plain transformers on the
physically pruned (and folded) copy, ARC-Easy accuracy and p_gold (100 questions) and one-digit
arithmetic exact match (30 prompts) through `--method given`; the KV cache bytes per token of
the pruned copy (read from its own cache); decode latency of the pruned copy at 64 and 2,048
tokens of context (torch, batch 1, interleaved with dense); units_pareto.png puts every kind on one
plot (held-out KL against KV cache kept and against decode speed). Run alone: it takes about an hour on
2 cores. The run directories are kept (`--runs`): rerun to resume.

On the stored table, after the searches:
    --llama-cpp        the decode latency of each healed set's deci GGUF export run by llama.cpp
                       itself (needs `make llama-cpp`), and llama.cpp's own KV bytes per token
    --p-gold-from DIRS ARC-Easy's p_gold of kinds stored before the table had it, read from their
                       given-sets runs (`{units}-given-{healed,plain}` in those --runs directories)
    --redo-torch-decode UNITS  the torch decode latency of those kinds again (a disturbed run)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockprune import api, models  # noqa: E402
from blockprune.engine import Engine  # noqa: E402
from blockprune.measure.heldout import healed_copy, plain_perplexity, run_healing  # noqa: E402
from blockprune.runs.store import Store  # noqa: E402
from blockprune.tasks import load_task  # noqa: E402

SEARCH_TASK = "kl:shakespeare/hamlet#8"
GIVEN_TASKS = (SEARCH_TASK, "mc:arc_easy#100", "gen:basic_arithmetic/1d1d#30")
WINDOW = 64
KS = (2, 4, 6, 8, 10)
CONTEXTS = (64, 2048)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def searched(run: Path) -> tuple[dict, dict]:
    """(healed best per k, plain best per k): each search's own best set of each size."""
    from blockprune import report
    from blockprune.analysis import advice

    a = report.build_analysis(run)
    healed = {k: tuple(g[0]["removed"]) for k, g in advice.by_k(a["candidates"]).items() if k}
    plain = {int(k): tuple(v) for k, v in Store.open_existing(run / "plain").run_info["searched_best"].items()}
    return healed, plain


def given_scores(units: str, sets: list, heal: str, out: Path) -> dict:
    """ARC-Easy and arithmetic (and the search's KL task, so the fit is the search's) for `sets`."""
    api.run_search("smollm2-135m", list(GIVEN_TASKS), out, method="given", sets=sets, units=units, samples=None,
                   ppl_window=WINDOW, heal=heal, latency=False, progress=False, tolerance=0.10, plain_baseline=False)
    return read_given(out)


def read_given(out: Path) -> dict:
    """{set: {"arc_easy": accuracy, "arc_easy_p_gold": mean probability of the gold choice,
    "arithmetic": exact match}} from a given-sets run's results.jsonl."""
    rows = {}
    for line in (out / "results.jsonl").open():
        r = json.loads(line)
        if r.get("type") is None and "value" in r and "task" in r:
            name = "arc_easy" if "arc" in r["task"] else "arithmetic" if "arith" in r["task"] else None
            if name:
                rows.setdefault(tuple(r["removed"]), {})[name] = r["value"]
            if name == "arc_easy":
                rows[tuple(r["removed"])]["arc_easy_p_gold"] = float(np.mean(r["per_sample"]["p_gold"]))
    return rows


def add_p_gold(results: list[dict], runs: list[Path]) -> None:
    """ARC-Easy's p_gold for kinds stored before the table had it, from their given-sets runs
    (`{units}-given-healed` / `-plain` in one of `runs`)."""
    for res in results:
        for mode in ("healed", "plain"):
            found = [r / f"{res['units']}-given-{mode}" for r in runs if (r / f"{res['units']}-given-{mode}").is_dir()]
            if not found:
                continue
            given = read_given(found[0])
            if mode == "plain":
                res["dense"]["arc_easy_p_gold"] = given[()]["arc_easy_p_gold"]
            for row in res["rows"]:
                row[mode]["arc_easy_p_gold"] = given[stored_set(row[mode]["names"])]["arc_easy_p_gold"]


def stored_set(names: str) -> tuple[int, ...]:
    """A set as units_table.json writes it ('[17a, 19m]' / '[15, 17]') as the store's unit ids."""
    from blockprune.runs.names import parse_removal

    return tuple(parse_removal(names.strip("[]").split(","))[1])


def healed_copies(um, healing, sets: dict) -> dict:
    """{key: the pruned model, the set's maps folded in} for `sets` {key: set}, and () the dense one."""
    return {(): um.model, **{key: healed_copy(um, s, healing).model for key, s in sets.items()}}


def held_out(um, healing, store: Store, sets: list) -> list[dict]:
    settings = store.run_info["settings"]
    used = settings["tasks"]["kl_shakespeare_hamlet"]["sample_ids"]
    cal = (settings.get("heal") or {}).get("calibration") or {}
    kl = load_task("kl:shakespeare/hamlet", um.tokenizer, um.eos_token_id, 24, 11, WINDOW,
                   exclude=used + list(cal.get("sample_ids", [])))
    macbeth = load_task("ppl:shakespeare/macbeth", um.tokenizer, um.eos_token_id, 24, 11, WINDOW)
    keep = np.ones((len(sets) + 1, um.num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i + 1, list(s)] = False
    res = Engine(um, heal=healing).score(kl.requests, keep, kl=True)
    kls = kl.value(kl.per_sample(res.logprob, res.greedy, res.kl))
    w, wm = [r.tokens for r in kl.requests], [r.tokens for r in macbeth.requests]
    out = []
    for i, s in enumerate([()] + list(sets)):
        out.append({"removed": list(s), "kl": float(kls[i]),
                    "ppl_hamlet": plain_perplexity(um, s, w, kl.requests[0].score_from, healing),
                    "ppl_macbeth": plain_perplexity(um, s, wm, macbeth.requests[0].score_from, healing)})
    return out


def kv_bytes_per_token(model) -> int:
    with torch.inference_mode():
        out = model(input_ids=torch.zeros((1, 4), dtype=torch.long), use_cache=True)
    from blockprune.models.adapter import output_cache

    cache = output_cache(out)
    total = sum(t.numel() * t.element_size() for layer in cache.layers
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor))
    return total // 4


def decode_ms(models_by_key: dict, context: int, reps: int = 3, steps: int = 8) -> dict:
    """Median decode step (ms) of each model after a `context`-token prompt, interleaved."""
    from blockprune.models.adapter import cache_kwarg, output_cache

    gen = torch.Generator().manual_seed(0)
    times = {k: [] for k in models_by_key}
    for r in range(reps + 1):
        for k in (list(models_by_key) if r % 2 == 0 else list(models_by_key)[::-1]):
            model = models_by_key[k]
            ids = torch.randint(3, 49000, (1, context), generator=gen)
            with torch.inference_mode():
                cache = output_cache(model(input_ids=ids, use_cache=True, logits_to_keep=1))
                token = ids[:, -1:]
                step_t = []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})
                    step_t.append(time.perf_counter() - t0)
                    cache = output_cache(out)
                    token = out.logits[:, -1:].argmax(-1)
            if r:
                times[k].append(float(np.median(step_t)))
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def llama_cpp_decode_ms(files: dict, context: int, reps: int = 3, steps: int = 8) -> dict:
    """{file: (median decode step in ms, KV bytes per token)} in llama.cpp after a `context`-token
    prompt, interleaved like decode_ms: one prefill per file, then each run of `steps` single-token
    evals rewound to the prompt (llama-cpp-python's eval drops the cache past n_tokens), its first
    run a warm-up. The KV bytes are llama.cpp's own: its sequence state's growth per token."""
    import llama_cpp

    prompt = np.random.default_rng(0).integers(3, 49000, context).tolist()
    llms = {k: llama_cpp.Llama(model_path=str(path), n_ctx=context + steps + 8, n_batch=512, verbose=False,
                               n_threads=torch.get_num_threads(), n_threads_batch=torch.get_num_threads())
            for k, path in files.items()}
    times = {k: [] for k in llms}
    try:
        kv = {}
        for k, llm in llms.items():  # llama.cpp's own KV state per token: its sequence state at 8 and 24 tokens
            size = []
            for n in (8, 24):
                llm.n_tokens = 0
                llm.eval(prompt[:n])
                size.append(llama_cpp.llama_state_seq_get_size(llm.ctx, 0))
            kv[k] = (size[1] - size[0]) // 16
            llm.n_tokens = 0
            llm.eval(prompt)
        for r in range(reps + 1):
            for k in (list(llms) if r % 2 == 0 else list(llms)[::-1]):
                llm, step_t = llms[k], []
                llm.n_tokens = context
                for i in range(steps):
                    t0 = time.perf_counter()
                    llm.eval([prompt[i]])
                    step_t.append(time.perf_counter() - t0)
                if r:
                    times[k].append(float(np.median(step_t)))
    finally:
        for llm in llms.values():
            llm.close()
    return {k: (1e3 * float(np.median(v)), kv[k]) for k, v in times.items()}


def llama_cpp_pass(results: list[dict], runs: Path) -> None:
    """Add llama.cpp's decode latency at CONTEXTS to every stored kind: dense and each k's healed set
    written as a deci GGUF (export/gguf_deci.py; the plain weights: a folded map changes values, not
    the graph), timed per kind in one interleaved run, the files deleted after."""
    from blockprune.export import gguf_deci

    bm = models.load("smollm2-135m", device="cpu")
    for res in results:
        work = runs / f"gguf-{res['units']}"
        work.mkdir(parents=True, exist_ok=True)
        files = {"dense": work / "dense.gguf"}
        gguf_deci.write(bm, [], files["dense"])
        for row in res["rows"]:
            units = stored_set(row["healed"]["names"])
            halves = [h for b in units for h in (2 * b, 2 * b + 1)] if res["units"] == "blocks" else units
            files[row["k"]] = work / f"k{row['k']}.gguf"
            gguf_deci.write(bm, halves, files[row["k"]])
        log(f"{res['units']}: llama.cpp decode latency of {len(files)} GGUF files")
        for c in CONTEXTS:
            got = llama_cpp_decode_ms(files, c)
            for key, target in [("dense", res["dense"])] + [(row["k"], row) for row in res["rows"]]:
                target[f"llama_cpp_decode_ms_{c}"], target["llama_cpp_kv_bytes_per_token"] = got[key]
        for path in files.values():
            path.unlink()


def redo_torch_decode(res: dict, runs: Path) -> None:
    """Measure a stored kind's torch decode latency again (dense and each k's healed, folded copy,
    one interleaved run), its search run directory in `runs`: for a section whose run was disturbed."""
    units = res["units"]
    um = models.unit_model(models.load("smollm2-135m", device="cpu"), units)
    healing = run_healing(runs / units, Store.open_existing(runs / units), um)
    pruned = healed_copies(um, healing, {row["k"]: stored_set(row["healed"]["names"]) for row in res["rows"]})
    log(f"{units}: torch decode latency again")
    for c in CONTEXTS:
        ms = decode_ms(pruned, c)
        res["dense"][f"decode_ms_{c}"] = ms[()]
        for row in res["rows"]:
            row[f"decode_ms_{c}"] = ms[row["k"]]


def one_kind(units: str, runs: Path, max_remove: int) -> dict:
    run = runs / units
    t0 = time.perf_counter()
    log(f"{units}: greedy search to {max_remove}, healed and plain, in {run}")
    api.run_search("smollm2-135m", [SEARCH_TASK], run, method="greedy", max_remove=max_remove, units=units,
                   samples=None, ppl_window=WINDOW, heal="linear", latency=False, progress=False, tolerance=0.10)
    seconds = time.perf_counter() - t0
    healed_sets, plain_sets = searched(run)
    ks = [k for k in KS if k in healed_sets]
    bm = models.load("smollm2-135m", device="cpu")
    um = models.unit_model(bm, units)
    store = Store.open_existing(run)
    healing = run_healing(run, store, um)
    log(f"{units}: held-out KL and perplexity")
    rows = {"healed": held_out(um, healing, store, [healed_sets[k] for k in ks]),
            "plain": held_out(um, None, store, [plain_sets[k] for k in ks])}
    log(f"{units}: ARC-Easy and arithmetic")
    given = {"healed": given_scores(units, [healed_sets[k] for k in ks], "linear", runs / f"{units}-given-healed"),
             "plain": given_scores(units, [plain_sets[k] for k in ks], "none", runs / f"{units}-given-plain")}
    log(f"{units}: KV cache and decode latency")
    pruned = healed_copies(um, healing, {healed_sets[k]: healed_sets[k] for k in ks})
    lat = {c: decode_ms(pruned, c) for c in CONTEXTS}
    out = {"units": units, "search_seconds": seconds, "dense": {**rows["plain"][0], **given["plain"].get((), {}),
                                                                "kv_bytes_per_token": kv_bytes_per_token(bm.model),
                                                                **{f"decode_ms_{c}": lat[c][()] for c in CONTEXTS}},
           "rows": []}
    for i, k in enumerate(ks):
        row = {"k": k}
        for mode, sets in (("healed", healed_sets), ("plain", plain_sets)):
            s = sets[k]
            row[mode] = {**rows[mode][i + 1], **given[mode].get(s, {}),
                         "names": models.units.fmt_units(s, units) if units != "blocks" else str(list(s))}
        s = healed_sets[k]
        row["kv_bytes_per_token"] = kv_bytes_per_token(pruned[s])
        row.update({f"decode_ms_{c}": lat[c][s] for c in CONTEXTS})
        out["rows"].append(row)
    return out


def arc_text(r: dict) -> str:
    """ARC-Easy accuracy, and the mean probability of the gold choice where it was read."""
    acc = f"{r.get('arc_easy', float('nan')):.3f}"
    return acc + (f" / {r['arc_easy_p_gold']:.3f}" if "arc_easy_p_gold" in r else "")


def markdown(results: list[dict]) -> str:
    lines = ["# Blocks against halves, SmolLM2-135M: k units removed, each kind by its own search", "",
             f"Greedy search with racing on `{SEARCH_TASK}` (windows of {WINDOW}), healed (`--heal linear`) and plain. "
             "Quality on data no search saw: KL to dense on 24 other Hamlet windows, perplexity on those and on 24 "
             "Macbeth windows (plain transformers on the pruned, folded copy), ARC-Easy (100 questions: accuracy, "
             "p_gold) and one-digit arithmetic (30 prompts, exact match). Cost of the healed set's pruned copy: KV "
             "cache bytes per token read from its own cache, decode ms per token after 64 and 2,048 tokens (torch, "
             "batch 1, CPU, median of 3 interleaved runs of 8 steps) and, where the llama.cpp columns are "
             "there (`--llama-cpp`), the same for the set's deci GGUF export run by llama.cpp (llama-cpp-python "
             "0.3.36, f16 KV cache, 2 threads; each kind's files in one interleaved run) with llama.cpp's own KV "
             "bytes per token (its sequence state's growth per token: 12 bytes of it are not the cache).", ""]
    for res in results:
        d = res["dense"]
        cpp = "llama_cpp_decode_ms_64" in d
        dense_cpp = (f"; llama.cpp KV {d['llama_cpp_kv_bytes_per_token']:,} B/token, decode "
                     f"{d['llama_cpp_decode_ms_64']:.2f} / {d['llama_cpp_decode_ms_2048']:.2f} ms" if cpp else "")
        lines += [f"## --units {res['units']} (search {res['search_seconds']:.0f} s)", "",
                  f"Dense: Hamlet ppl {d['ppl_hamlet']:.2f}, Macbeth ppl {d['ppl_macbeth']:.2f}, ARC-Easy "
                  f"{arc_text(d)}, arithmetic {d.get('arithmetic', float('nan')):.3f}, KV "
                  f"{d['kv_bytes_per_token']:,} B/token, decode {d['decode_ms_64']:.2f} / {d['decode_ms_2048']:.2f} ms "
                  f"at 64 / 2,048 (torch){dense_cpp}.", "",
                  "| k | mode | set | held-out KL | Hamlet ppl | Macbeth ppl | ARC-Easy acc / p_gold | arithmetic | KV B/token | "
                  "decode ms @64 | @2048 |" + (" llama.cpp KV B/token | llama.cpp ms @64 | @2048 |" if cpp else ""),
                  "| --- " * (14 if cpp else 11) + "|"]
        for row in res["rows"]:
            for mode in ("healed", "plain"):
                r = row[mode]
                ari = r.get("arithmetic", float("nan"))
                lines.append(f"| {row['k']} | {mode} | {r['names']} | {r['kl']:.3f} | {r['ppl_hamlet']:.2f} | "
                             f"{r['ppl_macbeth']:.2f} | {arc_text(r)} | {ari:.3f} | "
                             f"{row['kv_bytes_per_token']:,} | {row['decode_ms_64']:.2f} | {row['decode_ms_2048']:.2f} |"
                             + (f" {row['llama_cpp_kv_bytes_per_token']:,} | {row['llama_cpp_decode_ms_64']:.2f} | "
                                f"{row['llama_cpp_decode_ms_2048']:.2f} |" if cpp else ""))
        lines.append("")
    lines.append(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads.")
    return "\n".join(lines) + "\n"


MARKERS = {"blocks": "s", "attention": "o", "mlp": "^", "sublayers": "D"}


def attention_removed(names: str, units: str) -> int:
    """Attention layers a set removes: a whole block or an `a` half ('[17a, 19]' / '[15, 17]')."""
    parts = [p.strip() for p in names.strip("[]").split(",") if p.strip()]
    return sum(1 for p in parts if units == "blocks" or not p.endswith("m"))


def pareto_plot(results: list[dict], path: Path) -> None:
    """Held-out KL against the KV cache kept and against decode speed at 2,048 tokens: every unit
    kind's best set per k, healed (filled) and plain (hollow), blocks and halves on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpp = all("llama_cpp_decode_ms_2048" in res["dense"] for res in results)
    fig, axes = plt.subplots(1, 3 if cpp else 2, figsize=(16 if cpp else 11, 4.2), sharey=True)
    ax_kv, ax_speed = axes[0], axes[1]
    for i, res in enumerate(results):
        units, dense, color = res["units"], res["dense"], f"C{i}"
        layers = 30  # SmolLM2-135M; KV bytes fall by one layer's share per attention removed
        for mode, fill in (("healed", color), ("plain", "none")):
            kv = [1.0] + [1 - attention_removed(r[mode]["names"], units) / layers for r in res["rows"]]
            kl = [0.0] + [r[mode]["kl"] for r in res["rows"]]
            ax_kv.plot(kv, kl, marker=MARKERS.get(units, "o"), color=color, markerfacecolor=fill,
                       linestyle="-" if mode == "healed" else ":", label=f"{units}, {mode}")
        # decode time is measured for the healed set (the plain set of the same k has as many layers)
        speed = [1.0] + [dense["decode_ms_2048"] / r["decode_ms_2048"] for r in res["rows"]]
        kl = [0.0] + [r["healed"]["kl"] for r in res["rows"]]
        ax_speed.plot(speed, kl, marker=MARKERS.get(units, "o"), color=color, label=f"{units}, healed")
        if cpp:
            speed = [1.0] + [dense["llama_cpp_decode_ms_2048"] / r["llama_cpp_decode_ms_2048"] for r in res["rows"]]
            axes[2].plot(speed, kl, marker=MARKERS.get(units, "o"), color=color, label=f"{units}, healed")
    ax_kv.set_xlabel("KV cache kept (fraction of dense)")
    ax_kv.invert_xaxis()
    ax_speed.set_xlabel("decode speed at 2,048 tokens (x dense, torch on CPU)")
    ax_kv.set_ylabel("held-out KL to dense (nats/token)")
    if cpp:
        axes[2].set_xlabel("decode speed at 2,048 tokens (x dense, llama.cpp on CPU, deci GGUF)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M: blocks and halves, k = 2..10 units (healed filled, plain hollow)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", default="attention,blocks,mlp,sublayers")
    ap.add_argument("--max-remove", type=int, default=10)
    ap.add_argument("--runs", default="/tmp/units_table_runs")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--plot-only", action="store_true", help="redraw units_pareto.png from units_table.json")
    ap.add_argument("--llama-cpp", action="store_true",
                    help="add llama.cpp's decode latency of the stored sets' GGUF exports to units_table.json")
    ap.add_argument("--p-gold-from", default="", metavar="DIR[,DIR]",
                    help="add ARC-Easy's p_gold to stored kinds from their given-sets runs in these --runs directories")
    ap.add_argument("--redo-torch-decode", default="", metavar="UNITS[,UNITS]",
                    help="measure these stored kinds' torch decode latency again (their search runs in --runs)")
    args = ap.parse_args()
    if args.llama_cpp or args.p_gold_from or args.redo_torch_decode:
        torch.set_num_threads(2)
        stored = Path(args.out) / "units_table.json"
        results = json.loads(stored.read_text())
        if args.p_gold_from:
            add_p_gold(results, [Path(d) for d in args.p_gold_from.split(",")])
        for res in results:
            if res["units"] in args.redo_torch_decode.split(","):
                redo_torch_decode(res, Path(args.runs))
        if args.llama_cpp:
            llama_cpp_pass(results, Path(args.runs))
        stored.write_text(json.dumps(results, indent=1, default=str))
        (Path(args.out) / "units_table.md").write_text(markdown(results))
        pareto_plot(results, Path(args.out) / "units_pareto.png")
        print(markdown(results))
        return
    if args.plot_only:
        pareto_plot(json.loads((Path(args.out) / "units_table.json").read_text()), Path(args.out) / "units_pareto.png")
        return
    torch.set_num_threads(2)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    stored = out / "units_table.json"  # kinds not run now keep their stored rows
    results = json.loads(stored.read_text()) if stored.exists() else []
    for units in args.units.split(","):
        results = [r for r in results if r["units"] != units] + [one_kind(units, runs, args.max_remove)]
        (out / "units_table.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "units_table.md").write_text(markdown(results))
        pareto_plot(results, out / "units_pareto.png")
        log(f"{units}: done")
    print(markdown(results))


if __name__ == "__main__":
    main()
