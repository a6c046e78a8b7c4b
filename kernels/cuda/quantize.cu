// Symmetric int8 quantization on the GPU: Quantize (per row, per tensor),
// Dequantize and the QuantizationError statistics (launch.h).
//
// Quantize per row: ONE pass over DRAM. Calls of <= 64 rows of <= 1024
// chunks (8192 bf16) give each row a block, one chunk per thread (the
// shortest latency for decode-sized calls); otherwise rows of <= 512 chunks
// (4096 bf16) go to one warp each, the row in registers (all loads issued
// before the first use; absmax by a warp butterfly, no block barrier);
// wider rows to one block each, the row in shared memory up to the opt-in
// limit, its absmax reduced over the block, q written from the on-chip
// copy; rows wider still re-read the row (two-pass kernel).
// Bytes: rows * cols * (sizeof(T) + 1) + rows * 4.
// Quantize per tensor: a memset of a 4-byte workspace, then two launches:
// an absmax reduction (atomicMax on the float bits, one per block) and the
// quantization; the input is read twice, which a tensor-wide scale
// requires. Bytes: n * (2 * sizeof(T) + 1).
// Dequantize: flat, n * (1 + sizeof(T)) bytes plus the scales; the row of a
// per-row scale by FastDiv (common.cuh). Small per-row calls take a 2-D
// grid of (row, column block) instead (DequantizeRowsKernel): no division.
// QuantizationError: a memset of the stats, then two flat passes over
// (original, values): pass 1 accumulates max|d|, sum|d|, sum o^2, sum d^2 and
// max|o| in double (per thread, then per block, then one double atomic per
// block and statistic); pass 2, which needs max|o|, takes the largest
// |d| / |o| over |o| > 0.1 max|o|. Bytes: 2 * n * (sizeof(T) + 1).
//
// Numerics (API.md): scale = absmax / 127 in fp32 (0 becomes 1); q =
// round-half-even(x / scale) with an IEEE division (__fdiv_rn, never the
// fast reciprocal) clamped to [-127, 127]: bit-identical to the CPU and the
// reference. NaN or infinity sets *nonfinite (the AbsBits max sees them as
// the largest patterns). d = o - q * scale in fp32 with explicit roundings
// (no FMA contraction), so max|d| is exact too.
#include <cmath>

#include "cuda/common.cuh"

namespace accel::kernels::cuda {
namespace {

// Layout of the QuantizationError stats (doubles; maxima stored as the bit
// patterns of non-negative doubles, which order like unsigned integers).
enum Stat : int {
  kMaxAbsDiff = 0,
  kSumAbsDiff = 1,
  kSumSqOrig = 2,
  kSumSqDiff = 3,
  kMaxAbsOrig = 4,
  kMaxRel = 5,
  kStatCount = 6,
};

__device__ __forceinline__ float ScaleOf(unsigned absmax_bits) {
  const float scale = __fdiv_rn(__uint_as_float(absmax_bits), 127.0f);
  return scale == 0.0f ? 1.0f : scale;
}

__device__ __forceinline__ int8_t Quantize1(float x, float scale) {
  const int q = __float2int_rn(__fdiv_rn(x, scale));
  return static_cast<int8_t>(q < -127 ? -127 : (q > 127 ? 127 : q));
}

// x / scale rounded to nearest even, for a row whose scale lies in
// [2^-60, 2^60] (ScaleIsTame): the same instructions as the inline fast path
// of the IEEE division (div.rn.f32 is MUFU.RCP, a Newton step, q0 = x r, the
// exact remainder x - scale q0 and one correction), which is correctly
// rounded whenever the division's range check (FCHK) passes; that check
// fails only for quotients far below 2^-20 here (|x| <= 127 scale), where
// either result converts to the integer 0. So the int8 values are the bits
// that __fdiv_rn gives, without its out-of-line slow path (whose call
// clobbers registers and made the 16-chunk row kernel spill).
__device__ __forceinline__ bool ScaleIsTame(float scale) {
  return scale >= 0x1p-60f && scale <= 0x1p60f;
}

struct TameDivisor {
  float s, r;
  __device__ __forceinline__ explicit TameDivisor(float scale) : s(scale) {
    float r0;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r0) : "f"(scale));
    r = __fmaf_rn(r0, __fmaf_rn(-scale, r0, 1.0f), r0);
  }
  __device__ __forceinline__ float Div(float x) const {
    const float q0 = __fmaf_rn(x, r, 0.0f);
    const float rem = __fmaf_rn(-s, q0, x);
    return __fmaf_rn(rem, r, q0);
  }
};

__device__ __forceinline__ int8_t QuantizeTame(float x, const TameDivisor& d) {
  const int q = __float2int_rn(d.Div(x));
  return static_cast<int8_t>(q < -127 ? -127 : (q > 127 ? 127 : q));
}

template <typename T, int N>
__device__ __forceinline__ Vec<int8_t, N> QuantizeVecTame(const Vec<T, N>& x,
                                                          const TameDivisor& d) {
  Vec<int8_t, N> q;
#pragma unroll
  for (int j = 0; j < N; ++j) q.v[j] = QuantizeTame(ToFloat(x.v[j]), d);
  return q;
}

template <typename T, int N>
__device__ __forceinline__ Vec<int8_t, N> QuantizeVec(const Vec<T, N>& x, float scale) {
  Vec<int8_t, N> q;
#pragma unroll
  for (int j = 0; j < N; ++j) q.v[j] = Quantize1(ToFloat(x.v[j]), scale);
  return q;
}

template <typename T, int N>
__device__ __forceinline__ unsigned AbsMaxOf(const Vec<T, N>& x, unsigned m) {
#pragma unroll
  for (int j = 0; j < N; ++j) m = max(m, AbsBits(ToFloat(x.v[j])));
  return m;
}

__device__ __forceinline__ bool AlignedTo(const void* p, unsigned bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

__device__ __forceinline__ int ChunkCount(int64_t chunk, int64_t chunks, int64_t cols, int n) {
  if (chunk >= chunks) return 0;
  const int64_t left = cols - chunk * n;
  return left < n ? static_cast<int>(left) : n;
}

// Row of the flat element i (32-bit division when everything fits).
__device__ __forceinline__ int64_t RowOf(int64_t i, int64_t cols) {
  if (((i | cols) >> 32) == 0) {
    return static_cast<uint32_t>(i) / static_cast<uint32_t>(cols);
  }
  return i / cols;
}

// ------------------------------------------------------ quantize per row

template <typename T>
struct QRowArgs {
  const T* input;
  int8_t* values;
  float* scales;
  int* nonfinite;
  int64_t rows;
  int64_t cols;
};

template <typename T>
__device__ __forceinline__ float RowScale(const QRowArgs<T>& a, int64_t row, unsigned m) {
  if (threadIdx.x == 0) {
    if (m >= kInfBits) *a.nonfinite = 1;
    a.scales[row] = ScaleOf(m);
  }
  return ScaleOf(m);
}

// Few rows (decode-sized calls) of up to kFewMaxChunks chunks: a block per
// row, one chunk per thread (up to 1024 threads), so a row costs one load,
// one barrier and one store per thread. The absmax: a warp butterfly, each
// warp's maximum posted to shared memory, one barrier, and every warp
// reduces the posted maxima itself (the maximum is order-independent, so
// every warp and every split gives the same bits; no second barrier to
// broadcast it; red is double-buffered for a block that takes a second
// row). A row with a tame scale quantizes with TameDivisor, as the warp
// kernel does (the bits of __fdiv_rn without its per-element slow-path
// branch). Measured, 1x4096 bf16: 1.90 us against 2.56 for the former
// 256-thread, two-barrier kernel with __fdiv_rn.
constexpr int64_t kFewMaxChunks = 1024;

template <typename T>
__global__ void __launch_bounds__(1024) QuantizeFewRowsKernel(QRowArgs<T> a) {
  constexpr int N = kVecOf<T>;
  __shared__ unsigned red[2][32];
  const int64_t chunks = CeilDiv(a.cols, N);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  const int64_t c = threadIdx.x;
  int parity = 0;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x, parity ^= 1) {
    const int64_t off = row * a.cols;
    const int count = ChunkCount(c, chunks, a.cols, N);
    const bool in_vec = AlignedTo(a.input + off, 16);
    const bool out_vec = AlignedTo(a.values + off, N);
    const Vec<T, N> x = LoadChunk<T, N>(a.input + off + c * N, count, in_vec);
    unsigned m = WarpMax(AbsMaxOf(x, 0u));
    if (lane == 0) red[parity][warp] = m;
    __syncthreads();
    m = WarpMax(lane < warps ? red[parity][lane] : 0u);
    const float scale = ScaleOf(m);
    if (threadIdx.x == 0) {
      if (m >= kInfBits) *a.nonfinite = 1;
      a.scales[row] = scale;
    }
    if (count == 0) continue;
    Vec<int8_t, N> q;
    if (ScaleIsTame(scale)) {  // uniform across the block
      q = QuantizeVecTame(x, TameDivisor(scale));
    } else {
      q = QuantizeVec(x, scale);
    }
    StoreChunk<int8_t, N>(a.values + off + c * N, q, count, out_vec);
  }
}

// Rows of up to 512 chunks: one warp per row (no block barrier), lane l
// owns chunks l, l + 32, ...; all of a lane's loads (up to 16 x 16 bytes)
// are issued before the first use. The absmax is order-independent, so the
// split never changes a bit.
constexpr int kWarpMaxChunks = 512;
constexpr int kWarpRowsPerBlock = 4;
constexpr int64_t kFewRows = 64;

// Absmax over a row's kRowThreads threads: a warp butterfly, then for a
// pair of warps both maxima through shared memory behind a 64-thread named
// barrier (pair_red double-buffered by the caller).
template <int kRowThreads>
__device__ __forceinline__ unsigned RowMax(unsigned m, int lane, unsigned* pair_red, int pair) {
  m = WarpMax(m);
  if constexpr (kRowThreads == 64) {
    if (lane % 32 == 0) pair_red[lane / 32] = m;
    asm volatile("bar.sync %0, 64;" ::"r"(1 + pair) : "memory");
    m = max(pair_red[0], pair_red[1]);
  }
  return m;
}

// Quantizes chunks lane, lane + 32, ... of a row (kItems of them) with
// __fdiv_rn, reading them from memory: the untamed scale of a fast row, and
// the second pass of the element-wise row. Out of line, so that its division
// calls cost the fast path no registers.
template <typename T, int kItems, int kRowThreads>
__device__ __noinline__ void QuantizeWarpRowStore(const QRowArgs<T>& a, int64_t off, int64_t chunks,
                                                  int lane, float scale) {
  constexpr int N = kVecOf<T>;
  const bool in_vec = AlignedTo(a.input + off, 16);
  const bool out_vec = AlignedTo(a.values + off, N);
#pragma unroll 1
  for (int k = 0; k < kItems; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * kRowThreads;
    const int count = ChunkCount(c, chunks, a.cols, N);
    if (count == 0) continue;
    const Vec<T, N> x = LoadChunk<T, N>(a.input + off + c * N, count, in_vec);
    StoreChunk<int8_t, N>(a.values + off + c * N, QuantizeVec(x, scale), count, out_vec);
  }
}

__device__ __forceinline__ float PostRowScale(unsigned m, int lane, int* nonfinite, float* out) {
  const float scale = ScaleOf(m);
  if (lane == 0) {
    if (m >= kInfBits) *nonfinite = 1;
    *out = scale;
  }
  return scale;
}

// The fast row: input 16-byte aligned, values aligned to N, cols whole
// chunks. The row stays in registers as packed words (one DRAM read).
template <typename T, int kItems, int kRowThreads>
__device__ __forceinline__ void QuantizeWarpRowFast(const QRowArgs<T>& a, int64_t row,
                                                    int64_t chunks, int lane, unsigned* pair_red,
                                                    int pair) {
  constexpr int N = kVecOf<T>;
  const int64_t off = row * a.cols;
  uint4 x[kItems];
  bool live[kItems];
  unsigned m = 0;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * kRowThreads;
    live[k] = c < chunks;
    x[k] = live[k] ? LoadStream<uint4>(a.input + off + c * N) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
#pragma unroll
    for (int j = 0; j < N; ++j) m = max(m, AbsBits(ElemOf<T>(x[k], j)));
  }
  m = RowMax<kRowThreads>(m, lane, pair_red, pair);
  const float scale = PostRowScale(m, lane, a.nonfinite, a.scales + row);
  if (!ScaleIsTame(scale)) {  // uniform across the warp
    QuantizeWarpRowStore<T, kItems, kRowThreads>(a, off, chunks, lane, scale);
    return;
  }
  const TameDivisor d(scale);
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * kRowThreads;
    if (live[k]) {
      Vec<int8_t, N> q;
#pragma unroll
      for (int j = 0; j < N; ++j) q.v[j] = QuantizeTame(ElemOf<T>(x[k], j), d);
      StoreStream(a.values + off + c * N, q);
    }
  }
}

// Any other row: element-wise, absmax pass then the quantizing pass.
template <typename T, int kItems, int kRowThreads>
__device__ __noinline__ void QuantizeWarpRowSlow(const QRowArgs<T>& a, int64_t row, int64_t chunks,
                                                 int lane, unsigned* pair_red, int pair) {
  constexpr int N = kVecOf<T>;
  const int64_t off = row * a.cols;
  unsigned m = 0;
#pragma unroll 1
  for (int k = 0; k < kItems; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * kRowThreads;
    const int count = ChunkCount(c, chunks, a.cols, N);
    if (count > 0) m = AbsMaxOf(LoadChunk<T, N>(a.input + off + c * N, count, false), m);
  }
  m = RowMax<kRowThreads>(m, lane, pair_red, pair);
  const float scale = PostRowScale(m, lane, a.nonfinite, a.scales + row);
  QuantizeWarpRowStore<T, kItems, kRowThreads>(a, off, chunks, lane, scale);
}

// A warp (kRowThreads 32) or a pair of warps (64: mid-sized batches, for
// more, shorter pieces of work per SM) per row; kWarpRowsPerBlock warps.
template <typename T, int kItems, int kRowThreads>
__global__ void __launch_bounds__(kWarpRowsPerBlock * 32, kItems >= 8 ? 4 : 8)
    QuantizeWarpKernel(QRowArgs<T> a) {
  constexpr int N = kVecOf<T>;
  __shared__ unsigned pair_red[2][kWarpRowsPerBlock];
  const int lane = threadIdx.x % kRowThreads;
  const int slot = threadIdx.x / kRowThreads;
  const int64_t chunks = CeilDiv(a.cols, N);
  const bool whole = a.cols % N == 0;
  const int64_t per_block = blockDim.x / kRowThreads;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * per_block;
  int parity = 0;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * per_block + slot; row < a.rows;
       row += stride, parity ^= 1) {
    const int64_t off = row * a.cols;
    unsigned* red = &pair_red[parity][slot * 2];
    if (whole && AlignedTo(a.input + off, 16) && AlignedTo(a.values + off, N)) {
      QuantizeWarpRowFast<T, kItems, kRowThreads>(a, row, chunks, lane, red, slot);
    } else {
      QuantizeWarpRowSlow<T, kItems, kRowThreads>(a, row, chunks, lane, red, slot);
    }
  }
}

template <typename T>
cudaError_t LaunchQuantizeWarpRows(const QRowArgs<T>& a, int64_t chunks, cudaStream_t stream) {
  // Pairs of warps for rows of more than 256 chunks in batches of up to
  // 16K rows (4096 x 4096: 8192 half-rows rather than 4096 rows over the
  // ~660 resident warps, shorter and better balanced); single warps beyond.
  // Tried at [4096, 4096] bf16 (H100, 0.73-0.75 of copy for this form): a
  // block per row with 512 threads of 1 chunk 0.58, 256 threads of 2 chunks
  // 0.61, a single warp per row 0.68, this form capped at 64 or 80
  // registers (8 or 6 blocks per SM) 0.72-0.73: no gain. What is left is
  // the launch's ramp-up and tail at 48 MB: 1.03 of a D2D copy of the same
  // bytes, which itself reaches ~0.71 of the 256 MiB copy.
  const int row_threads = chunks > 256 && a.rows <= 16384 ? 64 : 32;
  const int64_t max_rows = kWarpRowsPerBlock * 32 / row_threads;
  const int64_t per_block = a.rows < max_rows ? a.rows : max_rows;
  const int threads = static_cast<int>(per_block * row_threads);
  const int64_t want = CeilDiv(a.rows, per_block);
  const unsigned blocks = static_cast<unsigned>(want < 0x7fffffff ? want : 0x7fffffff);
  if (row_threads == 64) {
    QuantizeWarpKernel<T, 8, 64><<<blocks, threads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  const int64_t items = CeilDiv(chunks, 32);
  if (items <= 1) {
    QuantizeWarpKernel<T, 1, 32><<<blocks, threads, 0, stream>>>(a);
  } else if (items <= 2) {
    QuantizeWarpKernel<T, 2, 32><<<blocks, threads, 0, stream>>>(a);
  } else if (items <= 4) {
    QuantizeWarpKernel<T, 4, 32><<<blocks, threads, 0, stream>>>(a);
  } else if (items <= 8) {
    QuantizeWarpKernel<T, 8, 32><<<blocks, threads, 0, stream>>>(a);
  } else {
    QuantizeWarpKernel<T, 16, 32><<<blocks, threads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

// Wider rows: pass 1 absmax (keeping the row in shared memory when
// kShared), pass 2 quantizes from shared memory or re-reads the row. Two
// chunks per step (four would exceed 64 registers).
template <typename T, bool kShared>
__global__ void __launch_bounds__(512, 2) QuantizeWideKernel(QRowArgs<T> a) {
  constexpr int N = kVecOf<T>;
  constexpr int kU = 2;
  extern __shared__ uint4 row_smem[];
  T* srow = reinterpret_cast<T*>(row_smem);
  __shared__ unsigned red[33];
  const int64_t chunks = CeilDiv(a.cols, N);
  const int64_t step = static_cast<int64_t>(kU) * blockDim.x;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const int64_t off = row * a.cols;
    const bool in_vec = AlignedTo(a.input + off, 16);
    const bool out_vec = AlignedTo(a.values + off, N);
    unsigned m = 0;
    for (int64_t c0 = threadIdx.x; c0 < chunks; c0 += step) {
      Vec<T, N> x[kU];
      int count[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t c = c0 + static_cast<int64_t>(u) * blockDim.x;
        count[u] = ChunkCount(c, chunks, a.cols, N);
        x[u] = LoadChunk<T, N>(a.input + off + c * N, count[u], in_vec);
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        m = AbsMaxOf(x[u], m);
        const int64_t c = c0 + static_cast<int64_t>(u) * blockDim.x;
        if (kShared && count[u] > 0) StoreVec<T, N>(srow + c * N, x[u]);
      }
    }
    m = BlockAllReduce(m, MaxOp{}, 0u, red);
    const float scale = RowScale(a, row, m);
    for (int64_t c0 = threadIdx.x; c0 < chunks; c0 += step) {
      Vec<T, N> x[kU];
      int count[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t c = c0 + static_cast<int64_t>(u) * blockDim.x;
        count[u] = ChunkCount(c, chunks, a.cols, N);
        if (kShared) {
          if (count[u] > 0) x[u] = LoadVec<T, N>(srow + c * N);
        } else {
          x[u] = LoadChunk<T, N>(a.input + off + c * N, count[u], in_vec);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t c = c0 + static_cast<int64_t>(u) * blockDim.x;
        if (count[u] > 0) {
          StoreChunk<int8_t, N>(a.values + off + c * N, QuantizeVec(x[u], scale), count[u],
                                out_vec);
        }
      }
    }
    if (kShared && row + gridDim.x < a.rows) __syncthreads();  // before the next row's stores
  }
}

template <typename T>
cudaError_t LaunchQuantizeRows(const QuantizeParams& p, cudaStream_t stream) {
  QRowArgs<T> a{static_cast<const T*>(p.input), p.values, p.scales, p.nonfinite, p.rows, p.cols};
  const int64_t chunks = CeilDiv(p.cols, kVecOf<T>);
  // Few rows (decode-sized calls): a block per row, one chunk per thread,
  // the shortest per-row latency; many rows: a warp per row, more bytes in
  // flight per SM. The absmax does not depend on the split, so the bits are
  // the same either way.
  if (p.rows <= kFewRows && chunks <= kFewMaxChunks) {
    const int threads = static_cast<int>(CeilDiv(chunks, 32) * 32);
    QuantizeFewRowsKernel<T><<<RowBlocks(p.rows), threads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  if (chunks <= kWarpMaxChunks) return LaunchQuantizeWarpRows<T>(a, chunks, stream);
  // Wider rows (kRegisters never comes past 512 chunks).
  const RowConfig cfg = PickRowConfig(p.cols, kVecOf<T>, sizeof(T), MaxDynamicSmem());
  const unsigned blocks = RowBlocks(p.rows);
  if (cfg.kind == RowKind::kShared) {
    static std::atomic<uint64_t> smem_set{0};
    if (cfg.smem_bytes > 48 * 1024) {
      const cudaError_t err = AllowDynamicSmem(QuantizeWideKernel<T, true>, smem_set);
      if (err != cudaSuccess) return err;
    }
    QuantizeWideKernel<T, true><<<blocks, cfg.threads, cfg.smem_bytes, stream>>>(a);
  } else {
    QuantizeWideKernel<T, false><<<blocks, cfg.threads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

// --------------------------------------------------- quantize per tensor

template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    AbsMaxKernel(const T* x, FlatPlan plan, unsigned* absmax) {
  constexpr int N = kVecOf<T>;
  __shared__ unsigned red[33];
  unsigned m = 0;
  FlatLoop<N>(
      plan, [&](int64_t i) { m = AbsMaxOf(LoadVec<T, N>(x + i), m); },
      [&](int64_t i) { m = max(m, AbsBits(ToFloat(x[i]))); });
  m = BlockAllReduce(m, MaxOp{}, 0u, red);
  if (threadIdx.x == 0 && m != 0) atomicMax(absmax, m);
}

template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    QuantizeFlatKernel(const T* x, int8_t* values, FlatPlan plan, const unsigned* absmax,
                       float* scale_out, int* nonfinite) {
  constexpr int N = kVecOf<T>;
  const unsigned m = *absmax;
  const float scale = ScaleOf(m);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *scale_out = scale;
    if (m >= kInfBits) *nonfinite = 1;
  }
  FlatLoop<N>(
      plan,
      [&](int64_t i) { StoreVec<int8_t, N>(values + i, QuantizeVec(LoadVec<T, N>(x + i), scale)); },
      [&](int64_t i) { values[i] = Quantize1(ToFloat(x[i]), scale); });
}

template <typename T>
cudaError_t LaunchQuantizeTensor(const QuantizeParams& p, cudaStream_t stream) {
  if (p.workspace == nullptr) return cudaErrorInvalidValue;
  auto* absmax = static_cast<unsigned*>(p.workspace);
  cudaError_t err = cudaMemsetAsync(absmax, 0, sizeof(unsigned), stream);
  if (err != cudaSuccess) return err;
  const int64_t n = p.rows * p.cols;
  const FlatPlan plan = PlanFlat(n, kVecOf<T>, {{p.input, sizeof(T)}, {p.values, 1}});
  const int64_t work = plan.nvec > plan.scalars() ? plan.nvec : plan.scalars();
  const T* x = static_cast<const T*>(p.input);
  // With n == 0 the second kernel still writes the scale (1) for the empty
  // tensor, as the CPU does.
  AbsMaxKernel<T><<<FlatBlocks(work), kFlatThreads, 0, stream>>>(x, plan, absmax);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  QuantizeFlatKernel<T><<<FlatBlocks(work), kFlatThreads, 0, stream>>>(x, p.values, plan, absmax,
                                                                       p.scales, p.nonfinite);
  return cudaGetLastError();
}

// ------------------------------------------------------------ dequantize

// Per-row plans never start with a scalar prefix and need cols % N == 0, so
// a vector never straddles two rows.
template <int N>
FlatPlan PlanQuantized(int64_t n, int64_t cols, bool per_row, const void* floats, int itemsize,
                       const int8_t* values) {
  if (per_row && cols % N != 0) return FlatPlan{n, 0, 0};
  return PlanFlat(n, N, {{floats, itemsize}, {values, 1}}, !per_row);
}

// The row of element i comes from a FastDiv (a multiply-high and a shift
// in place of a ~20-instruction division ahead of the scale's load).
template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    DequantizeKernel(const int8_t* values, const float* scales, bool per_row, FastDiv cols, T* out,
                     FlatPlan plan) {
  constexpr int N = kVecOf<T>;
  const float scale0 = scales[0];
  FlatLoop<N>(
      plan,
      [&](int64_t i) {
        const float s = per_row ? scales[cols.Div(i)] : scale0;
        const Vec<int8_t, N> q = LoadStream<Vec<int8_t, N>>(values + i);
        Vec<T, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = FromFloat<T>(__fmul_rn(static_cast<float>(q.v[j]), s));
        StoreStream(out + i, o);
      },
      [&](int64_t i) {
        const float s = per_row ? scales[cols.Div(i)] : scale0;
        out[i] = FromFloat<T>(__fmul_rn(static_cast<float>(values[i]), s));
      });
}

// Small per-row calls (decode-sized: see LaunchDequantizeT) whose cols are
// whole chunks of kDqRowVec and whose pointers are aligned: a 2-D grid,
// blockIdx.x the row and blockIdx.y the column block, kDqRowVec elements per
// thread. The row's scale is one uniform load issued beside the values (no
// division, no plan or grid-stride loop before the first load). Measured
// (graph of 100 launches, H100): bf16 1x4096 1.42 -> 1.22 us, 16x4096 1.57
// -> 1.30 us (torch.compile 1.24 / 1.33 in the same run), fp16 1.42 / 1.57
// -> 1.21 / 1.30 (compile 1.20 / 1.31); with 16 elements per thread 1.29 /
// 1.41, with 32 1.55 / 1.64. For large calls the flat
// kernel stays: the 2-D grid measured 0.770 of copy at [4096, 4096] against
// 0.775-0.800 (16 per thread 0.753, 32 per thread 0.556).
constexpr int kDqRowVec = 8;

template <typename T>
__global__ void __launch_bounds__(256)
    DequantizeRowsKernel(const int8_t* values, const float* scales, T* out, int64_t cols) {
  constexpr int V = kDqRowVec;
  constexpr int N = kVecOf<T> < V ? kVecOf<T> : V;  // elements per store (16 bytes)
  const int64_t row = blockIdx.x;
  const int64_t col = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (col >= cols) return;
  const int64_t i = row * cols + col;
  const float s = scales[row];
  const Vec<int8_t, V> q = LoadStream<Vec<int8_t, V>>(values + i);
#pragma unroll
  for (int u = 0; u < V / N; ++u) {
    Vec<T, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j)
      o.v[j] = FromFloat<T>(__fmul_rn(static_cast<float>(q.v[u * N + j]), s));
    StoreStream(out + i + u * N, o);
  }
}

// Launches DequantizeRowsKernel when the call qualifies (else false).
// 128-thread blocks for calls of fewer than 4096 threads (1x4096: 4 blocks;
// 1.22 us against 1.25 with 256), 256 beyond (16x4096: 1.31 against 1.36).
template <typename T>
bool LaunchDequantizeRows(const DequantizeParams& p, cudaStream_t stream) {
  constexpr int V = kDqRowVec;
  if (!p.per_row || p.cols % V != 0 || p.rows > 0x7fffffff) return false;
  if (!IsAligned(p.values, V) || !IsAligned(p.output, 16)) return false;
  const int threads = p.rows * (p.cols / V) < 4096 ? 128 : 256;
  const int64_t col_blocks = CeilDiv(p.cols / V, threads);
  if (col_blocks > 65535) return false;
  DequantizeRowsKernel<T>
      <<<dim3(static_cast<unsigned>(p.rows), static_cast<unsigned>(col_blocks)), threads, 0,
         stream>>>(p.values, p.scales, static_cast<T*>(p.output), p.cols);
  return true;
}

}  // namespace

template <typename T>
cudaError_t LaunchDequantizeT(const DequantizeParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  const FlatPlan plan =
      PlanQuantized<kVecOf<T>>(n, p.cols, p.per_row, p.output, sizeof(T), p.values);
  const int64_t work = plan.nvec > plan.scalars() ? plan.nvec : plan.scalars();
  // Small calls (fewer vectors than NumSms * 256): per-row scales take the
  // 2-D row kernel when they can; otherwise 128-thread blocks, twice the
  // blocks over more SMs (1x4096 bf16: 1.42 us against 1.45 with 256).
  const bool small = work < int64_t{NumSms()} * kFlatThreads;
  if (small && LaunchDequantizeRows<T>(p, stream)) return cudaGetLastError();
  const int threads = small ? 128 : kFlatThreads;
  DequantizeKernel<T><<<OneShotBlocks(work, threads), threads, 0, stream>>>(
      p.values, p.scales, p.per_row, FastDiv(p.cols), static_cast<T*>(p.output), plan);
  return cudaGetLastError();
}

namespace {
// ---------------------------------------------------- quantization error

// d = o - q * scale in fp32, each operation rounded (no FMA contraction).
__device__ __forceinline__ float DiffOf(float o, int8_t q, float scale) {
  return __fsub_rn(o, __fmul_rn(static_cast<float>(q), scale));
}

__device__ __forceinline__ void AtomicMaxNonNegative(double* addr, double v) {
  atomicMax(reinterpret_cast<unsigned long long*>(addr),
            static_cast<unsigned long long>(__double_as_longlong(v)));
}

// Calls add(o, q, s) for every element of this thread's share of the plan:
// o the original value (fp32), q its int8 value, s its scale. The two
// QuantizationError passes walk (original, values) this way.
template <typename T, typename Add>
__device__ __forceinline__ void ForEachQuantized(const T* orig, const int8_t* values,
                                                 const float* scales, bool per_row, int64_t cols,
                                                 const FlatPlan& plan, Add&& add) {
  constexpr int N = kVecOf<T>;
  const float scale0 = scales[0];
  FlatLoop<N>(
      plan,
      [&](int64_t i) {
        const float s = per_row ? scales[RowOf(i, cols)] : scale0;
        const Vec<T, N> o = LoadVec<T, N>(orig + i);
        const Vec<int8_t, N> q = LoadVec<int8_t, N>(values + i);
#pragma unroll
        for (int j = 0; j < N; ++j) add(ToFloat(o.v[j]), q.v[j], s);
      },
      [&](int64_t i) {
        add(ToFloat(orig[i]), values[i], per_row ? scales[RowOf(i, cols)] : scale0);
      });
}

template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    ErrorStatsKernel(const T* orig, const int8_t* values, const float* scales, bool per_row,
                     int64_t cols, FlatPlan plan, double* stats) {
  __shared__ double dred[33];
  __shared__ float fred[33];
  float max_d = 0.0f, max_o = 0.0f;
  double sum_abs = 0.0, sum_o2 = 0.0, sum_d2 = 0.0;
  auto add = [&](float o, int8_t q, float s) {
    const float d = DiffOf(o, q, s);
    const float ad = fabsf(d);
    max_d = fmaxf(max_d, ad);
    max_o = fmaxf(max_o, fabsf(o));
    sum_abs += static_cast<double>(ad);
    sum_o2 = fma(static_cast<double>(o), static_cast<double>(o), sum_o2);
    sum_d2 = fma(static_cast<double>(d), static_cast<double>(d), sum_d2);
  };
  ForEachQuantized<T>(orig, values, scales, per_row, cols, plan, add);
  max_d = BlockAllReduce(max_d, MaxOp{}, 0.0f, fred);
  max_o = BlockAllReduce(max_o, MaxOp{}, 0.0f, fred);
  sum_abs = BlockAllReduce(sum_abs, SumOp{}, 0.0, dred);
  sum_o2 = BlockAllReduce(sum_o2, SumOp{}, 0.0, dred);
  sum_d2 = BlockAllReduce(sum_d2, SumOp{}, 0.0, dred);
  if (threadIdx.x == 0) {
    AtomicMaxNonNegative(&stats[kMaxAbsDiff], static_cast<double>(max_d));
    AtomicMaxNonNegative(&stats[kMaxAbsOrig], static_cast<double>(max_o));
    atomicAdd(&stats[kSumAbsDiff], sum_abs);
    atomicAdd(&stats[kSumSqOrig], sum_o2);
    atomicAdd(&stats[kSumSqDiff], sum_d2);
  }
}

// max |d| / |o| over |o| > 0.1 max|o|, kept as a fraction num / den per
// thread (a * d > c * b is exact in double for fp32 operands), divided once.
template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    RelativeErrorKernel(const T* orig, const int8_t* values, const float* scales, bool per_row,
                        int64_t cols, FlatPlan plan, double* stats) {
  __shared__ double dred[33];
  const double threshold = 0.1 * stats[kMaxAbsOrig];
  double num = 0.0, den = 1.0;
  auto add = [&](float o, int8_t q, float s) {
    const double ao = fabs(static_cast<double>(o));
    if (ao > threshold) {
      const double ad = fabs(static_cast<double>(DiffOf(o, q, s)));
      if (ad * den > num * ao) {
        num = ad;
        den = ao;
      }
    }
  };
  ForEachQuantized<T>(orig, values, scales, per_row, cols, plan, add);
  const double rel = BlockAllReduce(num / den, MaxOp{}, 0.0, dred);
  if (threadIdx.x == 0) AtomicMaxNonNegative(&stats[kMaxRel], rel);
}

}  // namespace

template <typename T>
cudaError_t LaunchQuantErrorT(const QuantErrorParams& p, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(p.stats, 0, kStatCount * sizeof(double), stream);
  if (err != cudaSuccess) return err;
  const int64_t n = p.rows * p.cols;
  if (n == 0) return cudaSuccess;
  const FlatPlan plan =
      PlanQuantized<kVecOf<T>>(n, p.cols, p.per_row, p.original, sizeof(T), p.values);
  const int64_t work = plan.nvec > plan.scalars() ? plan.nvec : plan.scalars();
  const T* orig = static_cast<const T*>(p.original);
  ErrorStatsKernel<T><<<FlatBlocks(work), kFlatThreads, 0, stream>>>(
      orig, p.values, p.scales, p.per_row, p.cols, plan, p.stats);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  RelativeErrorKernel<T><<<FlatBlocks(work), kFlatThreads, 0, stream>>>(
      orig, p.values, p.scales, p.per_row, p.cols, plan, p.stats);
  return cudaGetLastError();
}

// ------------------------------------------------------------- launchers

size_t QuantizeWorkspaceBytes() { return 256; }

template <typename T>
cudaError_t LaunchQuantizeT(const QuantizeParams& p, cudaStream_t stream) {
  return p.per_row ? LaunchQuantizeRows<T>(p, stream) : LaunchQuantizeTensor<T>(p, stream);
}

template cudaError_t LaunchQuantizeT<float>(const QuantizeParams&, cudaStream_t);
template cudaError_t LaunchQuantizeT<__half>(const QuantizeParams&, cudaStream_t);
template cudaError_t LaunchQuantizeT<__nv_bfloat16>(const QuantizeParams&, cudaStream_t);
template cudaError_t LaunchDequantizeT<float>(const DequantizeParams&, cudaStream_t);
template cudaError_t LaunchDequantizeT<__half>(const DequantizeParams&, cudaStream_t);
template cudaError_t LaunchDequantizeT<__nv_bfloat16>(const DequantizeParams&, cudaStream_t);
template cudaError_t LaunchQuantErrorT<float>(const QuantErrorParams&, cudaStream_t);
template cudaError_t LaunchQuantErrorT<__half>(const QuantErrorParams&, cudaStream_t);
template cudaError_t LaunchQuantErrorT<__nv_bfloat16>(const QuantErrorParams&, cudaStream_t);

cudaError_t LaunchQuantize(const QuantizeParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.cols < 0 || p.nonfinite == nullptr) return cudaErrorInvalidValue;
  return DispatchFloat(p.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    // Per row with no rows: nothing to write. Rows of no columns get scale 1
    // (absmax 0), and per tensor always writes its scale (1 when empty), as
    // the CPU does.
    if (p.per_row && p.rows == 0) return cudaSuccess;
    return LaunchQuantizeT<T>(p, stream);
  });
}

cudaError_t LaunchDequantize(const DequantizeParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.cols < 0) return cudaErrorInvalidValue;
  return DispatchFloat(p.out_dtype, [&](auto tag) -> cudaError_t {
    if (p.rows == 0 || p.cols == 0) return cudaSuccess;
    return LaunchDequantizeT<typename decltype(tag)::type>(p, stream);
  });
}

int QuantErrorStatsCount() { return kStatCount; }

cudaError_t LaunchQuantizationError(const QuantErrorParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.cols < 0 || p.stats == nullptr) return cudaErrorInvalidValue;
  return DispatchFloat(p.dtype, [&](auto tag) -> cudaError_t {
    return LaunchQuantErrorT<typename decltype(tag)::type>(p, stream);
  });
}

void FinishQuantizationError(const double* host_stats, int64_t elements, double* max_abs,
                             double* mean_abs, double* relative_pct, double* snr_db) {
  *max_abs = *mean_abs = *relative_pct = *snr_db = 0.0;
  if (elements <= 0) return;
  const double n = static_cast<double>(elements);
  *max_abs = host_stats[kMaxAbsDiff];
  *mean_abs = host_stats[kSumAbsDiff] / n;
  *relative_pct = 100.0 * host_stats[kMaxRel];
  *snr_db = 10.0 * std::log10((host_stats[kSumSqOrig] / n) / (host_stats[kSumSqDiff] / n + 1e-10));
}

}  // namespace accel::kernels::cuda
