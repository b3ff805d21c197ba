"""`make compat` (#33): blockprune on the lent card's software, checked on this CPU machine.

The card's image has Python 3.12, torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0 (with
scipy, pytest, accelerate, onnx, onnxruntime) and no gguf, lm_eval or ray, and reaches no registry.
`make compat` builds .venv-compat with those versions (Python 3.12 where one is here; torch 2.11.0
is the registry's CUDA 13 build, which runs on the CPU) and runs this script with it:

  imports   every blockprune module, and the bench and test modules bench/gpu.sh runs, import on
            this stack; none imports gguf, lm_eval or ray
  hopper    the Hopper compile table (bench/compile_table.py) under this Triton, against the one
            committed (bench/results/compile_hopper.json, Triton 3.7.1)
  tests     the engine, decode, heal, fake-CUDA and kernel tests (TESTS below) under this stack
  gpu.sh    bench/gpu.sh --smoke, the GPU run's own script, end to end on the CPU

In every stage a `sitecustomize` hook blocks an import of gguf, lm_eval or ray (as on the card,
where they are absent) and logs it with where it came from; a probe (`importlib.util.find_spec`,
as transformers makes) is logged as a probe and allowed. Like on the card, blockprune is not
installed: it runs from a symlinked package (blockprune/ with kernels/ and export/) on PYTHONPATH.
Writes compat.md and compat.json into --out.

    .venv-compat/bin/python bench/compat.py [--out bench/results] [--only imports,hopper,tests,gpu.sh]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("gguf", "lm_eval", "ray")
CARD = {"python": "3.12.3", "torch": "2.11.0+cu130", "triton": "3.6.0", "transformers": "5.17.0", "numpy": "2.5.2",
        "tokenizers": "0.23.2", "accelerate": "1.15.0", "onnxruntime": "1.30.0"}  # the device notes' pip list
VERSIONS = ("torch", "triton", "transformers", "tokenizers", "safetensors", "huggingface_hub", "numpy", "scipy",
            "pytest", "accelerate", "onnx", "onnxruntime", "PIL", "matplotlib", "pyarrow", "tqdm") + BLOCKED
# what bench/gpu.sh runs (gpu_bench.py, bench_vlm.py and the kernel tests) and what they import
GPU_SH_BENCH = ("gpu_bench", "bench_vlm", "bench_engine", "vlm_fixtures")
GPU_SH_TESTS = ("test_kernels", "test_kernel_ops", "test_kl_head", "test_units_fused")
TESTS = ("test_engine.py", "test_decode.py", "test_heal.py", "test_heal_search.py", "test_heal_units.py",
         "test_fake_cuda.py", "test_kernels.py", "test_kernel_ops.py", "test_kl_head.py", "test_kl_engine.py",
         "test_hopper_compile.py", "test_units_fused.py")
# what this stack needed (kept here so compat.md states it)
FIXES = [
    "numpy < 2.4 in .venv-compat (the card has 2.5.2): Triton 3.6.0's interpreter, which runs the kernels on a "
    "CPU, calls int() on a 1-element array, an error since numpy 2.4 (Triton 3.7 squeezes it first). The card "
    "compiles its kernels and never runs the interpreter; `bench/gpu.sh --smoke` there would hit it.",
    "blockprune/engine/decode.py passed the KV cache as `cache=`, the name of transformers 5.2x; 5.17.0 calls it "
    "`past_key_values`, so the model dropped it into **kwargs and made its own cache: batched decoding gave other "
    "tokens or failed (tests/test_decode.py; generated-answer tasks and bench_vlm.py on the card). Fix: the name "
    "the model's forward takes, read from its signature (as export/onnx.py's cache_kwarg does).",
    "bench/bench_vlm.py put the checkout's root first on sys.path, so its plain blockprune/ (no kernels/, no "
    "export/) shadowed the package bench/gpu.sh links on PYTHONPATH where blockprune is not installed, as on the "
    "card: `ImportError: cannot import name 'kernels'`. An editable install hides it (its finder maps the "
    "subpackages). Fix: append the root to sys.path instead of putting it first.",
]

HOOK = r'''
import json, os, sys
_BLOCKED = %r
_LOG = os.environ.get("BLOCKPRUNE_COMPAT_LOG")


class _CompatBlocker:
    """Blocks gguf, lm_eval and ray (absent on the lent card), logging who asked."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in _BLOCKED:
            return None
        f, real = sys._getframe(1), False
        for _ in range(4):  # an import statement passes through _find_and_load; importlib.util.find_spec does not
            if f is None:
                break
            if f.f_code.co_name in ("_find_and_load_unlocked", "_find_and_load"):
                real = True
                break
            f = f.f_back
        where, f = [], sys._getframe(1)
        while f is not None and len(where) < 4:
            fn = f.f_code.co_filename
            if not fn.startswith("<frozen") and "importlib" not in fn:
                where.append(f"{fn}:{f.f_lineno}")
            f = f.f_back
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(json.dumps({"module": name, "kind": "import" if real else "probe", "where": where,
                                     "argv": sys.argv[:3]}) + "\n")
        if real:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by bench/compat.py: the lent card has none)",
                                      name=name)
        return None


sys.meta_path.insert(0, _CompatBlocker)
'''

IMPORTS = r'''
import importlib, importlib.util, json, os, pkgutil, sys, traceback
from pathlib import Path
repo, bench = Path(sys.argv[1]), sys.argv[2].split(",")
tests = sys.argv[3].split(",")
sys.path[:0] = [str(repo / "tests"), str(repo / "bench")]  # tests/conftest.py, not bench/conftest.py
os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py and gpu_bench.py set it without a GPU
out = {"ok": [], "failed": {}}
import blockprune
names = ["blockprune"] + [m.name for m in pkgutil.walk_packages(blockprune.__path__, "blockprune.")
         if not m.name.endswith("__main__")]  # that one runs the CLI
for name in names + ["conftest"] + bench + tests:
    try:
        importlib.import_module(name)
        out["ok"].append(name)
    except BaseException as exc:  # a module that raises SystemExit at import counts too
        out["failed"][name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
out["loaded"] = sorted(m for m in sys.modules if m.partition(".")[0] in %r)
print(json.dumps(out))
'''


def versions(py: str) -> dict:
    code = ("import importlib, json, platform\nout = {'python': platform.python_version()}\n"
            f"for m in {VERSIONS!r}:\n"
            "    try:\n        mod = importlib.import_module(m)\n        out[m] = getattr(mod, '__version__', '?')\n"
            "    except Exception as exc:\n        out[m] = None\n"
            "import torch\nout['torch_cuda'] = torch.version.cuda\nprint(json.dumps(out))")
    done = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-2000:]}


def symlinked_package(run_dir: Path) -> None:
    """blockprune/ with kernels/ and export/ inside, as bench/gpu.sh builds it on the card."""
    pkg = run_dir / "blockprune"
    pkg.mkdir(parents=True)
    for f in (REPO / "blockprune").iterdir():
        if f.name not in ("kernels", "export", "__pycache__"):
            (pkg / f.name).symlink_to(f)
    (pkg / "kernels").symlink_to(REPO / "kernels")
    (pkg / "export").symlink_to(REPO / "export")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def junit_counts(path: Path) -> dict:
    """gpu_checks.junit_counts, with a missing report as a failure."""
    from gpu_checks import junit_counts as counts  # bench/: the reader gpu.sh's summary uses

    return counts(path) or {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": ["no junit report"]}


def run(cmd: list[str], env: dict, cwd: Path, timeout: float, log: Path) -> tuple[int, float, str]:
    t0 = time.time()
    try:
        done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        rc, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
        text = text if isinstance(text, str) else text.decode(errors="replace")
    log.write_text(text)
    return rc, round(time.time() - t0, 1), text


def stage_imports(py, env, run_dir, tmp) -> dict:
    rc, secs, text = run([py, "-c", IMPORTS % (BLOCKED,), str(REPO), ",".join(GPU_SH_BENCH), ",".join(GPU_SH_TESTS)],
                         env, run_dir, 900, tmp / "imports.log")
    try:
        res = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "seconds": secs, "error": text[-3000:]}
    needed = [n for n in res["failed"] if n in GPU_SH_BENCH + GPU_SH_TESTS + ("conftest",) or n.startswith("blockprune")]
    return {"ok": rc == 0 and not needed and not res["loaded"], "seconds": secs, "modules": len(res["ok"]),
            "failed": res["failed"], "blocked_loaded": res["loaded"]}


def stage_hopper(py, env, run_dir, tmp) -> dict:
    out = tmp / "compile_hopper"
    rc, secs, text = run([py, str(REPO / "bench" / "compile_table.py"), "--out", str(out)], env, run_dir, 1800,
                         tmp / "hopper.log")
    if rc != 0 or not out.with_suffix(".json").exists():
        return {"ok": False, "seconds": secs, "error": text[-3000:]}
    rows = json.loads(out.with_suffix(".json").read_text())
    ref_path = REPO / "bench" / "results" / "compile_hopper.json"
    def key(r):  # labels repeat (the first of identical variants): the tiles and options tell them apart
        return r["kernel"], r["config"], json.dumps(r["constexprs"], sort_keys=True), json.dumps(r["options"], sort_keys=True)

    ref = {key(r): r for r in json.loads(ref_path.read_text())} if ref_path.exists() else {}
    table = []
    for r in rows:
        old = ref.get(key(r), {})
        table.append({"kernel": r["kernel"], "config": r["config"], "registers": r["registers"], "shared": r["shared"],
                      "spills": [r["local"], r["stack"]], "tensor_core": r["tensor_core"], "problems": r["problems"],
                      "registers_ref": old.get("registers"), "shared_ref": old.get("shared")})
    return {"ok": not any(r["problems"] for r in rows), "seconds": secs, "variants": len(rows),
            "with_problems": sum(1 for r in rows if r["problems"]), "rows": table,
            "reference": "bench/results/compile_hopper.json" if ref else None}


def stage_tests(py, env, run_dir, tmp) -> dict:
    xml = tmp / "tests.xml"
    cmd = [py, "-m", "pytest", *[str(REPO / "tests" / t) for t in TESTS], "-q", "-p", "no:cacheprovider",
           "--rootdir", str(REPO), "-m", "not slow", "--junitxml", str(xml), "-o", "junit_family=xunit2"]
    rc, secs, text = run(cmd, env, run_dir, 3000, tmp / "tests.log")
    counts = junit_counts(xml)
    return {"ok": rc == 0 and counts["failed"] == counts["errors"] == 0, "rc": rc, "seconds": secs,
            "files": list(TESTS), **counts, "tail": text.strip().splitlines()[-1:] if text.strip() else []}


def stage_gpu_sh(py, env, run_dir, tmp) -> dict:
    out = tmp / "gpu"
    env = {**env, "OUT": str(out), "PYTHON": py}
    rc, secs, text = run(["bash", str(REPO / "bench" / "gpu.sh"), "--smoke"], env, REPO, 900, tmp / "gpu_sh.log")
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    xml = junit_counts(out / "tests.xml")
    failing = [line.strip()[:300] for line in text.splitlines()
               if line.startswith("FAILED CHECK") or line.rstrip().endswith(tuple(f": exit {i}" for i in range(1, 256)))
               or line.startswith("ImportError") or line.startswith("ModuleNotFoundError")]
    res = {"ok": rc == 0, "rc": rc, "seconds": secs, "files": files, "failing": failing,
           "kernel_tests": {k: xml[k] for k in ("passed", "failed", "errors", "skipped")}}
    if rc != 0:
        res["tail"] = text.strip().splitlines()[-25:]
    return res


def markdown(res: dict) -> str:
    v = res["versions"]
    lines = ["# blockprune on the lent card's software (`make compat`)", "",
             f"{res['date']}, {res['wall_s']} s in all on this CPU machine (2 cores, shared). "
             f"Result: **{'pass' if res['ok'] else 'FAIL'}**.", "",
             "| | the card | here (.venv-compat) |", "| --- | --- | --- |"]
    for k in CARD:
        here = v.get(k)
        if k == "torch" and v.get("torch_cuda"):
            here = f"{here} (CUDA {v['torch_cuda']} build, run on the CPU)"
        lines.append(f"| {k} | {CARD[k]} | {here} |")
    others = ", ".join(f"{k} {v[k]}" for k in VERSIONS if k not in CARD and k not in BLOCKED and v.get(k))
    absent = ", ".join(k for k in VERSIONS if v.get(k) is None)
    lines += ["", f"Beside them: {others}. Absent: {absent or 'none'}.", "", res["python_note"], "",
              "| stage | result | time |", "| --- | --- | --- |"]
    st = res["stages"]
    for name, s in st.items():
        if name == "imports" and "modules" in s:
            what = (f"{s['modules']} modules imported; failed: "
                    + (", ".join(f"{k} ({e})" for k, e in s["failed"].items()) or "none"))
        elif name == "hopper" and "variants" in s:
            changed = sum(1 for r in s["rows"] if r["registers_ref"] is not None and r["registers"] != r["registers_ref"])
            what = (f"{s['variants']} variants compiled for sm_90, {s['with_problems']} with problems; "
                    f"{changed} differ in registers from the Triton 3.7.1 table")
        elif name == "tests" and "passed" in s:
            what = (f"{s['passed']} passed, {s['failed']} failed, {s['errors']} errors, {s['skipped']} skipped"
                    + (f": {', '.join(s['failures'])}" if s["failures"] else ""))
        elif name == "gpu.sh --smoke" and "rc" in s:
            kt = s["kernel_tests"]
            what = (f"exit {s['rc']}; files {', '.join(s['files'])}; kernel tests {kt['passed']} passed, {kt['failed']} failed"
                    + (": " + "; ".join(f.split(": {")[0] for f in s["failing"]) if s["failing"] else ""))
        else:
            what = s.get("error", "")[-300:].replace("\n", " ")
        lines.append(f"| {name} | {'ok' if s['ok'] else 'FAIL'}: {what} | {s['seconds']} s |")
    imp = [e for e in res["blocked"] if e["kind"] == "import"]
    probes = sorted({e["module"] for e in res["blocked"] if e["kind"] == "probe"})
    lines += ["", f"Imports of {', '.join(BLOCKED)} attempted in any stage: "
              + ("; ".join(f"{e['module']} from {e['where'][0] if e['where'] else '?'}" for e in imp) or "**none**")
              + (f" (probes by find_spec, allowed: {', '.join(probes)})" if probes else "") + "."]
    if "hopper" in st and st["hopper"].get("rows"):
        lines += ["", "Hopper table under this Triton (registers / shared bytes; the committed Triton 3.7.1 table in brackets):", "",
                  "| kernel | variant | registers | shared B | spills | tensor cores | problems |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in st["hopper"]["rows"]:
            lines.append(f"| {r['kernel']} | {r['config']} | {r['registers']} [{r['registers_ref']}] | {r['shared']} "
                         f"[{r['shared_ref']}] | {r['spills'][0]}/{r['spills'][1]} | {', '.join(r['tensor_core']) or '-'} "
                         f"| {'; '.join(r['problems']) or 'none'} |")
    lines += ["", "Fixes this stack needed:", ""] + ([f"- {f}" for f in res["fixes"]] or ["- none"])
    lines += ["", "Reproduce: `make compat` (builds .venv-compat once, ~4 GB; resumable), or "
              "`.venv-compat/bin/python bench/compat.py --out bench/results`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--only", default="imports,hopper,tests,gpu.sh")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print its path")
    args = ap.parse_args()
    only = set(args.only.split(","))
    t0 = time.time()
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="blockprune-compat-"))
    hook, run_dir = tmp / "hook", tmp / "run"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK % (BLOCKED,))
    symlinked_package(run_dir)
    log = tmp / "blocked.jsonl"
    env = {k: val for k, val in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PYTHONPATH=f"{hook}:{run_dir}", BLOCKPRUNE_COMPAT_LOG=str(log), PYTHONDONTWRITEBYTECODE="1")
    v = versions(py)
    print("versions:", json.dumps(v), flush=True)
    stages = {}
    for name, fn in (("imports", stage_imports), ("hopper", stage_hopper), ("tests", stage_tests),
                     ("gpu.sh --smoke", stage_gpu_sh)):
        if name.split()[0] not in only:
            continue
        print(f"== {name}", flush=True)
        stages[name] = fn(py, env, run_dir, tmp)
        print(json.dumps({k: s for k, s in stages[name].items() if k != "rows"})[:2000], flush=True)
    blocked = read_log(log)
    for e in blocked:  # the temporary package's paths, as the checkout's
        e["where"] = [w.replace(str(run_dir) + "/", "") .replace(str(REPO) + "/", "") for w in e["where"]]
    py312 = v.get("python", "").startswith("3.12")
    res = {"date": dt.datetime.now().isoformat(timespec="seconds"), "ok": all(s["ok"] for s in stages.values())
           and not any(e["kind"] == "import" for e in blocked), "wall_s": round(time.time() - t0, 1),
           "card": CARD, "versions": v, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "python_note": (f"Python {v.get('python')} stands in for the card's 3.12.3" if py312 else
                           f"Python {v.get('python')}: no Python 3.12 was found here, so the card's 3.12.3 is not matched"),
           "stages": stages, "blocked": blocked, "fixes": FIXES}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compat.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "compat.md").write_text(markdown(res))
    print(markdown(res).split("\n\nHopper table")[0])
    if args.keep:
        print("work directory:", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
