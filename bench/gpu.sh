#!/usr/bin/env bash
# The GPU check in one go, in the order a short slot on a card should answer (#33): the card's
# question (the batched engine vs one pruned forward per candidate, ~1B and 8B, bf16), then the
# seed's (a seed-sized search end to end, racing on and off, against the 5-minute goal and the naive
# method's extrapolated time), then the kernels (heads vs float64 and cuBLAS, row ops vs copy
# bandwidth), then decode (batched generation vs generate()), then the kernel tests and, where time
# is left, the replaced system's VLM experiment. Full run under 7 minutes (420 s, cold Triton
# compiles included: no warm cache is shipped), --quick under 2; at most 6 files under $OUT, each
# flushed as it grows, so a killed run still returns what it measured:
#
#   gpu.log         everything printed, versions and nvidia-smi included
#   gpu_bench.json  every figure (card, versions, thresholds and tolerances, rows with ok flags)
#   summary.md      the figures as tables (rewritten after every row; the tests' line appended)
#   tests.xml       the kernel tests' JUnit report
#   vlm.json        bench/bench_vlm.py: the seed-shaped search on a ~1B VLM vs generate() per pair
#                   (smoke always; on a card only with time left)
#
#   OUT=/some/dir bench/gpu.sh              # a CUDA machine with torch + triton + transformers (+ pytest, scipy)
#   OUT=/some/dir bench/gpu.sh --quick      # section 1 alone on the ~1B config: under 2 minutes
#   OUT=/tmp/x PYTHON=.venv/bin/python bench/gpu.sh --smoke   # the CPU check of the script itself
#
# Every check row has an ok flag; a failing check, a failing test or a stage that crashes or runs
# out of its time makes the exit status 1. A fused-runner or packing fallback fails the run unless
# GPU_BENCH_ALLOW_FALLBACK=1. GPU_BENCH_PLANT=<bug> plants a bug into a check (bench/gpu_checks.py;
# bench/test_gpu_script.py only); GPU_BENCH_ONLY=<stages> (card,seed,kernels,tests,vlm) runs only those.
#
# Installs nothing: it looks for a python with torch and triton ($PYTHON, .venv/bin/python, python3,
# python); if blockprune is not importable there it runs from a symlinked copy of the package
# (blockprune/ with kernels/ and export/ inside) on PYTHONPATH.
set -uo pipefail

MODE=full
case "${1:-}" in
  --smoke) MODE=smoke ;;
  --quick) MODE=quick ;;
  "") ;;
  *) echo "usage: bench/gpu.sh [--quick|--smoke]"; exit 2 ;;
esac
REPO="$(cd "$(dirname "$0")/.." && pwd)"
START=$(date +%s)
TOTAL=${GPU_BUDGET:-420}  # seconds for everything (7 minutes)
[ "$MODE" = quick ] && TOTAL=${GPU_BUDGET:-110}
[ "$MODE" = smoke ] && TOTAL=${GPU_BUDGET:-380}  # bench/test_gpu_script.py waits 400 s
OUT="${OUT:-$REPO/bench/results/gpu}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/gpu.log") 2>&1
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
stage() { echo; echo "=== $1 ($(left)s left) ==="; }

stage "python ($MODE)"
PY=""
CHECK="import torch, triton; assert torch.cuda.is_available(), 'no CUDA'"
[ "$MODE" = smoke ] && CHECK="import torch, triton"
for cand in ${PYTHON:-} "$REPO/.venv/bin/python" python3 python; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "$CHECK" 2>/dev/null; then
    PY="$(command -v "$cand")"
    case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac  # the commands below run from another directory
    break
  fi
done
if [ -z "$PY" ]; then
  echo "no python with CUDA torch and triton found (tried \$PYTHON, .venv/bin/python, python3, python)"
  exit 2
fi
echo "python: $PY"
if [ "$MODE" = smoke ]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi

# blockprune: installed already (editable), or a symlinked package on PYTHONPATH. Commands run from
# RUN_DIR so that the plain ./blockprune directory (without kernels/) cannot shadow it.
RUN_DIR="$REPO"
if [ "${GPU_SHADOW:-0}" = 1 ] || ! (cd "$REPO" && "$PY" -c "import blockprune.kernels, blockprune.engine") 2>/dev/null; then
  RUN_DIR="$(mktemp -d)"
  mkdir -p "$RUN_DIR/blockprune"
  for f in "$REPO"/blockprune/*; do  # its modules and packages (a checkout's own links to kernels/, export/ aside)
    case "${f##*/}" in kernels|export|__pycache__) ;; *) ln -s "$f" "$RUN_DIR/blockprune/";; esac
  done
  ln -s "$REPO/kernels" "$RUN_DIR/blockprune/kernels"
  ln -s "$REPO/export" "$RUN_DIR/blockprune/export"
  export PYTHONPATH="$RUN_DIR${PYTHONPATH:+:$PYTHONPATH}"
  echo "blockprune from a symlinked package in $RUN_DIR"
fi
cd "$RUN_DIR" || exit 2
"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
for m in ("triton", "transformers", "scipy", "pytest", "blockprune"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as exc:
        print(m, "MISSING", type(exc).__name__, exc)
EOF
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi
status=0

ONLY=",${GPU_BENCH_ONLY:-card,seed,kernels,tests,vlm},"
want() { case "$ONLY" in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
budget() { local b=$(( $(left) - $1 )); [ "$b" -lt "$2" ] && b=$2; echo "$b"; }  # left - reserve, at least a floor
run_stage() {  # name, timeout seconds, command...: a crash, a failing check or the timeout fails the run
  local name=$1 t=$2 rc; shift 2
  [ "$t" -lt 10 ] && t=10
  timeout -k 5 "$t" "$@"; rc=$?
  if [ $rc -ne 0 ]; then
    if [ $rc -eq 124 ]; then echo "$name: stopped by its time limit (${t}s)"; else echo "$name: exit $rc"; fi
    status=1
  fi
}
SMOKE=(); [ "$MODE" = smoke ] && SMOKE=(--smoke)

if want card; then
  stage "1. the card's question: gpu_bench.py --part card (engine vs naive, ~1B$([ "$MODE" != quick ] && echo ' and 8B'), fp32 exactness)"
  case "$MODE" in
    smoke) B=45; Q=() ;;
    quick) B=$(budget 15 30); Q=(--quick) ;;
    full) B=$(budget 295 60); Q=() ;;  # about 110 s: the seed, kernels, decode and tests keep about 5 minutes
  esac
  run_stage gpu_bench "$(( B + 15 ))" "$PY" "$REPO/bench/gpu_bench.py" --out "$OUT" --part card "${SMOKE[@]}" "${Q[@]}" \
    --budget "$B"
fi

if [ "$MODE" != quick ] && want seed; then
  stage "2. the seed's question: gpu_seed.py (a 16-block ~1B config, 8 tasks x 1,000 samples, beam 3, 4 blocks, racing on and off)"
  B=$(budget 190 40); [ "$MODE" = smoke ] && B=70  # about 95 s on a card
  run_stage gpu_seed "$(( B + 20 ))" "$PY" "$REPO/bench/gpu_seed.py" --out "$OUT" "${SMOKE[@]}" --budget "$B"
fi

if [ "$MODE" != quick ] && want kernels; then
  stage "3. kernels, then decode: gpu_bench.py --part kernels,decode (heads vs float64 and cuBLAS, row ops, generation)"
  B=$(budget 105 40); [ "$MODE" = smoke ] && B=60  # about 75 s on a card
  run_stage gpu_bench "$(( B + 15 ))" "$PY" "$REPO/bench/gpu_bench.py" --out "$OUT" --part kernels,decode --append \
    "${SMOKE[@]}" --budget "$B"
fi

if [ "$MODE" != quick ] && want tests; then
  stage "4. kernel tests (compiled kernels on a GPU: about 100 cold Triton compiles)"
  T=$(( $(left) - 10 ))
  [ "$MODE" = full ] && [ "$T" -gt 130 ] && T=130  # their measured share (~120 s); the VLM run may have the rest
  [ "$MODE" = smoke ] && T=$(( $(left) - 100 )) && [ "$T" -gt 60 ] && T=60  # the VLM run keeps 100 s
  if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "skipped: pytest is not installed"; status=1
  elif [ "$T" -lt 30 ]; then
    echo "skipped: $T s left"; status=1
  else
    # the compiled kernels the engine runs, most important first: the heads, then the row kernels
    TESTS=("$REPO/tests/test_kernels.py" "$REPO/tests/test_kl_head.py" "$REPO/tests/test_kernel_ops.py"
           "$REPO/tests/test_units_fused.py")
    [ "$MODE" = smoke ] && TESTS=("$REPO/tests/test_kernels.py")
    # -x off; interrupted at the time limit (SIGINT), pytest still writes the JUnit report of what ran
    rm -f "$OUT/tests.xml"
    timeout -s INT -k 5 "$T" "$PY" -m pytest "${TESTS[@]}" -q -p no:cacheprovider --rootdir "$REPO" \
      --junitxml "$OUT/tests.xml" -o junit_family=xunit2
    # failures and errors fail the run; the time limit is reported (what ran is in tests.xml)
    "$PY" "$REPO/bench/gpu_checks.py" junit "$OUT/tests.xml" "$?" "$T" "$OUT/summary.md" || status=1
  fi
fi

if [ "$MODE" != quick ] && want vlm; then
  stage "5. bench_vlm.py: the replaced system's experiment (16 text blocks, 4 image tasks, beam 3, 4 blocks)"
  if [ "$MODE" = smoke ]; then
    VLM=(--device cpu --samples 1 --layers 5 --naive-candidates 1 --synthetic); T=$(( $(left) - 10 ))
  else
    VLM=(--device cuda --dtype bfloat16 --shape 1b --samples 64 --synthetic --budget 20); T=$(( $(left) - 5 ))
  fi
  if [ "$T" -lt 90 ]; then
    echo "skipped: ${T}s left, it needs about 90 s (on a card the seed search above is its successor)"
  else
    run_stage bench_vlm "$T" "$PY" "$REPO/bench/bench_vlm.py" "${VLM[@]}" --out "$OUT/vlm.json"
  fi
fi

stage "summary"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
echo "total $(( $(date +%s) - START ))s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $status
