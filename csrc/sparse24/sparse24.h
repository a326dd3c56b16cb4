// 2:4 sparse x dense matmul on sparse tensor cores (mma.sp, sm_80+): the host-side interface.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace sparsekit {

enum class Sparse24Dtype { kFloat16, kBFloat16 };

// out (M, N) = x (M, K) @ W^T (+ bias), W (N, K) 2:4 along K in torch's CUTLASS format:
// values (N, K/2) row-major, meta int16 (N, K/16) in CUTLASS's reordered layout (read as is).
// Requirements (checked by the bindings): N % 32 == 0, K % 64 == 0, x rows 16-byte aligned with unit
// column stride, values/meta/out contiguous, every pointer 16-byte aligned except bias.
struct Sparse24MmParams {
  const void* x;
  int64_t x_row_stride;  // elements
  const void* values;
  const int16_t* meta;
  const void* bias;  // nullptr: no bias
  void* out;         // (M, N) contiguous
  int M, N, K;
  Sparse24Dtype dtype;
  int num_sms;
};

// Launches on `stream`; returns the launch status (the caller turns it into an exception).
cudaError_t run_sparse24_mm(const Sparse24MmParams& params, cudaStream_t stream);

}  // namespace sparsekit
