// Symmetric int8 quantization on the CPU: Quantize, Dequantize and
// QuantizationError.
//
// Quantize reads its input twice (absmax, then x / scale): per row the row is
// still in cache for the second pass; per tensor the whole tensor is streamed
// twice, which is inherent to a per-tensor scale.
//
// Each op has an AVX2 and an AVX-512 form (chosen at run time, HasAvx512())
// that give the same int8 codes and the same dequantized values; the
// QuantizationError statistics agree to double rounding.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/simd512.h"

namespace accel::kernels::cpu {
namespace {

constexpr int64_t kGrainElements = 32 * 1024;
constexpr uint32_t kInfBits = 0x7f800000u;

// Largest |x| bit pattern of n elements. Non-negative floats order like their
// bits, and NaN and inf have the largest patterns, so one integer max finds
// both the absmax and whether any element is not finite.
template <DType D>
uint32_t AbsMaxBits(const Storage<D>* x, int64_t n) {
  const __m256i mask = _mm256_set1_epi32(0x7fffffff);
  __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_castps_si256(Load8<D>(x + i)), mask));
    m1 = _mm256_max_epu32(m1, _mm256_and_si256(_mm256_castps_si256(Load8<D>(x + i + 8)), mask));
  }
  for (; i < n; i += 8) {
    const __m256 v = LoadPartial<D>(x + i, std::min<int64_t>(8, n - i));
    m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_castps_si256(v), mask));
  }
  m0 = _mm256_max_epu32(m0, m1);
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), m0);
  return *std::max_element(lanes, lanes + 8);
}

// 8 int32 lanes in [-127, 127] to 8 int8 in a 64-bit word.
inline uint64_t PackInt8x8(__m256i v) {
  const __m256i w = _mm256_packs_epi32(v, v);  // [a0..a3 a0..a3 | a4..a7 a4..a7]
  const __m256i b = _mm256_packs_epi16(w, w);
  const uint32_t lo = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(b)));
  const uint32_t hi = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1)));
  return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);
}

inline __m256i QuantizeLanes(__m256 x, __m256 scale) {
  __m256 q =
      _mm256_round_ps(_mm256_div_ps(x, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(q);
}

// 32 elements: x / scale rounds to nearest even in the float-to-int
// conversion itself (MXCSR's default mode, which nothing here changes); the
// saturating packs and a max clamp the result to [-127, 127].
template <DType D>
inline __m256i Quantize32(const Storage<D>* x, __m256 scale) {
  const __m256i a = _mm256_cvtps_epi32(_mm256_div_ps(Load8<D>(x), scale));
  const __m256i b = _mm256_cvtps_epi32(_mm256_div_ps(Load8<D>(x + 8), scale));
  const __m256i c = _mm256_cvtps_epi32(_mm256_div_ps(Load8<D>(x + 16), scale));
  const __m256i d = _mm256_cvtps_epi32(_mm256_div_ps(Load8<D>(x + 24), scale));
  // packs work per 128-bit lane: bytes come out as a0-3 b0-3 c0-3 d0-3 |
  // a4-7 b4-7 c4-7 d4-7; the dword permute restores the order.
  const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  const __m256i ordered = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  return _mm256_max_epi8(ordered, _mm256_set1_epi8(-127));
}

template <DType D>
void QuantizeRange(const Storage<D>* x, int8_t* out, int64_t n, float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), Quantize32<D>(x + i, s));
  }
  for (; i + 8 <= n; i += 8) {
    const uint64_t packed = PackInt8x8(QuantizeLanes(Load8<D>(x + i), s));
    std::memcpy(out + i, &packed, 8);
  }
  if (i < n) {
    const uint64_t packed = PackInt8x8(QuantizeLanes(LoadPartial<D>(x + i, n - i), s));
    std::memcpy(out + i, &packed, static_cast<size_t>(n - i));
  }
}

float ScaleFromAbsMax(uint32_t bits) {
  float absmax;
  std::memcpy(&absmax, &bits, sizeof absmax);
  const float scale = absmax / 127.0f;
  return scale == 0.0f ? 1.0f : scale;  // all zeros (or underflow): any scale gives q = 0
}

template <DType D>
int64_t FirstNonFinite(const Storage<D>* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(Load1<D>(x + i))) return i;
  }
  return -1;
}

template <DType D>
absl::Status NonFiniteError(const Storage<D>* x, int64_t index) {
  const float v = Load1<D>(x + index);
  const char* what = std::isnan(v) ? "NaN" : (v > 0 ? "inf" : "-inf");
  return absl::InvalidArgumentError(
      absl::StrCat("input: element ", index, " is ", what, "; quantization needs finite values"));
}

inline __m256 LoadInt8x8(const int8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

inline __m256 LoadInt8Partial(const int8_t* p, int64_t n) {
  alignas(16) int8_t tmp[16] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n));
  return LoadInt8x8(tmp);
}

// Calls fn(begin, end, scale) for each stretch of [b, e) that shares a scale.
template <typename Fn>
void ForEachScaleSegment(int64_t b, int64_t e, int64_t row_len, const float* scales, bool per_row,
                         Fn&& fn) {
  if (!per_row) {
    fn(b, e, scales[0]);
    return;
  }
  while (b < e) {
    const int64_t row = b / row_len;
    const int64_t seg_end = std::min(e, (row + 1) * row_len);
    fn(b, seg_end, scales[row]);
    b = seg_end;
  }
}

// ------------------------------------------------------------- AVX-512

// AbsMaxBits on AVX-512. For 16-bit dtypes it takes the max of the 16-bit
// patterns themselves (|x| orders like its bits in fp16 and bf16 too, inf and
// NaN last), 32 per instruction with no conversion, and widens the winner.
template <DType D>
ACCEL_AVX512 uint32_t AbsMaxBits512(const Storage<D>* x, int64_t n) {
  if constexpr (D == DType::kFloat32) {
    const __m512i mask = _mm512_set1_epi32(0x7fffffff);
    __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), mask));
      m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_loadu_si512(x + i + 16), mask));
    }
    for (; i < n; i += 16) {
      const __m512i v = _mm512_maskz_loadu_epi32(TailMask16(std::min<int64_t>(16, n - i)), x + i);
      m0 = _mm512_max_epu32(m0, _mm512_and_si512(v, mask));
    }
    return _mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1));
  } else {
    const __m512i mask = _mm512_set1_epi16(0x7fff);
    __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
      m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), mask));
      m1 = _mm512_max_epu16(m1, _mm512_and_si512(_mm512_loadu_si512(x + i + 32), mask));
    }
    for (; i < n; i += 32) {
      const __mmask32 tail =
          static_cast<__mmask32>((uint64_t{1} << std::min<int64_t>(32, n - i)) - 1);
      m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_maskz_loadu_epi16(tail, x + i), mask));
    }
    m0 = _mm512_max_epu16(m0, m1);
    // 32 x 16 bits -> 16 x 32 bits (zero-extended), then the dword max.
    const __m512i wide = _mm512_max_epu32(_mm512_and_si512(m0, _mm512_set1_epi32(0xffff)),
                                          _mm512_srli_epi32(m0, 16));
    const uint16_t h = static_cast<uint16_t>(_mm512_reduce_max_epu32(wide));
    const float f = Load1<D>(&h);
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits;
  }
}

// q = round_half_even(x / scale) for 16 lanes, as int32, computed as x * r
// with r = 1 / scale (both correctly rounded fp32). Why that gives the codes
// of the division: with |x / scale| <= 128 (|x| <= absmax and scale =
// absmax / 127 rounded), the product t' = x * r differs from the exact
// quotient by at most 128 * 2^-23 + 2^-149 (r's and the product's roundings),
// and the division's t = fl(x / scale) by at most 128 * 2^-24 + 2^-150; so
// |t - t'| < 2^-14. When t' is farther than 2^-14 from every half-integer,
// t lies strictly in the same interval (k - 1/2, k + 1/2) and both round to
// k. Lanes closer than that (about 1 in 8000, and every exact tie) make the
// whole vector take the division. The bound on |x / scale| needs a normal
// scale (a subnormal one is rounded with a large relative error): below
// 2^-126 every vector takes the division.
struct QuantizeConsts {
  __m512 scale, rcp;
  bool fast;
};

ACCEL_AVX512 inline QuantizeConsts MakeQuantizeConsts(float scale) {
  const bool fast = scale >= 0x1p-126f;
  return {_mm512_set1_ps(scale), _mm512_set1_ps(fast ? 1.0f / scale : 0.0f), fast};
}

ACCEL_AVX512 inline __m512i QuantizeLanes16(__m512 x, const QuantizeConsts& c) {
  const __m512 t = _mm512_mul_ps(x, c.rcp);
  // t - round_half_even(t), in [-1/2, 1/2].
  const __m512 frac = _mm512_reduce_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 near_half =
      _mm512_cmp_ps_mask(_mm512_abs_ps(frac), _mm512_set1_ps(0.5f - 0x1p-14f), _CMP_GE_OQ);
  if (__builtin_expect(near_half != 0 || !c.fast, 0)) {
    return _mm512_cvtps_epi32(_mm512_div_ps(x, c.scale));
  }
  // The conversion rounds half to even (MXCSR's default mode, which nothing
  // here changes).
  return _mm512_cvtps_epi32(t);
}

// kStream: non-temporal stores for the output (large outputs, see
// simd512.h); the caller fences.
template <DType D, bool kStream>
ACCEL_AVX512 void QuantizeRange512(const Storage<D>* x, int8_t* out, int64_t n, float scale,
                                   const Storage<D>* prefetch = nullptr) {
  const QuantizeConsts c = MakeQuantizeConsts(scale);
  // 64 at a time: the saturating packs clamp to [-128, 127] per 128-bit lane
  // (dwords come out as a0-3 b0-3 c0-3 d0-3 | a4-7 ...); the permute restores
  // the order and the max clamps -128 to -127.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    if (prefetch != nullptr) PrefetchLines(prefetch + i, 64 * sizeof(Storage<D>));
    const __m512i a = QuantizeLanes16(Load16<D>(x + i), c);
    const __m512i b = QuantizeLanes16(Load16<D>(x + i + 16), c);
    const __m512i d = QuantizeLanes16(Load16<D>(x + i + 32), c);
    const __m512i e = QuantizeLanes16(Load16<D>(x + i + 48), c);
    const __m512i w = _mm512_packs_epi16(_mm512_packs_epi32(a, b), _mm512_packs_epi32(d, e));
    const __m512i q = _mm512_max_epi8(_mm512_permutexvar_epi32(order, w), _mm512_set1_epi8(-127));
    if (kStream && (reinterpret_cast<uintptr_t>(out + i) & 63) == 0) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(out + i), q);
    } else {
      _mm512_storeu_si512(out + i, q);
    }
  }
  for (; i < n; i += 16) {
    const int64_t m = std::min<int64_t>(16, n - i);
    const __m128i q = _mm_max_epi8(
        _mm512_cvtsepi32_epi8(QuantizeLanes16(LoadPartial16<D>(x + i, m), c)), _mm_set1_epi8(-127));
    _mm_mask_storeu_epi8(out + i, TailMask16(m), q);
  }
}

ACCEL_AVX512 inline __m512 LoadInt8x16(const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

ACCEL_AVX512 inline __m512 LoadInt8Partial16(const int8_t* p, int64_t n) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(TailMask16(n), p)));
}

template <DType D, bool kStream>
ACCEL_AVX512 void DequantizeRange512(const int8_t* v, Storage<D>* y, int64_t n, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    StoreOut16<D, kStream>(y + i, _mm512_mul_ps(LoadInt8x16(v + i), s));
    StoreOut16<D, kStream>(y + i + 16, _mm512_mul_ps(LoadInt8x16(v + i + 16), s));
  }
  for (; i < n; i += 16) {
    const int64_t m = std::min<int64_t>(16, n - i);
    StorePartial16<D>(y + i, m, _mm512_mul_ps(LoadInt8Partial16(v + i, m), s));
  }
}

}  // namespace

absl::Status Quantize(const QuantizeArgs& args, const TensorView& values,
                      const TensorView& scales) {
  const int64_t n = args.input.num_elements();
  float* scale_out = scales.as<float>();
  int8_t* q = values.as<int8_t>();
  return DispatchFloat(args.input.dtype, [&](auto tag) -> absl::Status {
    constexpr DType D = decltype(tag)::value;
    using T = Storage<D>;
    const T* x = args.input.as<T>();
    const bool avx512 = HasAvx512();
    auto absmax_bits = [avx512](const T* p, int64_t len) {
      return avx512 ? AbsMaxBits512<D>(p, len) : AbsMaxBits<D>(p, len);
    };
    const bool stream = n >= kStreamBytes;  // int8 output
    // next: the next row, prefetched meanwhile (per row), or null.
    auto quantize = [avx512, stream](const T* p, int8_t* out, int64_t len, float scale,
                                     const T* next) {
      if (avx512 && stream) {
        QuantizeRange512<D, true>(p, out, len, scale, next);
      } else if (avx512) {
        QuantizeRange512<D, false>(p, out, len, scale, next);
      } else {
        QuantizeRange<D>(p, out, len, scale);
      }
    };
    if (args.granularity == Granularity::kPerTensor) {
      std::atomic<uint32_t> absmax{0};
      ParallelFor(n, kGrainElements, [&](int64_t b, int64_t e) {
        const uint32_t m = absmax_bits(x + b, e - b);
        uint32_t cur = absmax.load(std::memory_order_relaxed);
        while (m > cur && !absmax.compare_exchange_weak(cur, m, std::memory_order_relaxed)) {
        }
      });
      if (absmax.load() >= kInfBits) return NonFiniteError<D>(x, FirstNonFinite<D>(x, n));
      const float scale = ScaleFromAbsMax(absmax.load());
      *scale_out = scale;
      ParallelFor(n, kGrainElements, [&](int64_t b, int64_t e) {
        quantize(x + b, q + b, e - b, scale, nullptr);
        if (stream) _mm_sfence();  // before another thread reads q
      });
      return absl::OkStatus();
    }
    // Per row.
    const int64_t rows = args.input.rows();
    const int64_t len = args.input.last_dim();
    std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
    ParallelFor(rows, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, len)),
                [&](int64_t r0, int64_t r1) {
                  for (int64_t r = r0; r < r1; ++r) {
                    const T* row = x + r * len;
                    const uint32_t m = absmax_bits(row, len);
                    if (m >= kInfBits) {
                      const int64_t bad = r * len + FirstNonFinite<D>(row, len);
                      int64_t cur = first_bad.load();
                      while (bad < cur && !first_bad.compare_exchange_weak(cur, bad)) {
                      }
                      continue;
                    }
                    const float scale = ScaleFromAbsMax(m);
                    scale_out[r] = scale;
                    quantize(row, q + r * len, len, scale,
                             stream && r + 1 < rows ? row + len : nullptr);
                  }
                  if (stream) _mm_sfence();
                });
    if (first_bad.load() != std::numeric_limits<int64_t>::max()) {
      return NonFiniteError<D>(x, first_bad.load());
    }
    return absl::OkStatus();
  });
}

void Dequantize(const DequantizeArgs& args, const TensorView& output) {
  const int64_t n = args.values.num_elements();
  if (n == 0) return;
  const int64_t len = args.values.last_dim();
  const bool per_row = !args.scales.shape.empty();
  const int8_t* v = args.values.as<int8_t>();
  const float* scales = args.scales.as<float>();
  DispatchFloat(args.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = Storage<D>;
    T* y = output.as<T>();
    const bool avx512 = HasAvx512();
    const bool stream = n * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
    ParallelFor(n, kGrainElements, [&](int64_t b, int64_t e) {
      ForEachScaleSegment(b, e, len, scales, per_row, [&](int64_t sb, int64_t se, float scale) {
        if (avx512 && stream) {
          DequantizeRange512<D, true>(v + sb, y + sb, se - sb, scale);
          return;
        }
        if (avx512) {
          DequantizeRange512<D, false>(v + sb, y + sb, se - sb, scale);
          return;
        }
        const __m256 s = _mm256_set1_ps(scale);
        int64_t i = sb;
        for (; i + 16 <= se; i += 16) {
          const __m256 a = _mm256_mul_ps(LoadInt8x8(v + i), s);
          const __m256 c = _mm256_mul_ps(LoadInt8x8(v + i + 8), s);
          Store16<D>(y + i, a, c);
        }
        for (; i < se; i += 8) {
          const int64_t m = std::min<int64_t>(8, se - i);
          StorePartial<D>(y + i, m, _mm256_mul_ps(LoadInt8Partial(v + i, m), s));
        }
      });
      if (stream) _mm_sfence();  // before another thread reads y
    });
  });
}

namespace {

// Partial results of one block of QuantizationError, in double.
struct ErrorPartial {
  float max_abs_diff = 0;
  double sum_abs_diff = 0;
  double sum_sq_diff = 0;
  double sum_sq_orig = 0;
  double max_rel = 0;
};

// Blocks of a fixed size, combined in block order: the statistics do not
// depend on the number of threads or on scheduling.
constexpr int64_t kErrorBlock = 64 * 1024;

inline __m256d Lo(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d Hi(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

inline double HorizontalSumPd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// Running max of |diff| / |orig| over elements with |orig| > threshold,
// kept as a fraction num / den per lane: comparing a / b > c / d as
// a * d > c * b is exact in double for fp32 operands (48-bit products), so
// no division is needed until the end.
struct RelMax {
  __m256d num = _mm256_setzero_pd();
  __m256d den = _mm256_set1_pd(1.0);
  void Update(__m256d ad, __m256d ao, __m256d threshold) {
    const __m256d better =
        _mm256_and_pd(_mm256_cmp_pd(ao, threshold, _CMP_GT_OQ),
                      _mm256_cmp_pd(_mm256_mul_pd(ad, den), _mm256_mul_pd(num, ao), _CMP_GT_OQ));
    num = _mm256_blendv_pd(num, ad, better);
    den = _mm256_blendv_pd(den, ao, better);
  }
  double Max() const {
    alignas(32) double n[4], d[4];
    _mm256_store_pd(n, num);
    _mm256_store_pd(d, den);
    double best = 0;
    for (int i = 0; i < 4; ++i) best = std::max(best, n[i] / d[i]);
    return best;
  }
};

// QuantizationError's per-lane accumulators on AVX-512, 16 lanes. The sums
// are in double (products of fp32 values are exact there), as in the AVX2
// code. The relative error keeps, per lane, the best ratio as an exact
// fraction num / den (double) and a fp32 lower bound of it: an element can
// only beat the lane's best when its approximate ratio |d| * rcp14(|o|)
// (relative error < 2^-13) exceeds the bound (best * (1 - 2^-12)), so the
// exact comparison runs only for those lanes, which after the first few
// elements of a block is rare.
struct ErrorAcc512 {
  __m512 max_diff, bound;
  __m512d abs_diff, sq_diff, sq_orig;
  __m512d num_lo, num_hi, den_lo, den_hi;

  ACCEL_AVX512 ErrorAcc512()
      : max_diff(_mm512_setzero_ps()),
        bound(_mm512_setzero_ps()),
        abs_diff(_mm512_setzero_pd()),
        sq_diff(_mm512_setzero_pd()),
        sq_orig(_mm512_setzero_pd()),
        num_lo(_mm512_setzero_pd()),
        num_hi(_mm512_setzero_pd()),
        den_lo(_mm512_set1_pd(1.0)),
        den_hi(_mm512_set1_pd(1.0)) {}

  ACCEL_AVX512 static __m512d Lo(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  ACCEL_AVX512 static __m512d Hi(__m512 v) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)); }

  // o: original, d: o - dequantized; threshold: lanes count for the relative
  // error where |o| > threshold.
  ACCEL_AVX512 void Add(__m512 o, __m512 d, __m512 threshold) {
    const __m512 ad = _mm512_abs_ps(d);
    max_diff = _mm512_max_ps(max_diff, ad);
    const __m512d ad_lo = Lo(ad), ad_hi = Hi(ad);
    abs_diff = _mm512_add_pd(abs_diff, _mm512_add_pd(ad_lo, ad_hi));
    sq_diff = _mm512_fmadd_pd(ad_lo, ad_lo, _mm512_fmadd_pd(ad_hi, ad_hi, sq_diff));
    const __m512d o_lo = Lo(o), o_hi = Hi(o);
    sq_orig = _mm512_fmadd_pd(o_lo, o_lo, _mm512_fmadd_pd(o_hi, o_hi, sq_orig));
    const __m512 ao = _mm512_abs_ps(o);
    const __mmask16 counted = _mm512_cmp_ps_mask(ao, threshold, _CMP_GT_OQ);
    const __m512 approx = _mm512_mul_ps(ad, _mm512_rcp14_ps(ao));
    const __mmask16 maybe = _mm512_mask_cmp_ps_mask(counted, approx, bound, _CMP_GT_OQ);
    if (__builtin_expect(maybe != 0, 0)) Update(maybe, ad_lo, ad_hi, ao);
  }

  // Exact: a / b > c / d as a * d > c * b (48-bit products, exact in double).
  ACCEL_AVX512 void Update(__mmask16 maybe, __m512d ad_lo, __m512d ad_hi, __m512 ao) {
    const __m512d ao_lo = Lo(ao), ao_hi = Hi(ao);
    const __mmask8 lo =
        _mm512_mask_cmp_pd_mask(static_cast<__mmask8>(maybe), _mm512_mul_pd(ad_lo, den_lo),
                                _mm512_mul_pd(num_lo, ao_lo), _CMP_GT_OQ);
    const __mmask8 hi =
        _mm512_mask_cmp_pd_mask(static_cast<__mmask8>(maybe >> 8), _mm512_mul_pd(ad_hi, den_hi),
                                _mm512_mul_pd(num_hi, ao_hi), _CMP_GT_OQ);
    num_lo = _mm512_mask_mov_pd(num_lo, lo, ad_lo);
    den_lo = _mm512_mask_mov_pd(den_lo, lo, ao_lo);
    num_hi = _mm512_mask_mov_pd(num_hi, hi, ad_hi);
    den_hi = _mm512_mask_mov_pd(den_hi, hi, ao_hi);
    // fl(best) * (1 - 2^-12), rounded, is below best * (1 - 2^-13).
    const __m512 best =
        _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_div_pd(num_lo, den_lo))),
                           _mm512_cvtpd_ps(_mm512_div_pd(num_hi, den_hi)), 1);
    bound = _mm512_mul_ps(best, _mm512_set1_ps(1.0f - 0x1p-12f));
  }

  ACCEL_AVX512 void Finish(ErrorPartial* p) const {
    p->max_abs_diff = _mm512_reduce_max_ps(max_diff);
    p->sum_abs_diff = _mm512_reduce_add_pd(abs_diff);
    p->sum_sq_diff = _mm512_reduce_add_pd(sq_diff);
    p->sum_sq_orig = _mm512_reduce_add_pd(sq_orig);
    alignas(64) double n[16], d[16];
    _mm512_store_pd(n, num_lo);
    _mm512_store_pd(n + 8, num_hi);
    _mm512_store_pd(d, den_lo);
    _mm512_store_pd(d + 8, den_hi);
    double best = 0;
    for (int i = 0; i < 16; ++i) best = std::max(best, n[i] / d[i]);
    p->max_rel = best;
  }
};

// One block [b, e) of QuantizationError on AVX-512.
template <DType D>
ACCEL_AVX512 void ErrorBlock512(const Storage<D>* x, const int8_t* v, int64_t b, int64_t e,
                                int64_t len, const float* scales, bool per_row, float threshold,
                                ErrorPartial* out) {
  ErrorAcc512 acc;
  const __m512 thr = _mm512_set1_ps(threshold);
  // The segments of ForEachScaleSegment, written out (a lambda would not
  // carry the target attribute).
  for (int64_t sb = b; sb < e;) {
    const int64_t se = per_row ? std::min(e, (sb / len + 1) * len) : e;
    const __m512 s = _mm512_set1_ps(per_row ? scales[sb / len] : scales[0]);
    int64_t i = sb;
    for (; i + 16 <= se; i += 16) {
      const __m512 o = Load16<D>(x + i);
      acc.Add(o, _mm512_sub_ps(o, _mm512_mul_ps(LoadInt8x16(v + i), s)), thr);
    }
    if (i < se) {
      // Missing lanes are 0 - 0 * s = 0: they add nothing.
      const int64_t m = se - i;
      const __m512 o = LoadPartial16<D>(x + i, m);
      acc.Add(o, _mm512_sub_ps(o, _mm512_mul_ps(LoadInt8Partial16(v + i, m), s)), thr);
    }
    sb = se;
  }
  acc.Finish(out);
}

}  // namespace

QuantizationErrorStats QuantizationError(const QuantizationErrorArgs& args) {
  QuantizationErrorStats stats;
  const int64_t n = args.original.num_elements();
  if (n == 0) return stats;
  const int64_t len = args.original.last_dim();
  const bool per_row = !args.scales.shape.empty();
  const int8_t* v = args.values.as<int8_t>();
  const float* scales = args.scales.as<float>();
  const int64_t num_blocks = (n + kErrorBlock - 1) / kErrorBlock;
  std::vector<ErrorPartial> partials(num_blocks);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));

  DispatchFloat(args.original.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = Storage<D>;
    const T* x = args.original.as<T>();
    // Pass 1: max |orig|, which decides the elements of the relative error.
    const bool avx512 = HasAvx512();
    std::atomic<uint32_t> absmax_bits{0};
    ParallelFor(n, kGrainElements, [&](int64_t b, int64_t e) {
      const uint32_t m = avx512 ? AbsMaxBits512<D>(x + b, e - b) : AbsMaxBits<D>(x + b, e - b);
      uint32_t cur = absmax_bits.load(std::memory_order_relaxed);
      while (m > cur && !absmax_bits.compare_exchange_weak(cur, m, std::memory_order_relaxed)) {
      }
    });
    float max_orig;
    const uint32_t bits = absmax_bits.load();
    std::memcpy(&max_orig, &bits, sizeof max_orig);
    const __m256d threshold = _mm256_set1_pd(0.1 * static_cast<double>(max_orig));

    // Pass 2: everything else, fused.
    if (avx512) {
      // |o| > threshold (a double) <=> |o| > the largest float <= threshold.
      const double thr_d = 0.1 * static_cast<double>(max_orig);
      float thr_f = static_cast<float>(thr_d);
      if (static_cast<double>(thr_f) > thr_d) thr_f = std::nextafter(thr_f, 0.0f);
      ParallelFor(num_blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t blk = b0; blk < b1; ++blk) {
          ErrorBlock512<D>(x, v, blk * kErrorBlock, std::min(n, (blk + 1) * kErrorBlock), len,
                           scales, per_row, thr_f, &partials[blk]);
        }
      });
      return;
    }
    ParallelFor(num_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        __m256 max_diff = _mm256_setzero_ps();
        __m256d abs_diff = _mm256_setzero_pd(), sq_diff = _mm256_setzero_pd();
        __m256d sq_orig = _mm256_setzero_pd();
        RelMax rel;
        auto accumulate = [&](__m256 o, __m256 d) {
          const __m256 ad = _mm256_and_ps(d, abs_mask);
          max_diff = _mm256_max_ps(max_diff, ad);
          const __m256d ad_lo = Lo(ad), ad_hi = Hi(ad), d_lo = Lo(d), d_hi = Hi(d);
          const __m256d o_lo = Lo(o), o_hi = Hi(o);
          abs_diff = _mm256_add_pd(abs_diff, _mm256_add_pd(ad_lo, ad_hi));
          sq_diff = _mm256_fmadd_pd(d_lo, d_lo, _mm256_fmadd_pd(d_hi, d_hi, sq_diff));
          sq_orig = _mm256_fmadd_pd(o_lo, o_lo, _mm256_fmadd_pd(o_hi, o_hi, sq_orig));
          const __m256 ao = _mm256_and_ps(o, abs_mask);
          rel.Update(ad_lo, Lo(ao), threshold);
          rel.Update(ad_hi, Hi(ao), threshold);
        };
        const int64_t e = std::min(n, (blk + 1) * kErrorBlock);
        ForEachScaleSegment(
            blk * kErrorBlock, e, len, scales, per_row, [&](int64_t sb, int64_t se, float scale) {
              const __m256 s = _mm256_set1_ps(scale);
              int64_t i = sb;
              for (; i + 8 <= se; i += 8) {
                const __m256 o = Load8<D>(x + i);
                accumulate(o, _mm256_sub_ps(o, _mm256_mul_ps(LoadInt8x8(v + i), s)));
              }
              if (i < se) {
                // Missing lanes are 0 - 0 * s = 0: they add nothing.
                const int64_t m = se - i;
                const __m256 o = LoadPartial<D>(x + i, m);
                accumulate(o, _mm256_sub_ps(o, _mm256_mul_ps(LoadInt8Partial(v + i, m), s)));
              }
            });
        ErrorPartial& p = partials[blk];
        p.max_abs_diff = HorizontalMax(max_diff);
        p.sum_abs_diff = HorizontalSumPd(abs_diff);
        p.sum_sq_diff = HorizontalSumPd(sq_diff);
        p.sum_sq_orig = HorizontalSumPd(sq_orig);
        p.max_rel = rel.Max();
      }
    });
  });
  ErrorPartial total;
  for (const ErrorPartial& p : partials) {
    total.max_abs_diff = std::max(total.max_abs_diff, p.max_abs_diff);
    total.sum_abs_diff += p.sum_abs_diff;
    total.sum_sq_diff += p.sum_sq_diff;
    total.sum_sq_orig += p.sum_sq_orig;
    total.max_rel = std::max(total.max_rel, p.max_rel);
  }
  const double nd = static_cast<double>(n);
  stats.max_abs_error = total.max_abs_diff;
  stats.mean_abs_error = total.sum_abs_diff / nd;
  stats.relative_error_pct = 100.0 * total.max_rel;
  stats.snr_db = 10.0 * std::log10((total.sum_sq_orig / nd) / (total.sum_sq_diff / nd + 1e-10));
  return stats;
}

}  // namespace accel::kernels::cpu
