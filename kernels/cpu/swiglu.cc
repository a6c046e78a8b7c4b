// SwiGlu on the CPU: out = silu(gate) * up, elementwise over the flattened
// tensors, in fp32 with one rounding. Every element, tail included, goes
// through the same vector code (Exp8), so results do not depend on position.
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace accel::kernels::cpu {

void SwiGlu(const SwiGluArgs& args, const TensorView& output) {
  const int64_t n = args.gate.num_elements();
  if (n == 0) return;
  DispatchFloat(args.gate.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = Storage<D>;
    const T* g = args.gate.as<T>();
    const T* u = args.up.as<T>();
    T* y = output.as<T>();
    ParallelFor(n, 32 * 1024, [&](int64_t b, int64_t e) {
      int64_t i = b;
      for (; i + 16 <= e; i += 16) {
        const __m256 r0 = SiluMul8(Load8<D>(g + i), Load8<D>(u + i));
        const __m256 r1 = SiluMul8(Load8<D>(g + i + 8), Load8<D>(u + i + 8));
        Store16<D>(y + i, r0, r1);
      }
      for (; i < e; i += 8) {
        const int64_t m = std::min<int64_t>(8, e - i);
        StorePartial<D>(y + i, m, SiluMul8(LoadPartial<D>(g + i, m), LoadPartial<D>(u + i, m)));
      }
    });
  });
}

}  // namespace accel::kernels::cpu
