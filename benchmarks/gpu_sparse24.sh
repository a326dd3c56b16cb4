#!/usr/bin/env bash
# The 2:4 kernel work's GPU session in one command (repository root, CUDA machine):
#   1. build sparsekit._C (csrc/) for the visible GPU (sm_90a on H100/H200) and show its resource usage,
#   2. run the 2:4 kernel and format tests natively (CUDA extension required),
#   3. tune the sparse24_matmul dispatcher and benchmark triton / cuda / cusparselt / cublas / dense
#      (benchmarks/tune_sparse24.py), writing the table and one JSON row per measurement.
#
#   bash benchmarks/gpu_sparse24.sh [OUT_DIR]        (default: $OUT if set, else benchmarks/results/sparse24)
#   SHAPES=4096x4096 MS=1,16,64 STEPS=build,test,tune bash benchmarks/gpu_sparse24.sh   (a subset)
#
# Writes into OUT_DIR: gpu_sparse24.log, build.log, ptxas.txt, pytest.log, sparse24_kernels.jsonl and
# sparse24_matmul.json (the dispatcher table: copy it to sparsekit/tuning/ to ship it). Budget on an H100:
# build ~2 min, tests ~2 min, full tuning ~5 min; run the steps in two calls if one would exceed 10 min.
set -uo pipefail
OUT_DIR=${1:-${OUT:-benchmarks/results/sparse24}}
PY=${PYTHON:-python3}
STEPS=${STEPS:-build,test,tune}
SHAPES=${SHAPES:-4096x4096,11008x4096,4096x11008,14336x4096}
MS=${MS:-1,2,4,8,16,32,64,128,256,512,1024,2048,4096}
DTYPES=${DTYPES:-bfloat16}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
step() { [[ ",$STEPS," == *",$1,"* ]]; }

{
echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__, '|', torch.cuda.get_device_name(), 'cc', torch.cuda.get_device_capability(), 'SMs', torch.cuda.get_device_properties(0).multi_processor_count)"
nvcc --version | tail -2
ARCH=$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}' + ('a' if (a, b) == (9, 0) else ''))")
echo "arch: sm_$ARCH"

if step build; then
  echo "== build sparsekit._C for sm_$ARCH"
  start=$(date +%s)
  SPARSEKIT_CUDA_ARCHS=$ARCH MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT_DIR/build.log" 2>&1
  echo "pip install -e . rc=$? ($(( $(date +%s) - start )) s)"
  if ! $PY -c "import sparsekit._C" 2>/dev/null; then
    echo "sparsekit._C not importable after pip install -e; building in place"
    SPARSEKIT_CUDA_ARCHS=$ARCH $PY setup.py build_ext --inplace >>"$OUT_DIR/build.log" 2>&1
    echo "build_ext --inplace rc=$?"
  fi
  tail -3 "$OUT_DIR/build.log"
  $PY -c "import sparsekit._C as c; print('loaded', c.__file__)" || echo "WARNING: sparsekit._C does not load; the cuda provider will JIT-build or be skipped"
  # registers / shared memory / spills of the mma.sp kernel for this arch
  nvcc -std=c++17 -O3 -gencode "arch=compute_$ARCH,code=sm_$ARCH" -Xptxas -v -c csrc/sparse24/sparse24_mma.cu -o /tmp/sparse24_mma.o >"$OUT_DIR/ptxas.txt" 2>&1
  grep -E "registers|spill" "$OUT_DIR/ptxas.txt" | sort | uniq -c
  cuobjdump -sass /tmp/sparse24_mma.o 2>/dev/null | grep -oE "HMMA[.A-Z0-9]*|LDSM[.A-Z0-9]*|LDGSTS[.A-Z0-9]*|LDL|STL" | sort | uniq -c
fi

if step test; then
  echo "== tests (native)"
  # Heuristic Triton configs here: the tuning step below runs and checks the autotuned ones at real shapes.
  SPARSEKIT_REQUIRE_CUDA_EXT=1 SPARSEKIT_TRITON_AUTOTUNE=0 $PY -m pytest -q -p no:cacheprovider \
    tests/kernels/test_sparse24_matmul.py tests/ops/test_sparse24_format.py tests/benchmarks/test_tune_sparse24.py \
    >"$OUT_DIR/pytest.log" 2>&1
  echo "pytest rc=$?"
  tail -15 "$OUT_DIR/pytest.log"
fi

if step tune; then
  echo "== tune + benchmark: shapes $SHAPES, M $MS, $DTYPES"
  $PY -m benchmarks.tune_sparse24 --shapes "$SHAPES" --ms "$MS" --dtypes "$DTYPES" \
    --table sparsekit/tuning/sparse24_matmul.json --jsonl "$OUT_DIR/sparse24_kernels.jsonl"
  echo "tune rc=$?"
  cp sparsekit/tuning/sparse24_matmul.json "$OUT_DIR/" 2>/dev/null || true
fi
} 2>&1 | tee "$OUT_DIR/gpu_sparse24.log"
