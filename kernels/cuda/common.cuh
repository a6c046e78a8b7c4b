// Building blocks shared by the memory-bound CUDA kernels (rms_norm.cu,
// swiglu.cu, rope.cu, quantize.cu): 16-byte vectors, fp32 conversions with
// round-to-nearest-even stores, warp and block reductions, the flat
// (elementwise) work plan with its scalar prefix and tail, and the one
// switch that turns a runtime ElemType into a template type.
//
// nvcc-only header: it includes nothing but the CUDA runtime, its fp16/bf16
// headers and std headers (launch.h is std + CUDA too). Everything here is
// stateless except NumSms(), whose per-device cache is thread-safe.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "cuda/launch.h"

namespace accel::kernels::cuda {

// ------------------------------------------------------------------ host

__host__ __device__ constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Device properties read on the request path are read once per device
// (cudaDeviceGetAttribute neither allocates nor synchronises, but a cached
// int is cheaper still): compute(device) for the current device, kept in
// `cache` (one array per call site; 0 means not yet computed, so compute
// returns non-zero), or `fallback` when the current device cannot be read.
constexpr int kMaxCachedDevices = 64;
template <typename Compute>
int PerDeviceCached(std::atomic<int> (&cache)[kMaxCachedDevices], int fallback, Compute compute) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxCachedDevices) {
    return fallback;
  }
  int value = cache[device].load(std::memory_order_relaxed);
  if (value == 0) {
    value = compute(device);
    cache[device].store(value, std::memory_order_relaxed);
  }
  return value;
}

// Streaming multiprocessors of the current device.
inline int NumSms() {
  constexpr int kH100Sms = 132;  // only sizes grids, never correctness
  static std::atomic<int> cache[kMaxCachedDevices] = {};
  return PerDeviceCached(cache, kH100Sms, [](int device) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        sms <= 0) {
      sms = kH100Sms;
    }
    return sms;
  });
}

inline bool IsAligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// The runtime -> compile-time switch of every launcher: calls
// fn(TypeTag<T>{}) for the three float types and fails loudly
// (cudaErrorInvalidValue) for anything else, never picking a default.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename Fn>
cudaError_t DispatchFloat(ElemType t, Fn&& fn) {
  switch (t) {
    case ElemType::kF32:
      return fn(TypeTag<float>{});
    case ElemType::kF16:
      return fn(TypeTag<__half>{});
    case ElemType::kBF16:
      return fn(TypeTag<__nv_bfloat16>{});
    default:
      return cudaErrorInvalidValue;
  }
}

// The ElemType of a float type T.
template <typename T>
constexpr ElemType ElemTypeOf() {
  if constexpr (std::is_same_v<T, float>) {
    return ElemType::kF32;
  } else if constexpr (std::is_same_v<T, __half>) {
    return ElemType::kF16;
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "a float type");
    return ElemType::kBF16;
  }
}

inline bool IsFloatType(ElemType t) {
  return t == ElemType::kF32 || t == ElemType::kF16 || t == ElemType::kBF16;
}

inline int FloatSize(ElemType t) { return t == ElemType::kF32 ? 4 : 2; }

// Grid size of a launch over `units` independent pieces of work: one per
// thread, capped at kFlatBlocksPerSm blocks per SM (two waves of 8 resident
// 256-thread blocks); past the cap threads loop (grid-stride). Never 0.
// For kernels that reduce per block (one atomic per block).
constexpr int kFlatThreads = 256;
constexpr int kFlatBlocksPerSm = 16;
inline unsigned FlatBlocks(int64_t units, int threads = kFlatThreads) {
  const int64_t want = CeilDiv(units, threads);
  const int64_t cap = int64_t{NumSms()} * kFlatBlocksPerSm;
  return static_cast<unsigned>(want < 1 ? 1 : (want < cap ? want : cap));
}

// The same, uncapped: a block per `threads` units, each thread one unit
// (grid-stride only past 2^31 - 1 blocks). For streaming elementwise
// kernels: Nsight Compute showed the capped grid-stride Dequantize at 82% of
// DRAM peak where torch.compile's one-shot grid reaches 87% on the same
// bytes; uncapped, Dequantize [65536, 4096] went from 0.916 to 0.979 of copy
// and SwiGlu from 0.94-0.96 to 0.97-1.04. (The W8A16 convert and epilogue
// kernels measured 2-5% slower uncapped and keep FlatBlocks.)
inline unsigned OneShotBlocks(int64_t units, int threads = kFlatThreads) {
  const int64_t want = CeilDiv(units, threads);
  constexpr int64_t kMax = 0x7fffffff;
  return static_cast<unsigned>(want < 1 ? 1 : (want < kMax ? want : kMax));
}

// n / d for a divisor fixed per launch, without a division instruction
// sequence (a runtime 32-bit division is ~20 dependent instructions): the
// host picks s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1, and
// n / d = (mulhi(n, m) + n) >> s, exact for every 32-bit n (the error of
// m' = 2^32 + m against 2^(32+s) / d is below 1 / n). Indices past 32 bits
// or divisors past 31 fall back to the 64-bit division.
struct FastDiv {
  uint64_t d = 1;
  uint32_t magic = 0;
  int shift = 0;
  bool fits32 = true;  // d < 2^31

  FastDiv() = default;
  explicit FastDiv(int64_t divisor) : d(static_cast<uint64_t>(divisor < 1 ? 1 : divisor)) {
    fits32 = d < (uint64_t{1} << 31);
    if (!fits32) return;
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __host__ __device__ int64_t Div(int64_t n) const {
    if (fits32 && (static_cast<uint64_t>(n) >> 32) == 0) {
      const uint32_t n32 = static_cast<uint32_t>(n);
#ifdef __CUDA_ARCH__
      const uint32_t hi = __umulhi(n32, magic);
#else
      const uint32_t hi = static_cast<uint32_t>((uint64_t{n32} * magic) >> 32);
#endif
      return static_cast<int64_t>((uint64_t{hi} + n32) >> shift);
    }
    return static_cast<int64_t>(static_cast<uint64_t>(n) / d);
  }
};

// ------------------------------------------------------------ conversions

// Element i of a float tensor of any float dtype, as fp32 (bias vectors).
__device__ __forceinline__ float LoadAsFloat(const void* p, ElemType type, int64_t i) {
  switch (type) {
    case ElemType::kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case ElemType::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

// fp32 -> T, rounding to nearest even (the contract's one rounding).
template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Rounds an fp32 value to T and back (exact for float).
template <typename T>
__device__ __forceinline__ float RoundTo(float x) {
  return ToFloat(FromFloat<T>(x));
}

// ---------------------------------------------------------------- vectors

// N elements of T moved as one access: 16 bytes for the float types at
// their native N (4 floats, 8 halves), 4 or 8 bytes for int8 chunks. The
// alignment is capped at 16 (the widest load): a Vec<float, 8> of weights
// becomes two 16-byte loads and needs only 16-byte alignment.
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Vec {
  T v[N];
};

// Elements per 16-byte vector of T.
template <typename T>
inline constexpr int kVecOf = 16 / static_cast<int>(sizeof(T));

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> LoadVec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void StoreVec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// A 16-byte vector of T kept as four 32-bit words (the row kernels hold
// whole rows this way): elements are converted from, and packed into, the
// words directly, so a row of 16-bit values costs one register per two
// elements. (Held as Vec<__nv_bfloat16, 8>, ptxas gave each element its own
// register and the 16-chunk bf16 row kernels spilled.)
__device__ __forceinline__ uint32_t WordOf(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}
__device__ __forceinline__ void SetWord(uint4& v, int i, uint32_t w) {
  if (i == 0) v.x = w;
  if (i == 1) v.y = w;
  if (i == 2) v.z = w;
  if (i == 3) v.w = w;
}

// Element j (0 <= j < kVecOf<T>, a compile-time index once unrolled) as fp32.
template <typename T>
__device__ __forceinline__ float ElemOf(const uint4& v, int j) {
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(WordOf(v, j));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const uint32_t w = WordOf(v, j / 2);
    return __uint_as_float(j % 2 == 0 ? w << 16 : w & 0xffff0000u);
  } else {
    const uint32_t w = WordOf(v, j / 2);
    return __half2float(__ushort_as_half(static_cast<unsigned short>(j % 2 == 0 ? w : w >> 16)));
  }
}

// Word i of a vector of T from its elements' fp32 values e (kVecOf<T> of
// them), each rounded to nearest even: the bits FromFloat<T> gives.
template <typename T, typename F>
__device__ __forceinline__ uint32_t PackWord(int i, F e) {
  if constexpr (std::is_same_v<T, float>) {
    return __float_as_uint(e(i));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(e(2 * i), e(2 * i + 1));
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __half2 h = __floats2half2_rn(e(2 * i), e(2 * i + 1));
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// A vector of T whose element j is e(j) rounded to T.
template <typename T, typename F>
__device__ __forceinline__ uint4 PackVec(F e) {
  uint4 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) SetWord(v, i, PackWord<T>(i, e));
  return v;
}

__device__ __forceinline__ uint4 LoadWords(const void* p) { return *static_cast<const uint4*>(p); }
__device__ __forceinline__ void StoreWords(void* p, const uint4& v) { *static_cast<uint4*>(p) = v; }

// Streaming (evict-first, ld.global.cs / st.global.cs) access to an
// aligned 4-, 8- or 16-byte value: for data that is read or written once,
// so it does not push reused lines (weights, tables) out of L2.
template <typename V>
__device__ __forceinline__ V LoadStream(const void* p) {
  static_assert(sizeof(V) == 16 || sizeof(V) == 8 || sizeof(V) == 4, "one access");
  V v;
  if constexpr (sizeof(V) == 16) {
    const uint4 w = __ldcs(static_cast<const uint4*>(p));
    memcpy(&v, &w, 16);
  } else if constexpr (sizeof(V) == 8) {
    const uint2 w = __ldcs(static_cast<const uint2*>(p));
    memcpy(&v, &w, 8);
  } else {
    const unsigned w = __ldcs(static_cast<const unsigned*>(p));
    memcpy(&v, &w, 4);
  }
  return v;
}

template <typename V>
__device__ __forceinline__ void StoreStream(void* p, const V& v) {
  static_assert(sizeof(V) == 16 || sizeof(V) == 8 || sizeof(V) == 4, "one access");
  if constexpr (sizeof(V) == 16) {
    uint4 w;
    memcpy(&w, &v, 16);
    __stcs(static_cast<uint4*>(p), w);
  } else if constexpr (sizeof(V) == 8) {
    uint2 w;
    memcpy(&w, &v, 8);
    __stcs(static_cast<uint2*>(p), w);
  } else {
    unsigned w;
    memcpy(&w, &v, 4);
    __stcs(static_cast<unsigned*>(p), w);
  }
}

// A chunk of up to N elements at p: one vector access when `vector` (the
// caller checked alignment) and the chunk is whole, else element by element
// with the missing elements read as zero. Both ways give the same values, so
// results never depend on a pointer's alignment.
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> LoadChunk(const T* p, int count, bool vector) {
  if (vector && count == N) return LoadVec<T, N>(p);
  Vec<T, N> v;
#pragma unroll
  for (int j = 0; j < N; ++j) v.v[j] = j < count ? p[j] : T(0.0f);
  return v;
}

template <typename T, int N>
__device__ __forceinline__ void StoreChunk(T* p, const Vec<T, N>& v, int count, bool vector) {
  if (vector && count == N) {
    StoreVec<T, N>(p, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j < count) p[j] = v.v[j];
  }
}

// Up to N weights of a runtime float type as fp32 (weights may have another
// dtype than the input). The switch is uniform across the grid, so it costs
// a few instructions and no divergence. `vector`: the caller checked that
// the weight base is aligned to min(16, N * itemsize).
template <int N>
__device__ __forceinline__ void LoadWeights(const void* w, ElemType type, int64_t index, int count,
                                            bool vector, float (&out)[N]) {
  auto load = [&](auto tag) {
    using W = typename decltype(tag)::type;
    const Vec<W, N> v = LoadChunk<W, N>(static_cast<const W*>(w) + index, count, vector);
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = ToFloat(v.v[j]);
  };
  switch (type) {
    case ElemType::kF16:
      load(TypeTag<__half>{});
      break;
    case ElemType::kBF16:
      load(TypeTag<__nv_bfloat16>{});
      break;
    default:
      load(TypeTag<float>{});
      break;
  }
}

// ------------------------------------------------------------- reductions

struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return a + b;
  }
};
struct MaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return a > b ? a : b;
  }
};

// Butterfly reduction: every lane ends with the result, in a fixed order
// (deterministic).
template <typename A, typename Op>
__device__ __forceinline__ A WarpAllReduce(A v, Op op) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

template <typename A>
__device__ __forceinline__ A WarpSum(A v) {
  return WarpAllReduce(v, SumOp{});
}
template <typename A>
__device__ __forceinline__ A WarpMax(A v) {
  return WarpAllReduce(v, MaxOp{});
}

// Reduction over the whole block (blockDim.x a multiple of 32, at most 1024);
// every thread gets the result. smem: 33 elements. Two barriers; calling it
// again with the same smem is safe without a third (the next call writes the
// per-warp slots only after every thread left the previous second barrier,
// and slot 32 only after its own first barrier). Fixed order: deterministic.
template <typename A, typename Op>
__device__ __forceinline__ A BlockAllReduce(A v, Op op, A identity, A* smem) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  v = WarpAllReduce(v, op);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    A w = lane < static_cast<int>(blockDim.x / 32) ? smem[lane] : identity;
    w = WarpAllReduce(w, op);
    if (lane == 0) smem[32] = w;
  }
  __syncthreads();
  return smem[32];
}

// Largest |x| as a bit pattern: non-negative floats order like their bits,
// and inf and NaN have the largest patterns, so one unsigned max finds the
// absmax and whether anything is not finite.
__device__ __forceinline__ unsigned AbsBits(float x) { return __float_as_uint(x) & 0x7fffffffu; }
inline constexpr unsigned kInfBits = 0x7f800000u;

// ------------------------------------------------------------ flat plans

// How an elementwise kernel walks n elements: `prefix` scalar elements until
// the first pointer is 16-byte aligned, `nvec` whole vectors of kVec, then
// `tail` scalars. When the other pointers are not aligned alike the plan is
// all scalar (prefix = n). Elementwise results do not depend on the plan.
struct FlatPlan {
  int64_t prefix = 0;
  int64_t nvec = 0;
  int64_t tail = 0;
  __host__ __device__ int64_t scalars() const { return prefix + tail; }
};

struct PlanPtr {
  const void* ptr;
  int itemsize;  // bytes per element
};

// vec: elements per vector. Each pointer's vector is vec * itemsize bytes
// (capped at 16) and must be aligned to that after the prefix. With
// allow_prefix false, a non-zero prefix makes the plan scalar (used where a
// vector must not straddle a row: rows then start at vector boundaries).
inline FlatPlan PlanFlat(int64_t n, int vec, std::initializer_list<PlanPtr> ptrs,
                         bool allow_prefix = true) {
  FlatPlan scalar{n, 0, 0};
  if (n <= 0 || ptrs.size() == 0) return FlatPlan{n < 0 ? 0 : n, 0, 0};
  const PlanPtr first = *ptrs.begin();
  const uintptr_t vb0 =
      static_cast<uintptr_t>(vec * first.itemsize > 16 ? 16 : vec * first.itemsize);
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(first.ptr);
  if (a0 % first.itemsize != 0) return scalar;
  const int64_t prefix = static_cast<int64_t>(((vb0 - a0 % vb0) % vb0) / first.itemsize);
  if ((prefix != 0 && !allow_prefix) || prefix > n) return scalar;
  for (const PlanPtr& p : ptrs) {
    const uintptr_t vb = static_cast<uintptr_t>(vec * p.itemsize > 16 ? 16 : vec * p.itemsize);
    if ((reinterpret_cast<uintptr_t>(p.ptr) + static_cast<uintptr_t>(prefix * p.itemsize)) % vb) {
      return scalar;
    }
  }
  FlatPlan plan;
  plan.prefix = prefix;
  plan.nvec = (n - prefix) / vec;
  plan.tail = n - prefix - plan.nvec * vec;
  return plan;
}

// Grid-stride walk of a FlatPlan: vec_op(i) for the vector at element i,
// scalar_op(i) for each scalar element i. One vector per thread per step:
// bytes in flight come from occupancy (2048 threads x 16 B x inputs per SM,
// above the ~20 KB per SM that Little's law asks of an H100's HBM).
template <int kVec, typename VecOp, typename ScalarOp>
__device__ __forceinline__ void FlatLoop(const FlatPlan& plan, VecOp vec_op, ScalarOp scalar_op) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < plan.nvec; v += stride) vec_op(plan.prefix + v * kVec);
  const int64_t body_end = plan.prefix + plan.nvec * kVec;
  for (int64_t j = tid; j < plan.scalars(); j += stride) {
    scalar_op(j < plan.prefix ? j : body_end + (j - plan.prefix));
  }
}

// FlatLoop with two vectors per thread per step (v and v + stride): both
// vectors' loads (load_op) are issued before either is computed and stored
// (store_op), so each thread keeps twice the bytes in flight; a lone
// remaining vector and the scalars go as in FlatLoop. load_op(i) returns
// whatever store_op(i, loaded) needs.
template <int kVec, typename LoadOp, typename StoreOp, typename ScalarOp>
__device__ __forceinline__ void FlatLoop2(const FlatPlan& plan, LoadOp load_op, StoreOp store_op,
                                          ScalarOp scalar_op) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t v = tid;
  for (; v + stride < plan.nvec; v += 2 * stride) {
    const int64_t i0 = plan.prefix + v * kVec, i1 = plan.prefix + (v + stride) * kVec;
    const auto x0 = load_op(i0);
    const auto x1 = load_op(i1);
    store_op(i0, x0);
    store_op(i1, x1);
  }
  if (v < plan.nvec) {
    const int64_t i0 = plan.prefix + v * kVec;
    store_op(i0, load_op(i0));
  }
  const int64_t body_end = plan.prefix + plan.nvec * kVec;
  for (int64_t j = tid; j < plan.scalars(); j += stride) {
    scalar_op(j < plan.prefix ? j : body_end + (j - plan.prefix));
  }
}

// ------------------------------------------------------------- row plans

// Row kernels (RmsNorm, per-row Quantize) give each row to one block and
// split it into chunks of kVec elements; chunk c goes to thread c % threads
// (its item c / threads). The split depends only on cols, never on
// alignment, so a row's result is the same bits wherever it lives (batched
// or not); alignment only decides whether a chunk moves as one vector.
enum class RowKind {
  kRegisters,  // the row in registers, 1 or 2 chunks per thread
  kShared,     // the row in shared memory (one DRAM read of the row)
  kTwoPass,    // too wide for shared memory: the row is read twice
};

struct RowConfig {
  RowKind kind = RowKind::kRegisters;
  int threads = 32;       // multiple of 32, at most 512
  int items = 1;          // kRegisters: chunks per thread (1 or 2)
  size_t smem_bytes = 0;  // kShared: dynamic shared memory per block
};

// Registers up to 512 chunks (4096 bf16 / 2048 fp32 columns) in blocks of at
// most 256 threads (several resident per SM, so one block's barriers overlap
// another's loads). Past that the register kernel would need more than 64
// registers per thread (ptxas spills at 4 chunks), so the row goes to
// shared memory, 4+ chunks per thread in blocks of up to 512 threads, up to
// max_smem bytes per block.
inline RowConfig PickRowConfig(int64_t cols, int vec, int itemsize, size_t max_smem) {
  const int64_t chunks = CeilDiv(cols, vec);
  RowConfig c;
  if (chunks <= 512) {
    c.kind = RowKind::kRegisters;
    c.items = chunks <= 256 ? 1 : 2;
    c.threads = static_cast<int>(CeilDiv(CeilDiv(chunks, c.items), 32) * 32);
    if (c.threads < 32) c.threads = 32;  // cols == 0 (per-row Quantize: scale 1)
    return c;
  }
  const int64_t threads = CeilDiv(CeilDiv(chunks, 4), 32) * 32;
  c.threads = static_cast<int>(threads < 512 ? threads : 512);
  const size_t bytes = static_cast<size_t>(chunks) * vec * itemsize;
  if (bytes <= max_smem) {
    c.kind = RowKind::kShared;
    c.smem_bytes = bytes;
  } else {
    c.kind = RowKind::kTwoPass;
  }
  return c;
}

// Opt-in shared memory per block of the current device (227 KB on H100,
// 163 KB on A100), less 1 KB for static shared memory; cached per device.
inline size_t MaxDynamicSmem() {
  static std::atomic<int> cache[kMaxCachedDevices] = {};
  return static_cast<size_t>(PerDeviceCached(cache, 48 * 1024, [](int device) {
    int bytes = 0;
    if (cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
            cudaSuccess ||
        bytes < 48 * 1024) {
      bytes = 48 * 1024;
    }
    return bytes - 1024;
  }));
}

// Raises a kernel's dynamic shared memory limit to MaxDynamicSmem() once per
// device (cudaFuncSetAttribute is a cheap host call, but not free).
template <typename Kernel>
cudaError_t AllowDynamicSmem(Kernel kernel, std::atomic<uint64_t>& done_mask) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done_mask.load(std::memory_order_relaxed) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(MaxDynamicSmem()));
  if (err == cudaSuccess) done_mask.fetch_or(bit, std::memory_order_relaxed);
  return err;
}

// Grid for one block per row; rows beyond 2^31 - 1 loop.
inline unsigned RowBlocks(int64_t rows) {
  constexpr int64_t kMax = 0x7fffffff;
  return static_cast<unsigned>(rows < kMax ? rows : kMax);
}

}  // namespace accel::kernels::cuda
