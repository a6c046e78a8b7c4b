// RmsNorm on the GPU, with or without the fused residual add (LaunchRmsNorm
// of launch.h).
//
// One block per row. The row is split into 16-byte chunks (8 bf16/fp16 or 4
// fp32 elements); chunk c belongs to thread c % threads (PickRowConfig in
// common.cuh). Up to 512 chunks (4096 bf16 columns) the row stays in
// registers; wider rows up to the opt-in shared memory (~113K bf16 columns
// on H100) are staged in shared memory; either way each tensor crosses DRAM
// once: read input (+ residual), write output (+ residual_out). Rows wider
// still take the two-pass path, which reads s a second time (mostly from
// L2). The weight row is re-read per row but hits L1/L2.
//
// Bytes moved: rows * cols * sizeof(T) * (2; 3 with a residual; 4 with a
// residual and residual_out) + the weight once. Launch: grid = rows (one
// block each, grid-stride past 2^31 - 1), 32..256 threads of 1-2 chunks
// (registers) or up to 1024 threads of 4+ chunks (shared / two-pass).
//
// Numerics: s = round_T(fp32(input + residual)) (exactly what is stored in
// residual_out); the sum of squares accumulates in fp32 per thread (in chunk
// order) and then in a fixed-order tree, so the result is deterministic and
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

// One row in registers: kItems (1 or 2) chunks per thread. kFast: every
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
