// W8A16 Linear for few rows (decode): y[m, n] = (x[m, k] @ q[n, k]^T) *
// scale + bias with int8 q, fp16/bf16 x and y, fp32 accumulation.
//
// At m <= 32 the weights are nearly all the traffic (n * k bytes against
// m * k * 2 of activations), so the kernels are built to stream each weight
// byte from DRAM exactly once at full bandwidth, and to do the math on the
// tensor cores: fp32 FMAs would need m * n * k of them (16 * 4096 * 11008
// is 24 us of an H100's CUDA cores, more than the 15 us the 45 MB of weights
// take to read), while mma.sync needs a few percent of the issue slots.
//
// Work split. A block (8 warps) owns a tile of 16 weight rows (32 in the
// m > 16 kernel) and the whole K; its warps take 256-byte chunks of K in
// turn (chunk c goes to warp c % 8), so there is no cross-block reduction
// and no atomics. Per chunk
// each thread issues its 8 weight loads (16 bytes each, L1 bypassed, L2
// prefetch of 256 bytes) before it uses any, so a warp has 4 KB in flight
// and an SM with two resident blocks 64 KB: far more than the ~20 KB per SM
// that the H100's bandwidth-latency product asks for.
//
// Three kernels share that split, and with it the order of every sum:
//  - m <= 8, W8A16DecodeKernel: a persistent grid of two blocks per SM that
//    walk the tiles blockIdx.x, + gridDim.x, ...; the epilogue's scale and
//    bias are fetched a tile ahead (at the start for the first) instead of
//    after the K loop, weight rows past n are clamped to row n - 1 instead
//    of predicated, and K offsets are 32-bit. For n = 11008 (688 tiles) the
//    persistent grid removes the two wave boundaries of a block per tile
//    (each a gap with no loads in flight); for n = 4096 (256 tiles, one
//    wave either way) the gain is the leaner loop and the early scale.
//    H100, graph of back-to-back launches over > 4x L2 of weights, m = 1,
//    fp16 / bf16, against the tile-per-block kernel below in the same run:
//    n = 4096: 8.28 / 8.65 us vs 8.90 / 8.84 (cuBLAS fp16 GEMM 15.5, 1.87x
//    / 1.79x); n = 11008: 17.95 / 18.66 us vs 20.37 / 20.07 (cuBLAS 33.5 /
//    36.1). m = 8: 8.93 / 9.23 vs 9.16 / 9.01 at n = 4096, 19.15 / 20.04 vs
//    20.42 / 20.06 at n = 11008. Tried and slower: two chunks in flight per
//    warp (a register ring: 9.3 us at n = 4096, as all of K is requested at
//    once it arrives late and in no order, and the math piles up at the
//    end), 128-byte loads per row and chunk (8.8), one block per SM (9.6).
//  - 8 < m <= 16, W8A16SkinnyKernel: a block per tile (n / 16 blocks: 256
//    for n = 4096, 688 for n = 11008), two blocks per SM. At m = 16 the
//    persistent kernel was slower (fp16 10.5 vs 9.7 us at n = 4096, 23.3 vs
//    20.9 at n = 11008): with two activation tiles it sits at the
//    128-register cap of two blocks per SM.
//  - 16 < m <= 32, W8A16WideKernel<T, 2, 4, ...>: 32 weight rows (two A
//    tiles) per block, so each activation load feeds 8 MMAs instead of 4,
//    one block per SM (up to 255 registers: 4 loads per row and chunk with
//    four activation tiles); fp16 persistent, bf16 a block per tile with 2
//    loads per row and chunk. H100, m = 32, three runs against the
//    W8A16SkinnyKernel<T, 4, 1> it replaces, fp16: 11.36-12.04 vs
//    12.14-12.28 us at n = 4096, 27.74-29.01 vs 29.46-29.59 at n = 11008;
//    bf16: 12.08-12.32 vs 12.55-13.01, 26.83-28.50 vs 30.00-30.42 (cuBLAS
//    fp16/bf16 GEMM 14.1-14.8 and 36.2-37.7). cuda_linear_bench (run 3,
//    fp16 persistent for both dtypes): M = 32 11.98 / 12.28 us (1.18x /
//    1.15x) at n = 4096, 28.74 / 29.06 (1.28x / 1.26x) at n = 11008.
//    At m = 16 (harness on branch wip/w8a16-m16) no variant beat
//    W8A16SkinnyKernel at both shapes: 32-row tiles (10.3 vs 9.7 us at
//    n = 4096, 22.2-23.3 vs 21.0 at n = 11008: half the blocks, 8 warps per
//    SM instead of 16), one block per SM with 16 rows (10.2-11.0, 22.9-24.9),
//    activations loaded with the weights or one 64-byte block ahead (at two
//    blocks per SM within 1-2%: 9.55-9.67 vs 9.65-9.79, 20.8-21.3 vs 21.0),
//    three blocks per SM (10.5, 22.3-22.5). So the activation re-reads
//    (16 x k x 2 bytes per 16-row tile) are not what holds m = 16 back.
//
// MMA mapping (m16n8k16, A row-major, B column-major): the 16 weight rows
// are A (the M side), 8 activation rows are B's columns, so m <= 8 needs one
// MMA per 16x16 weight tile and m <= 32 four. A 4-thread group reads 64
// contiguous bytes of one weight row per load (16 each); the K order inside
// each 64-byte block is permuted identically for A and B (logical k 2t+{0,1}
// of MMA step s is byte 16t + 4s + {0,1}, logical 2t+8+{0,1} is
// 16t + 4s + {2,3}), which lets each thread feed four MMA steps from one
// 16-byte weight load and one 32-byte activation load. A sum over k in
// another order is the same sum; every output is still one fp32 accumulation
// over all of K.
//
// Dequantisation is exact and cheap: int8 -> fp16 by building 1024 + 128 + q
// in the mantissa (one PRMT) and subtracting 1152 (one HSUB2 per pair);
// int8 -> bf16 through the fp32 magic number 2^23 (PRMT + FADD) and a PRMT
// that keeps the upper halves (exact: |q| <= 127 has 7 significant bits),
// or, in the decode and 32-row kernels on sm_90, with one bf16x2 add per pair
// (Dequant4Bf16Add, 8 instructions per 4 bytes instead of 11; 19.36 vs 19.71 us at m = 1,
// n = 11008, 8.67 vs 8.73 at n = 4096). The scale multiplies the fp32 sum
// after the K loop, then the bias is added and the result rounded once, as
// the contract requires.
//
// Determinism: the chunk-to-warp assignment, the order of the MMAs inside a
// chunk and the final sum over the 8 warps (in warp order, through shared
// memory) depend only on k and are the same in all three kernels; a row's MMA
// results do not depend on the other rows; and the epilogue rounds the
// product and the sum explicitly (no contraction that could differ between
// instantiations). So an output row has the same bits for every m <= 32,
// batched or not, whichever kernel runs it, as long as k <= kMaxK (above,
// LaunchLinear takes the dequantize + cuBLAS path for every m) (checked bit for bit on an H100
// for row ranges of 1 to 31 rows at offsets 0 to 31 of a 32-row call, both dtypes, per-row and
// per-tensor scales, all bias types, k in 16, 208, 1040, 4096 and n in 8,
// 100, 4096, 11008).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/linear.h"

namespace accel::kernels::cuda {
namespace {

constexpr int kWarps = 8;  // split K inside the block
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;     // weight rows per block (the MMA's M)
constexpr int kBlockK = 64;   // bytes of K one 4-thread group covers per load
constexpr int kChunkK = 256;  // bytes of K per warp turn (fixed: it sets the sum order)
// The decode and 32-row kernels index activations with 32-bit offsets:
// 32 activation rows of k elements stay under 2^31.
constexpr int64_t kMaxK = int64_t{1} << 26;
// The decode kernel's persistent grid.
constexpr int kDecodeRows = 8;  // m up to which it runs (one activation tile)
constexpr int kDecodeBlocksPerSm = 2;

struct SkinnyArgs {
  const void* x;
  const int8_t* w;
  const float* scales;
  bool per_row;
  const void* bias;
  ElemType bias_type;
  void* y;
  int64_t m, n, k;
};

// 16 bytes of weights: read once, so keep them out of L1 (where the
// activations live) and ask L2 for the whole 256-byte line pair.
__device__ __forceinline__ uint4 LoadStreaming(const int8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Four int8 (one word) -> two packed pairs of T: lo = bytes 0, 1 and
// hi = bytes 2, 3, exactly.
template <typename T>
__device__ __forceinline__ void Dequant4(uint32_t word, uint32_t& lo, uint32_t& hi);

template <>
__device__ __forceinline__ void Dequant4<__half>(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t biased = word ^ 0x80808080u;  // q + 128 as an unsigned byte
  // fp16 0x64XX is 1024 + XX; 0x6480 is 1152 = 1024 + 128.
  const uint32_t l = __byte_perm(biased, 0x64646464u, 0x4140);
  const uint32_t h = __byte_perm(biased, 0x64646464u, 0x4342);
  asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(l), "r"(0x64806480u));
  asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(h), "r"(0x64806480u));
}

template <>
__device__ __forceinline__ void Dequant4<__nv_bfloat16>(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t biased = word ^ 0x80808080u;
  // fp32 0x4B0000XX is 2^23 + XX; subtracting 2^23 + 128 leaves q exactly.
  constexpr float kMagic = 8388736.0f;
  const float f0 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440)) - kMagic;
  const float f1 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7441)) - kMagic;
  const float f2 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7442)) - kMagic;
  const float f3 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7443)) - kMagic;
  // The upper 16 bits of these floats are their exact bf16 values.
  lo = __byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
  hi = __byte_perm(__float_as_uint(f2), __float_as_uint(f3), 0x7632);
}

// d += A (16x16, rows = weight rows) * B (16x8, columns = activation rows).
template <typename T>
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1);

template <>
__device__ __forceinline__ void Mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void Mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                   uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four int8 (one word) -> two packed pairs of bf16, exactly, in 8
// instructions: with w a signed byte, q = lo7 - 128 s where lo7 = w & 0x7f
// and s is its sign bit; bf16 0x43XX is 128 + XX for XX < 128 and
// 0xC300 | (s << 7) is -128 or -256, so one bf16x2 add gives q.
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ void Dequant4Bf16Add(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t mag = word & 0x7f7f7f7fu;
  const uint32_t sign = word & 0x80808080u;
  const uint32_t al = __byte_perm(mag, 0x43434343u, 0x4140);
  const uint32_t ah = __byte_perm(mag, 0x43434343u, 0x4342);
  const uint32_t bl = __byte_perm(sign, 0xC3C3C3C3u, 0x4140);
  const uint32_t bh = __byte_perm(sign, 0xC3C3C3C3u, 0x4342);
  asm("add.rn.bf16x2 %0, %1, %2;" : "=r"(lo) : "r"(al), "r"(bl));
  asm("add.rn.bf16x2 %0, %1, %2;" : "=r"(hi) : "r"(ah), "r"(bh));
}
#endif

// bf16x2 adds exist from sm_90 on; before, the generic (equally exact)
// dequantisation, so the same bits on every arch.
template <typename T>
__device__ __forceinline__ void DequantDecode(uint32_t word, uint32_t& lo, uint32_t& hi) {
#if __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    Dequant4Bf16Add(word, lo, hi);
    return;
  }
#endif
  Dequant4<T>(word, lo, hi);
}

// The MMA A fragments of one 64-byte block of a 16-row tile: q0 holds row
// g's 16 bytes, q1 row g + 8's; af[s] feeds MMA step s (k pairs 2t and
// 2t + 8 of rows g and g + 8). kFastBf16: the dequantisation of the decode
// and 32-row kernels (DequantDecode).
template <typename T, bool kFastBf16>
__device__ __forceinline__ void WeightFragments(uint4 q0, uint4 q1, uint32_t (&af)[4][4]) {
  const uint32_t w0w[4] = {q0.x, q0.y, q0.z, q0.w};
  const uint32_t w1w[4] = {q1.x, q1.y, q1.z, q1.w};
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    if constexpr (kFastBf16) {
      DequantDecode<T>(w0w[s], af[s][0], af[s][2]);
      DequantDecode<T>(w1w[s], af[s][1], af[s][3]);
    } else {
      Dequant4<T>(w0w[s], af[s][0], af[s][2]);
      Dequant4<T>(w1w[s], af[s][1], af[s][3]);
    }
  }
}

// The tiles of kTileRows weight rows that block b of a persistent grid
// walks (b, b + gridDim.x, ...) and the K chunks that warp w takes in each
// (w, w + kWarps, ...): the split of both decode-sized kernels below.
template <int kTileRows>
struct TileWalk {
  int my_tiles;   // tiles of this block
  int my_chunks;  // K chunks of this warp in each tile
  __device__ __forceinline__ TileWalk(const SkinnyArgs& a, int k, int warp) {
    const int64_t tiles = CeilDiv(a.n, kTileRows);
    my_tiles = static_cast<int>((tiles - blockIdx.x + gridDim.x - 1) / gridDim.x);
    const int chunks = static_cast<int>(CeilDiv(k, kChunkK));
    my_chunks = chunks > warp ? (chunks - warp + kWarps - 1) / kWarps : 0;
  }
  // The first weight row of this block's tl-th tile.
  __device__ __forceinline__ int64_t TileRow(int tl) const {
    return (static_cast<int64_t>(blockIdx.x) + static_cast<int64_t>(tl) * gridDim.x) * kTileRows;
  }
};

// m <= 8 (one activation tile): a persistent grid; block b walks the tiles
// b, b + gridDim.x, ... (the header says why). Same chunks, MMAs and warp
// order as W8A16SkinnyKernel, so the same bits.
template <typename T>
__global__ void __launch_bounds__(kThreads, kDecodeBlocksPerSm) W8A16DecodeKernel(SkinnyArgs a) {
  constexpr int kUnroll = kChunkK / kBlockK;  // loads per row and chunk
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // MMA group (row / column) and thread in group
  const int k = static_cast<int>(a.k);   // k <= kMaxK
  const int m = static_cast<int>(a.m);
  const int k_mine = k - t * 16;  // this thread's piece at offset o is in K iff o < k_mine
  // Each thread's 16-byte column inside a 64-byte block is fixed: fold it
  // into the pointers once.
  const int8_t* w_base = a.w + static_cast<int64_t>(g) * a.k + t * 16;
  const T* x = static_cast<const T*>(a.x) + g * k + t * 16;
  const TileWalk<kRows> walk(a, k, warp);
  const int my_tiles = walk.my_tiles, my_chunks = walk.my_chunks;
  auto tile_row = [&](int tl) { return walk.TileRow(tl); };

  // The epilogue's scale and bias (weight row n0 + threadIdx.x % 16 for
  // the output this thread finishes), fetched a tile ahead so that their
  // latency hides behind the K loop instead of trailing it.
  float next_scale = 0.0f, next_bias = 0.0f;
  auto fetch_epilogue = [&](int tl) {
    const int64_t nn = tile_row(tl) + threadIdx.x % kRows;
    if (tl < my_tiles && nn < a.n) {
      next_scale = a.per_row ? __ldg(&a.scales[nn]) : __ldg(&a.scales[0]);
      if (a.bias != nullptr) next_bias = LoadAsFloat(a.bias, a.bias_type, nn);
    }
  };
  fetch_epilogue(0);

  __shared__ float red[kWarps][kRows][8];
  T* y = static_cast<T*>(a.y);
  for (int tl = 0; tl < my_tiles; ++tl) {
    const int64_t n0 = tile_row(tl);
    // Rows past n read row n - 1 instead: their outputs are never stored.
    const int8_t* w0 = w_base + min(n0, a.n - 1 - g) * a.k;
    const int8_t* w1 = w_base + min(n0 + 8, a.n - 1 - g) * a.k;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int c = 0; c < my_chunks; ++c) {
      const int kc = (warp + kWarps * c) * kChunkK;
      // All weight loads of the chunk first: they are the DRAM latency.
      uint4 q0[kUnroll], q1[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int o = kc + u * kBlockK;
        const bool in = o < k_mine;  // k % 16 == 0: a 16-byte piece is all in or all out
        q0[u] = in ? LoadStreaming(w0 + o) : make_uint4(0, 0, 0, 0);
        q1[u] = in ? LoadStreaming(w1 + o) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int o = kc + u * kBlockK;
        uint32_t af[4][4];  // [MMA step][A register]
        WeightFragments<T, true>(q0[u], q1[u], af);
        // Activation row g is column g of B.
        uint4 xa = make_uint4(0, 0, 0, 0), xb = xa;
        if (o < k_mine && g < m) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + o);
          xa = __ldg(xp);
          xb = __ldg(xp + 1);
        }
        const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
        for (int s = 0; s < 4; ++s) Mma<T>(acc, af[s], xw[2 * s], xw[2 * s + 1]);
      }
    }

    // Sum the 8 warps' partial tiles in warp order (deterministic).
    *reinterpret_cast<float2*>(&red[warp][g][2 * t]) = make_float2(acc[0], acc[1]);
    *reinterpret_cast<float2*>(&red[warp][g + 8][2 * t]) = make_float2(acc[2], acc[3]);
    const float scale = next_scale, bias = next_bias;
    fetch_epilogue(tl + 1);
    __syncthreads();
    // Output threadIdx.x < 128: activation row threadIdx.x / 16, weight
    // row n0 + threadIdx.x % 16.
    const int col = threadIdx.x / kRows, row = threadIdx.x % kRows;
    const int64_t nn = n0 + row;
    if (col < m && nn < a.n) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += red[w][row][col];
      // Explicit roundings, as in W8A16SkinnyKernel (same bits).
      float v = __fmul_rn(sum, scale);
      if (a.bias != nullptr) v = __fadd_rn(v, bias);
      y[static_cast<int64_t>(col) * a.n + nn] = FromFloat<T>(v);
    }
    // The next tile writes red again (uniform: tl is the block's).
    if (tl + 1 < my_tiles) __syncthreads();
  }
}

// kTiles: activation rows in tiles of 8 (m <= 8 * kTiles). kUnroll: 64-byte
// blocks whose weights are loaded together (kChunkK / 64 or a divisor: fewer
// registers for more tiles; the order of the sum does not change).
template <typename T, int kTiles, int kUnroll>
__global__ void __launch_bounds__(kThreads, 2) W8A16SkinnyKernel(SkinnyArgs a) {
  static_assert(kChunkK % (kUnroll * kBlockK) == 0, "a chunk is whole groups of loads");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // MMA group (row / column) and thread in group
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const bool ok0 = n0 + g < a.n, ok1 = n0 + g + 8 < a.n;
  // Each thread's 16-byte column inside a 64-byte block is fixed: fold it
  // into the row pointers once.
  const int8_t* w0 = a.w + (n0 + g) * a.k + t * 16;
  const int8_t* w1 = a.w + (n0 + g + 8) * a.k + t * 16;
  const T* x = static_cast<const T*>(a.x) + static_cast<int64_t>(g) * a.k + t * 16;
  const int64_t k_mine = a.k - t * 16;  // this thread's piece at offset o is in K iff o < k_mine

  float acc[kTiles][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  const int64_t chunks = (a.k + kChunkK - 1) / kChunkK;
  for (int64_t c = warp; c < chunks; c += kWarps) {
#pragma unroll 1
    for (int part = 0; part < kChunkK / (kUnroll * kBlockK); ++part) {
      const int64_t kc = c * kChunkK + part * (kUnroll * kBlockK);
      // All weight loads of the group first: they are the DRAM latency.
      uint4 q0[kUnroll], q1[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t o = kc + u * kBlockK;
        const bool in = o < k_mine;  // k % 16 == 0: a 16-byte piece is all in or all out
        q0[u] = in && ok0 ? LoadStreaming(w0 + o) : make_uint4(0, 0, 0, 0);
        q1[u] = in && ok1 ? LoadStreaming(w1 + o) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t o = kc + u * kBlockK;
        const bool in = o < k_mine;
        uint32_t af[4][4];  // [MMA step][A register]
        WeightFragments<T, false>(q0[u], q1[u], af);
#pragma unroll
        for (int j = 0; j < kTiles; ++j) {
          // Activation row j * 8 + g is column g of tile j's B.
          uint4 xa = make_uint4(0, 0, 0, 0), xb = xa;
          if (in && j * 8 + g < a.m) {
            // Activations are small and re-read by every block: cached loads.
            const uint4* xp = reinterpret_cast<const uint4*>(x + j * 8 * a.k + o);
            xa = __ldg(xp);
            xb = __ldg(xp + 1);
          }
          const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
          for (int s = 0; s < 4; ++s) Mma<T>(acc[j], af[s], xw[2 * s], xw[2 * s + 1]);
        }
      }
    }
  }

  // Sum the 8 warps' partial tiles in warp order (deterministic).
  __shared__ float red[kWarps][kTiles][kRows][8];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    *reinterpret_cast<float2*>(&red[warp][j][g][2 * t]) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(&red[warp][j][g + 8][2 * t]) = make_float2(acc[j][2], acc[j][3]);
  }
  __syncthreads();
  T* y = static_cast<T*>(a.y);
  for (int e = threadIdx.x; e < kTiles * kRows * 8; e += kThreads) {
    const int j = e / (kRows * 8), col = (e / kRows) % 8, row = e % kRows;
    const int64_t r = j * 8 + col, nn = n0 + row;
    if (r >= a.m || nn >= a.n) continue;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w][j][row][col];
    // Explicit roundings: whether the compiler would fuse a multiply-add
    // here could differ between instantiations, i.e. with m.
    float v = __fmul_rn(sum, a.per_row ? a.scales[nn] : a.scales[0]);
    if (a.bias != nullptr) v = __fadd_rn(v, LoadAsFloat(a.bias, a.bias_type, nn));
    y[r * a.n + nn] = FromFloat<T>(v);
  }
}

// 16 < m <= 32: kRowTiles 16-row weight tiles per block tile (the MMA's A),
// so that each activation load feeds kRowTiles tiles of MMAs; kTiles
// activation tiles of 8 rows; kUnroll 64-byte blocks whose weights are
// loaded together. A persistent grid when the launcher asks for one (block
// b walks the tiles b, b + gridDim.x, ...). Same chunks, warp order and MMA
// order per accumulator as the kernels above, so the same bits.
template <typename T, int kRowTiles, int kTiles, int kUnroll, int kBlocksPerSm>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) W8A16WideKernel(SkinnyArgs a) {
  constexpr int kTileRows = kRowTiles * kRows;
  constexpr int kParts = kChunkK / (kUnroll * kBlockK);
  static_assert(kParts * kUnroll * kBlockK == kChunkK, "a chunk is whole groups of loads");
  // Partial-sum buffers: two save a sync per tile; one keeps the shared
  // memory (and with it the L1 carve-out) small at two blocks per SM.
  constexpr int kBufs = kTiles <= 2 && kBlocksPerSm == 1 ? 2 : 1;
  constexpr int kStride = kTileRows + 4;          // floats per column: conflict-free stores
  constexpr int kCols = kTiles * 8;               // activation rows of the block
  constexpr int kColStep = kThreads / kTileRows;  // epilogue: columns per pass
  constexpr int kPasses = (kCols + kColStep - 1) / kColStep;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int k = static_cast<int>(a.k);
  const int m = static_cast<int>(a.m);
  const int k_mine = k - t * 16;
  const int8_t* w_base = a.w + t * 16;
  const T* x = static_cast<const T*>(a.x) + g * k + t * 16;
  const TileWalk<kTileRows> walk(a, k, warp);
  const int my_tiles = walk.my_tiles, my_chunks = walk.my_chunks;
  auto tile_row = [&](int tl) { return walk.TileRow(tl); };
  const int erow = threadIdx.x % kTileRows, ecol0 = threadIdx.x / kTileRows;
  float next_scale = 0.0f, next_bias = 0.0f;
  auto fetch_epilogue = [&](int tl) {
    const int64_t nn = tile_row(tl) + erow;
    if (tl < my_tiles && nn < a.n) {
      next_scale = a.per_row ? __ldg(&a.scales[nn]) : __ldg(&a.scales[0]);
      if (a.bias != nullptr) next_bias = LoadAsFloat(a.bias, a.bias_type, nn);
    }
  };
  fetch_epilogue(0);
  bool xrow[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) xrow[j] = j * 8 + g < m;

  __shared__ float red[kBufs][kWarps][kCols][kStride];
  T* y = static_cast<T*>(a.y);
  for (int tl = 0; tl < my_tiles; ++tl) {
    const int64_t n0 = tile_row(tl);
    const int8_t* wp[kRowTiles][2];
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) wp[rt][h] = w_base + min(n0 + rt * 16 + h * 8 + g, a.n - 1) * a.k;
    }
    float acc[kRowTiles][kTiles][4];
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        acc[rt][j][0] = acc[rt][j][1] = acc[rt][j][2] = acc[rt][j][3] = 0.0f;
    for (int c = 0; c < my_chunks; ++c) {
#pragma unroll 1
      for (int part = 0; part < kParts; ++part) {
        const int kp = (warp + kWarps * c) * kChunkK + part * (kUnroll * kBlockK);
        uint4 q[kRowTiles][2][kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int o = kp + u * kBlockK;
          const bool in = o < k_mine;
#pragma unroll
          for (int rt = 0; rt < kRowTiles; ++rt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
              q[rt][h][u] = in ? LoadStreaming(wp[rt][h] + o) : make_uint4(0, 0, 0, 0);
        }
        uint4 xe[kTiles][2];  // block u's activations, loaded just before its MMAs
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          uint32_t af[kRowTiles][4][4];
#pragma unroll
          for (int rt = 0; rt < kRowTiles; ++rt) {
            WeightFragments<T, true>(q[rt][0][u], q[rt][1][u], af[rt]);
          }
          {
            const int o = kp + u * kBlockK;
#pragma unroll
            for (int j = 0; j < kTiles; ++j) {
              xe[j][0] = xe[j][1] = make_uint4(0, 0, 0, 0);
              if (o < k_mine && xrow[j]) {
                const uint4* xp = reinterpret_cast<const uint4*>(x + j * 8 * k + o);
                xe[j][0] = __ldg(xp);
                xe[j][1] = __ldg(xp + 1);
              }
            }
          }
#pragma unroll
          for (int j = 0; j < kTiles; ++j) {
            const uint4 xa = xe[j][0], xb = xe[j][1];
            const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
            for (int rt = 0; rt < kRowTiles; ++rt)
#pragma unroll
              for (int s = 0; s < 4; ++s) Mma<T>(acc[rt][j], af[rt][s], xw[2 * s], xw[2 * s + 1]);
          }
        }
      }
    }

    const int buf = kBufs == 1 ? 0 : tl % kBufs;
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        float* r = &red[buf][warp][j * 8 + 2 * t][rt * 16 + g];
        r[0] = acc[rt][j][0];
        r[kStride] = acc[rt][j][1];
        r[8] = acc[rt][j][2];
        r[kStride + 8] = acc[rt][j][3];
      }
    }
    const float scale = next_scale, bias = next_bias;
    fetch_epilogue(tl + 1);
    __syncthreads();
    const int64_t nn = n0 + erow;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int col = ecol0 + i * kColStep;
      if (col < kCols && col < m && nn < a.n) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += red[buf][w][col][erow];
        float v = __fmul_rn(sum, scale);
        if (a.bias != nullptr) v = __fadd_rn(v, bias);
        y[static_cast<int64_t>(col) * a.n + nn] = FromFloat<T>(v);
      }
    }
    if (kBufs == 1 && tl + 1 < my_tiles) __syncthreads();
  }
}

template <typename T>
cudaError_t LaunchTyped(const SkinnyArgs& args, cudaStream_t stream) {
  const int64_t blocks = CeilDiv(args.n, kRows);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  if (args.m <= kDecodeRows) {
    const int64_t slots = int64_t{NumSms()} * kDecodeBlocksPerSm;
    const dim3 grid(static_cast<unsigned>(std::min(blocks, slots)));
    W8A16DecodeKernel<T><<<grid, kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  }
  if (args.m <= 16) {
    W8A16SkinnyKernel<T, 2, 4><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
  } else if (args.m <= 32) {
    // 32 weight rows per block, one block per SM: fp16 persistent with 4
    // loads per row and chunk, bf16 a block per tile with 2 (faster for
    // each on the H100; the header has the numbers).
    const int64_t tiles = CeilDiv(args.n, 2 * kRows);
    if (tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
    if constexpr (std::is_same_v<T, __half>) {
      const dim3 grid(static_cast<unsigned>(std::min(tiles, int64_t{NumSms()})));
      W8A16WideKernel<T, 2, 4, 4, 1><<<grid, kThreads, 0, stream>>>(args);
    } else {
      W8A16WideKernel<T, 2, 4, 2, 1><<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(args);
    }
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

bool W8A16SkinnySupports(const LinearParams& p) {
  static_assert(kW8A16SkinnyMaxRows <= 32, "the kernel has activation tiles for m <= 32");
  return p.weight_dtype == ElemType::kI8 &&
         (p.dtype == ElemType::kF16 || p.dtype == ElemType::kBF16) && p.m >= 0 &&
         p.m <= kW8A16SkinnyMaxRows && p.k % 16 == 0 && IsAligned(p.input, 16) &&
         IsAligned(p.weight, 16) && p.scales != nullptr && p.k <= kMaxK;
}

cudaError_t LaunchW8A16Skinny(const LinearParams& p, cudaStream_t stream) {
  if (!W8A16SkinnySupports(p)) return cudaErrorNotSupported;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  SkinnyArgs args{p.input,  static_cast<const int8_t*>(p.weight),
                  p.scales, p.per_row_scales,
                  p.bias,   p.bias_dtype,
                  p.output, p.m,
                  p.n,      p.k};
  if (p.dtype == ElemType::kF16) return LaunchTyped<__half>(args, stream);
  return LaunchTyped<__nv_bfloat16>(args, stream);
}

}  // namespace accel::kernels::cuda
