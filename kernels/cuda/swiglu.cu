// SwiGlu on the GPU: out = silu(gate) * up elementwise (LaunchSwiGlu of
// launch.h).
//
// Bytes moved: 3 * n * sizeof(T) (read gate and up, write out). A flat
// grid-stride walk (FlatPlan, common.cuh): vectors of all three tensors
// after a scalar prefix that aligns them (when they are misaligned alike;
// otherwise every element is scalar), then a scalar tail. Large calls:
// 16-byte vectors in 256-thread blocks, at most 16 per SM, two vectors per
// thread per step; small calls: 8-byte vectors in 128-thread blocks
// (LaunchSwiGluT), one per thread without the plan when they are whole and
// aligned (SwiGluSmallKernel).
//
// Numerics: fp32, one rounding: g / (1 + expf(-g)) * u with the accurate
// expf (~1 ulp; no fast math) and an IEEE division, the vectors' by
// DivFast (the same bits; see there). A very negative gate gives expf = inf
// and silu = -0, as the exact formula does.
#include "cuda/common.cuh"

namespace accel::kernels::cuda {
namespace {

__device__ __forceinline__ float SiluMul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// x / y by the instructions of div.rn.f32's inline path (MUFU.RCP, a Newton
// step, q0 = x r, the exact remainder x - y q0, one correction), without its
// range check (FCHK) and the branch to its out-of-line slow path: correctly
// rounded, so the bits of x / y, whenever TameQuotient holds (no denormal or
// overflowing intermediate: |x| in [2^-60, 2^60], y in [1, 2^60], so |q| is
// in [2^-120, 2^60]). With the check and branch per element, the 8
// divisions of a vector ran one after another (no interleaving across the
// branches); branch-free they overlap (measured, bf16: [4096, 11008] 0.936
// -> 0.952 of copy, [32768, 14336] 0.946 -> 0.956, 1x11008 1.96 -> 1.43 us).
__device__ __forceinline__ float DivFast(float x, float y) {
  float r0;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r0) : "f"(y));
  const float r = __fmaf_rn(r0, __fmaf_rn(-y, r0, 1.0f), r0);
  const float q0 = __fmaf_rn(x, r, 0.0f);
  const float rem = __fmaf_rn(-y, q0, x);
  return __fmaf_rn(rem, r, q0);
}
__device__ __forceinline__ bool TameQuotient(float x, float y) {
  const float ax = fabsf(x);
  return ax >= 0x1p-60f && ax <= 0x1p60f && y <= 0x1p60f;  // NaN fails; y >= 1 here
}

// silu(g) * u for a vector: every element by DivFast (interleaved), then,
// in the rare vector with an untame element, all of them again by the IEEE
// division (the bits SiluMul gives the scalar elements).
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> SiluMulVec(const Vec<T, N>& xg, const Vec<T, N>& xu) {
  float q[N];
  bool tame = true;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float g = ToFloat(xg.v[j]);
    const float y = 1.0f + expf(-g);
    q[j] = DivFast(g, y);
    tame = tame && TameQuotient(g, y);
  }
  if (!tame) {
    // Unrolled like the loop above: a rolled loop indexes q at run time,
    // which put q in local memory for every vector (measured: SwiGlu
    // [32768, 14336] at 0.58 of copy instead of 0.95).
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float g = ToFloat(xg.v[j]);
      q[j] = g / (1.0f + expf(-g));
    }
  }
  Vec<T, N> o;
#pragma unroll
  for (int j = 0; j < N; ++j) o.v[j] = FromFloat<T>(q[j] * ToFloat(xu.v[j]));
  return o;
}

// N elements per vector (16 or 8 bytes).
template <typename T, int N>
__global__ void __launch_bounds__(kFlatThreads)
    SwiGluKernel(const T* gate, const T* up, T* out, FlatPlan plan) {
  struct In {
    Vec<T, N> g, u;
  };
  FlatLoop2<N>(
      plan,
      [&](int64_t i) {
        return In{LoadStream<Vec<T, N>>(gate + i), LoadStream<Vec<T, N>>(up + i)};
      },
      [&](int64_t i, const In& x) { StoreStream(out + i, SiluMulVec<T, N>(x.g, x.u)); },
      [&](int64_t i) { out[i] = FromFloat<T>(SiluMul(ToFloat(gate[i]), ToFloat(up[i]))); });
}

// Small calls of whole N-element vectors with all three pointers aligned to
// them: one vector per thread, 32-bit indices, no plan and no loop (the flat
// kernel's 64-bit grid-stride bookkeeping ran ahead of the first load).
// Measured (graph of 100 launches, H100, bf16, same run): 1x11008 1.38 ->
// 1.36 us, 16x11008 2.07 -> 1.97 (torch.compile 1.35 / 1.94).
template <typename T, int N>
__global__ void __launch_bounds__(kFlatThreads)
    SwiGluSmallKernel(const T* gate, const T* up, T* out, int nvec) {
  const int v = blockIdx.x * blockDim.x + threadIdx.x;
  if (v >= nvec) return;
  const Vec<T, N> g = LoadStream<Vec<T, N>>(gate + v * N);
  const Vec<T, N> u = LoadStream<Vec<T, N>>(up + v * N);
  StoreStream(out + v * N, SiluMulVec<T, N>(g, u));
}

}  // namespace

// Calls of fewer than NumSms * 256 16-byte vectors (under 270K bf16
// elements: decode-sized) run 128-thread blocks of 8-byte vectors: twice the
// threads, each with half the silu chain, over more SMs (their latency is
// the per-thread math, not the bytes: 1x11008 bf16 1.39 us against 1.45
// with 16-byte vectors, 1.51 with 256-thread blocks); larger calls
// 256-thread blocks of 16-byte vectors.
constexpr int kSmallThreads = 128;

template <typename T, int N>
cudaError_t LaunchSwiGluN(const SwiGluParams& p, int threads, cudaStream_t stream) {
  const FlatPlan plan =
      PlanFlat(p.n, N, {{p.gate, sizeof(T)}, {p.up, sizeof(T)}, {p.output, sizeof(T)}});
  const int64_t work = plan.nvec > plan.scalars() ? plan.nvec : plan.scalars();
  SwiGluKernel<T, N><<<OneShotBlocks(work, threads), threads, 0, stream>>>(
      static_cast<const T*>(p.gate), static_cast<const T*>(p.up), static_cast<T*>(p.output), plan);
  return cudaGetLastError();
}

// Small calls of whole 8-byte vectors, all aligned: SwiGluSmallKernel,
// 128-thread blocks below 4096 vectors (1x11008 bf16: 1.36 us against 1.37
// with 256), 256 from there (16x11008: 1.97 against 2.00 with 128).
template <typename T, int N>
bool LaunchSwiGluSmall(const SwiGluParams& p, cudaStream_t stream) {
  constexpr uintptr_t kBytes = N * sizeof(T);
  if (p.n % N != 0 || !IsAligned(p.gate, kBytes) || !IsAligned(p.up, kBytes) ||
      !IsAligned(p.output, kBytes)) {
    return false;
  }
  const int nvec = static_cast<int>(p.n / N);  // small calls: far below 2^31
  const int threads = nvec < 4096 ? kSmallThreads : kFlatThreads;
  SwiGluSmallKernel<T, N><<<static_cast<unsigned>(CeilDiv(nvec, threads)), threads, 0, stream>>>(
      static_cast<const T*>(p.gate), static_cast<const T*>(p.up), static_cast<T*>(p.output), nvec);
  return true;
}

template <typename T>
cudaError_t LaunchSwiGluT(const SwiGluParams& p, cudaStream_t stream) {
  constexpr int N = kVecOf<T>;
  if (p.n < int64_t{NumSms()} * kFlatThreads * N) {
    if (LaunchSwiGluSmall<T, N / 2>(p, stream)) return cudaGetLastError();
    return LaunchSwiGluN<T, N / 2>(p, kSmallThreads, stream);
  }
  return LaunchSwiGluN<T, N>(p, kFlatThreads, stream);
}

template cudaError_t LaunchSwiGluT<float>(const SwiGluParams&, cudaStream_t);
template cudaError_t LaunchSwiGluT<__half>(const SwiGluParams&, cudaStream_t);
template cudaError_t LaunchSwiGluT<__nv_bfloat16>(const SwiGluParams&, cudaStream_t);

cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream) {
  if (p.n < 0) return cudaErrorInvalidValue;
  return DispatchFloat(p.dtype, [&](auto tag) -> cudaError_t {
    if (p.n == 0) return cudaSuccess;
    return LaunchSwiGluT<typename decltype(tag)::type>(p, stream);
  });
}

}  // namespace accel::kernels::cuda
