// AVX2 building blocks for the CPU kernels: 8-wide loads of any float dtype
// into fp32 lanes, rounding 8-wide stores back, a vector exp, and the
// runtime-to-compile-time dtype dispatch.
//
// Used only by kernels/cpu/*.cc and kernels/convert.cc, which are compiled
// with -march=x86-64-v3 (AVX2, FMA, F16C). Everything here is a pure
// function of its arguments and thread-safe.
//
// Tails: the kernels process a partial vector by copying it into an 8-lane
// stack buffer and running the same vector code (LoadPartial/StorePartial),
// so that an element's result never depends on where it sits in a tensor;
// this keeps batched and unbatched execution bit-identical.
#pragma once

// GCC 12 reports -W(maybe-)uninitialized inside its own AVX-512 intrinsics
// (their _mm512_undefined_*() self-initialisation, GCC bug 105593, fixed in
// 13). The warning is attributed to the intrinsic headers, so the pragma must
// come before their first inclusion.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "accel/kernels/convert.h"
#include "accel/kernels/tensor.h"
#include "accel/util/logging.h"

namespace accel::kernels::cpu {

// Storage type of a float dtype: float, or the raw 16-bit pattern.
template <DType D>
using Storage = std::conditional_t<D == DType::kFloat32, float, uint16_t>;

// ------------------------------------------------------------ 8-wide I/O

template <DType D>
inline __m256 Load8(const Storage<D>* p) {
  if constexpr (D == DType::kFloat32) {
    return _mm256_loadu_ps(p);
  } else if constexpr (D == DType::kFloat16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

// Rounds 8 fp32 lanes to bf16 bit patterns in the low half of each 32-bit
// lane (nearest even; NaN stays a quiet NaN), as FloatToBFloat16 does.
inline __m256i BFloat16Bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i hi = _mm256_srli_epi32(bits, 16);
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  // A NaN gets no rounding increment (it could carry into the sign) and the
  // quiet bit instead.
  const __m256i inc = _mm256_andnot_si256(
      is_nan,
      _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1))));
  return _mm256_or_si256(_mm256_srli_epi32(_mm256_add_epi32(bits, inc), 16),
                         _mm256_and_si256(is_nan, _mm256_set1_epi32(0x40)));
}

inline __m128i FloatToBFloat16x8(__m256 v) {
  const __m256i r = BFloat16Bits(v);
  // packus works within 128-bit lanes: [a0..a3 a0..a3 | a4..a7 a4..a7]; pick
  // the two low quadwords.
  const __m256i packed = _mm256_packus_epi32(r, r);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

// 16 lanes at once: one pack and one permute for two vectors.
inline __m256i FloatToBFloat16x16(__m256 a, __m256 b) {
  const __m256i packed = _mm256_packus_epi32(BFloat16Bits(a), BFloat16Bits(b));
  return _mm256_permute4x64_epi64(packed, 0xD8);  // [a0-3 b0-3 | a4-7 b4-7] -> [a | b]
}

template <DType D>
inline void Store8(Storage<D>* p, __m256 v) {
  if constexpr (D == DType::kFloat32) {
    _mm256_storeu_ps(p, v);
  } else if constexpr (D == DType::kFloat16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), FloatToBFloat16x8(v));
  }
}

// Two vectors to 16 consecutive elements (p, p + 8).
template <DType D>
inline void Store16(Storage<D>* p, __m256 a, __m256 b) {
  if constexpr (D == DType::kBFloat16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), FloatToBFloat16x16(a, b));
  } else {
    Store8<D>(p, a);
    Store8<D>(p + 8, b);
  }
}

// n in [0, 8): missing lanes read as 0.
template <DType D>
inline __m256 LoadPartial(const Storage<D>* p, int64_t n) {
  alignas(32) Storage<D> tmp[8] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(Storage<D>));
  return Load8<D>(tmp);
}

template <DType D>
inline void StorePartial(Storage<D>* p, int64_t n, __m256 v) {
  alignas(32) Storage<D> tmp[8];
  Store8<D>(tmp, v);
  std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(Storage<D>));
}

// Scalar forms with the same rounding as the vector ones.
template <DType D>
inline float Load1(const Storage<D>* p) {
  if constexpr (D == DType::kFloat32) {
    return *p;
  } else if constexpr (D == DType::kFloat16) {
    return _cvtsh_ss(*p);
  } else {
    return BFloat16ToFloat(*p);
  }
}

template <DType D>
inline void Store1(Storage<D>* p, float v) {
  if constexpr (D == DType::kFloat32) {
    *p = v;
  } else if constexpr (D == DType::kFloat16) {
    *p = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    *p = FloatToBFloat16(v);
  }
}

// ------------------------------------------------------------------ math

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x) for 8 lanes, within ~2 ulp of the true value (Cephes expf: range
// reduction by ln 2 in two parts, degree-6 polynomial). Inputs are clamped to
// [-87.3, 88.376], so the result never is inf or a subnormal; callers that need
// exp(-large) == 0 exactly do not exist here (silu saturates either way).
// k = round_half_even(x / ln 2) comes from adding 1.5 * 2^23 (whose ulp is 1,
// so the addition rounds; |k| < 2^22): fx = t - 1.5 * 2^23 is that integer in
// fp32, and t's low mantissa bits are k in two's complement, so t << 23 is
// k << 23. Fewer uops than round + convert, and the same values.
inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3762626647949f));
  const __m256 magic = _mm256_set1_ps(0x1.8p23f);
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), magic);
  const __m256 fx = _mm256_sub_ps(t, magic);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23), _mm256_set1_epi32(127 << 23));
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// silu(g) * u = g / (1 + exp(-g)) * u in fp32.
inline __m256 SiluMul8(__m256 g, __m256 u) {
  const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), Exp8(_mm256_sub_ps(_mm256_setzero_ps(), g)));
  // 1/d by the hardware estimate and one Newton step (~1 ulp; a division
  // costs as much as the rest of this function). d >= 1, and d = inf for
  // very negative g gives r = 0 and silu = -0, as the exact formula does.
  __m256 r = _mm256_rcp_ps(d);
  r = _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f)));
  return _mm256_mul_ps(_mm256_mul_ps(g, r), u);
}

// ------------------------------------------------------------- dispatch

// Calls fn(std::integral_constant<DType, D>{}) for the float dtype d.
// Check functions guarantee a float dtype; anything else is a programming
// error and fails loudly rather than picking a default.
template <typename Fn>
inline decltype(auto) DispatchFloat(DType d, Fn&& fn) {
  switch (d) {
    case DType::kFloat32:
      return fn(std::integral_constant<DType, DType::kFloat32>{});
    case DType::kFloat16:
      return fn(std::integral_constant<DType, DType::kFloat16>{});
    case DType::kBFloat16:
      return fn(std::integral_constant<DType, DType::kBFloat16>{});
    default:
      break;
  }
  LOG(FATAL) << "DispatchFloat: not a float dtype: " << DTypeName(d);
  return fn(std::integral_constant<DType, DType::kFloat32>{});
}

}  // namespace accel::kernels::cpu
