// RmsNorm on the GPU, with or without the fused residual add (LaunchRmsNorm
// of launch.h).
//
// Rows of up to 1024 chunks (16-byte chunks: 8 bf16/fp16 or 4 fp32
// elements; 8192 bf16 columns), with or without a residual, take the lane
// kernel: the row in registers as packed words, every access one 16-byte
// vector, and a sum of squares in "lane order" (below), which any number of
// threads per row can compute bit for bit. That lets the launcher size
// the block by the number of rows without changing a bit: calls of few
// rows (decode) give each thread two chunks (256 threads on a row of 4096
// bf16: a 1-row call is one load per tensor, one barrier and one store per
// thread, not one warp working through 16 chunks), and so do calls of many
// rows of 2049-8192 bf16 (a block per row, whose threads load the weights
// only after the reduction: few registers, many resident blocks); calls of
// many narrower rows run a persistent grid whose threads hold 2-4 chunks,
// issue the next row's loads before this row's reduction and keep the
// weights in registers.
// Wider rows take one block per row: staged in shared memory up to the
// opt-in limit (~113K bf16 columns on H100), else the two-pass path, which
// reads s a second time (mostly from L2). Either way each tensor crosses
// DRAM once: read input (+ residual), write output (+ residual_out).
//
// Bytes moved: rows * cols * sizeof(T) * (2; 3 with a residual; 4 with a
// residual and residual_out) + the weight once per block.
//
// Numerics: s = round_T(fp32(input + residual)) (exactly what is stored in
// residual_out); out = round_T(s * rsqrt(mean + eps) * w). rsqrtf is within
// 2 ulp of fp32, far inside the contract's tolerances; the mean is an IEEE
// division (for a power-of-two cols the same bits by a multiply, MeanOf).
// The sum of squares has a fixed order that depends only on cols,
// so the result is deterministic and the same for a row batched or alone, at
// any address:
//  - lane rows (<= 1024 chunks): kL = 32 "lanes" (64 past 512 chunks), kK
//    items per lane (the power of two >= chunks / kL); chunk c = l + kL * k
//    is lane l's item k. Each chunk's squares in one fused chain from 0
//    (element order); a lane's value is the pairwise tree over its items
//    ((p0 + p1) + (p2 + p3)) + ...; the row sum is a warp butterfly over
//    each 32 lanes, the two halves (kL = 64) added in order;
//  - wide rows: one chain per thread in chunk order, then the block's
//    fixed-order tree (BlockAllReduce).
#include "cuda/common.cuh"

namespace accel::kernels::cuda {
namespace {

template <typename T>
struct RmsArgs {
  const T* input;
  const T* residual;  // null without a residual
  const void* weight;
  T* output;
  T* residual_out;  // null when not wanted (or without a residual)
  ElemType weight_dtype;
  bool weight_vector;  // weight base aligned for vector loads
  int64_t rows;
  int64_t cols;
  float eps;
  float inv_cols;  // 1 / cols when cols is a power of two (exact), else 0
};

// mean = ss / cols, an IEEE division; for a power-of-two cols the product
// with the exact reciprocal 2^-k, which is the same correctly rounded value
// (both round the same real number ss * 2^-k, subnormal results, inf and NaN
// included), without the division's instruction sequence and its slow-path
// branch on the critical path after the reduction. Measured (graph of 100
// launches, H100, same run): rmsnorm_residual 1x4096 bf16 2.02 -> 1.98 us,
// fp16 2.06 -> 2.03, 16x4096 bf16 2.26 -> 2.24; rows without a residual
// unchanged (1.77 / 1.88).
template <typename T>
__device__ __forceinline__ float MeanOf(const RmsArgs<T>& a, float ss) {
  return a.inv_cols != 0.0f ? __fmul_rn(ss, a.inv_cols) : __fdiv_rn(ss, static_cast<float>(a.cols));
}

__device__ __forceinline__ bool Aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__device__ __forceinline__ int ChunkCount(int64_t chunk, int64_t chunks, int64_t cols, int n) {
  if (chunk >= chunks) return 0;
  const int64_t left = cols - chunk * n;
  return left < n ? static_cast<int>(left) : n;
}

// s = round(x + r) for a chunk, in place in x.
template <typename T, int N>
__device__ __forceinline__ void AddResidual(Vec<T, N>& x, const Vec<T, N>& r) {
#pragma unroll
  for (int j = 0; j < N; ++j) x.v[j] = FromFloat<T>(__fadd_rn(ToFloat(x.v[j]), ToFloat(r.v[j])));
}

template <typename T, int N>
__device__ __forceinline__ float SumSquares(const Vec<T, N>& s, float acc) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float f = ToFloat(s.v[j]);
    acc = fmaf(f, f, acc);
  }
  return acc;
}

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> Scale(const Vec<T, N>& s, float inv, const float (&w)[N]) {
  Vec<T, N> o;
#pragma unroll
  for (int j = 0; j < N; ++j) o.v[j] = FromFloat<T>(ToFloat(s.v[j]) * inv * w[j]);
  return o;
}

// ------------------------------------------------------------- lane rows

constexpr int64_t kLaneMaxChunks = 1024;

// A lane kernel's shape: kL lanes of kK items; each lane's items split over
// kG threads ("groups"), group g holding items [g * kI, (g + 1) * kI). The
// pairwise tree over kK items is the tree over the groups' subtrees (kI a
// power of two), so kG never changes a bit. A block holds kRows rows (so
// that it has at least 128 threads), each with its own named barrier.
template <int kL, int kK, int kG>
struct LaneShape {
  static_assert(kL == 32 || kL == 64, "one warp or a pair of warps per 32 lanes");
  static_assert(kK >= kG && kK % kG == 0 && (kK & (kK - 1)) == 0, "power-of-two items");
  static constexpr int kI = kK / kG;  // chunks per thread
  static constexpr int kRowThreads = kL * kG;
  static constexpr int kRows = kRowThreads >= 128 ? 1 : 128 / kRowThreads;
  static constexpr int kThreads = kRows * kRowThreads;
  // Register cap: a residual row holds s, the next row's input and
  // residual and the weights (16 registers a chunk for 16-bit T): 64 for
  // one chunk per thread, 80 for two, 128 for four; without a residual 64
  // up to two and 96 for four. A one-row block (no prefetch, weights after
  // the reduction) needs 40 for up to two chunks, 48 with a residual or
  // several rows per block.
  // Tighter caps spilled; looser ones cost resident blocks for nothing.
  static constexpr int MinBlocks(bool residual, bool one_row) {
    const int regs = one_row && kI <= 2 ? (residual || kRows > 1 ? 48 : 40)
                     : residual         ? (kI == 1 ? 64 : (kI == 2 ? 80 : 128))
                                        : (kI <= 2 ? 64 : 96);
    return 65536 / (regs * kThreads) > 0 ? 65536 / (regs * kThreads) : 1;
  }
};

// Pairwise tree, in place: (p0 + p1) + (p2 + p3), ... (n a power of two).
template <int n>
__device__ __forceinline__ float PairwiseSum(float (&p)[n]) {
  static_assert((n & (n - 1)) == 0, "power of two");
#pragma unroll
  for (int s = 1; s < n; s *= 2) {
#pragma unroll
    for (int i = 0; i + s < n; i += 2 * s) p[i] += p[i + s];
  }
  return p[0];
}

// A chunk's sum of squares: one fused chain from 0 in element order (the
// same operations as SumSquares(s, 0.0f) on the unpacked chunk).
template <typename T>
__device__ __forceinline__ float ChunkSquares(const uint4& s) {
  float part = 0.0f;
#pragma unroll
  for (int j = 0; j < kVecOf<T>; ++j) {
    const float f = ElemOf<T>(s, j);
    part = fmaf(f, f, part);
  }
  return part;
}

// The row's sum from each thread's subtree (node): one warp needs no
// barrier; otherwise every thread posts its node (red: kG * kL floats, the
// caller alternates two buffers so that the next row's post never
// overwrites an unread one), one named barrier, and every warp reads the
// kG nodes of its lanes, finishes the tree and the butterfly itself (the
// same operations on the same values in every warp, so the same bits; no
// second barrier to broadcast a result).
template <int kL, int kG>
__device__ __forceinline__ float LaneRowSum(float node, float* red, int t, int slot) {
  if constexpr (kL == 32 && kG == 1) {
    return WarpSum(node);
  } else {
    red[t] = node;
    asm volatile("bar.sync %0, %1;" ::"r"(1 + slot), "r"(kL * kG) : "memory");
    const int lane = t % 32;
    float total = 0.0f;
#pragma unroll
    for (int h = 0; h < kL / 32; ++h) {
      float v[kG];
#pragma unroll
      for (int g = 0; g < kG; ++g) v[g] = red[g * kL + h * 32 + lane];
      const float half = WarpSum(PairwiseSum(v));
      total = h == 0 ? half : total + half;
    }
    return total;
  }
}

// A row that is not fast (misaligned pointers, a partial last chunk): the
// same chunks per thread and the same order of the sum, so the same bits,
// element-wise and in two passes. Pass 2 takes s from residual_out when it
// was written (it may alias residual), else recomputes it; each chunk stays
// with one thread, so in-place use is safe.
template <typename T, int kL, int kK, int kG, bool kResidual>
__device__ __forceinline__ void RmsNormLaneRowSlow(const RmsArgs<T>& a, int64_t off, int64_t chunks,
                                                   int t, float* red, int slot) {
  constexpr int N = kVecOf<T>, kI = LaneShape<kL, kK, kG>::kI;
  const int g = t / kL, l = t % kL;
  auto chunk = [&](int i) { return l + static_cast<int64_t>(kL) * (g * kI + i); };
  auto form = [&](int64_t c, int count) {
    Vec<T, N> s = LoadChunk<T, N>(a.input + off + c * N, count, false);
    if constexpr (kResidual) {
      AddResidual(s, LoadChunk<T, N>(a.residual + off + c * N, count, false));
    }
    return s;
  };
  float p[kI];
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    const int64_t c = chunk(i);
    const int count = ChunkCount(c, chunks, a.cols, N);
    p[i] = 0.0f;  // a missing chunk adds +0
    if (count == 0) continue;
    const Vec<T, N> s = form(c, count);
    if (kResidual && a.residual_out != nullptr) {
      StoreChunk<T, N>(a.residual_out + off + c * N, s, count, false);
    }
    p[i] = SumSquares(s, 0.0f);
  }
  const float ss = LaneRowSum<kL, kG>(PairwiseSum(p), red, t, slot);
  const float inv = rsqrtf(MeanOf(a, ss) + a.eps);
#pragma unroll 1
  for (int i = 0; i < kI; ++i) {
    const int64_t c = chunk(i);
    const int count = ChunkCount(c, chunks, a.cols, N);
    if (count == 0) continue;
    const Vec<T, N> s = kResidual && a.residual_out != nullptr
                            ? LoadChunk<T, N>(a.residual_out + off + c * N, count, false)
                            : form(c, count);
    float w[N];
    LoadWeights<N>(a.weight, a.weight_dtype, c * N, count, false, w);
    StoreChunk<T, N>(a.output + off + c * N, Scale(s, inv, w), count, false);
  }
}

// Rows of up to 1024 chunks. Thread (slot, g, l) of a block handles chunks
// l + kL * (g * kI + i), i < kI, of rows blockIdx.x * kRows + slot, then
// every gridDim.x * kRows rows (a persistent grid when the launcher caps the
// grid). A fast row (every pointer of the row 16-byte aligned, cols whole
// chunks, the weight base aligned) moves every chunk as one 16-byte access;
// input and residual are read with evict-first loads and output and
// residual_out written with evict-first stores (each is touched once). The
// weights, the same for every row, are loaded once per block and kept in
// registers: as packed words when their dtype is T's (kWeightIsT: 4
// registers a chunk), else converted to fp32 (8 a chunk for 16-bit T). The
// next row's loads are issued before this row's reduction, so a thread
// keeps kI chunks per tensor in flight through the barrier, the scaling and
// the stores (measured: RmsNorm+residual [16384, 8192] went from 0.85 to
// 0.98 of copy; prefetching two rows ahead gained nothing more). The slow
// row is inlined: as a call it cost the fast path its registers (the call
// saves every live value; up to 392 bytes of spills).
// kOneRow (launches of a block per row): no prefetch, and the weights are
// loaded after the reduction, so that a thread holds only its chunks of s
// across the barrier (a row past the grid, which only a launch of more
// than 2^31 blocks leaves, is still handled, loading again).
template <typename T, int kL, int kK, int kG, bool kResidual, bool kWeightIsT, bool kOneRow>
__global__ void __launch_bounds__(LaneShape<kL, kK, kG>::kThreads,
                                  LaneShape<kL, kK, kG>::MinBlocks(kResidual, kOneRow))
    RmsNormLaneKernel(RmsArgs<T> a) {
  using Shape = LaneShape<kL, kK, kG>;
  constexpr int N = kVecOf<T>, kI = Shape::kI;
  __shared__ float red[2][Shape::kRows][Shape::kRowThreads];
  const int slot = threadIdx.x / Shape::kRowThreads;
  const int t = threadIdx.x % Shape::kRowThreads;
  const int g = t / kL, l = t % kL;
  const int64_t chunks = CeilDiv(a.cols, N);
  auto elem = [&](int i) { return (l + static_cast<int64_t>(kL) * (g * kI + i)) * N; };
  bool live[kI];
#pragma unroll
  for (int i = 0; i < kI; ++i) live[i] = elem(i) < a.cols;
  const bool block_fast = a.cols % N == 0 && a.weight_vector;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  // x (and r) hold row `row` when `have` (a fast row below a.rows).
  uint4 x[kI], r[kResidual ? kI : 1];
  bool have = false;
  auto fetch = [&](int64_t row) {
    const int64_t off = row * a.cols;
    have = row < a.rows && block_fast && Aligned16(a.input + off) && Aligned16(a.output + off);
    if constexpr (kResidual) {
      have = have && Aligned16(a.residual + off) &&
             (a.residual_out == nullptr || Aligned16(a.residual_out + off));
    }
    if (!have) return;
#pragma unroll
    for (int i = 0; i < kI; ++i) x[i] = live[i] ? LoadStream<uint4>(a.input + off + elem(i)) : zero;
    if constexpr (kResidual) {
#pragma unroll
      for (int i = 0; i < kI; ++i) {
        r[i] = live[i] ? LoadStream<uint4>(a.residual + off + elem(i)) : zero;
      }
    }
  };
  const int64_t stride = static_cast<int64_t>(gridDim.x) * Shape::kRows;
  int64_t row = static_cast<int64_t>(blockIdx.x) * Shape::kRows + slot;
  fetch(row);
  // The weights (only fast rows use them).
  uint4 wt[kWeightIsT ? kI : 1];
  float wf[kWeightIsT ? 1 : kI][N];
  auto load_weights = [&] {
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      if constexpr (kWeightIsT) {
        wt[i] = live[i] ? LoadWords(static_cast<const T*>(a.weight) + elem(i)) : zero;
      } else {
        LoadWeights<N>(a.weight, a.weight_dtype, elem(i), live[i] ? N : 0, true, wf[i]);
      }
    }
  };
  if (!kOneRow && block_fast) load_weights();
  auto weight = [&](int i, int j) {
    if constexpr (kWeightIsT) {
      return ElemOf<T>(wt[i], j);
    } else {
      return wf[i][j];
    }
  };
  for (int parity = 0; row < a.rows; row += stride, parity ^= 1) {
    float* rbuf = red[parity][slot];
    const int64_t off = row * a.cols;
    if (!have) {
      // The next row's loads go after the slow row: live across it, they
      // spilled.
      RmsNormLaneRowSlow<T, kL, kK, kG, kResidual>(a, off, chunks, t, rbuf, slot);
      fetch(row + stride);
      continue;
    }
    uint4 s[kI];
    float p[kI];
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      if constexpr (kResidual) {
        const uint4 xi = x[i], ri = r[i];
        s[i] = PackVec<T>([&](int j) { return __fadd_rn(ElemOf<T>(xi, j), ElemOf<T>(ri, j)); });
        if (a.residual_out != nullptr && live[i]) StoreStream(a.residual_out + off + elem(i), s[i]);
      } else {
        s[i] = x[i];
      }
      p[i] = ChunkSquares<T>(s[i]);  // 0 for a missing chunk (zeros)
    }
    const float node = PairwiseSum(p);
    if constexpr (!kOneRow) fetch(row + stride);
    const float ss = LaneRowSum<kL, kG>(node, rbuf, t, slot);
    if constexpr (kOneRow) load_weights();
    const float inv = rsqrtf(MeanOf(a, ss) + a.eps);
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      if (live[i]) {
        const uint4 si = s[i];
        StoreStream(a.output + off + elem(i),
                    PackVec<T>([&](int j) { return ElemOf<T>(si, j) * inv * weight(i, j); }));
      }
    }
    if constexpr (kOneRow) fetch(row + stride);
  }
}

// Blocks of kKernel that can be resident at once on one SM (cached per
// kernel and device; only sizes a persistent grid).
template <auto kKernel>
int ResidentBlocks(int threads) {
  static std::atomic<int> cache[kMaxCachedDevices] = {};
  return PerDeviceCached(cache, 1, [threads](int) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, threads, 0) != cudaSuccess ||
        n <= 0) {
      n = 1;
    }
    return n;
  });
}

// Calls of at most kFewRows rows (decode) launch a block per kRows rows,
// two chunks per thread (256 threads on a row of 4096 bf16: measured 1.8-1.9
// us for 1-16 rows, against 2.0 with one chunk per thread, whose 16-warp
// reduction reads 4x the shared memory), and so do larger calls of rows of
// 2049-8192 bf16 (see LaunchLaneK); larger calls of narrower rows launch a
// persistent grid (the blocks that fit at once) whose blocks prefetch their
// next row, 4 chunks per thread without a residual and 2 with one (the
// residual doubles the registers a chunk needs).
constexpr int64_t kFewRows = 64;
constexpr int kFewItems = 2;
constexpr int kManyItems = 4;
constexpr int kManyItemsResidual = 2;

// A block per kRows rows, or when `persistent` at most the blocks that fit
// on the device at once (each then loops over rows).
template <typename T, bool kResidual, int kL, int kK, int kG, bool kWeightIsT>
cudaError_t LaunchLaneW(const RmsArgs<T>& a, bool persistent, cudaStream_t stream) {
  using Shape = LaneShape<kL, kK, kG>;
  int64_t blocks = CeilDiv(a.rows, Shape::kRows);
  if (persistent) {
    constexpr auto kernel = RmsNormLaneKernel<T, kL, kK, kG, kResidual, kWeightIsT, false>;
    const int64_t cap = static_cast<int64_t>(NumSms()) * ResidentBlocks<kernel>(Shape::kThreads);
    if (blocks > cap) blocks = cap;
    kernel<<<static_cast<unsigned>(blocks), Shape::kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  if (blocks > 0x7fffffff) blocks = 0x7fffffff;
  // One row per block keeps its weights out of registers until the scaling
  // and prefetches nothing: 40 registers without a residual (3 blocks of 512
  // threads per SM instead of 2). A residual row of 4096 would spill at the
  // 48 registers its 256-thread blocks then get, so it keeps the prefetching
  // form (measured slower as one-row: 0.90 against 0.92 of copy at [4096,
  // 4096]). For calls of few rows, loading the weights with the row instead
  // (kOneRow false) measured slower: 1x4096 bf16 1.77 -> 1.87 us.
  constexpr bool kOneRow = !kResidual || kL == 64;
  RmsNormLaneKernel<T, kL, kK, kG, kResidual, kWeightIsT, kOneRow>
      <<<static_cast<unsigned>(blocks), Shape::kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

// kK items per lane, kK / kG chunks per thread.
template <typename T, bool kResidual, int kL, int kK, int kG>
cudaError_t LaunchLane(const RmsArgs<T>& a, bool persistent, cudaStream_t stream) {
  return a.weight_dtype == ElemTypeOf<T>()
             ? LaunchLaneW<T, kResidual, kL, kK, kG, true>(a, persistent, stream)
             : LaunchLaneW<T, kResidual, kL, kK, kG, false>(a, persistent, stream);
}

// Threads per lane (groups) for kItems chunks per thread: kK / kItems, at
// least 1.
template <int kK, int kItems>
constexpr int kGroupsFor = kK > kItems ? kK / kItems : 1;

template <typename T, bool kResidual, int kL, int kK>
cudaError_t LaunchLaneK(const RmsArgs<T>& a, cudaStream_t stream) {
  // Rows of 257-1024 chunks (2049-8192 bf16) take a block per row at every
  // row count: Nsight Compute showed the persistent grid moving the same
  // bytes with a quarter of the SM's warps resident (4 chunks per thread in
  // 77 registers), and a block per row with two chunks per thread measured
  // 0.984 of copy at [65536, 4096] against 0.943 (+residual 1.017 against
  // 0.962); for rows of 8192 once the block kept one row (kOneRow: 40
  // registers, 3 blocks of 512 threads per SM), 0.995-0.999 at [16384,
  // 8192] against 0.928 (+residual 1.006 against 0.976).
  if constexpr (kK == 16) {
    return LaunchLane<T, kResidual, kL, kK, kGroupsFor<kK, kFewItems>>(a, false, stream);
  } else {
    if (a.rows <= kFewRows) {
      return LaunchLane<T, kResidual, kL, kK, kGroupsFor<kK, kFewItems>>(a, false, stream);
    }
    constexpr int kItems = kResidual ? kManyItemsResidual : kManyItems;
    return LaunchLane<T, kResidual, kL, kK, kGroupsFor<kK, kItems>>(a, true, stream);
  }
}

template <typename T, bool kResidual>
cudaError_t LaunchLaneRows(const RmsArgs<T>& a, int64_t chunks, cudaStream_t stream) {
  if (chunks > 512) return LaunchLaneK<T, kResidual, 64, 16>(a, stream);
  const int64_t per_lane = CeilDiv(chunks, 32);
  if (per_lane <= 1) return LaunchLaneK<T, kResidual, 32, 1>(a, stream);
  if (per_lane <= 2) return LaunchLaneK<T, kResidual, 32, 2>(a, stream);
  if (per_lane <= 4) return LaunchLaneK<T, kResidual, 32, 4>(a, stream);
  if (per_lane <= 8) return LaunchLaneK<T, kResidual, 32, 8>(a, stream);
  return LaunchLaneK<T, kResidual, 32, 16>(a, stream);
}

// ------------------------------------------------------------- wide rows

// Rows too wide for registers. Pass 1 forms s, stores residual_out, keeps s
// in shared memory (kShared) and sums squares; pass 2 takes s from shared
// memory, or for kShared = false re-reads it (from residual_out when it was
// written, which may alias residual, else from input [+ residual]), and
// scales. Each chunk is handled by the same thread in both passes, so
// neither the shared row nor in-place use (output == input) needs a barrier
// beyond the reduction's. kFast rows (all aligned, whole chunks) take kU = 2
// chunks per step, so 2 loads per tensor are in flight per thread (kU = 4
// needs ~120 registers: the same bytes in flight per SM at half the
// occupancy); other
// rows take one chunk per step (their element-wise fallback would spill at
// 4). The chunk order, and so the sum, is the same either way.
template <typename T, bool kResidual, bool kShared, bool kFast>
__device__ __forceinline__ void RmsNormWideRow(const RmsArgs<T>& a, int64_t off, int64_t chunks,
                                               T* srow, float* red) {
  constexpr int N = kVecOf<T>;
  constexpr int kU = kFast ? 2 : 1;
  const int64_t step = static_cast<int64_t>(kU) * blockDim.x;
  const bool in_vec = kFast || Aligned16(a.input + off);
  const bool out_vec = kFast || Aligned16(a.output + off);
  const bool res_vec = kFast || (kResidual && Aligned16(a.residual + off));
  const bool rout_vec = kFast || (a.residual_out != nullptr && Aligned16(a.residual_out + off));
  const bool w_vec = kFast || a.weight_vector;
  auto chunk = [&](int64_t c0, int u) { return c0 + static_cast<int64_t>(u) * blockDim.x; };
  float ss = 0.0f;
  for (int64_t c0 = threadIdx.x; c0 < chunks; c0 += step) {
    Vec<T, N> s[kU];
    int count[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      count[u] = ChunkCount(chunk(c0, u), chunks, a.cols, N);
      s[u] = LoadChunk<T, N>(a.input + off + chunk(c0, u) * N, count[u], in_vec);
    }
    if constexpr (kResidual) {
      Vec<T, N> r[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        r[u] = LoadChunk<T, N>(a.residual + off + chunk(c0, u) * N, count[u], res_vec);
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) AddResidual(s[u], r[u]);
      if (a.residual_out != nullptr) {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          StoreChunk<T, N>(a.residual_out + off + chunk(c0, u) * N, s[u], count[u], rout_vec);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      ss = SumSquares(s[u], ss);
      if (kShared && count[u] > 0) StoreVec<T, N>(srow + chunk(c0, u) * N, s[u]);
    }
  }
  ss = BlockAllReduce(ss, SumOp{}, 0.0f, red);
  const float inv = rsqrtf(MeanOf(a, ss) + a.eps);
  for (int64_t c0 = threadIdx.x; c0 < chunks; c0 += step) {
    Vec<T, N> s[kU];
    int count[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t e = chunk(c0, u) * N;
      count[u] = ChunkCount(chunk(c0, u), chunks, a.cols, N);
      if (kShared) {
        if (count[u] > 0) s[u] = LoadVec<T, N>(srow + e);
      } else if (kResidual && a.residual_out != nullptr) {
        s[u] = LoadChunk<T, N>(a.residual_out + off + e, count[u], rout_vec);
      } else {
        s[u] = LoadChunk<T, N>(a.input + off + e, count[u], in_vec);
      }
    }
    if constexpr (kResidual && !kShared) {
      if (a.residual_out == nullptr) {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const Vec<T, N> r =
              LoadChunk<T, N>(a.residual + off + chunk(c0, u) * N, count[u], res_vec);
          AddResidual(s[u], r);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (count[u] == 0) continue;
      const int64_t e = chunk(c0, u) * N;
      float w[N];
      LoadWeights<N>(a.weight, a.weight_dtype, e, count[u], w_vec, w);
      StoreChunk<T, N>(a.output + off + e, Scale(s[u], inv, w), count[u], out_vec);
    }
  }
}

// At most 512 threads and 64 registers: 2+ blocks per SM.
template <typename T, bool kResidual, bool kShared>
__global__ void __launch_bounds__(512, 2) RmsNormWideKernel(RmsArgs<T> a) {
  constexpr int N = kVecOf<T>;
  extern __shared__ uint4 row_smem[];  // chunks * 16 bytes when kShared
  T* srow = reinterpret_cast<T*>(row_smem);
  __shared__ float red[33];
  const int64_t chunks = CeilDiv(a.cols, N);
  const bool whole = a.cols % N == 0 && a.weight_vector;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const int64_t off = row * a.cols;
    bool fast = whole && Aligned16(a.input + off) && Aligned16(a.output + off);
    if constexpr (kResidual) {
      fast = fast && Aligned16(a.residual + off) &&
             (a.residual_out == nullptr || Aligned16(a.residual_out + off));
    }
    if (fast) {
      RmsNormWideRow<T, kResidual, kShared, true>(a, off, chunks, srow, red);
    } else {
      RmsNormWideRow<T, kResidual, kShared, false>(a, off, chunks, srow, red);
    }
    // The next row overwrites the shared row: every thread must be done
    // reading it (only reached when a block takes more than one row).
    if (kShared && row + gridDim.x < a.rows) __syncthreads();
  }
}

template <typename T, bool kResidual>
cudaError_t LaunchRows(const RmsArgs<T>& a, cudaStream_t stream) {
  const int64_t chunks = CeilDiv(a.cols, kVecOf<T>);
  if (chunks <= kLaneMaxChunks) return LaunchLaneRows<T, kResidual>(a, chunks, stream);
  const RowConfig cfg = PickRowConfig(a.cols, kVecOf<T>, sizeof(T), MaxDynamicSmem());
  const unsigned blocks = RowBlocks(a.rows);
  if (cfg.kind == RowKind::kShared) {
    static std::atomic<uint64_t> smem_set{0};
    if (cfg.smem_bytes > 48 * 1024) {
      const cudaError_t err = AllowDynamicSmem(RmsNormWideKernel<T, kResidual, true>, smem_set);
      if (err != cudaSuccess) return err;
    }
    RmsNormWideKernel<T, kResidual, true><<<blocks, cfg.threads, cfg.smem_bytes, stream>>>(a);
  } else {
    // kTwoPass (kRegisters never comes past 512 chunks).
    RmsNormWideKernel<T, kResidual, false><<<blocks, cfg.threads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t LaunchRmsNormT(const RmsNormParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  // Without a residual s = input: a requested residual_out is a copy
  // (stream-ordered before the kernel, so output may alias input).
  if (p.residual == nullptr && p.residual_out != nullptr && p.residual_out != p.input) {
    const cudaError_t err =
        cudaMemcpyAsync(p.residual_out, p.input, n * sizeof(T), cudaMemcpyDeviceToDevice, stream);
    if (err != cudaSuccess) return err;
  }
  RmsArgs<T> a;
  a.input = static_cast<const T*>(p.input);
  a.residual = static_cast<const T*>(p.residual);
  a.weight = p.weight;
  a.output = static_cast<T*>(p.output);
  a.residual_out = p.residual != nullptr ? static_cast<T*>(p.residual_out) : nullptr;
  a.weight_dtype = p.weight_dtype;
  const int wbytes = kVecOf<T> * FloatSize(p.weight_dtype);
  a.weight_vector = IsAligned(p.weight, wbytes < 16 ? wbytes : 16);
  a.rows = p.rows;
  a.cols = p.cols;
  a.eps = p.eps;
  a.inv_cols = 0.0f;
  if ((p.cols & (p.cols - 1)) == 0) {
    a.inv_cols = 1.0f / static_cast<float>(p.cols);  // exact: a power of two <= 2^62
  }
  return p.residual != nullptr ? LaunchRows<T, true>(a, stream) : LaunchRows<T, false>(a, stream);
}

template cudaError_t LaunchRmsNormT<float>(const RmsNormParams&, cudaStream_t);
template cudaError_t LaunchRmsNormT<__half>(const RmsNormParams&, cudaStream_t);
template cudaError_t LaunchRmsNormT<__nv_bfloat16>(const RmsNormParams&, cudaStream_t);

cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.cols < 0 || !IsFloatType(p.weight_dtype)) return cudaErrorInvalidValue;
  return DispatchFloat(p.dtype, [&](auto tag) -> cudaError_t {
    if (p.rows == 0 || p.cols == 0) return cudaSuccess;
    return LaunchRmsNormT<typename decltype(tag)::type>(p, stream);
  });
}

}  // namespace accel::kernels::cuda
