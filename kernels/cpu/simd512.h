// AVX-512 building blocks for the CPU kernels, used only on CPUs that have
// them (HasAvx512(), decided once at run time): the library itself is built
// for x86-64-v3 (AVX2) so that one binary runs on any AVX2 machine, and every
// function here carries ACCEL_AVX512 (a target attribute) instead.
//
// Why AVX-512 matters here: on 2 cores the bf16 ops were compute-bound with
// AVX2 (a correctly rounded bf16 store is ~10 uops per 8 lanes); with
// AVX512_BF16 it is one vcvtneps2bf16 per 16 lanes, and every op gets twice
// the lanes plus masked loads and stores for tails.
//
// Results are bit-identical to the AVX2 code in simd.h: the same fp32
// operations per element (the conversions round to nearest even, NaN stays a
// quiet NaN), and where an op accumulates (RmsNorm) the callers keep the AVX2
// lane layout. Tails use masked loads (missing lanes read as 0) and masked
// stores through the same vector code, so an element's result never depends
// on where it sits in a tensor. Pure functions, thread-safe.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu/simd.h"

#define ACCEL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace accel::kernels::cpu {

// True when the CPU and OS support every extension of ACCEL_AVX512, and
// ACCEL_CPU_ISA is not set to "avx2" (which forces the AVX2 paths, e.g. to
// test them on an AVX-512 machine). Decided once, thread-safe.
inline bool HasAvx512() {
  static const bool has = [] {
    const char* isa = std::getenv("ACCEL_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "avx2") == 0) return false;
    __builtin_cpu_init();  // may run from a static initializer, before libgcc's
    // __builtin_cpu_supports also checks that the OS saves the ZMM state.
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return has;
}

// Lanes [0, n) of a 16-lane mask, n in [0, 16].
inline __mmask16 TailMask16(int64_t n) {
  return static_cast<__mmask16>((1u << static_cast<unsigned>(n)) - 1u);
}

// ------------------------------------------------------------ 16-wide I/O

template <DType D>
ACCEL_AVX512 inline __m512 Load16(const Storage<D>* p) {
  if constexpr (D == DType::kFloat32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (D == DType::kFloat16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

// Lanes [0, n) from p, the others 0; never touches memory past p + n.
template <DType D>
ACCEL_AVX512 inline __m512 LoadPartial16(const Storage<D>* p, int64_t n) {
  const __mmask16 m = TailMask16(n);
  if constexpr (D == DType::kFloat32) {
    return _mm512_maskz_loadu_ps(m, p);
  } else if constexpr (D == DType::kFloat16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  } else {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

// 16 fp32 lanes to bf16, round to nearest even; NaN stays NaN (quiet).
// vcvtneps2bf16 does exactly that (its NaN result, (bits >> 16) | 0x40, is
// FloatToBFloat16's), except that it treats fp32 subnormal inputs as zero:
// vectors holding one take the integer rounding of simd.h instead (rare).
ACCEL_AVX512 inline __m256i FloatToBFloat16x16(__m512 v) {
  if (__builtin_expect(_mm512_fpclass_ps_mask(v, 0x20) != 0, 0)) {  // 0x20: denormal
    const __m512i bits = _mm512_castps_si512(v);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i inc =
        _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                         _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, inc), 16);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
  }
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
}

// 16 fp32 lanes to the 16-bit patterns of dtype D (D != FLOAT32).
template <DType D>
ACCEL_AVX512 inline __m256i Narrow16(__m512 v) {
  static_assert(D != DType::kFloat32);
  if constexpr (D == DType::kFloat16) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    return FloatToBFloat16x16(v);
  }
}

template <DType D>
ACCEL_AVX512 inline void Store16(Storage<D>* p, __m512 v) {
  if constexpr (D == DType::kFloat32) {
    _mm512_storeu_ps(p, v);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), Narrow16<D>(v));
  }
}

// Outputs at least this large are written with non-temporal stores
// (StoreStream16), and the row kernels prefetch (PrefetchLines): a normal
// store first reads the line it writes (a read-for-ownership), so a kernel
// that writes a tensor far larger than the caches moves 3 bytes per byte
// written where memcpy (rep movsb / streaming stores) moves 2. Measured on 2
// SPR cores: RmsNorm bf16 [8192, 4096] 10.4 -> 7.3 ms, SwiGlu bf16
// [4096, 8192] 14.5 -> 11.6 ms, ConvertFloats bf16 -> fp32 11.5 -> 5.5 ms.
// Smaller outputs stay in cache for the next op.
inline constexpr int64_t kStreamBytes = int64_t{16} << 20;

// Store16 with a non-temporal store when p is aligned for one (always, for
// the outputs of Buffer::Allocate and whole rows of them); otherwise a normal
// store. The bits written are the same. A loop of these must be followed by
// _mm_sfence() before another thread may read the output.
template <DType D>
ACCEL_AVX512 inline void StoreStream16(Storage<D>* p, __m512 v) {
  if constexpr (D == DType::kFloat32) {
    if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) {
      _mm512_stream_ps(p, v);
    } else {
      _mm512_storeu_ps(p, v);
    }
  } else {
    const __m256i bits = Narrow16<D>(v);
    if ((reinterpret_cast<uintptr_t>(p) & 31) == 0) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), bits);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits);
    }
  }
}

// Store16 or StoreStream16.
template <DType D, bool kStream>
ACCEL_AVX512 inline void StoreOut16(Storage<D>* p, __m512 v) {
  if constexpr (kStream) {
    StoreStream16<D>(p, v);
  } else {
    Store16<D>(p, v);
  }
}

// Prefetches the 64-byte lines of [p, p + bytes) into L2. The two-pass row
// kernels (RmsNorm, Quantize per row) call it for the next row while their
// second pass computes the current one from L1: the first pass is a burst of
// loads and the second has none, so without it the memory system idles half
// the time (the hardware prefetchers also stop at each 4 KiB page). Measured
// on 2 SPR cores: RmsNorm bf16 [32768, 4096] 27 -> 17 ms, Quantize per row
// [8192, 4096] 4.6 -> 2.9 ms. Only for inputs of kStreamBytes or more: for
// cache-resident ones it costs time. (L2, not L1: a row and its scratch
// already fill most of L1.)
inline void PrefetchLines(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(c + off, _MM_HINT_T1);
}

// Stores lanes [0, n) only.
template <DType D>
ACCEL_AVX512 inline void StorePartial16(Storage<D>* p, int64_t n, __m512 v) {
  const __mmask16 m = TailMask16(n);
  if constexpr (D == DType::kFloat32) {
    _mm512_mask_storeu_ps(p, m, v);
  } else {
    _mm256_mask_storeu_epi16(p, m, Narrow16<D>(v));
  }
}

// fp32 lanes rounded to dtype D and back (exact for FLOAT32).
template <DType D>
ACCEL_AVX512 inline __m512 Widen16(__m256i bits) {
  if constexpr (D == DType::kFloat16) {
    return _mm512_cvtph_ps(bits);
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
}

// ------------------------------------------------------------------ math

// Exp8 of simd.h on 16 lanes: the same operations in the same order, so the
// same bits (see Exp8 for the rounding trick).
ACCEL_AVX512 inline __m512 Exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3762626647949f));
  const __m512 magic = _mm512_set1_ps(0x1.8p23f);
  const __m512 t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), magic);
  const __m512 fx = _mm512_sub_ps(t, magic);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  y = _mm512_fmadd_ps(y, x2, _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  const __m512i e =
      _mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(t), 23), _mm512_set1_epi32(127 << 23));
  return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

// SiluMul8 of simd.h on 16 lanes. The reciprocal estimate is AVX's 8-lane
// vrcpps on each half, not vrcp14ps: its bits differ from vrcpps's, and one
// Newton step does not erase the difference, so rcp14 would make results
// depend on the machine. Two vrcpps cost ~2% here.
ACCEL_AVX512 inline __m512 SiluMul16(__m512 g, __m512 u) {
  const __m512 d =
      _mm512_add_ps(_mm512_set1_ps(1.0f), Exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)));
  const __m256 r_lo = _mm256_rcp_ps(_mm512_castps512_ps256(d));
  const __m256 r_hi = _mm256_rcp_ps(_mm512_extractf32x8_ps(d, 1));
  __m512 r = _mm512_insertf32x8(_mm512_castps256_ps512(r_lo), r_hi, 1);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
  return _mm512_mul_ps(_mm512_mul_ps(g, r), u);
}

}  // namespace accel::kernels::cpu
