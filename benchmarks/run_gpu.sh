#!/usr/bin/env bash
# The GPU half of the benchmark suite, in three stages that each fit a 10-minute command.
#
#   bash benchmarks/run_gpu.sh 1   # install + copy bandwidth + 2:4 matmul sweep (5 shapes x 12 M x providers)
#   bash benchmarks/run_gpu.sh 2   # pruning kernels vs torch (Wanda, select, stats, DSnoT) + end-to-end decode
#   bash benchmarks/run_gpu.sh 3   # pruning time on the LLaMA-7B-shaped model (128x2048 random calibration tokens)
#
# Each stage installs sparsekit if needed (offline, editable; CUDA extension for sm_90a, or without it if
# that build fails), writes rows as it goes (a stage cut short keeps what it measured; re-running it
# resumes), and prints the tables at the end. Results go to $OUT/results when $OUT is set (the device
# tool returns $OUT), else to benchmarks/results. Back on the development machine:
#
#   python -m benchmarks merge <fetched>/results        # upsert into benchmarks/results/<device>/
#   python -m benchmarks plot                           # PNGs under benchmarks/results/<device>/plots/
#   python -m benchmarks tables --readme README.md      # README tables between <!-- bench:NAME --> markers
#
# For BESA in stage 3, carry prodigyopt: here `python -m pip download --no-deps prodigyopt -d .whl`, and
# name ".whl" in the device tool's carry list. Without it the BESA row says why it was skipped.
# SmolLM2 (prune-time, accuracy) is not run here: the machine has no network and the model (94 MB GGUF)
# exceeds what travels with a call; run those on any machine with PyPI access (CPU results are labelled CPU).
set -uo pipefail
STAGE="${1:?usage: bash benchmarks/run_gpu.sh 1|2|3}"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
RESULTS="${OUT:+$OUT/results}"
RESULTS="${RESULTS:-benchmarks/results}"
LOG="${OUT:-/tmp}/bench-stage${STAGE}.log"
mkdir -p "$RESULTS"

install() {
  # BESA needs prodigyopt, which the GPU image lacks: carry its wheel in .whl/ (see benchmarks/README.md)
  if ls .whl/prodigyopt-*.whl >/dev/null 2>&1 && ! "$PY" -c "import prodigyopt" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index .whl/prodigyopt-*.whl
  fi
  if "$PY" -c "import sparsekit.triton_kernels" 2>/dev/null; then return 0; fi
  echo "== installing sparsekit (editable, offline)"
  SPARSEKIT_CUDA_ARCHS="${SPARSEKIT_CUDA_ARCHS:-90a}" "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || { echo "!! CUDA extension build failed; installing without it (the 'cuda' provider will be skipped)";
         SPARSEKIT_SKIP_CUDA_BUILD=1 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .; }
  "$PY" - <<'EOF'
import torch, triton, transformers, sparsekit
from sparsekit import backend
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, transformers {transformers.__version__}")
print(f"GPU {torch.cuda.get_device_name()}, L2 {torch.cuda.get_device_properties(0).L2_cache_size >> 20} MiB")
print("CUDA extension:", backend.cuda_extension_available() or "loaded")
EOF
}

# seconds for the whole stage: under the device tool's 600 s per command, and the three stages plus
# machine starts inside a session's 30 minutes of device time
case "$STAGE" in 1) DEFAULT_BUDGET=480 ;; *) DEFAULT_BUDGET=420 ;; esac
BUDGET="${STAGE_BUDGET:-$DEFAULT_BUDGET}"

bench() {  # bench SECONDS ARGS...: one benchmark under min(SECONDS, what is left of the budget), resuming earlier rows
  local limit="$1"; shift
  local left=$((BUDGET - SECONDS - 15))
  if [ "$left" -lt "$limit" ]; then limit="$left"; fi
  if [ "$limit" -lt 30 ]; then echo "!! no time left for: $*"; return 0; fi
  echo "== python -m benchmarks $* (limit ${limit}s)"
  timeout --signal=INT --kill-after=30 "$limit" "$PY" -m benchmarks "$@" --results-dir "$RESULTS" --resume 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "!! exit code $rc (124/130 = time limit reached; rows written so far are kept)"
}

show() { for t in "$@"; do "$PY" -m benchmarks tables --print "$t" --results-dir "$RESULTS" || true; echo; done; }

install 2>&1 | tee -a "$LOG"
case "$STAGE" in
  1)
    bench 470 kernels --ops copy,matmul
    show kernels ;;
  2)
    bench 150 kernels --ops wanda,select,stats,dsnot
    bench 400 decode --batch-sizes 1,8,32 --prompt-len 128 --new-tokens 256
    show kernel-ops decode ;;
  3)
    bench 320 prune-time --models llama7b --methods wanda,dsnot,magnitude,sparsegpt --nsamples 128 --seqlen 2048
    bench 120 prune-time --models llama7b --methods besa --llama-layers 2 --nsamples 128 --seqlen 2048
    show prune-time ;;
  *) echo "unknown stage $STAGE (use 1, 2 or 3)"; exit 2 ;;
esac
ls -la "$RESULTS"/*/ 2>/dev/null
