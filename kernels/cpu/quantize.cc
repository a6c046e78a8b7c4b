// Symmetric int8 quantization on the CPU: Quantize, Dequantize and
// QuantizationError.
//
// Quantize reads its input twice (absmax, then x / scale): per row the row is
// still in cache for the second pass; per tensor the whole tensor is streamed
// twice, which is inherent to a per-tensor scale.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

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
    if (args.granularity == Granularity::kPerTensor) {
      std::atomic<uint32_t> absmax{0};
      ParallelFor(n, kGrainElements, [&](int64_t b, int64_t e) {
        const uint32_t m = AbsMaxBits<D>(x + b, e - b);
        uint32_t cur = absmax.load(std::memory_order_relaxed);
        while (m > cur && !absmax.compare_exchange_weak(cur, m, std::memory_order_relaxed)) {
        }
      });
      if (absmax.load() >= kInfBits) return NonFiniteError<D>(x, FirstNonFinite<D>(x, n));
      const float scale = ScaleFromAbsMax(absmax.load());
      *scale_out = scale;
      ParallelFor(n, kGrainElements,
                  [&](int64_t b, int64_t e) { QuantizeRange<D>(x + b, q + b, e - b, scale); });
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
                    const uint32_t m = AbsMaxBits<D>(row, len);
                    if (m >= kInfBits) {
                      const int64_t bad = r * len + FirstNonFinite<D>(row, len);
                      int64_t cur = first_bad.load();
                      while (bad < cur && !first_bad.compare_exchange_weak(cur, bad)) {
                      }
                      continue;
                    }
                    const float scale = ScaleFromAbsMax(m);
                    scale_out[r] = scale;
                    QuantizeRange<D>(row, q + r * len, len, scale);
                  }
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
    ParallelFor(n, kGrainElements, [&](int64_t b, int64_t e) {
      ForEachScaleSegment(b, e, len, scales, per_row, [&](int64_t sb, int64_t se, float scale) {
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
    std::atomic<uint32_t> absmax_bits{0};
    ParallelFor(n, kGrainElements, [&](int64_t b, int64_t e) {
      const uint32_t m = AbsMaxBits<D>(x + b, e - b);
      uint32_t cur = absmax_bits.load(std::memory_order_relaxed);
      while (m > cur && !absmax_bits.compare_exchange_weak(cur, m, std::memory_order_relaxed)) {
      }
    });
    float max_orig;
    const uint32_t bits = absmax_bits.load();
    std::memcpy(&max_orig, &bits, sizeof max_orig);
    const __m256d threshold = _mm256_set1_pd(0.1 * static_cast<double>(max_orig));

    // Pass 2: everything else, fused.
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
