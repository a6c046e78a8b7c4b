// Symmetric int8 quantization on the GPU: Quantize (per row, per tensor),
// Dequantize and the QuantizationError statistics (launch.h).
//
// Quantize per row: one block per row and ONE pass over DRAM: the row is
// loaded into registers (<= 512 chunks) or shared memory (wider rows up to
// the opt-in limit), its absmax reduced over the block, and q written from
// the on-chip copy; rows wider still re-read the row (two-pass kernel).
// Bytes: rows * cols * (sizeof(T) + 1) + rows * 4.
// Quantize per tensor: a memset of a 4-byte workspace, then two launches:
// an absmax reduction (atomicMax on the float bits, one per block) and the
// quantization; the input is read twice, which a tensor-wide scale
// requires. Bytes: n * (2 * sizeof(T) + 1).
// Dequantize: flat, n * (1 + sizeof(T)) bytes plus the scales.
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

// The row in registers, kItems (1 or 2) chunks per thread; as RmsNorm's
// register kernel (chunk c to thread c % threads, <= 256 threads).
template <typename T, int kItems>
__global__ void __launch_bounds__(256, 4) QuantizeRowKernel(QRowArgs<T> a) {
  constexpr int N = kVecOf<T>;
  __shared__ unsigned red[33];
  const int64_t chunks = CeilDiv(a.cols, N);
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const int64_t off = row * a.cols;
    const bool in_vec = AlignedTo(a.input + off, 16);
    const bool out_vec = AlignedTo(a.values + off, N);
    Vec<T, N> x[kItems];
    int count[kItems];
    unsigned m = 0;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      count[k] = ChunkCount(c, chunks, a.cols, N);
      x[k] = LoadChunk<T, N>(a.input + off + c * N, count[k], in_vec);
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) m = AbsMaxOf(x[k], m);
    m = BlockAllReduce(m, MaxOp{}, 0u, red);
    const float scale = RowScale(a, row, m);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      StoreChunk<int8_t, N>(a.values + off + c * N, QuantizeVec(x[k], scale), count[k], out_vec);
    }
  }
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
  const RowConfig cfg = PickRowConfig(p.cols, kVecOf<T>, sizeof(T), MaxDynamicSmem());
  const unsigned blocks = RowBlocks(p.rows);
  switch (cfg.kind) {
    case RowKind::kRegisters:
      if (cfg.items == 1) {
        QuantizeRowKernel<T, 1><<<blocks, cfg.threads, 0, stream>>>(a);
      } else {
        QuantizeRowKernel<T, 2><<<blocks, cfg.threads, 0, stream>>>(a);
      }
      break;
    case RowKind::kShared: {
      static std::atomic<uint64_t> smem_set{0};
      if (cfg.smem_bytes > 48 * 1024) {
        const cudaError_t err = AllowDynamicSmem(QuantizeWideKernel<T, true>, smem_set);
        if (err != cudaSuccess) return err;
      }
      QuantizeWideKernel<T, true><<<blocks, cfg.threads, cfg.smem_bytes, stream>>>(a);
      break;
    }
    case RowKind::kTwoPass:
      QuantizeWideKernel<T, false><<<blocks, cfg.threads, 0, stream>>>(a);
      break;
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

template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    DequantizeKernel(const int8_t* values, const float* scales, bool per_row, int64_t cols, T* out,
                     FlatPlan plan) {
  constexpr int N = kVecOf<T>;
  const float scale0 = scales[0];
  FlatLoop<N>(
      plan,
      [&](int64_t i) {
        const float s = per_row ? scales[RowOf(i, cols)] : scale0;
        const Vec<int8_t, N> q = LoadVec<int8_t, N>(values + i);
        Vec<T, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = FromFloat<T>(__fmul_rn(static_cast<float>(q.v[j]), s));
        StoreVec<T, N>(out + i, o);
      },
      [&](int64_t i) {
        const float s = per_row ? scales[RowOf(i, cols)] : scale0;
        out[i] = FromFloat<T>(__fmul_rn(static_cast<float>(values[i]), s));
      });
}

}  // namespace

template <typename T>
cudaError_t LaunchDequantizeT(const DequantizeParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  const FlatPlan plan =
      PlanQuantized<kVecOf<T>>(n, p.cols, p.per_row, p.output, sizeof(T), p.values);
  const int64_t work = plan.nvec > plan.scalars() ? plan.nvec : plan.scalars();
  DequantizeKernel<T><<<FlatBlocks(work), kFlatThreads, 0, stream>>>(
      p.values, p.scales, p.per_row, p.cols, static_cast<T*>(p.output), plan);
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

template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    ErrorStatsKernel(const T* orig, const int8_t* values, const float* scales, bool per_row,
                     int64_t cols, FlatPlan plan, double* stats) {
  constexpr int N = kVecOf<T>;
  __shared__ double dred[33];
  __shared__ float fred[33];
  const float scale0 = scales[0];
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
  constexpr int N = kVecOf<T>;
  __shared__ double dred[33];
  const float scale0 = scales[0];
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
