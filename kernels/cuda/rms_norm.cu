// RmsNorm on the GPU, with or without the fused residual add (LaunchRmsNorm
// of launch.h).
//
// RmsNorm without a residual, rows of up to 1024 chunks (16-byte chunks: 8
// bf16/fp16 or 4 fp32 elements; 8192 bf16 columns): one warp per row (<= 512
// chunks) or a pair of warps, the row in registers as packed words: chunk c
// belongs to row thread c % (32 or 64), all of a thread's loads are issued
// before the first use (up to 16 x 16 bytes), the weights follow in
// pipelined groups, and the sum needs no block barrier (a warp butterfly,
// plus one 64-thread named barrier for a pair). With a residual, rows of up
// to 512 chunks take one block per row (1-2 chunks per thread in registers),
// which measured as fast at 4096 columns and faster for 1-16 rows. Wider
// rows take one block per row: staged in shared memory up to the opt-in
// limit (~113K bf16 columns on H100), else the two-pass path, which reads s
// a second time (mostly from L2). Either way each tensor crosses DRAM once:
// read input (+ residual), write output (+ residual_out). The weight row is
// re-read per row but hits L1/L2.
//
// Bytes moved: rows * cols * sizeof(T) * (2; 3 with a residual; 4 with a
// residual and residual_out) + the weight once. Launch: warp rows in blocks
// of 4 warps (fewer for fewer rows), grid = rows / rows per block; block
// rows one block each (grid-stride past 2^31 - 1), 32..256 threads of 1-2
// chunks (registers) or up to 512 threads of 4+ chunks (shared / two-pass).
//
// Numerics: s = round_T(fp32(input + residual)) (exactly what is stored in
// residual_out); the sum of squares accumulates in fp32 per thread (block
// rows: one chain in chunk order; warp rows: a chain per chunk, the chunk
// sums added in chunk order) and then in a fixed-order tree, so the result is deterministic and
// independent of the row's address (batched or not); out = round_T(s *
// rsqrt(mean + eps) * w). rsqrtf is within 2 ulp of fp32, far inside the
// contract's tolerances; the mean is an IEEE division.
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
};

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

// RmsNorm+residual rows of up to 512 chunks: one block per row, the row in
// registers, kItems (1 or 2) chunks per thread. (The warp-per-row kernel
// below measured no faster with a residual at 4096 columns and slower for
// 1-16 rows: 4.0-4.8 us against 3.2; so the residual keeps this one.) kFast: every
// pointer of the row is 16-byte aligned and cols is a whole number of
// chunks, so every access is one vector; otherwise chunks may move element
// by element (the same values, so the same result bits). All loads (input,
// residual, and the weights, whose latency then hides behind the reduction)
// are issued before any value is used, and residual_out is stored after
// them, so no load waits behind a store. (At 4 chunks per thread ptxas needs
// more than 64 registers and spills; wider rows use the wide kernel.)
template <typename T, int kItems, bool kResidual, bool kFast>
__device__ __forceinline__ void RmsNormRow(const RmsArgs<T>& a, int64_t off, int64_t chunks,
                                           float* red) {
  constexpr int N = kVecOf<T>;
  const bool in_vec = kFast || Aligned16(a.input + off);
  const bool out_vec = kFast || Aligned16(a.output + off);
  int count[kItems];
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    count[k] = ChunkCount(threadIdx.x + static_cast<int64_t>(k) * blockDim.x, chunks, a.cols, N);
  }
  auto elem = [&](int k) { return (threadIdx.x + static_cast<int64_t>(k) * blockDim.x) * N; };
  Vec<T, N> s[kItems];
#pragma unroll
  for (int k = 0; k < kItems; ++k)
    s[k] = LoadChunk<T, N>(a.input + off + elem(k), count[k], in_vec);
  if constexpr (kResidual) {
    const bool res_vec = kFast || Aligned16(a.residual + off);
    Vec<T, N> r[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      r[k] = LoadChunk<T, N>(a.residual + off + elem(k), count[k], res_vec);
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) AddResidual(s[k], r[k]);
  }
  float w[kItems][N];
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    LoadWeights<N>(a.weight, a.weight_dtype, elem(k), count[k], kFast || a.weight_vector, w[k]);
  }
  if constexpr (kResidual) {
    if (a.residual_out != nullptr) {
      const bool rout_vec = kFast || Aligned16(a.residual_out + off);
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        StoreChunk<T, N>(a.residual_out + off + elem(k), s[k], count[k], rout_vec);
      }
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) ss = SumSquares(s[k], ss);
  ss = BlockAllReduce(ss, SumOp{}, 0.0f, red);
  const float inv = rsqrtf(__fdiv_rn(ss, static_cast<float>(a.cols)) + a.eps);
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    if (count[k] > 0) {
      StoreChunk<T, N>(a.output + off + elem(k), Scale(s[k], inv, w[k]), count[k], out_vec);
    }
  }
}

// Blocks of at most 256 threads and at most 64 registers: 4+ blocks per SM,
// so one block's barriers overlap another's loads.
template <typename T, int kItems, bool kResidual>
__global__ void __launch_bounds__(256, 4) RmsNormRowKernel(RmsArgs<T> a) {
  constexpr int N = kVecOf<T>;
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
      RmsNormRow<T, kItems, kResidual, true>(a, off, chunks, red);
    } else {
      RmsNormRow<T, kItems, kResidual, false>(a, off, chunks, red);
    }
  }
}

// Rows of up to kWarpMaxChunks chunks (4096 bf16 / 2048 fp32 columns): one
// warp per row, no block barrier. Lane l owns chunks l, l + 32, ... (kItems
// per lane, a power of two: the split depends only on cols, so a row's bits
// never depend on where it lives). All of a lane's input (and residual)
// loads are issued before any is used: up to 256 bytes per lane, 8 KB per
// warp in flight, against the block kernel's 32 bytes per thread. The
// weights are read after the reduction, chunk by chunk (L1/L2 hits).
constexpr int kWarpMaxChunks = 512;
constexpr int kWarpRowsPerBlock = 4;

// Sum of a row's partial sums over its kRowThreads threads: a warp
// butterfly, then for two warps per row the two warp sums in warp order
// (each posts its sum, a 64-thread named barrier, both add; pair_red is
// double-buffered by the caller, so the next row's post never overwrites an
// unread sum).
template <int kRowThreads>
__device__ __forceinline__ float RowSum(float ss, int lane, float* pair_red, int pair) {
  ss = WarpSum(ss);
  if constexpr (kRowThreads == 64) {
    if (lane % 32 == 0) pair_red[lane / 32] = ss;
    asm volatile("bar.sync %0, 64;" ::"r"(1 + pair) : "memory");
    ss = pair_red[0] + pair_red[1];
  }
  return ss;
}

// The fast row: every pointer 16-byte aligned and cols whole chunks. The
// row is held as packed words (uint4); the arithmetic is element for element
// that of AddResidual / SumSquares / Scale, so the bits are the slow path's.
template <typename T, typename W, int kItems, int kRowThreads, bool kResidual, bool kPreload>
__device__ __forceinline__ void RmsNormWarpRowFast(const RmsArgs<T>& a, int64_t off, int64_t chunks,
                                                   int lane, float* pair_red, int pair) {
  constexpr int N = kVecOf<T>;
  bool live[kItems];
#pragma unroll
  for (int k = 0; k < kItems; ++k) live[k] = lane + static_cast<int64_t>(k) * kRowThreads < chunks;
  auto elem = [&](int k) { return (lane + static_cast<int64_t>(k) * kRowThreads) * N; };
  uint4 s[kItems];
  const uint4 zero = make_uint4(0, 0, 0, 0);
  if constexpr (kResidual) {
    // Groups of 4 chunks: the residual of a group is added as soon as it
    // lands, so input and residual never need 2 x 64 data registers.
    constexpr int kGroup = kItems < 4 ? kItems : 4;
#pragma unroll
    for (int g = 0; g < kItems; g += kGroup) {
      uint4 r[kGroup];
#pragma unroll
      for (int k = 0; k < kGroup; ++k) {
        s[g + k] = live[g + k] ? LoadWords(a.input + off + elem(g + k)) : zero;
      }
#pragma unroll
      for (int k = 0; k < kGroup; ++k) {
        r[k] = live[g + k] ? LoadWords(a.residual + off + elem(g + k)) : zero;
      }
#pragma unroll
      for (int k = 0; k < kGroup; ++k) {
        const uint4 x = s[g + k];
        s[g + k] =
            PackVec<T>([&](int j) { return __fadd_rn(ElemOf<T>(x, j), ElemOf<T>(r[k], j)); });
      }
      if (a.residual_out != nullptr) {
#pragma unroll
        for (int k = 0; k < kGroup; ++k) {
          if (live[g + k]) StoreWords(a.residual_out + off + elem(g + k), s[g + k]);
        }
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      s[k] = live[k] ? LoadStream<uint4>(a.input + off + elem(k)) : zero;
    }
  }
  // Sum of squares: each chunk's own fused chain from 0, the chunk sums
  // added in chunk order (ChunkSquares): chains of N + kItems dependent
  // operations rather than N * kItems.
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float f = ElemOf<T>(s[k], j);
      part = fmaf(f, f, part);
    }
    ss += part;
  }
  if constexpr (std::is_void_v<W>) {
    // Weights of another width than T: chunk by chunk through the runtime
    // switch (a correctness path; the served models use one width).
    ss = RowSum<kRowThreads>(ss, lane, pair_red, pair);
    const float inv = rsqrtf(__fdiv_rn(ss, static_cast<float>(a.cols)) + a.eps);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      if (live[k]) {
        float w[N];
        LoadWeights<N>(a.weight, a.weight_dtype, elem(k), N, true, w);
        const uint4 x = s[k];
        StoreStream(a.output + off + elem(k),
                    PackVec<T>([&](int j) { return ElemOf<T>(x, j) * inv * w[j]; }));
      }
    }
  } else {
    // Weights of T's width (16 bytes a chunk, held as words), in groups of
    // 4 chunks: the next group's loads issued before this group's math and
    // the first group's before the reduction, so a row waits a few L1/L2
    // latencies rather than one per chunk (with the runtime weight-type
    // switch per chunk they were serialised: 1-row calls took 6 us).
    static_assert(sizeof(W) == sizeof(T), "16 bytes of weights per chunk");
    // kPreload (calls of few rows): every weight load before the reduction.
    constexpr int kWG = kPreload || kItems < 4 ? kItems : 4;
    const W* wrow = static_cast<const W*>(a.weight);
    uint4 wv[kItems];
#pragma unroll
    for (int k = 0; k < kWG; ++k) wv[k] = live[k] ? LoadWords(wrow + elem(k)) : zero;
    ss = RowSum<kRowThreads>(ss, lane, pair_red, pair);
    const float inv = rsqrtf(__fdiv_rn(ss, static_cast<float>(a.cols)) + a.eps);
#pragma unroll
    for (int g = 0; g < kItems; g += kWG) {
      if (g + kWG < kItems) {
#pragma unroll
        for (int k = g + kWG; k < g + 2 * kWG; ++k) {
          wv[k] = live[k] ? LoadWords(wrow + elem(k)) : zero;
        }
      }
#pragma unroll
      for (int k = g; k < g + kWG; ++k) {
        if (live[k]) {
          const uint4 x = s[k], w = wv[k];
          StoreStream(a.output + off + elem(k),
                      PackVec<T>([&](int j) { return ElemOf<T>(x, j) * inv * ElemOf<W>(w, j); }));
        }
      }
    }
  }
}

// Any other row (misaligned pointers, a partial last chunk): the same chunk
// split and the same order of the sum, so the same bits, but element-wise
// and in two passes rather than with the row in registers (it is the rare
// path; unrolling it was slow to compile and heavy on registers). Pass 2
// takes s from residual_out when it was written (it may alias residual),
// else recomputes it; each chunk stays with one thread, so in-place use is
// safe.
template <typename T, int kItems, int kRowThreads, bool kResidual>
__device__ __noinline__ void RmsNormWarpRowSlow(const RmsArgs<T>& a, int64_t off, int64_t chunks,
                                                int lane, float* pair_red, int pair) {
  constexpr int N = kVecOf<T>;
  auto form = [&](int64_t c, int count) {
    Vec<T, N> s = LoadChunk<T, N>(a.input + off + c * N, count, false);
    if constexpr (kResidual) {
      AddResidual(s, LoadChunk<T, N>(a.residual + off + c * N, count, false));
    }
    return s;
  };
  float ss = 0.0f;
#pragma unroll 1
  for (int k = 0; k < kItems; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * kRowThreads;
    const int count = ChunkCount(c, chunks, a.cols, N);
    if (count == 0) continue;  // a missing chunk adds +0 to the sum
    const Vec<T, N> s = form(c, count);
    if (kResidual && a.residual_out != nullptr) {
      StoreChunk<T, N>(a.residual_out + off + c * N, s, count, false);
    }
    ss += SumSquares(s, 0.0f);  // the fast path's order: chunk sums, in chunk order
  }
  ss = RowSum<kRowThreads>(ss, lane, pair_red, pair);
  const float inv = rsqrtf(__fdiv_rn(ss, static_cast<float>(a.cols)) + a.eps);
#pragma unroll 1
  for (int k = 0; k < kItems; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * kRowThreads;
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

// kWarpRowsPerBlock warps per block, a row to each warp (kRowThreads 32)
// or to each pair of warps (64, rows of 513..1024 chunks); 128-register cap
// at 16 items (4 blocks = 16 warps, 128 KB of loads in flight per SM),
// tighter below.
template <typename T, int kItems, int kRowThreads, bool kResidual, bool kPreload>
__global__ void __launch_bounds__(kWarpRowsPerBlock * 32, kPreload ? 1 : (kItems >= 8 ? 4 : 8))
    RmsNormWarpKernel(RmsArgs<T> a) {
  constexpr int N = kVecOf<T>;
  __shared__ float pair_red[2][kWarpRowsPerBlock];
  const int lane = threadIdx.x % kRowThreads;
  const int slot = threadIdx.x / kRowThreads;  // row slot in the block
  const int64_t chunks = CeilDiv(a.cols, N);
  const bool whole = a.cols % N == 0 && a.weight_vector;
  const int64_t per_block = blockDim.x / kRowThreads;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * per_block;
  int parity = 0;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * per_block + slot; row < a.rows;
       row += stride, parity ^= 1) {
    const int64_t off = row * a.cols;
    float* red = &pair_red[parity][slot * 2];
    bool fast = whole && Aligned16(a.input + off) && Aligned16(a.output + off);
    if constexpr (kResidual) {
      fast = fast && Aligned16(a.residual + off) &&
             (a.residual_out == nullptr || Aligned16(a.residual_out + off));
    }
    if (fast) {
      // The weight type is uniform: one switch per row, not per chunk.
      if constexpr (sizeof(T) == 2) {
        if (a.weight_dtype == ElemType::kBF16) {
          RmsNormWarpRowFast<T, __nv_bfloat16, kItems, kRowThreads, kResidual, kPreload>(
              a, off, chunks, lane, red, slot);
        } else if (a.weight_dtype == ElemType::kF16) {
          RmsNormWarpRowFast<T, __half, kItems, kRowThreads, kResidual, kPreload>(a, off, chunks,
                                                                                  lane, red, slot);
        } else {
          RmsNormWarpRowFast<T, void, kItems, kRowThreads, kResidual, kPreload>(a, off, chunks,
                                                                                lane, red, slot);
        }
      } else {
        if (a.weight_dtype == ElemType::kF32) {
          RmsNormWarpRowFast<T, float, kItems, kRowThreads, kResidual, kPreload>(a, off, chunks,
                                                                                 lane, red, slot);
        } else {
          RmsNormWarpRowFast<T, void, kItems, kRowThreads, kResidual, kPreload>(a, off, chunks,
                                                                                lane, red, slot);
        }
      }
    } else {
      RmsNormWarpRowSlow<T, kItems, kRowThreads, kResidual>(a, off, chunks, lane, red, slot);
    }
  }
}

template <typename T, bool kPreload>
cudaError_t LaunchWarpRowsP(const RmsArgs<T>& a, int64_t chunks, unsigned blocks, int threads,
                            cudaStream_t stream) {
  if (chunks > kWarpMaxChunks) {
    RmsNormWarpKernel<T, 16, 64, false, kPreload><<<blocks, threads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  const int64_t items = CeilDiv(chunks, 32);
  if (items <= 1) {
    RmsNormWarpKernel<T, 1, 32, false, kPreload><<<blocks, threads, 0, stream>>>(a);
  } else if (items <= 2) {
    RmsNormWarpKernel<T, 2, 32, false, kPreload><<<blocks, threads, 0, stream>>>(a);
  } else if (items <= 4) {
    RmsNormWarpKernel<T, 4, 32, false, kPreload><<<blocks, threads, 0, stream>>>(a);
  } else if (items <= 8) {
    RmsNormWarpKernel<T, 8, 32, false, kPreload><<<blocks, threads, 0, stream>>>(a);
  } else {
    RmsNormWarpKernel<T, 16, 32, false, kPreload><<<blocks, threads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

// RmsNorm without a residual, rows of up to 1024 chunks. Few rows (decode
// calls): the variant that loads every weight before the reduction (more
// registers, one block per SM's worth is all there is anyway). The chunk
// split and the order of the sum are the same in both, so the bits are.
constexpr int64_t kFewRows = 64;

template <typename T>
cudaError_t LaunchWarpRows(const RmsArgs<T>& a, int64_t chunks, cudaStream_t stream) {
  const int row_threads = chunks > kWarpMaxChunks ? 64 : 32;
  const int64_t max_rows = kWarpRowsPerBlock * 32 / row_threads;
  const int64_t per_block = a.rows < max_rows ? a.rows : max_rows;
  const int threads = static_cast<int>(per_block * row_threads);
  const int64_t want = CeilDiv(a.rows, per_block);
  const unsigned blocks = static_cast<unsigned>(want < 0x7fffffff ? want : 0x7fffffff);
  return a.rows <= kFewRows ? LaunchWarpRowsP<T, true>(a, chunks, blocks, threads, stream)
                            : LaunchWarpRowsP<T, false>(a, chunks, blocks, threads, stream);
}

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
  const float inv = rsqrtf(__fdiv_rn(ss, static_cast<float>(a.cols)) + a.eps);
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
  if (!kResidual && chunks <= 2 * kWarpMaxChunks) return LaunchWarpRows<T>(a, chunks, stream);
  const RowConfig cfg = PickRowConfig(a.cols, kVecOf<T>, sizeof(T), MaxDynamicSmem());
  const unsigned blocks = RowBlocks(a.rows);
  switch (cfg.kind) {
    case RowKind::kRegisters:
      if (cfg.items == 1) {
        RmsNormRowKernel<T, 1, kResidual><<<blocks, cfg.threads, 0, stream>>>(a);
      } else {
        RmsNormRowKernel<T, 2, kResidual><<<blocks, cfg.threads, 0, stream>>>(a);
      }
      break;
    case RowKind::kShared: {
      static std::atomic<uint64_t> smem_set{0};
      if (cfg.smem_bytes > 48 * 1024) {
        const cudaError_t err = AllowDynamicSmem(RmsNormWideKernel<T, kResidual, true>, smem_set);
        if (err != cudaSuccess) return err;
      }
      RmsNormWideKernel<T, kResidual, true><<<blocks, cfg.threads, cfg.smem_bytes, stream>>>(a);
      break;
    }
    case RowKind::kTwoPass:
      RmsNormWideKernel<T, kResidual, false><<<blocks, cfg.threads, 0, stream>>>(a);
      break;
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
