"""Command line: a thin layer over blockprune.api. Errors are one line with exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import fields

from . import api, report, search
from .settings import Settings, default, unit_ids
from .analysis import AnalysisError
from .search.cluster import ClusterError
from .report import ReportError
from .data import DataError
from .export import ExportFailed
from .healing.calibration import CalibrationError
from .healing import heal
from .healing.heal import HealError
from .measure.heldout import HeldOutError
from .measure.latency import BenchError
from .models import UNITS, ModelError
from .models.fused import DeviceError, FusedError
from .runs.rundir import PathError
from .tasks.scores import ScoreError
from .runs.store import StoreError
from .tasks import TaskError

USER_ERRORS = (DataError, ModelError, TaskError, StoreError, search.SearchError, AnalysisError, ReportError,
               ExportFailed, BenchError, ScoreError, PathError, ClusterError, HeldOutError, HealError, CalibrationError)


def _int_list(what: str):
    def parse(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    return parse


_ints = _int_list("block ids")


def _names(text: str) -> list[str]:
    """Units as written (`4,13`, `17a,22a,19m`): parsed once --units is known (Settings.check)."""
    return [x.strip() for x in text.split(",") if x.strip()]
_sizes = _int_list("batch sizes")


def _formats(text: str) -> list[str]:
    return [f for f in text.split(",") if f]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=default("dtype"), choices=["auto", *sorted(api.DTYPES)],
                   help="auto (default): bfloat16 on CUDA, float32 elsewhere")
    p.add_argument("--budget-gb", type=float, default=None, help="engine memory budget (default: 60%% of free GPU memory, 3 GiB on CPU)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_heal(p: argparse.ArgumentParser, search: bool = True) -> None:
    p.add_argument("--heal", default=default("heal"), choices=["none", "linear"],
                   help="linear: repair each removed run of blocks with a closed-form linear map folded into the MLP "
                        "output projection of the block before it (same modules and speed as plain deletion)"
                        + ("; every candidate is scored healed" if search else ""))
    p.add_argument("--calibration", default=None, metavar="SOURCE[#N]",
                   help="text the maps are fitted on (a text source as in kl: specs, N windows of --ppl-window "
                        "tokens)" + ("; default: the first text task's windows the search does not score" if search
                                     else "; needed with --heal linear"))
    p.add_argument("--ridge", type=float, default=None,
                   help="with --heal linear: ridge of the least-squares fit, times the mean eigenvalue of MᵀM "
                        f"(default {heal.DEFAULT_RIDGE:g})")
    if search:
        p.add_argument("--no-plain-baseline", dest="plain_baseline", action="store_false",
                       help="with --heal linear: skip the plain search in OUT/plain that the report compares with")


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="score on N Ray workers, one model replica each: one per GPU, or CPU processes sharing "
                        "the cores (needs blockprune[ray]; the store and scores are as in one process)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join a running Ray cluster (e.g. auto after `ray start --head`); workers: --workers, "
                        "else one per GPU of the cluster (one per machine without GPUs)")


def _add_report_options(p: argparse.ArgumentParser, tolerance: float | None = default("tolerance")) -> None:
    p.add_argument("--lang", default="en", choices=["en", "zh"], help="report language (zh: REPORT.zh.md)")
    p.add_argument("--tolerance", type=float, default=tolerance,
                   help="drop a recommendation may cost on every task: relative for scores, nats/token for kl "
                        f"(default {tolerance if tolerance is not None else 'the one the run was searched with'})")


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one `blockprune: error:` line (exit 2), as every other error is."""

    def error(self, message: str):
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else None
        help_hint = f"blockprune {cmd} --help" if cmd else "blockprune --help"
        self.exit(2, f"blockprune: error: {cmd + ': ' if cmd else ''}{message} (see `{help_hint}`)\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="blockprune", description="Find which transformer blocks can be removed with the least loss.")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search removal sets, scoring every candidate on every task")
    s.add_argument("--model", required=True, help="smollm2-135m (embedded), a local HF directory (a causal LM, or an "
                                                  "image-text model: its text tower), or a hub id")
    s.add_argument("--task", dest="tasks", action="append", required=True, metavar="SPEC",
                   help="ppl:shakespeare/<play> | kl:<text source> | mc:<benchmark> | gen:<benchmark> | bigbench:<task>[/<subtask>] | jsonl:<path> | "
                        "hf:<dataset>[@split] | vqa:easy-vqa | vqa:jsonl:<path> | docvqa:jsonl:<path> | "
                        "caption:jsonl:<path> (image tasks: an image-text model) (repeat)")
    s.add_argument("--method", default=default("method"), choices=search.METHODS,
                   help="given: score exactly --sets / --sets-file (and dense) on every task")
    s.add_argument("--sets", default=None, metavar="SETS",
                   help="with --method given: removal sets, ';'-separated, e.g. '17,18,19;4,13' (or '17a,22a;19m' "
                        "with --units sublayers)")
    s.add_argument("--sets-file", default=None, metavar="FILE",
                   help="with --method given: one set per line, or another run's pruning_recommendations.json")
    s.add_argument("--beam-width", type=int, default=default("beam_width"))
    s.add_argument("--max-remove", type=int, default=default("max_remove"), help="K: most blocks removed")
    s.add_argument("--samples", type=int, default=default("samples"), help="samples per task (seeded subset); 0 = all")
    s.add_argument("--seed", type=int, default=default("seed"))
    s.add_argument("--ppl-window", type=int, default=default("ppl_window"), help="tokens per perplexity window")
    s.add_argument("--units", default=default("units"), choices=UNITS,
                   help="what a candidate removes: blocks (default), attention or mlp halves, or sublayers (both kinds: "
                        "2 units per block, named 17a and 17m)")
    s.add_argument("--budget", dest="budgets", action="append", default=None, metavar="KIND=VALUE",
                   help="also recommend the best set within a budget (repeat): kv=0.7 (at most 70%% of the dense KV "
                        "cache), params=0.8 (of the weights), decode=1.25 or decode=1.25@2048 (at least 1.25x decode "
                        "speed at that context, predicted from each unit's measured time), prefill=...")
    s.add_argument("--protect", dest="protected", metavar="PROTECT", type=_names, default=[],
                   help="units never removed, e.g. 0,29 (blocks) or 0a,0m (halves)")
    s.add_argument("--min-depth", type=int, default=default("min_depth"), help="keep at least this many blocks")
    s.add_argument("--max-candidates", type=int, default=default("max_candidates"),
                   help="refuse exhaustive searches above this")
    s.add_argument("--candidates-per-pass", type=int, default=default("candidates_per_pass"),
                   help="candidates scored in one engine pass (results persist after each pass)")
    s.add_argument("--exact", action="store_true",
                   help="no racing: score every candidate on all samples (default: beam/greedy/evolutionary steps race)")
    s.add_argument("--population", type=int, default=default("population"), help="evolutionary: sets kept per size")
    s.add_argument("--generations", type=int, default=default("generations"), help="evolutionary: generations per size")
    s.add_argument("--offspring", type=int, default=default("offspring"), help="evolutionary: new sets per generation")
    s.add_argument("--rank-by", default=None, metavar="SCORES",
                   help="what search and recommendations rank by: default (per task kind: p_gold, gold_logprob, "
                        "perplexity, kl), metric (acc, exact_match, perplexity, kl), or SCORE / TASK=SCORE entries, "
                        "comma-separated")
    s.add_argument("--held-out", action="store_true",
                   help="after the search, re-score the recommendations on samples it did not use (as `validate`)")
    s.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    s.add_argument("--export", dest="export_formats", type=_formats, default="", metavar="FORMATS",
                   help="export the balanced recommendation to OUT/export: hf, onnx or hf,onnx (default: none)")
    _add_heal(s)
    _add_common(s)
    _add_cluster(s)
    _add_report_options(s)
    s.add_argument("--no-latency", dest="latency", action="store_false",
                   help="skip measuring the candidates' latency for the report")

    d = sub.add_parser("demo", help=f"the embedded default: SmolLM2-135M scored on {', '.join(api.DEMO.tasks)}, "
                                    f"{api.DEMO.method} search up to {api.DEMO.max_remove} blocks, healed "
                                    f"({api.DEMO.heal}) beside plain deletion")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=api.DEMO.seed, help="seed of the tasks' sample subsets (default 0)")
    d.add_argument("--units", default=api.DEMO.units, choices=UNITS,
                   help="what a candidate removes (default blocks); attention: the demo by attention halves "
                        "(docs/units.md)")
    d.add_argument("--max-remove", type=int, default=api.DEMO.max_remove,
                   help=f"K: most units removed (default {api.DEMO.max_remove})")
    d.add_argument("--budget", dest="budgets", action="append", default=None, metavar="KIND=VALUE",
                   help="also recommend the best set within a budget: kv=0.8, params=0.9, decode=1.1@2048 (repeat)")
    d.add_argument("--no-export", dest="export_formats", action="store_const", const=(), default=api.DEMO.export_formats,
                   help="skip exporting the balanced recommendation")
    d.add_argument("--no-latency", dest="latency", action="store_false",
                   help="skip measuring the candidates' latency for the report")
    d.add_argument("--heal", default=api.DEMO.heal, choices=["none", "linear"],
                   help=f"linear (default): score healed (docs/heal.md), beside a plain search in OUT/plain; none: plain only")
    _add_common(d)
    _add_cluster(d)
    _add_report_options(d, tolerance=api.DEMO.tolerance)

    e = sub.add_parser("export", help="write the model without some blocks as verified artifacts: HF checkpoint, ONNX, "
                                      "ONNX Runtime GenAI, GGUF")
    e.add_argument("--model", required=True)
    e.add_argument("--remove", type=_names, required=True,
                   help="block ids, e.g. 4,13, or halves, e.g. 17a,22a,19m (a block's attention / MLP)")
    e.add_argument("--out", required=True)
    e.add_argument("--format", default="hf",
                   help="comma-separated: hf, onnx (logits graph; --kv-cache adds the decoder with past), genai (ONNX "
                        "Runtime GenAI, fp32 and int4, built by onnxruntime-genai's builder), gguf (llama.cpp; copies "
                        "the kept blocks of the model's GGUF file, or writes f16 and q8_0 from a llama checkpoint), "
                        "onnx-elastic (one decoder with past whose `keep` input picks the blocks per request) "
                        "(default hf)")
    e.add_argument("--kv-cache", action="store_true", help="also export the ONNX decoder with past key values")
    e.add_argument("--force", action="store_true",
                   help="replace an earlier blockprune export of another request in --out (by default only a new or "
                        "empty directory, or an export of the same request, is written); never a directory holding "
                        "files blockprune did not write, a search run, or the model")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default="float32", choices=sorted(api.DTYPES))
    _add_heal(e, search=False)
    e.add_argument("--ppl-window", type=int, default=128, help="with --heal linear: tokens per calibration window")
    e.add_argument("--seed", type=int, default=0, help="with --heal linear: seed of the calibration windows' choice")

    r = sub.add_parser("report", help="regenerate the report of a run directory from its store (no re-scoring)")
    r.add_argument("dir", help="a run directory, or with --replaced-system the root of the replaced system's result files")
    r.add_argument("--replaced-system", dest="replaced_system", action="store_true",
                   help="read <dataset>/<split>/exp3_accuracy_sensitivity_v2_results.json files of the system blockprune replaces")
    r.add_argument("--from-seed", dest="replaced_system", action="store_true", help=argparse.SUPPRESS)  # its old name
    r.add_argument("--out", default=None, help="with --replaced-system: where to write (default: DIR/analysis)")
    _add_report_options(r, tolerance=None)

    b = sub.add_parser("bench", help="latency of the dense model vs the model without some blocks (prefill, decode, tokens/s)")
    b.add_argument("--model", required=True)
    b.add_argument("--remove", type=_ints, action="append", required=True,
                   help="block ids, e.g. 4,13 (repeat to measure several sets against one dense run)")
    b.add_argument("--backend", default="torch", help="comma-separated: torch, onnxruntime, genai (default torch)")
    b.add_argument("--batch", type=_sizes, default=[1], help="comma-separated batch sizes (default 1)")
    b.add_argument("--prompt-len", type=int, default=128)
    b.add_argument("--gen-len", type=int, default=64, help="generated tokens; the first one is the prefill's")
    b.add_argument("--warmup", type=int, default=2, help="untimed runs per variant")
    b.add_argument("--reps", type=int, default=10, help="timed runs per variant, interleaved")
    b.add_argument("--onnx", action="append", default=None, metavar="DIR",
                   help="export of the pruned model (blockprune export --format onnx --kv-cache, or --format genai); "
                        "one per --remove")
    b.add_argument("--onnx-dense", default=None, metavar="DIR", help="export of the dense model (blockprune export --remove '' ...)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime (default: torch's)")
    b.add_argument("--out", default=None, help="write latency.json, latency.md and latency.png here")
    b.add_argument("--device", default=None)
    b.add_argument("--dtype", default="float32", choices=sorted(api.DTYPES))

    v = sub.add_parser("validate", help="re-score a run's recommendations on samples the search did not use; update its report")
    v.add_argument("dir", help="a run directory")
    v.add_argument("--samples", type=int, default=None, help="held-out samples per task (default: as many as the search used)")
    v.add_argument("--device", default=None)
    _add_report_options(v, tolerance=None)

    sub.add_parser("fetch", help="download the embedded default's model and data into the cache and prepare them")
    return ap


class _Signals:
    """SIGTERM is handled as Ctrl-C is (KeyboardInterrupt, so every `finally` cleans up); once one
    arrived, the next two are ignored so that the cleanup (removing a half-written export) finishes,
    and a fourth ends the process at once (what it leaves is reclaimed by the next command)."""

    def __init__(self):
        self.signum = None
        self.count = 0
        self.old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        if self.count == 1:
            self.signum = signum
            raise KeyboardInterrupt
        if self.count >= 4:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        return False


def _interrupted(args) -> str:
    command = getattr(args, "command", None)
    if command == "export":
        return (f"interrupted; {args.out} is as it was (an export does not resume: rerun the command to "
                "export again)")
    if command in ("search", "demo"):
        return "interrupted; rerun the same command to resume"
    if command == "bench":
        return "interrupted; nothing was written (rerun the command to measure again)"
    return "interrupted; rerun the same command"


def _where(args) -> str | None:
    """The output a command writes (named when the file system refuses a write without a path)."""
    if getattr(args, "command", None) == "report" and getattr(args, "replaced_system", False):
        return args.out or os.path.join(args.dir, "analysis")
    return getattr(args, "out", None) or getattr(args, "dir", None)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with _Signals() as signals:
        return _main(args, signals)


def _main(args, signals: _Signals) -> int:
    try:
        if args.command == "fetch":
            api.prepare_demo()
            return 0
        if args.command == "report":
            return _report(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "export":
            manifest = api.export(args.model, args.remove, args.out, formats=[f for f in args.format.split(",") if f],
                                  kv_cache=args.kv_cache, device=args.device, dtype=args.dtype, force=args.force,
                                  heal=args.heal, calibration=args.calibration, ridge=args.ridge,
                                  window=args.ppl_window, seed=args.seed)
            print(json.dumps({"out": args.out, "parity": manifest["parity"]}, indent=2))
            return 0
        out = api.run_search(_settings(args, api.DEMO if args.command == "demo" else None), out=args.out)
    except USER_ERRORS as exc:
        print(f"blockprune: error: {exc}", file=sys.stderr)
        return 2
    except (DeviceError, FusedError) as exc:  # the GPU path failed (not the input): one line, exit 1
        print(f"blockprune: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file system that refused us (read-only, full, gone): one line, not a traceback
        where = exc.filename or _where(args)
        print(f"blockprune: error: {f'{where}: ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"blockprune: {_interrupted(args)}", file=sys.stderr)
        return 128 + (signals.signum or signal.SIGINT)
    print(open(out.out / "SUMMARY.md", encoding="utf-8").read())
    print(f"wrote {out.out} in {out.seconds:.0f} s (report: {out.out / _report_name(args.lang)})")
    return 0


def _settings(args, base: Settings | None = None) -> Settings:
    """The search's Settings from its flags (each flag's dest is a Settings field), over `base`."""
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    if hasattr(args, "budgets"):
        given["budgets"] = tuple(args.budgets or ())
    if args.command == "search":
        given["samples"] = args.samples or None  # 0: every sample
        given["protected"] = unit_ids(args.protected, args.units, "--protect")
        given["sets"] = search.parse_sets(args.sets, args.units) if args.sets else []
        if args.sets_file:
            given["sets"] += search.read_sets_file(args.sets_file, args.units)
    return base.replace(**given) if base is not None else Settings(**given)


def _report_name(lang: str) -> str:
    return "REPORT.zh.md" if lang == "zh" else "REPORT.md"


def _bench(args) -> int:
    from .measure import latency
    from .runs import rundir

    if args.out:  # before minutes of measuring: the same rules as every output (and again when written)
        inputs = [("the model", p) for p in rundir.spec_paths(args.model)]
        inputs += [("an --onnx export", d) for d in (args.onnx or [])]
        inputs += [("the --onnx-dense export", args.onnx_dense), ("blockprune's cache", str(rundir.cache_root()))]
        rundir.claim(args.out, "bench", inputs=inputs)
    onnx_dirs = {"pruned": args.onnx, "dense": args.onnx_dense}
    result = latency.bench(args.model, args.remove, backends=[x for x in args.backend.split(",") if x],
                           batches=args.batch, prompt_len=args.prompt_len, gen_len=args.gen_len, warmup=args.warmup,
                           reps=args.reps, onnx_dirs=onnx_dirs, device=args.device, dtype=api.DTYPES[args.dtype],
                           threads=args.threads,
                           log=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    print(latency.markdown(result))
    if args.out:
        print("\n".join(f"wrote {f}" for f in latency.write(result, args.out)))
    return 0


def _validate(args) -> int:
    from pathlib import Path

    result = api.validate(args.dir, samples=args.samples, device=args.device, lang=args.lang, tolerance=args.tolerance)
    for key, v in result["sets"].items():
        drops = ", ".join(f"{t} {100 * d:.2f}%" for t, d in v["drops"].items())
        print(f"[{key}] held-out mean drop {100 * v['mean_drop']:.2f}%: {drops}")
    print(f"wrote {Path(args.dir) / 'validation.json'} and {Path(args.dir) / _report_name(args.lang)}")
    return 0


def _report(args) -> int:
    from pathlib import Path

    if args.replaced_system:
        from .report import replaced_report

        out = Path(args.out) if args.out else Path(args.dir) / "analysis"
        try:
            files = replaced_report.write_replaced_report(args.dir, out, lang=args.lang)
        except replaced_report.ReplacedError as exc:
            raise ReportError(str(exc)) from None
        print("\n".join(f"wrote {f}" for f in files))
        return 0
    api.write_report(args.dir, lang=args.lang, tolerance=args.tolerance)
    print(f"wrote {Path(args.dir) / _report_name(args.lang)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
