#!/usr/bin/env bash
# The GPU check in one go: the card's question first, then the kernels at real sizes, then the
# replaced system's experiment on a ~1B image-text model, then the kernel tests, in under 8
# minutes, writing at most 5 files under $OUT (each flushed as it grows, so a killed run still
# returns what it measured):
#
#   gpu.log         everything printed, versions and nvidia-smi included
#   gpu_bench.json  every figure (card, versions, thresholds, rows)
#   summary.md      the figures as tables (rewritten after every row)
#   vlm.json        bench/bench_vlm.py: the seed-shaped search on a ~1B VLM vs generate() per pair
#   tests.xml       the kernel tests' JUnit report
#
#   OUT=/some/dir bench/gpu.sh              # a CUDA machine with torch + triton + transformers (+ pytest, scipy)
#   OUT=/some/dir bench/gpu.sh --quick      # section 1 alone on the ~1B config: under 2 minutes
#   OUT=/tmp/x PYTHON=.venv/bin/python bench/gpu.sh --smoke   # the CPU check of the script itself
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
TOTAL=${GPU_BUDGET:-450}  # seconds for everything (8 minutes is 480)
[ "$MODE" = quick ] && TOTAL=${GPU_BUDGET:-110}
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

stage "gpu_bench.py: engine vs naive, fp32 exactness$([ "$MODE" != quick ] && echo ', 8B, heads, row ops')"
ARGS=(--out "$OUT")
case "$MODE" in
  smoke) ARGS+=(--smoke --budget $(( $(left) - 60 ))) ;;
  quick) ARGS+=(--quick --budget $(( $(left) - 10 ))) ;;
  full) ARGS+=(--budget $(( $(left) - 230 ))) ;;  # the VLM run and the kernel tests keep about 4 minutes
esac
timeout -k 5 $(( $(left) - 5 )) "$PY" "$REPO/bench/gpu_bench.py" "${ARGS[@]}" || { echo "gpu_bench: exit $?"; status=1; }

if [ "$MODE" != quick ]; then
  stage "bench_vlm.py: the replaced system's experiment (16 text blocks, 4 image tasks, beam 3, 4 blocks)"
  if [ "$MODE" = smoke ]; then
    VLM=(--device cpu --samples 4 --layers 6 --naive-candidates 1 --synthetic)
  else
    VLM=(--device cuda --dtype bfloat16 --shape 1b --samples 64 --synthetic --budget 30)
  fi
  timeout -k 5 $(( $(left) - 130 )) "$PY" "$REPO/bench/bench_vlm.py" "${VLM[@]}" --out "$OUT/vlm.json" \
    || { echo "bench_vlm: exit $?"; status=1; }
fi

if [ "$MODE" != quick ]; then
  stage "kernel tests (compiled kernels on a GPU)"
  T=$(( $(left) - 10 ))
  if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "skipped: pytest is not installed"; status=1
  elif [ "$T" -lt 30 ]; then
    echo "skipped: $T s left"; status=1
  else
    TESTS=("$REPO/tests/test_kernels.py" "$REPO/tests/test_kernel_ops.py" "$REPO/tests/test_kl_head.py")
    [ "$MODE" = smoke ] && TESTS=("$REPO/tests/test_kernels.py")
    # -x off, junit written by pytest as it finishes; the timeout leaves pytest 5 s to write it
    timeout -s INT -k 5 "$T" "$PY" -m pytest "${TESTS[@]}" -q -p no:cacheprovider --rootdir "$REPO" \
      --junitxml "$OUT/tests.xml" -o junit_family=xunit2 || { echo "tests: exit $?"; status=1; }
  fi
fi

stage "summary"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
echo "total $(( $(date +%s) - START ))s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $status
