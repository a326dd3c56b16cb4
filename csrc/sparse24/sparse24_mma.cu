// 2:4 sparse GEMM on sparse tensor cores for the compute-bound regime (many tokens):
//   out[m, n] = sum_k x[m, k] W[n, k] (+ bias[n]),  W (N, K) 2:4 along K.
//
// The weight is the sparse A operand of mma.sp.m16n8k32 (rows n = the MMA's M dimension), x^T is the dense
// B operand (tokens = the MMA's N dimension): outT = W @ x^T, the same orientation torch's CUTLASS path uses.
//
// Metadata. torch's CUTLASS meta (N, K/16) int16 is already the mma.sp register layout: for 32 weight rows
// starting at 32*g and K columns [32*c, 32*c+32), the 64 int16 stored at flat offset c*2N + g*64 are, read
// as 32 int32 words, exactly the metadata registers of lanes 0..31 (word `lane` = rows {r, r+8} of one
// 16-wide K half; lanes 4i+0/1 serve the first m16 tile of the group with sparsity selector 0, lanes
// 4i+2/3 the second with selector 1). So one coalesced 128-byte load per (32 rows x 32 K) feeds two
// mma.sp, with no conversion.
//
// Tiling: CTA tile BN weight rows x BM tokens, K in steps of 64 through a STAGES-deep cp.async pipeline
// (values, x and meta tiles in shared memory, rows padded by 16 bytes so ldmatrix is conflict-free).
// Warps split the tile WARPS_N x WARPS_M; each warp owns (BN/WARPS_N) x (BM/WARPS_M) and issues
// (BN/WARPS_N/16) x (BM/WARPS_M/8) mma.sp per 32 of K. The epilogue adds the bias in fp32, converts, and
// stages the tile through shared memory for 16-byte coalesced stores.
//
// Input permutation (kPerm): out = x[:, perm] @ W^T, the weight stored in permuted column order. A permutation
// scatters single 2-byte columns, which cp.async (4/8/16-byte runs) cannot gather, so load_stage reads the
// x tile with 2-byte loads through perm (8 per 16-byte chunk, perm itself as two 16-byte L1-cached loads)
// and writes it to shared memory with one 16-byte store; the __syncthreads that publishes each stage covers
// these generic stores. Cost: BM x 64 two-byte loads per stage (32 per thread for the 128 x 128 tile) that
// are synchronous in load_stage, against the 4 KB of values the stage streams; no separate pass over x.
//
// This is the sm_80 instruction; on sm_90 it runs on Hopper's tensor cores at the legacy (mma.sync) rate.
// A wgmma.sp (sm_90a) version is not written yet.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "mma_sp.cuh"
#include "sparse24.h"

namespace sparsekit {
namespace {

constexpr int kMaxDevices = 64;
constexpr int kBK = 64;              // dense K per pipeline stage
constexpr int kVStride = kBK / 2 + 8;  // elements per shared row of values: 80 bytes
constexpr int kXStride = kBK + 8;      // elements per shared row of x: 144 bytes
constexpr uint32_t kPadMeta = 0x44444444u;  // nibble 0b0100 (keep columns 0, 1): a valid code for padded rows

using ptx::cp_async_16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldmatrix_x4;
using ptx::Mma;
using ptx::smem_addr;

template <int BN_, int BM_, int WARPS_N_, int WARPS_M_, int STAGES_>
struct TileConfig {
  static constexpr int BN = BN_, BM = BM_, WARPS_N = WARPS_N_, WARPS_M = WARPS_M_, STAGES = STAGES_;
  static constexpr int kThreads = WARPS_N * WARPS_M * 32;
  static constexpr int kWarpN = BN / WARPS_N;  // weight rows per warp
  static constexpr int kWarpM = BM / WARPS_M;  // tokens per warp
  static constexpr int kMTiles = kWarpN / 16;  // m16 tiles per warp (weight rows)
  static constexpr int kNTiles = kWarpM / 8;   // n8 tiles per warp (tokens)
  static constexpr int kGroups = BN / 32;      // 32-row metadata groups per CTA tile
  static constexpr int kValuesBytes = BN * kVStride * 2;
  static constexpr int kXBytes = BM * kXStride * 2;
  static constexpr int kMetaBytes = (kBK / 32) * kGroups * 128;
  static constexpr int kStageBytes = kValuesBytes + kXBytes + kMetaBytes;
  static constexpr int kOutStride = BN + 8;  // elements per shared row of the output tile
  static constexpr int kOutBytes = BM * kOutStride * 2;
  static constexpr int kSmemBytes = STAGES * kStageBytes > kOutBytes ? STAGES * kStageBytes : kOutBytes;
  static_assert(kWarpN % 32 == 0, "each warp must own whole 32-row metadata groups");
  static_assert(kWarpM % 8 == 0, "each warp must own whole n8 token tiles");
  static_assert(kValuesBytes % 16 == 0 && kXBytes % 16 == 0, "shared regions must stay 16-byte aligned");
  static_assert(STAGES >= 2, "the pipeline needs at least two stages");
};

// 16 bytes of row `xr` at the 8 columns perm[k .. k + 8) (k a multiple of 8, perm 16-byte aligned).
__device__ __forceinline__ uint4 gather_x8(const void* xr, const int32_t* __restrict__ perm8) {
  const uint16_t* row = static_cast<const uint16_t*>(xr);
  const int4 c0 = __ldg(reinterpret_cast<const int4*>(perm8));
  const int4 c1 = __ldg(reinterpret_cast<const int4*>(perm8) + 1);
  const uint32_t h0 = __ldg(row + c0.x), h1 = __ldg(row + c0.y), h2 = __ldg(row + c0.z), h3 = __ldg(row + c0.w),
                 h4 = __ldg(row + c1.x), h5 = __ldg(row + c1.y), h6 = __ldg(row + c1.z), h7 = __ldg(row + c1.w);
  return make_uint4(h0 | (h1 << 16), h2 | (h3 << 16), h4 | (h5 << 16), h6 | (h7 << 16));
}

template <typename T, typename Cfg, bool kPerm>
__global__ void __launch_bounds__(Cfg::kThreads)
sparse24_mm_kernel(const T* __restrict__ x, int64_t x_row_stride, const T* __restrict__ values,
                   const int16_t* __restrict__ meta, const T* __restrict__ bias, T* __restrict__ out,
                   int M, int N, int K, const int32_t* __restrict__ perm) {
  constexpr int BN = Cfg::BN, BM = Cfg::BM, STAGES = Cfg::STAGES, kThreads = Cfg::kThreads;
  constexpr int kGroups = Cfg::kGroups;
  extern __shared__ __align__(16) unsigned char smem[];

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int warp_n = warp / Cfg::WARPS_M;
  const int warp_m = warp % Cfg::WARPS_M;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const int64_t half_k = K / 2;
  const int k_tiles = K / kBK;

  auto values_tile = [&](int s) { return reinterpret_cast<T*>(smem + s * Cfg::kStageBytes); };
  auto x_tile = [&](int s) { return reinterpret_cast<T*>(smem + s * Cfg::kStageBytes + Cfg::kValuesBytes); };
  auto meta_tile = [&](int s) {
    return reinterpret_cast<int16_t*>(smem + s * Cfg::kStageBytes + Cfg::kValuesBytes + Cfg::kXBytes);
  };

  auto load_stage = [&](int s, int kt) {
    const int k0 = kt * kBK;
    T* vs = values_tile(s);
    T* xs = x_tile(s);
    int16_t* ms = meta_tile(s);
    // values: BN rows x 64 bytes (4 chunks of 16 bytes)
    for (int i = tid; i < BN * 4; i += kThreads) {
      const int row = i / 4, chunk = i % 4;
      const bool ok = n0 + row < N;
      const T* src = values + (ok ? (n0 + row) * half_k + k0 / 2 + chunk * 8 : 0);
      cp_async_16(smem_addr(vs + row * kVStride + chunk * 8), src, ok);
    }
    // x: BM token rows x 128 bytes (8 chunks); rows past M are zero-filled
    for (int i = tid; i < BM * 8; i += kThreads) {
      const int row = i / 8, chunk = i % 8;
      const bool ok = m0 + row < M;
      if constexpr (kPerm) {
        *reinterpret_cast<uint4*>(xs + row * kXStride + chunk * 8) =
            ok ? gather_x8(x + (m0 + row) * x_row_stride, perm + k0 + chunk * 8) : make_uint4(0, 0, 0, 0);
      } else {
        const T* src = x + (ok ? (m0 + row) * x_row_stride + k0 + chunk * 8 : 0);
        cp_async_16(smem_addr(xs + row * kXStride + chunk * 8), src, ok);
      }
    }
    // meta: for each of the 2 K halves of 32 and each 32-row group, 128 contiguous bytes
    for (int i = tid; i < (kBK / 32) * kGroups * 8; i += kThreads) {
      const int half = i / (kGroups * 8), group = (i / 8) % kGroups, chunk = i % 8;
      int16_t* dst = ms + (half * kGroups + group) * 64 + chunk * 8;
      if (n0 + group * 32 < N) {
        const int16_t* src = meta + (int64_t)(k0 / 32 + half) * 2 * N + (int64_t)((n0 / 32) + group) * 64 + chunk * 8;
        cp_async_16(smem_addr(dst), src, true);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(kPadMeta, kPadMeta, kPadMeta, kPadMeta);
      }
    }
  };

  float acc[Cfg::kMTiles][Cfg::kNTiles][4];
#pragma unroll
  for (int i = 0; i < Cfg::kMTiles; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::kNTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 2>();  // stage kt has landed (this thread's copies) ...
    __syncthreads();              // ... and everyone's; the slot refilled below was consumed at kt-1
    const int next = kt + STAGES - 1;
    if (next < k_tiles) load_stage(next % STAGES, next);
    cp_async_commit();

    const T* vs = values_tile(kt % STAGES);
    const T* xs = x_tile(kt % STAGES);
    const uint32_t* ms = reinterpret_cast<const uint32_t*>(meta_tile(kt % STAGES));
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {
      uint32_t a[Cfg::kMTiles][4];
      uint32_t b[Cfg::kNTiles][4];
      uint32_t e[Cfg::kMTiles / 2];
#pragma unroll
      for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
        // 16 rows x 16 compressed columns: matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15) = a0, a1, a2, a3
        const int row = warp_n * Cfg::kWarpN + mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int col = kk * 16 + (lane / 16) * 8;
        ldmatrix_x4(a[mt], smem_addr(vs + row * kVStride + col));
      }
#pragma unroll
      for (int g = 0; g < Cfg::kMTiles / 2; ++g) {
        const int group = warp_n * (Cfg::kWarpN / 32) + g;
        e[g] = ms[(kk * kGroups + group) * 32 + lane];
      }
#pragma unroll
      for (int nt = 0; nt < Cfg::kNTiles; ++nt) {
        // 8 tokens x 32 K: matrices at K offsets 0, 8, 16, 24 = b0, b1, b2, b3
        const int row = warp_m * Cfg::kWarpM + nt * 8 + (lane % 8);
        const int col = kk * 32 + (lane / 8) * 8;
        ldmatrix_x4(b[nt], smem_addr(xs + row * kXStride + col));
      }
#pragma unroll
      for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < Cfg::kNTiles; ++nt) {
          if (mt % 2 == 0)
            Mma<T>::template sparse<0>(acc[mt][nt], a[mt], b[nt], e[mt / 2]);
          else
            Mma<T>::template sparse<1>(acc[mt][nt], a[mt], b[nt], e[mt / 2]);
        }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline buffers become the output tile

  // Accumulator of an m16n8 tile: c0, c1 at (row g, tokens 2t, 2t+1), c2, c3 at (row g+8, same tokens).
  T* out_tile = reinterpret_cast<T*>(smem);
#pragma unroll
  for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int nl = warp_n * Cfg::kWarpN + mt * 16 + lane / 4 + h * 8;
      const float b_n = (bias != nullptr && n0 + nl < N) ? Mma<T>::to_float(bias[n0 + nl]) : 0.f;
#pragma unroll
      for (int nt = 0; nt < Cfg::kNTiles; ++nt) {
        const int ml = warp_m * Cfg::kWarpM + nt * 8 + (lane % 4) * 2;
        out_tile[ml * Cfg::kOutStride + nl] = Mma<T>::from_float(acc[mt][nt][2 * h] + b_n);
        out_tile[(ml + 1) * Cfg::kOutStride + nl] = Mma<T>::from_float(acc[mt][nt][2 * h + 1] + b_n);
      }
    }
  __syncthreads();
  for (int i = tid; i < BM * (BN / 8); i += kThreads) {
    const int row = i / (BN / 8), chunk = i % (BN / 8);
    const int m = m0 + row, n = n0 + chunk * 8;
    if (m < M && n < N) {
      *reinterpret_cast<uint4*>(out + (int64_t)m * N + n) =
          *reinterpret_cast<const uint4*>(out_tile + row * Cfg::kOutStride + chunk * 8);
    }
  }
}

template <typename T, typename Cfg, bool kPerm>
cudaError_t launch_kernel(const Sparse24MmParams& p, cudaStream_t stream) {
  auto kernel = sparse24_mm_kernel<T, Cfg, kPerm>;
  // The shared-memory opt-in is per device; set it once per device, not on every call.
  static bool opted_in[kMaxDevices] = {};
  if (p.device < 0 || p.device >= kMaxDevices || !opted_in[p.device]) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
    if (p.device >= 0 && p.device < kMaxDevices) opted_in[p.device] = true;
  }
  const dim3 grid((p.N + Cfg::BN - 1) / Cfg::BN, (p.M + Cfg::BM - 1) / Cfg::BM);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(
      static_cast<const T*>(p.x), p.x_row_stride, static_cast<const T*>(p.values), p.meta,
      static_cast<const T*>(p.bias), static_cast<T*>(p.out), p.M, p.N, p.K, p.perm);
  return cudaGetLastError();
}

template <typename T, typename Cfg>
cudaError_t launch(const Sparse24MmParams& p, cudaStream_t stream) {
  if (p.perm != nullptr) return launch_kernel<T, Cfg, true>(p, stream);
  return launch_kernel<T, Cfg, false>(p, stream);
}

// 128 weight rows x 128 tokens, 8 warps as 2 x 4 (warp tile 64 x 32), 4 stages: 116 KB of shared memory.
using LargeTile = TileConfig<128, 128, 2, 4, 4>;
// 128 x 64 for fewer tokens, so that the grid still covers the SMs: 8 warps as 4 x 2 (32 x 32), 80 KB.
using SmallTile = TileConfig<128, 64, 4, 2, 4>;
// 64 x 64 when even that leaves SMs idle (e.g. N = 4096 at M = 128: 64 CTAs of 128 x 64, 128 of 64 x 64):
// 8 warps as 2 x 4 (32 x 16), 59 KB.
using NarrowTile = TileConfig<64, 64, 2, 4, 4>;

template <typename T>
cudaError_t dispatch_tile(const Sparse24MmParams& p, cudaStream_t stream) {
  auto ctas = [&p](int bn, int bm) { return static_cast<int64_t>((p.N + bn - 1) / bn) * ((p.M + bm - 1) / bm); };
  if (ctas(128, 128) >= p.num_sms) return launch<T, LargeTile>(p, stream);
  if (ctas(128, 64) >= p.num_sms) return launch<T, SmallTile>(p, stream);
  return launch<T, NarrowTile>(p, stream);
}

}  // namespace

cudaError_t run_sparse24_mm(const Sparse24MmParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.dtype == Sparse24Dtype::kBFloat16) return dispatch_tile<__nv_bfloat16>(p, stream);
  return dispatch_tile<__half>(p, stream);
}

}  // namespace sparsekit
