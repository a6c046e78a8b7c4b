#include "accel/kernels/convert.h"

#include <algorithm>
#include <cstring>

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/simd512.h"

namespace accel::kernels {
namespace {

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Elements per parallel range of a bulk conversion: large enough that the
// hand-off to the other threads (a few microseconds) is noise.
constexpr int64_t kConvertGrain = 64 * 1024;

template <DType S, DType D>
void ConvertRange(const cpu::Storage<S>* src, cpu::Storage<D>* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    // Four independent vectors per iteration keep the load and convert ports busy.
    const __m256 a = cpu::Load8<S>(src + i);
    const __m256 b = cpu::Load8<S>(src + i + 8);
    const __m256 c = cpu::Load8<S>(src + i + 16);
    const __m256 d = cpu::Load8<S>(src + i + 24);
    cpu::Store8<D>(dst + i, a);
    cpu::Store8<D>(dst + i + 8, b);
    cpu::Store8<D>(dst + i + 16, c);
    cpu::Store8<D>(dst + i + 24, d);
  }
  for (; i + 8 <= n; i += 8) cpu::Store8<D>(dst + i, cpu::Load8<S>(src + i));
  for (; i < n; ++i) cpu::Store1<D>(dst + i, cpu::Load1<S>(src + i));
}

// ConvertRange on AVX-512 (same rounding, so the same bits).
// kStream: non-temporal stores (large outputs, see simd512.h).
template <DType S, DType D, bool kStream>
ACCEL_AVX512 void ConvertRange512(const cpu::Storage<S>* src, cpu::Storage<D>* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = cpu::Load16<S>(src + i);
    const __m512 b = cpu::Load16<S>(src + i + 16);
    cpu::StoreOut16<D, kStream>(dst + i, a);
    cpu::StoreOut16<D, kStream>(dst + i + 16, b);
  }
  for (; i < n; i += 16) {
    const int64_t m = std::min<int64_t>(16, n - i);
    cpu::StorePartial16<D>(dst + i, m, cpu::LoadPartial16<S>(src + i, m));
  }
  if constexpr (kStream) _mm_sfence();  // before another thread reads dst
}

}  // namespace

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return BitsFloat(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in fp32.
    return BitsFloat(sign | FloatBits(static_cast<float>(mant) * 0x1p-24f));
  }
  return BitsFloat(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
}

uint16_t FloatToHalf(float f) {
  // After F. Giesen's float_to_half_fast3_rtne: the normal range rounds by
  // integer arithmetic on the bits; the subnormal range lets the FPU round by
  // adding a magic number whose ulp is the half subnormal step.
  uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x47800000u) {  // >= 65536, inf or NaN
    if (u > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((u >> 13) & 0x3ffu);
    return sign | 0x7c00u;
  }
  if (u < 0x38800000u) {                        // below 2^-14: subnormal half or zero
    const float magic = BitsFloat(126u << 23);  // 0.5f: its ulp is 2^-24
    return sign | static_cast<uint16_t>(FloatBits(BitsFloat(u) + magic) - (126u << 23));
  }
  const uint32_t mant_odd = (u >> 13) & 1u;
  u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd;  // rebias and round
  return sign | static_cast<uint16_t>(u >> 13);  // 65520.. carries into 0x7c00 (inf)
}

void ConvertFloats(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n) {
  if (n <= 0) return;
  if (src_dtype == dst_dtype) {
    if (src == dst) return;
    const size_t item = ItemSize(src_dtype);
    cpu::ParallelFor(n, kConvertGrain, [&](int64_t b, int64_t e) {
      std::memcpy(static_cast<char*>(dst) + b * item, static_cast<const char*>(src) + b * item,
                  static_cast<size_t>(e - b) * item);
    });
    return;
  }
  cpu::DispatchFloat(src_dtype, [&](auto s) {
    cpu::DispatchFloat(dst_dtype, [&](auto d) {
      constexpr DType S = decltype(s)::value;
      constexpr DType D = decltype(d)::value;
      const auto* in = static_cast<const cpu::Storage<S>*>(src);
      auto* out = static_cast<cpu::Storage<D>*>(dst);
      const bool stream = n * static_cast<int64_t>(sizeof(cpu::Storage<D>)) >= cpu::kStreamBytes;
      if (cpu::HasAvx512() && stream) {
        cpu::ParallelFor(n, kConvertGrain, [&](int64_t b, int64_t e) {
          ConvertRange512<S, D, true>(in + b, out + b, e - b);
        });
      } else if (cpu::HasAvx512()) {
        cpu::ParallelFor(n, kConvertGrain, [&](int64_t b, int64_t e) {
          ConvertRange512<S, D, false>(in + b, out + b, e - b);
        });
      } else {
        cpu::ParallelFor(n, kConvertGrain,
                         [&](int64_t b, int64_t e) { ConvertRange<S, D>(in + b, out + b, e - b); });
      }
    });
  });
}

}  // namespace accel::kernels
