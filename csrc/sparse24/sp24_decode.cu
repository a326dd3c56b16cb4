// sp24_decode: out (M, N) = x (M, K) @ W^T (+ bias) for few tokens (M <= 64), W (N, K) 2:4 along K in
// sparsekit's format (values (N, K/2), torch's CUTLASS meta (N, K/16) read as stored).
//
// At M <= 64 the product is bound by streaming the weight (1.125 NK bytes), so everything here serves the
// memory system and keeps the instruction count per weight byte low:
//
// * Instruction: mma.sp.m16n8k32 (f32 accumulation), weight rows as the sparse A operand, tokens padded to
//   n8 (NT n8 tiles, NT = 1, 2, 4, 8 for M <= 8, 16, 32, 64). One mma.sp consumes 512 B of values and 64 B
//   of meta; per 32 rows x 32 K a warp issues 2 ldmatrix.x4 (A), one 32-bit shared load (meta: torch's
//   CUTLASS layout is the mma.sp register layout, one word per lane), NT ldmatrix.x4 (B) and 2 NT mma.sp.
// * Work: the weight is cut into tiles of R rows (R = 128 or 256) and each tile into chunks of 128 K
//   (one pipeline stage). The tiles x chunks work units, tile-major, are split evenly over a persistent
//   grid of min(#SMs, units) CTAs (striped / stream-K): CTA b owns units [b U / G, (b + 1) U / G).
// * Pipeline: two producer warps issue 16-byte cp.async.cg for a stage (values and meta with an L2
//   evict_first policy, x evict_last) and arrives on the stage's "full" mbarrier when they land
//   (cp.async.mbarrier.arrive.noinc, 64 arrivals); R / 32 consumer warps wait on it, compute, and arrive on the stage's
//   "empty" mbarrier. No CTA-wide barrier (bar.sync) in the loop: only mbarrier waits and __syncwarp.
//   Shared tiles are XOR-swizzled per 16-byte chunk (chunk ^ (row & 7)) so ldmatrix is conflict-free.
// * Split reduction, deterministic, no float atomics, no waiting: a tile split over CTAs o..l (o holds its
//   chunk 0) is reduced by whichever of them arrives last. Each writes its fp32 partial (per consumer warp,
//   fragment order, coalesced) to its own workspace slot (slot 0: the first segment of its range, slot 1:
//   the last; a CTA has at most one of each), then atomicAdd's the integer counter of (o, warp); the one
//   that sees l - o earlier arrivals adds the partials of o, o+1, ..., l in that order (the same sum
//   whoever is last), resets the counter to 0 (the workspace is clean after every call: CUDA-graph replay
//   safe), adds the bias and stores. A CTA owns (holds chunk 0 of) at most one split tile, so counters are
//   indexed by owner CTA. Nobody spins on another CTA, so nothing assumes the grid is co-resident.
//
// * Input permutation (kPerm, issue 13 part 3): out = x[:, perm] @ W^T for a weight stored in permuted column
//   order. cp.async moves only contiguous 4/8/16-byte runs and a permutation scatters single 2-byte columns,
//   so the producer lanes gather x instead: each lane reads the 8 perm entries of its 16-byte chunk (two
//   16-byte loads, L1-cached: every tile re-reads them), then per token row 8 two-byte loads x[row, perm[k]]
//   (x is re-read per tile, from L2/L1), packs them and stores 16 bytes to the same swizzled slot the cp.async
//   would fill. Those are generic stores, so each producer lane also arrives (release) on the stage's full
//   barrier after them (count 2 x 64 instead of 64); the consumers' acquire wait sees them. Cost per stage and
//   token row: 128 two-byte loads + 512 B of perm (L1) against the 32 KB (R = 256) of values and meta the
//   stage streams; the loads are synchronous in the producer warps, whose latency the stage pipeline hides.
//   No separate permute pass, no workspace.
//
// sm_80 and newer (sm_90 uses mbarrier.try_wait). A TMA / wgmma.sp path and programmatic dependent launch
// are not written.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "mma_sp.cuh"
#include "sparse24.h"

namespace sparsekit {
namespace {

using namespace ptx;

constexpr int kKC = 128;                    // dense K per stage
constexpr int kSteps = kKC / 32;            // mma.sp k32 steps per stage
constexpr int kValueRowBytes = kKC;         // KC / 2 compressed 16-bit values per weight row
constexpr int kXRowBytes = kKC * 2;         // KC 16-bit x values per token
constexpr int kMaxStages = 8;
constexpr int kMaxConsumerWarps = 8;        // each consumer warp owns 32 weight rows
constexpr int kMaxFrag = 2 * 8 * 4 * 32;    // floats of one warp's partial at NT = 8
constexpr int kHeaderBytes = 128;           // full[kMaxStages] and empty[kMaxStages] mbarriers
constexpr int kInflightTarget = 144 * 1024; // bytes of stages to keep in flight per SM (auto stages)
constexpr int kMaxDevices = 64;
constexpr int kProducerWarps = 2;          // split the stage's copies so one warp's issue rate is not the limit

// Metadata for rows or K past the weight: nibble 0b0100 keeps columns 0 and 1 (a valid code; values are 0).
__device__ __align__(16) uint32_t g_pad_meta[4] = {0x44444444u, 0x44444444u, 0x44444444u, 0x44444444u};

template <int NT, int CW>
struct DecodeTile {
  static constexpr int kRows = CW * 32;
  static constexpr int kMPad = NT * 8;
  static constexpr int kValuesBytes = kRows * kValueRowBytes;
  static constexpr int kMetaBytes = kSteps * kRows * 4;
  static constexpr int kXBytes = kMPad * kXRowBytes;
  static constexpr int kStageBytes = kValuesBytes + kMetaBytes + kXBytes;
  static constexpr int kFrag = 2 * NT * 4 * 32;  // floats per consumer warp partial
  static constexpr int kThreads = (CW + kProducerWarps) * 32;
  static_assert(kStageBytes % 128 == 0, "stages must stay 128-byte aligned");
  static_assert(kRows % 64 == 0, "the producer warps split R / 32 meta chunks in two");
  static_assert(kFrag <= kMaxFrag && CW <= kMaxConsumerWarps, "workspace slots are sized for NT <= 8, CW <= 8");
};

__device__ __forceinline__ uint32_t full_bar(uint32_t base, int slot) { return base + 8 * slot; }
__device__ __forceinline__ uint32_t empty_bar(uint32_t base, int slot) { return base + 8 * (kMaxStages + slot); }

// The CTA whose range [b U / G, (b + 1) U / G) holds unit u.
__device__ __forceinline__ int cta_of(int64_t u, int64_t units, int grid) {
  return static_cast<int>(((u + 1) * grid + units - 1) / units - 1);
}

// Epilogue of one consumer warp: bias in fp32, convert, store. Fragment c0, c1 = (row g, tokens 2t, 2t+1),
// c2, c3 = (row g + 8, same tokens) of each m16 x n8 tile; rows from row0 (the warp's first row).
template <typename T, int NT>
__device__ __forceinline__ void store_tile(const float (&acc)[2][NT][4], T* __restrict__ out, const T* __restrict__ bias,
                                           int row0, int lane, int M, int N) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + mt * 16 + (lane >> 2) + h * 8;
      if (row < N) {
        const float bias_v = bias != nullptr ? Mma<T>::to_float(bias[row]) : 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int tok = nt * 8 + (lane & 3) * 2;
          if (tok < M) out[static_cast<int64_t>(tok) * N + row] = Mma<T>::from_float(acc[mt][nt][2 * h] + bias_v);
          if (tok + 1 < M) out[static_cast<int64_t>(tok + 1) * N + row] = Mma<T>::from_float(acc[mt][nt][2 * h + 1] + bias_v);
        }
      }
    }
}

// 16 bytes of row `xr` at the 8 columns perm[k .. k + 8) (k a multiple of 8, perm 16-byte aligned).
template <typename T>
__device__ __forceinline__ uint4 gather_x8(const T* __restrict__ xr, const int4 (&cols)[2]) {
  const uint16_t* row = reinterpret_cast<const uint16_t*>(xr);
  const uint32_t h0 = __ldg(row + cols[0].x), h1 = __ldg(row + cols[0].y), h2 = __ldg(row + cols[0].z),
                 h3 = __ldg(row + cols[0].w), h4 = __ldg(row + cols[1].x), h5 = __ldg(row + cols[1].y),
                 h6 = __ldg(row + cols[1].z), h7 = __ldg(row + cols[1].w);
  return make_uint4(h0 | (h1 << 16), h2 | (h3 << 16), h4 | (h5 << 16), h6 | (h7 << 16));
}

template <typename T, int NT, int CW, bool kPerm>
__global__ void __launch_bounds__(DecodeTile<NT, CW>::kThreads, 1)
sp24_decode_kernel(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ values,
                   const int16_t* __restrict__ meta, const T* __restrict__ bias, T* __restrict__ out, int M, int N,
                   int K, int stages, int* __restrict__ counters, float* __restrict__ partials,
                   const int32_t* __restrict__ perm) {
  using Tile = DecodeTile<NT, CW>;
  constexpr int R = Tile::kRows;
  extern __shared__ __align__(128) unsigned char smem[];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int tiles = (N + R - 1) / R;
  const int chunks = (K + kKC - 1) / kKC;
  const int64_t units = static_cast<int64_t>(tiles) * chunks;
  const int grid = gridDim.x;
  const int b = blockIdx.x;
  const int64_t u0 = static_cast<int64_t>(b) * units / grid;
  const int64_t u1 = static_cast<int64_t>(b + 1) * units / grid;

  const uint32_t bars = smem_addr(smem);
  unsigned char* stage0 = smem + kHeaderBytes;
  const uint32_t stage0_addr = smem_addr(stage0);

  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      mbar_init(full_bar(bars, s), (kPerm ? 2 : 1) * 32 * kProducerWarps);  // every producer lane (twice: gather)
      mbar_init(empty_bar(bars, s), CW); // lane 0 of every consumer warp
    }
  }
  // Token rows [M, 8 NT) of every x slot are zero for the whole kernel: the producer never writes them.
  const int pad_rows = Tile::kMPad - M;
  for (int i = threadIdx.x; i < stages * pad_rows * (kXRowBytes / 16); i += blockDim.x) {
    const int s = i / (pad_rows * (kXRowBytes / 16));
    const int rest = i % (pad_rows * (kXRowBytes / 16));
    unsigned char* row = stage0 + s * Tile::kStageBytes + Tile::kValuesBytes + Tile::kMetaBytes + (M + rest / 16) * kXRowBytes;
    *reinterpret_cast<uint4*>(row + (rest % 16) * 16) = make_uint4(0, 0, 0, 0);
  }
  __syncthreads();  // barriers initialised, padding zeroed; the only CTA-wide barrier

  if (warp >= CW) {
    // ------------------------------------------------------------------ producer warps
    // Producer warp pw copies the even (pw = 0) or odd (pw = 1) j of every loop below.
    const uint64_t stream_policy = policy_evict_first();
    const uint64_t reuse_policy = policy_evict_last();
    const int64_t half_k = K / 2;
    const int k32_total = K / 32;
    // per-lane constants: values rows (lane >> 3) + 4 j (j even / odd differ in their swizzle), x rows (lane >> 4) + 2 j
    const int v_chunk = lane & 7, v_row0 = lane >> 3;
    const uint32_t v_dst_even = v_row0 * kValueRowBytes + ((v_chunk ^ v_row0) << 4);
    const uint32_t v_dst_odd = (v_row0 + 4) * kValueRowBytes + ((v_chunk ^ (v_row0 + 4)) << 4);
    const int64_t v_step = 4 * half_k;
    const int x_chunk = lane & 15, x_row0 = lane >> 4;
    const int pw = warp - CW;
    const uint32_t v_dst = pw ? v_dst_odd : v_dst_even;
    int slot = 0;
    uint32_t phase = 0;
    int t = static_cast<int>(u0 / chunks);
    int c = static_cast<int>(u0 - static_cast<int64_t>(t) * chunks);
    for (int64_t u = u0, it = 0; u < u1; ++u, ++it) {
      if (it >= stages) mbar_wait(empty_bar(bars, slot), phase ^ 1);  // consumers are done with this slot
      const uint32_t vs = stage0_addr + slot * Tile::kStageBytes;
      const uint32_t ms = vs + Tile::kValuesBytes;
      const uint32_t xs = ms + Tile::kMetaBytes;
      const int n0 = t * R;
      const int k0 = c * kKC;
      const int rows_ok = min(R, N - n0);
      {  // values: lane copies 16-byte chunk (lane & 7) of rows (lane >> 3) + 4 j: 128 B per row, coalesced
        const T* src = values + static_cast<int64_t>(n0 + v_row0 + 4 * pw) * half_k + k0 / 2 + v_chunk * 8;
        const bool k_ok = k0 / 2 + v_chunk * 8 < half_k;
        if (k_ok && rows_ok == R) {  // every stage but a tail
#pragma unroll
          for (int jj = 0; jj < R / 8; ++jj)  // j = 2 jj + pw
            cp_async_16_policy(vs + v_dst + jj * 8 * kValueRowBytes, src + jj * 2 * v_step, 16, stream_policy);
        } else {  // src-size 0 zero-fills and reads nothing, so src may point past the weight there
#pragma unroll
          for (int jj = 0; jj < R / 8; ++jj)
            cp_async_16_policy(vs + v_dst + jj * 8 * kValueRowBytes, src + jj * 2 * v_step,
                               (k_ok && v_row0 + 4 * (2 * jj + pw) < rows_ok) ? 16 : 0, stream_policy);
        }
      }
      {  // meta: per k32 step, the R / 32 groups' 128-byte words are contiguous (R * 4 bytes)
        constexpr int kSegChunks = R / 4;
        const int groups_ok = rows_ok / 32;
#pragma unroll
        for (int jj = 0; jj < R / 64; ++jj) {
          const int i = lane + 32 * (2 * jj + pw);
          const int step = i / kSegChunks;
          const int off = i % kSegChunks;
          const int k32 = c * kSteps + step;
          const bool ok = k32 < k32_total && off / 8 < groups_ok;
          const void* src = ok ? static_cast<const void*>(reinterpret_cast<const char*>(meta) +
                                                          static_cast<int64_t>(k32) * 4 * N + static_cast<int64_t>(n0) * 4 + off * 16)
                               : static_cast<const void*>(g_pad_meta);
          cp_async_16_policy(ms + step * R * 4 + off * 16, src, 16, stream_policy);
        }
      }
      if constexpr (kPerm) {  // x gathered by perm: 2-byte loads, 16-byte shared stores (see the header)
        const bool k_ok = k0 + x_chunk * 8 < K;
        int4 cols[2] = {make_int4(0, 0, 0, 0), make_int4(0, 0, 0, 0)};
        if (k_ok) {
          cols[0] = __ldg(reinterpret_cast<const int4*>(perm + k0 + x_chunk * 8));
          cols[1] = __ldg(reinterpret_cast<const int4*>(perm + k0 + x_chunk * 8) + 1);
        }
#pragma unroll
        for (int jj = 0; jj < NT * 2; ++jj) {
          const int j = 2 * jj + pw;
          if (2 * j >= M) break;
          const int row = x_row0 + 2 * j;
          const uint4 packed = (k_ok && row < M) ? gather_x8(x + row * x_stride, cols) : make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4*>(stage0 + slot * Tile::kStageBytes + Tile::kValuesBytes + Tile::kMetaBytes +
                                    row * kXRowBytes + ((x_chunk ^ (row & 7)) << 4)) = packed;
        }
        mbar_arrive(full_bar(bars, slot));  // release: the stores above are visible to the consumers' wait
      } else {  // x: token rows (lane >> 4) + 2 j, 16-byte chunk (lane & 15): 256 B per row; re-read per tile, so kept in L2
        const T* src = x + x_row0 * x_stride + k0 + x_chunk * 8;
        const bool k_ok = k0 + x_chunk * 8 < K;
#pragma unroll
        for (int jj = 0; jj < NT * 2; ++jj) {
          const int j = 2 * jj + pw;
          if (2 * j >= M) break;
          const int row = x_row0 + 2 * j;
          cp_async_16_policy(xs + row * kXRowBytes + ((x_chunk ^ (row & 7)) << 4), src + 2 * j * x_stride,
                             (k_ok && row < M) ? 16 : 0, reuse_policy);
        }
      }
      cp_async_mbar_arrive(full_bar(bars, slot));
      if (++slot == stages) {
        slot = 0;
        phase ^= 1;
      }
      if (++c == chunks) {
        c = 0;
        ++t;
      }
    }
    cp_async_wait<0>();
    return;
  }

  // -------------------------------------------------------------------- consumer warps
  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.f;

  // Per-lane shared-memory offsets (bytes, within a stage). A: ldmatrix matrices (rows 0-7 | 8-15) x
  // (compressed cols 0-7 | 8-15) of the warp's two m16 tiles; B: 8 tokens x K offsets 0, 8, 16, 24.
  const int swz = lane & 7;  // == (row & 7) for every row this lane addresses
  const int a_row = warp * 32 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const uint32_t meta_off = Tile::kValuesBytes + (warp * 32 + lane) * 4;

  int slot = 0;
  uint32_t phase = 0;
  int t = static_cast<int>(u0 / chunks);
  int c = static_cast<int>(u0 - static_cast<int64_t>(t) * chunks);
  int first_c = c;
  for (int64_t u = u0; u < u1; ++u) {
    mbar_wait(full_bar(bars, slot), phase);
    const uint32_t st = stage0_addr + slot * Tile::kStageBytes;
    const unsigned char* st_ptr = stage0 + slot * Tile::kStageBytes;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      uint32_t a[2][4];
      uint32_t bfrag[NT][4];
      const uint32_t a_chunk = static_cast<uint32_t>(((2 * kk + (lane >> 4)) ^ swz) << 4);
      ldmatrix_x4(a[0], st + a_row * kValueRowBytes + a_chunk);
      ldmatrix_x4(a[1], st + (a_row + 16) * kValueRowBytes + a_chunk);
      const uint32_t e = *reinterpret_cast<const uint32_t*>(st_ptr + meta_off + kk * R * 4);
      const uint32_t b_chunk = static_cast<uint32_t>(((4 * kk + (lane >> 3)) ^ swz) << 4);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        ldmatrix_x4(bfrag[nt], st + Tile::kValuesBytes + Tile::kMetaBytes + (nt * 8 + (lane & 7)) * kXRowBytes + b_chunk);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        Mma<T>::template sparse<0>(acc[0][nt], a[0], bfrag[nt], e);
        Mma<T>::template sparse<1>(acc[1][nt], a[1], bfrag[nt], e);
      }
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_bar(bars, slot));
    if (++slot == stages) {
      slot = 0;
      phase ^= 1;
    }

    if (c == chunks - 1 || u == u1 - 1) {  // this CTA's part of tile t is done
      constexpr int kFrag = Tile::kFrag;
      if (first_c > 0 || c < chunks - 1) {
        // A split tile: publish this part, count it; the last of the tile's CTAs to arrive adds every part
        // in CTA order (the same order whoever is last) and stores.
        const int64_t tile_u0 = static_cast<int64_t>(t) * chunks;
        const int owner = cta_of(tile_u0, units, grid);
        const int last = cta_of(tile_u0 + chunks - 1, units, grid);
        const int my_slot = u0 >= tile_u0 ? 0 : 1;  // 0: my range's first segment, 1: its last
        float* dst = partials + ((static_cast<int64_t>(b) * 2 + my_slot) * CW + warp) * kFrag;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) __stcg(dst + ((mt * NT + nt) * 4 + r) * 32 + lane, acc[mt][nt][r]);
        __threadfence();
        __syncwarp();
        int arrived = 0;
        if (lane == 0) arrived = atomicAdd(counters + owner * CW + warp, 1);
        arrived = __shfl_sync(0xffffffffu, arrived, 0);
        if (arrived == last - owner) {
          __threadfence();
          const int64_t owner_start = static_cast<int64_t>(owner) * units / grid;
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.f;
          for (int q = owner; q <= last; ++q) {
            const int slot_q = (q == owner && owner_start < tile_u0) ? 1 : 0;
            const float* src = partials + ((static_cast<int64_t>(q) * 2 + slot_q) * CW + warp) * kFrag;
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
              for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[mt][nt][r] += __ldcg(src + ((mt * NT + nt) * 4 + r) * 32 + lane);
          }
          __syncwarp();
          if (lane == 0) counters[owner * CW + warp] = 0;  // self-resetting: the next call starts from 0
          store_tile(acc, out, bias, t * R + warp * 32, lane, M, N);
        }
      } else {
        store_tile(acc, out, bias, t * R + warp * 32, lane, M, N);
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.f;
    }
    if (++c == chunks) {
      c = 0;
      ++t;
      first_c = 0;
    }
  }
}

// Stages: the bytes-in-flight target, at least 3, at most what the shared memory holds (at least 2).
template <int NT, int CW>
int choose_stages(int requested, int max_smem) {
  using Tile = DecodeTile<NT, CW>;
  const int fit = (max_smem - kHeaderBytes) / Tile::kStageBytes;
  int stages = requested > 0 ? requested : std::max(3, kInflightTarget / Tile::kStageBytes);
  stages = std::min({stages, kMaxStages, fit});
  return stages;
}

template <typename T, int NT, int CW, bool kPerm>
cudaError_t launch_decode(const Sp24DecodeParams& p, cudaStream_t stream) {
  using Tile = DecodeTile<NT, CW>;
  const int stages = choose_stages<NT, CW>(p.stages, p.max_smem_optin);
  if (stages < 2 || (p.stages > 0 && stages != p.stages)) return cudaErrorInvalidValue;
  const int smem = kHeaderBytes + stages * Tile::kStageBytes;
  auto kernel = sp24_decode_kernel<T, NT, CW, kPerm>;
  static int opted_in[kMaxDevices] = {};  // bytes of dynamic shared memory this kernel may use, per device
  if (p.device < 0 || p.device >= kMaxDevices || opted_in[p.device] < smem) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    if (p.device >= 0 && p.device < kMaxDevices) opted_in[p.device] = smem;
  }
  const int64_t units = static_cast<int64_t>((p.N + Tile::kRows - 1) / Tile::kRows) * ((p.K + kKC - 1) / kKC);
  const int grid = static_cast<int>(std::min<int64_t>(p.num_sms, units));
  int* counters = static_cast<int*>(p.workspace);
  float* partials = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + sp24_decode_flag_bytes(p.num_sms));
  kernel<<<grid, Tile::kThreads, smem, stream>>>(static_cast<const T*>(p.x), p.x_row_stride,
                                                 static_cast<const T*>(p.values), p.meta, static_cast<const T*>(p.bias),
                                                 static_cast<T*>(p.out), p.M, p.N, p.K, stages, counters, partials, p.perm);
  return cudaGetLastError();
}

template <typename T, int NT, int CW>
cudaError_t dispatch_perm(const Sp24DecodeParams& p, cudaStream_t stream) {
  if (p.perm != nullptr) return launch_decode<T, NT, CW, true>(p, stream);
  return launch_decode<T, NT, CW, false>(p, stream);
}

template <typename T, int NT>
cudaError_t dispatch_rows(const Sp24DecodeParams& p, cudaStream_t stream) {
  const int rows = p.rows > 0 ? p.rows : (NT >= 4 ? 256 : 128);
  if (rows == 256) return dispatch_perm<T, NT, 8>(p, stream);
  if (rows == 128) return dispatch_perm<T, NT, 4>(p, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t dispatch_tokens(const Sp24DecodeParams& p, cudaStream_t stream) {
  if (p.M <= 8) return dispatch_rows<T, 1>(p, stream);
  if (p.M <= 16) return dispatch_rows<T, 2>(p, stream);
  if (p.M <= 32) return dispatch_rows<T, 4>(p, stream);
  return dispatch_rows<T, 8>(p, stream);
}

}  // namespace

int64_t sp24_decode_flag_bytes(int num_sms) {
  return (static_cast<int64_t>(num_sms) * kMaxConsumerWarps * 4 + 255) / 256 * 256;
}

int64_t sp24_decode_workspace_bytes(int num_sms) {  // counters, then 2 partial slots per (CTA, consumer warp)
  return sp24_decode_flag_bytes(num_sms) + static_cast<int64_t>(num_sms) * 2 * kMaxConsumerWarps * kMaxFrag * 4;
}

cudaError_t run_sp24_decode(const Sp24DecodeParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.M < 0 || p.M > kSp24DecodeMaxM || p.N % 32 != 0 || p.K % 32 != 0 || p.K <= 0 || p.num_sms <= 0 ||
      p.workspace == nullptr || p.workspace_bytes < sp24_decode_workspace_bytes(p.num_sms))
    return cudaErrorInvalidValue;
  if (p.dtype == Sparse24Dtype::kBFloat16) return dispatch_tokens<__nv_bfloat16>(p, stream);
  return dispatch_tokens<__half>(p, stream);
}

}  // namespace sparsekit
