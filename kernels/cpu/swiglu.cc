// SwiGlu on the CPU: out = silu(gate) * up, elementwise over the flattened
// tensors, in fp32 with one rounding. Every element, tail included, goes
// through the same vector code (Exp8, or Exp16 on AVX-512 machines, which
// gives the same bits), so results do not depend on position.
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/simd512.h"

namespace accel::kernels::cpu {
namespace {

template <DType D>
void SwiGluRange(const Storage<D>* g, const Storage<D>* u, Storage<D>* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 r0 = SiluMul8(Load8<D>(g + i), Load8<D>(u + i));
    const __m256 r1 = SiluMul8(Load8<D>(g + i + 8), Load8<D>(u + i + 8));
    Store16<D>(y + i, r0, r1);
  }
  for (; i < n; i += 8) {
    const int64_t m = std::min<int64_t>(8, n - i);
    StorePartial<D>(y + i, m, SiluMul8(LoadPartial<D>(g + i, m), LoadPartial<D>(u + i, m)));
  }
}

// kStream: non-temporal stores for the output (large outputs, see simd512.h).
template <DType D, bool kStream>
ACCEL_AVX512 void SwiGluRange512(const Storage<D>* g, const Storage<D>* u, Storage<D>* y,
                                 int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    // Two independent chains per iteration hide the exp latency.
    const __m512 r0 = SiluMul16(Load16<D>(g + i), Load16<D>(u + i));
    const __m512 r1 = SiluMul16(Load16<D>(g + i + 16), Load16<D>(u + i + 16));
    StoreOut16<D, kStream>(y + i, r0);
    StoreOut16<D, kStream>(y + i + 16, r1);
  }
  for (; i < n; i += 16) {
    const int64_t m = std::min<int64_t>(16, n - i);
    StorePartial16<D>(y + i, m, SiluMul16(LoadPartial16<D>(g + i, m), LoadPartial16<D>(u + i, m)));
  }
  if constexpr (kStream) _mm_sfence();
}

}  // namespace

void SwiGlu(const SwiGluArgs& args, const TensorView& output) {
  const int64_t n = args.gate.num_elements();
  if (n == 0) return;
  DispatchFloat(args.gate.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = Storage<D>;
    const T* g = args.gate.as<T>();
    const T* u = args.up.as<T>();
    T* y = output.as<T>();
    const bool avx512 = HasAvx512();
    const bool stream = n * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
    ParallelFor(n, 32 * 1024, [&](int64_t b, int64_t e) {
      if (avx512 && stream) {
        SwiGluRange512<D, true>(g + b, u + b, y + b, e - b);
      } else if (avx512) {
        SwiGluRange512<D, false>(g + b, u + b, y + b, e - b);
      } else {
        SwiGluRange<D>(g + b, u + b, y + b, e - b);
      }
    });
  });
}

}  // namespace accel::kernels::cpu
