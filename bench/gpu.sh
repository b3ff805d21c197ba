#!/usr/bin/env bash
# Issue 5 on a GPU machine: the kernel tests with compiled Triton kernels, then every GPU benchmark,
# in under 8 minutes, writing CSV/JSON (card, versions, timestamp) and a log under $OUT.
#
#   OUT=/some/dir bench/gpu.sh            # a CUDA machine with torch + triton (+ transformers, pytest)
#   OUT=/tmp/x PYTHON=.venv/bin/python bench/gpu.sh --smoke   # CPU check of the script itself
#
# Installs nothing: it looks for a python with CUDA torch and triton ($PYTHON, .venv/bin/python,
# python3, python); if blockprune is not importable there it runs from a symlinked copy of the
# package (blockprune/ with kernels/ and export/ inside) on PYTHONPATH. Pure-python packages the
# machine lacks (e.g. pytest) can be put in .gpu-deps/ (pip install --target) and carried along.
# Every stage has a hard time limit; gpu_bench.py writes its results after every row.
set -uo pipefail

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
START=$(date +%s)
TOTAL=${GPU_BUDGET:-450}  # seconds for everything (the issue allows 480)
OUT="${OUT:-$REPO/bench/results/gpu}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/gpu.log") 2>&1
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
stage() { echo; echo "=== $1 ($(left)s left) ==="; }

stage "python"
PY=""
CHECK="import torch, triton; assert torch.cuda.is_available(), 'no CUDA'"
[ "$SMOKE" = 1 ] && CHECK="import torch, triton"
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
if [ "$SMOKE" = 1 ]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi
[ -d "$REPO/.gpu-deps" ] && export PYTHONPATH="$REPO/.gpu-deps${PYTHONPATH:+:$PYTHONPATH}"

# blockprune: installed already (editable), or a symlinked package on PYTHONPATH. Commands run from
# RUN_DIR so that the plain ./blockprune directory (without kernels/) cannot shadow it.
RUN_DIR="$REPO"
if [ "${GPU_SHADOW:-0}" = 1 ] || ! (cd "$REPO" && "$PY" -c "import blockprune.kernels, blockprune.engine") 2>/dev/null; then
  RUN_DIR="$(mktemp -d)"
  mkdir -p "$RUN_DIR/blockprune"
  for f in "$REPO"/blockprune/*.py; do ln -s "$f" "$RUN_DIR/blockprune/"; done
  ln -s "$REPO/kernels" "$RUN_DIR/blockprune/kernels"
  ln -s "$REPO/export" "$RUN_DIR/blockprune/export"
  export PYTHONPATH="$RUN_DIR${PYTHONPATH:+:$PYTHONPATH}"
  echo "blockprune from a symlinked package in $RUN_DIR"
fi
cd "$RUN_DIR" || exit 2
"$PY" - <<'EOF' | tee "$OUT/versions.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
for m in ("triton", "transformers", "pytest", "pytest_benchmark", "blockprune"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as exc:
        print(m, "MISSING", type(exc).__name__, exc)
EOF
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

status=0
have() { "$PY" -c "import $1" 2>/dev/null; }

stage "tests (compiled kernels)"
if have pytest; then
  T=$(( $(left) < 330 ? $(left) - 250 : 180 ))
  if [ "$T" -gt 20 ]; then
    timeout -k 5 "$T" "$PY" -m pytest "$REPO/tests/test_kernel_ops.py" "$REPO/tests/test_kernels.py" \
      "$REPO/tests/test_kl_head.py" -q -p no:cacheprovider --rootdir "$REPO" --junitxml "$OUT/tests.xml" \
      || { echo "tests: exit $?"; status=1; }
  else
    echo "tests skipped: not enough time"
  fi
else
  echo "tests skipped: pytest is not installed (carry it in .gpu-deps/)"
  status=1
fi

stage "gpu_bench.py"
B=$(( $(left) - 75 ))
SMOKE_ARG=()
[ "$SMOKE" = 1 ] && SMOKE_ARG=(--smoke)
timeout -k 5 $(( B + 30 )) "$PY" "$REPO/bench/gpu_bench.py" --out "$OUT" --budget "$B" "${SMOKE_ARG[@]}" \
  || { echo "gpu_bench: exit $?"; status=1; }

stage "pytest-benchmark kernels"
if have pytest_benchmark; then
  T=$(( $(left) - 10 ))
  BENCH_ARGS=(--benchmark-json "$OUT/bench_kernels.json" --benchmark-max-time 0.3 --benchmark-min-rounds 3)
  [ "$SMOKE" = 1 ] && BENCH_ARGS=(--benchmark-disable)
  if [ "$T" -gt 20 ]; then
    timeout -k 5 "$T" "$PY" -m pytest "$REPO/bench/test_bench_kernels.py" -q -p no:cacheprovider --rootdir "$REPO" \
      "${BENCH_ARGS[@]}" || { echo "bench kernels: exit $?"; status=1; }
  else
    echo "skipped: not enough time"
  fi
else
  echo "skipped: pytest-benchmark is not installed"
fi

stage "summary"
"$PY" "$REPO/bench/gpu_bench.py" --summarize "$OUT" | tee "$OUT/summary.txt"
echo "total $(( $(date +%s) - START ))s; results in $OUT"
exit $status
