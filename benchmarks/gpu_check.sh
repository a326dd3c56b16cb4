#!/usr/bin/env bash
# The GPU entry point: checks the CUDA kernels and measures the benchmark suite on the visible GPU, from the
# repository root of a source checkout (no install and no network needed).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          the check (a shorter sweep, decode and prune time)
#   FULL=1 bash benchmarks/gpu_check.sh [OUT_DIR]   the whole GPU suite (the README's kernel, decode and
#                                                   prune-time tables)
#
#   env      GPU, driver, torch / Triton / nvcc versions, git commit -> environment.txt
#   build    csrc/ -> sparsekit._C for the visible GPU (setup.py build_ext --inplace) -> build.log
#   test     every CUDA test natively (the sp24 kernels first, then tests/kernels and tests/nn), the
#            extension required -> pytest.log, pytest.xml
#   kernels  2:4 matmul sweep (CUDA-graph timing, weights rotated over > 2x L2, cuBLAS in the same run,
#            host µs per call), then the dispatcher table from those rows (--write-table)
#            -> results/<device>/kernels.jsonl, sparse24_matmul.json. FULL: every shape, M and provider.
#   ops      (FULL) pruning kernels vs their torch forms: Wanda, select, activation stats, DSnoT
#   decode   LLaMA-7B-shaped decode, dense vs 2:4, CUDA graphs, tokens/s and peak memory (FULL: batch
#            1/8/32, 256 new tokens, 5 repeats)
#   prune    pruning time on the LLaMA-7B shape, 128 x 2048 tokens (2 blocks, wanda and sparsegpt; FULL:
#            32 blocks with magnitude, wanda, sparsegpt, dsnot, and BESA on 2 blocks, which needs prodigyopt)
#   summary  the 2:4 ratio table and the decode rows -> summary.txt
#
# Everything lands in OUT_DIR (default: $OUT if set, else benchmarks/results/gpu-check) with gpu_check.log.
# Rows are written as they are measured and the benchmarks run with --resume, so a run that was
# interrupted is finished by running the same command again (delete OUT_DIR/results to re-measure).
# Options (environment): STEPS=env,build,kernels (a subset, e.g. to split the work into shorter
# commands); SHAPES=4096x4096 MS=1,16 PROVIDERS=dense,cuda (the sweep); BUDGET_S=N (stop starting work
# after N seconds: each step gets what is left, and one cut short keeps its rows); PYTHON=python3.
# Back on a development machine: python -m benchmarks merge OUT_DIR/results, then plot and tables.
#
# Without a CUDA GPU it says so, runs what a CPU can (the sm_90a/sm_80 compile and SASS evidence with
# nvcc, the CPU model tests, the CUDA tests' clean skips, a quick benchmark smoke run) and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/results/gpu-check}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
RESULTS="$OUT_DIR/results"
LOG="$OUT_DIR/gpu_check.log"
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-}
FULL=${FULL:-}
if [ -n "$FULL" ]; then
  STEPS=${STEPS:-env,build,test,kernels,ops,decode,prune,summary}
  SWEEP=(--shapes "${SHAPES:-4096x4096,11008x4096,4096x11008,14336x4096,4096x14336}"
         --ms "${MS:-1,2,4,8,16,32,64,128,256,512,2048,4096}"
         --providers "${PROVIDERS:-dense,triton,cuda,cuda-r128,cuda-r256,cublas,auto,cusparselt,cusparselt-search,cutlass}")
  DECODE=(--batch-sizes 1,8,32 --prompt-len 128 --new-tokens 256 --repeats 5)
else
  STEPS=${STEPS:-env,build,test,kernels,decode,prune,summary}
  SWEEP=(--shapes "${SHAPES:-4096x4096,11008x4096,4096x11008,14336x4096}" --ms "${MS:-1,2,4,8,16,32,64,128,512,2048}"
         --providers "${PROVIDERS:-dense,triton,cuda,cuda-r128,cuda-r256,cublas,auto}" --graph-rep-ms 10)
  DECODE=(--batch-sizes 1,16 --prompt-len 128 --new-tokens 128 --repeats 3)
fi
TESTS=${TESTS:-tests/kernels/test_sp24_decode_cuda.py tests/kernels/test_sparse24_matmul.py tests/kernels/test_sp24_decode_model.py tests/benchmarks/test_kernel_table.py tests/nn tests/kernels}
export PYTHONUNBUFFERED=1
# the project as the device machine runs it: sparsekit.triton_kernels from ../triton_kernels, the repo on the path
if ! "$PY" -c "import sparsekit.triton_kernels" 2>/dev/null && [ ! -e sparsekit/triton_kernels ]; then
  ln -s ../triton_kernels sparsekit/triton_kernels
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { [[ ",$STEPS," == *",$1,"* ]]; }
SUMMARY=()

run_step() {  # run_step NAME CMD...: CMD, under what is left of BUDGET_S when that is set
  local name=$1; shift
  local limit=""
  if [ -n "$BUDGET" ]; then
    limit=$((BUDGET - SECONDS - 10))
    if [ "$limit" -lt 20 ]; then echo "!! $name: not run, BUDGET_S=${BUDGET} is spent"; SUMMARY+=("$name: not run (BUDGET_S)"); return 0; fi
  fi
  echo "== $name${limit:+ (limit ${limit}s)}: $*"
  local start=$SECONDS
  if [ -n "$limit" ]; then timeout --signal=INT --kill-after=20 "$limit" "$@"; else "$@"; fi
  local rc=$?
  local note=""
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then note=" (stopped at BUDGET_S: rows written so far are kept, re-run to finish)"; fi
  echo "== $name: exit $rc in $((SECONDS - start)) s$note"
  SUMMARY+=("$name: exit $rc, $((SECONDS - start)) s$note")
}

cpu_only() {
  echo "!! no CUDA GPU visible (torch.cuda.is_available() is False): the device steps (build, native tests,"
  echo "!! kernel sweep, decode, prune time, tuning table) are NOT run; running the CPU parts only."
  if command -v nvcc >/dev/null; then
    run_step compile-evidence "$PY" -m benchmarks.sass_evidence --out "$OUT_DIR/sm90a-compile"
  else
    echo "!! nvcc not found: no compile evidence"; SUMMARY+=("compile-evidence: not run (no nvcc)")
  fi
  run_step cpu-tests "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_sp24_decode_model.py \
    tests/kernels/test_sparse24_mma_layout.py tests/kernels/test_sp24_decode_cuda.py tests/benchmarks/test_kernel_table.py
  run_step kernels-smoke "$PY" -m benchmarks kernels --quick --ops matmul --results-dir "$RESULTS" --write-table "$OUT_DIR/sparse24_matmul.json"
  echo "== summary (CPU dry run: no GPU number was measured)"
  printf '  %s\n' "${SUMMARY[@]}"
}

{
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), out $OUT_DIR"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  cpu_only
  exit 0
fi

if step env; then
  {
    echo "command: bash benchmarks/gpu_check.sh $*"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed files"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || true
    "$PY" -c "import torch, triton; p = torch.cuda.get_device_properties(0); print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__, '|', p.name, 'cc', torch.cuda.get_device_capability(), 'SMs', p.multi_processor_count, 'L2 MiB', getattr(p, 'L2_cache_size', 0) >> 20)"
    nvcc --version 2>/dev/null | tail -2 || echo "nvcc: not found"
  } 2>&1 | tee "$OUT_DIR/environment.txt"
fi

ARCH=$("$PY" -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}' + ('a' if (a, b) == (9, 0) else ''))")
if step build; then
  export SPARSEKIT_CUDA_ARCHS=$ARCH MAX_JOBS=${MAX_JOBS:-16}
  run_step build "$PY" setup.py build_ext --inplace >"$OUT_DIR/build.log" 2>&1
  echo "${SUMMARY[-1]}"; tail -3 "$OUT_DIR/build.log"
  "$PY" -c "import sparsekit._C as c, torch; print('sparsekit._C:', c.__file__, '| ops:', torch.ops.sparsekit.sp24_linear)" \
    || echo "!! sparsekit._C does not load: the cuda provider rows will say why"
fi

if step test; then
  # shellcheck disable=SC2086
  export SPARSEKIT_REQUIRE_CUDA_EXT=1 SPARSEKIT_JIT_BUILD=0
  run_step test "$PY" -m pytest -q -p no:cacheprovider \
    --junitxml="$OUT_DIR/pytest.xml" $TESTS >"$OUT_DIR/pytest.log" 2>&1
  echo "${SUMMARY[-1]}"; tail -15 "$OUT_DIR/pytest.log"
fi

if step kernels; then
  run_step kernels "$PY" -m benchmarks kernels --ops copy,matmul "${SWEEP[@]}" --results-dir "$RESULTS" --resume --write-table
  cp sparsekit/tuning/sparse24_matmul.json "$OUT_DIR/" 2>/dev/null || echo "!! no tuning table written"
fi

if step ops; then
  run_step kernel-ops "$PY" -m benchmarks kernels --ops wanda,select,stats,dsnot --results-dir "$RESULTS" --resume
fi

if step decode; then
  run_step decode "$PY" -m benchmarks decode "${DECODE[@]}" --results-dir "$RESULTS" --resume
fi

if step prune; then
  if [ -n "$FULL" ]; then
    run_step prune-time "$PY" -m benchmarks prune-time --models llama7b --methods magnitude,wanda,sparsegpt,dsnot \
      --nsamples 128 --seqlen 2048 --results-dir "$RESULTS" --resume
    run_step prune-time-besa "$PY" -m benchmarks prune-time --models llama7b --llama-layers 2 --methods besa \
      --nsamples 128 --seqlen 2048 --results-dir "$RESULTS" --resume
  else
    run_step prune-time "$PY" -m benchmarks prune-time --models llama7b --llama-layers 2 --methods wanda,sparsegpt \
      --nsamples 128 --seqlen 2048 --results-dir "$RESULTS" --resume
  fi
fi

if step summary; then
  "$PY" - "$RESULTS" <<'EOF' 2>&1 | tee "$OUT_DIR/summary.txt"
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.schema import load_rows

root = Path(sys.argv[1])
for path in sorted(root.glob("*/kernels.jsonl")):
    rows = [r for r in load_rows(path) if r.case.startswith("sparse24_matmul/")]
    table = defaultdict(dict)
    for r in rows:
        shape, m = r.case.split("/")[1], int(r.case.split("M=")[1])
        table[shape][(m, r.provider)] = r
    print(f"2:4 matmul, GPU time per call (CUDA graph), x cuBLAS dense in the same run; {path}")
    for shape, cells in table.items():
        ms = sorted({m for m, _ in cells})
        providers = sorted({p for _, p in cells if p != "dense"})
        print(f"  {shape}: dense us " + " ".join(f"M{m}={cells[(m, 'dense')].median * 1e3:.1f}" for m in ms if (m, "dense") in cells and cells[(m, "dense")].status == "ok"))
        for p in providers:
            out = []
            for m in ms:
                r = cells.get((m, p))
                out.append(f"M{m}={r.derived.get('speedup_vs_dense', float('nan')):.2f}" if r and r.status == "ok" else f"M{m}={r.status if r else '-'}")
            host = [r.derived.get("host_us_per_call") for (m, q), r in cells.items() if q == p and r.status == "ok"]
            host = [h for h in host if h]
            print(f"    {p:10s} " + " ".join(out) + (f" | host us/call {min(host):.0f}-{max(host):.0f}" if host else ""))
for path in sorted(root.glob("*/decode.jsonl")):
    print(f"decode: {path}")
    for r in load_rows(path):
        if r.status == "ok":
            peak = r.derived.get("peak_memory_bytes")
            print(f"  {r.case} [{r.provider}] {r.median:.1f} {r.unit}" + (f", peak {peak / 1e9:.1f} GB" if peak else ""))
        else:
            print(f"  {r.case} [{r.provider}] {r.status}: {r.reason[:200]}")
EOF
  # the pruning-kernel and prune-time tables, for the steps that ran
  if step ops; then "$PY" -m benchmarks tables --print kernel-ops --results-dir "$RESULTS" 2>&1 | tee -a "$OUT_DIR/summary.txt"; fi
  if step prune; then "$PY" -m benchmarks tables --print prune-time --results-dir "$RESULTS" 2>&1 | tee -a "$OUT_DIR/summary.txt"; fi
fi
echo "== done in ${SECONDS}s${BUDGET:+ (BUDGET_S ${BUDGET})}"
printf '  %s\n' "${SUMMARY[@]}"
} 2>&1 | tee "$LOG"
