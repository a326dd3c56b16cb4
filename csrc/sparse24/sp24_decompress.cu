// sp24_decompress: the dense (N, K) weight from values (N, K/2) and torch's CUTLASS meta (N, K/16), written
// into a caller's buffer. The cublas provider decompresses into one reusable scratch buffer with it
// instead of keeping a dense copy per weight.
//
// One thread per 32-bit meta word. For 32 weight rows starting at 32 g and K columns [32 c, 32 c + 32),
// word w (0..31) at int16 offset c * 2N + g * 64 + 2 w holds, with w = 4 i + 2 s + j: in its low half the
// row 16 s + i, in its high half the row 16 s + i + 8, K columns 32 c + 16 j + [0, 16), one nibble per group
// of 4 columns (q = 0..3, low nibble first; its 2-bit fields are the positions of the two kept values).
// That row's kept values are its compressed columns 16 c + 8 j + [0, 8).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "sparse24.h"

namespace sparsekit {
namespace {

__global__ void sp24_decompress_kernel(const uint16_t* __restrict__ values, const uint32_t* __restrict__ meta,
                                       uint16_t* __restrict__ out, int N, int K) {
  const int64_t words = static_cast<int64_t>(N) * K / 32;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < words;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t per_column = N;  // words per k32 column: N / 32 groups x 32 words
    const int c = static_cast<int>(idx / per_column);
    const int rest = static_cast<int>(idx % per_column);
    const int g = rest / 32, w = rest % 32;
    const int i = w / 4, s = (w / 2) % 2, j = w % 2;
    const uint32_t word = meta[idx];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 32 * g + 16 * s + i + 8 * h;
      const uint32_t bits = h == 0 ? (word & 0xFFFFu) : (word >> 16);
      const uint4 packed = *reinterpret_cast<const uint4*>(values + static_cast<int64_t>(row) * (K / 2) + 16 * c + 8 * j);
      // group q's 4 outputs as one 64-bit word: the two kept values shifted to their positions (no local array)
      const uint32_t kept[4] = {packed.x, packed.y, packed.z, packed.w};  // value pairs of groups 0..3
      uint32_t dense[8];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint32_t nib = (bits >> (4 * q)) & 0xFu;
        const uint64_t group = (static_cast<uint64_t>(kept[q] & 0xFFFFu) << (16 * (nib & 3u))) |
                               (static_cast<uint64_t>(kept[q] >> 16) << (16 * (nib >> 2)));
        dense[2 * q] = static_cast<uint32_t>(group);
        dense[2 * q + 1] = static_cast<uint32_t>(group >> 32);
      }
      const uint4 lo = make_uint4(dense[0], dense[1], dense[2], dense[3]);
      const uint4 hi = make_uint4(dense[4], dense[5], dense[6], dense[7]);
      uint4* dst = reinterpret_cast<uint4*>(out + static_cast<int64_t>(row) * K + 32 * c + 16 * j);
      dst[0] = lo;
      dst[1] = hi;
    }
  }
}

}  // namespace

cudaError_t run_sp24_decompress(const void* values, const int16_t* meta, void* out, int N, int K, int num_sms,
                                cudaStream_t stream) {
  if (N == 0 || K == 0) return cudaSuccess;
  if (N % 32 != 0 || K % 32 != 0) return cudaErrorInvalidValue;
  const int64_t words = static_cast<int64_t>(N) * K / 32;
  const int threads = 256;
  const int64_t blocks = (words + threads - 1) / threads;
  const int grid = static_cast<int>(blocks < 8LL * num_sms ? blocks : 8LL * num_sms);
  sp24_decompress_kernel<<<grid, threads, 0, stream>>>(static_cast<const uint16_t*>(values),
                                                       reinterpret_cast<const uint32_t*>(meta),
                                                       static_cast<uint16_t*>(out), N, K);
  return cudaGetLastError();
}

}  // namespace sparsekit
