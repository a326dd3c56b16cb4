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
  int device;  // CUDA device index (per-device one-time kernel attributes)
  const int32_t* perm = nullptr;  // (K,) input permutation, 16-byte aligned: out = x[:, perm] @ W^T; nullptr: none
};

// Launches on `stream`; returns the launch status (the caller turns it into an exception).
cudaError_t run_sparse24_mm(const Sparse24MmParams& params, cudaStream_t stream);

// ---- sp24_decode: the few-token (M <= 64) kernel, persistent and stream-K (sp24_decode.cu) ----

constexpr int kSp24DecodeMaxM = 64;

// Same operands as Sparse24MmParams (N % 32 == 0, K % 32 == 0; M <= kSp24DecodeMaxM), plus a workspace
// of at least sp24_decode_workspace_bytes(num_sms) bytes whose first sp24_decode_flag_bytes(num_sms) bytes
// are zero before the first call. Every call leaves them zero again (CUDA-graph replay safe). One
// workspace per stream: two calls running at once must not share one.
struct Sp24DecodeParams {
  const void* x;
  int64_t x_row_stride;  // elements
  const void* values;
  const int16_t* meta;
  const void* bias;  // nullptr: no bias
  void* out;         // (M, N) contiguous
  int M, N, K;
  Sparse24Dtype dtype;
  int num_sms;              // persistent grid size: min(num_sms, work units)
  int max_smem_optin;       // cudaDevAttrMaxSharedMemoryPerBlockOptin of the device
  int device;
  void* workspace;
  int64_t workspace_bytes;
  int rows;    // weight rows per CTA tile: 128 or 256; 0 chooses by M
  int stages;  // pipeline stages 2..8; 0 chooses by the shared memory and the bytes-in-flight target
  const int32_t* perm = nullptr;  // (K,) input permutation, 16-byte aligned: out = x[:, perm] @ W^T; nullptr: none
};

int64_t sp24_decode_flag_bytes(int num_sms);
int64_t sp24_decode_workspace_bytes(int num_sms);

// Launches on `stream`; returns the launch status. cudaErrorInvalidValue when the parameters are out of range.
cudaError_t run_sp24_decode(const Sp24DecodeParams& params, cudaStream_t stream);

// ---- sp24_decompress: the dense (N, K) weight into `out` (N, K) contiguous (sp24_decompress.cu) ----
// 16-bit values; N % 32 == 0, K % 32 == 0; values, meta and out 16-byte aligned.
cudaError_t run_sp24_decompress(const void* values, const int16_t* meta, void* out, int N, int K, int num_sms,
                                cudaStream_t stream);

}  // namespace sparsekit
