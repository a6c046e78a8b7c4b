// SwiGlu on the GPU: out = silu(gate) * up elementwise (LaunchSwiGlu of
// launch.h).
//
// Bytes moved: 3 * n * sizeof(T) (read gate and up, write out). A flat
// grid-stride walk (FlatPlan, common.cuh): 16-byte vectors of all three
// tensors after a scalar prefix that aligns them (when they are misaligned
// alike; otherwise every element is scalar), then a scalar tail. 256-thread
// blocks, at most 16 per SM; one vector per thread per step, so 2048
// resident threads per SM keep 64 KB of loads in flight.
//
// Numerics: fp32, one rounding: g / (1 + expf(-g)) * u with the accurate
// expf (~1 ulp; no fast math) and an IEEE division. A very negative gate
// gives expf = inf and silu = -0, as the exact formula does.
#include "cuda/common.cuh"

namespace accel::kernels::cuda {
namespace {

__device__ __forceinline__ float SiluMul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    SwiGluKernel(const T* gate, const T* up, T* out, FlatPlan plan) {
  constexpr int N = kVecOf<T>;
  struct In {
    Vec<T, N> g, u;
  };
  FlatLoop2<N>(
      plan,
      [&](int64_t i) {
        return In{LoadStream<Vec<T, N>>(gate + i), LoadStream<Vec<T, N>>(up + i)};
      },
      [&](int64_t i, const In& x) {
        Vec<T, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j)
          o.v[j] = FromFloat<T>(SiluMul(ToFloat(x.g.v[j]), ToFloat(x.u.v[j])));
        StoreStream(out + i, o);
      },
      [&](int64_t i) { out[i] = FromFloat<T>(SiluMul(ToFloat(gate[i]), ToFloat(up[i]))); });
}

}  // namespace

template <typename T>
cudaError_t LaunchSwiGluT(const SwiGluParams& p, cudaStream_t stream) {
  const FlatPlan plan =
      PlanFlat(p.n, kVecOf<T>, {{p.gate, sizeof(T)}, {p.up, sizeof(T)}, {p.output, sizeof(T)}});
  const int64_t work = plan.nvec > plan.scalars() ? plan.nvec : plan.scalars();
  SwiGluKernel<T><<<FlatBlocks(work), kFlatThreads, 0, stream>>>(
      static_cast<const T*>(p.gate), static_cast<const T*>(p.up), static_cast<T*>(p.output), plan);
  return cudaGetLastError();
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
