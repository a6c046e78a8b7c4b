// RmsNorm with an optional fused residual add, on the CPU.
//
// One row at a time, two passes over the row: the first forms s (rounded to
// the input dtype when a residual is added), writes the residual output and
// sums s^2; the second scales. A row of bf16 [4096] is 8 KiB, so the second
// pass reads from L1/L2 and the op streams each tensor through memory once.
//
// Two implementations of a row, AVX2 (Row) and AVX-512 (Row512, chosen at run
// time), with bit-identical results: Row512 accumulates s^2 in the same lanes
// and order as Row (a zmm accumulator is two of Row's ymm ones side by side).
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/simd512.h"

namespace accel::kernels::cpu {
namespace {

// Rounds fp32 lanes to dtype D and back (exact for D = FLOAT32).
template <DType D>
inline __m256 RoundTo(__m256 v) {
  if constexpr (D == DType::kFloat32) {
    return v;
  } else if constexpr (D == DType::kFloat16) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(FloatToBFloat16x8(v));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

// Sum of squares accumulates in four vector accumulators that are folded
// into a running total every kBlock elements: two-level summation keeps the
// fp32 error near sqrt(n) ulps even for rows of 256K elements.
constexpr int64_t kBlock = 512;

// Elements of work per parallel range: below this a hand-off to the other
// thread costs more than it saves.
constexpr int64_t kGrainElements = 16 * 1024;

// Rounds a and b (16 consecutive elements) to dtype D, stores them at dst
// when it is non-null, and returns the rounded values in fp32; the rounding
// is done once for both uses.
template <DType D>
inline void RoundAndStore16Impl(__m256 a, __m256 b, Storage<D>* dst, __m256* ra, __m256* rb) {
  if constexpr (D == DType::kBFloat16) {
    const __m256i bits = FloatToBFloat16x16(a, b);
    if (dst != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bits);
    const __m256i zero = _mm256_setzero_si256();
    // bf16 -> fp32 is a 16-bit shift; unpack puts the pattern in the high half.
    const __m256i lo = _mm256_unpacklo_epi16(zero, bits);  // [0-3 | 8-11]
    const __m256i hi = _mm256_unpackhi_epi16(zero, bits);  // [4-7 | 12-15]
    *ra = _mm256_castsi256_ps(_mm256_permute2x128_si256(lo, hi, 0x20));
    *rb = _mm256_castsi256_ps(_mm256_permute2x128_si256(lo, hi, 0x31));
  } else {
    *ra = RoundTo<D>(a);
    *rb = RoundTo<D>(b);
    if (dst != nullptr) Store16<D>(dst, *ra, *rb);
  }
}

template <DType D>
struct RowKernel {
  using T = Storage<D>;
  const T* input;
  const T* residual;  // null without a residual
  T* output;
  T* residual_out;      // null when not wanted
  const float* weight;  // fp32 [n]
  int64_t rows;
  int64_t n;
  float eps;

  // s of the row: the input, or round(input + residual) kept in fp32 in buf.
  void Row(int64_t r, float* buf) const {
    const int64_t off = r * n;
    const T* x = input + off;
    __m256 total = _mm256_setzero_ps();
    if (residual != nullptr) {
      const T* res = residual + off;
      T* res_out = residual_out != nullptr ? residual_out + off : nullptr;
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t j = b;
        for (; j + 16 <= e; j += 16) {
          __m256 s0, s1;
          RoundAndStore16Impl<D>(_mm256_add_ps(Load8<D>(x + j), Load8<D>(res + j)),
                                 _mm256_add_ps(Load8<D>(x + j + 8), Load8<D>(res + j + 8)),
                                 res_out != nullptr ? res_out + j : nullptr, &s0, &s1);
          _mm256_storeu_ps(buf + j, s0);
          _mm256_storeu_ps(buf + j + 8, s1);
          acc0 = _mm256_fmadd_ps(s0, s0, acc0);
          acc1 = _mm256_fmadd_ps(s1, s1, acc1);
        }
        for (; j < e; j += 8) {
          const int64_t m = std::min<int64_t>(8, e - j);
          const __m256 s =
              RoundTo<D>(_mm256_add_ps(LoadPartial<D>(x + j, m), LoadPartial<D>(res + j, m)));
          _mm256_storeu_ps(buf + j, s);  // buf has room for a full vector
          if (res_out != nullptr) StorePartial<D>(res_out + j, m, s);
          acc0 = _mm256_fmadd_ps(s, s, acc0);
        }
        total = _mm256_add_ps(total, _mm256_add_ps(acc0, acc1));
      }
    } else {
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        int64_t j = b;
        for (; j + 32 <= e; j += 32) {
          const __m256 a = Load8<D>(x + j), c = Load8<D>(x + j + 8);
          const __m256 d = Load8<D>(x + j + 16), f = Load8<D>(x + j + 24);
          acc0 = _mm256_fmadd_ps(a, a, acc0);
          acc1 = _mm256_fmadd_ps(c, c, acc1);
          acc2 = _mm256_fmadd_ps(d, d, acc2);
          acc3 = _mm256_fmadd_ps(f, f, acc3);
        }
        for (; j < e; j += 8) {
          const __m256 a = LoadPartial<D>(x + j, std::min<int64_t>(8, e - j));
          acc0 = _mm256_fmadd_ps(a, a, acc0);
        }
        total = _mm256_add_ps(total,
                              _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
      }
    }
    const float mean = HorizontalSum(total) / static_cast<float>(n);
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(mean + eps));

    T* y = output + off;
    int64_t j = 0;
    if (residual != nullptr) {
      for (; j + 16 <= n; j += 16) {
        const __m256 s0 = _mm256_loadu_ps(buf + j), s1 = _mm256_loadu_ps(buf + j + 8);
        Store16<D>(y + j, _mm256_mul_ps(_mm256_mul_ps(s0, inv), _mm256_loadu_ps(weight + j)),
                   _mm256_mul_ps(_mm256_mul_ps(s1, inv), _mm256_loadu_ps(weight + j + 8)));
      }
      for (; j + 8 <= n; j += 8) {
        const __m256 s = _mm256_loadu_ps(buf + j);
        Store8<D>(y + j, _mm256_mul_ps(_mm256_mul_ps(s, inv), _mm256_loadu_ps(weight + j)));
      }
      if (j < n) {
        const int64_t m = n - j;
        const __m256 s = _mm256_loadu_ps(buf + j);
        StorePartial<D>(
            y + j, m,
            _mm256_mul_ps(_mm256_mul_ps(s, inv), LoadPartial<DType::kFloat32>(weight + j, m)));
      }
    } else {
      for (; j + 16 <= n; j += 16) {
        const __m256 s0 = Load8<D>(x + j), s1 = Load8<D>(x + j + 8);
        Store16<D>(y + j, _mm256_mul_ps(_mm256_mul_ps(s0, inv), _mm256_loadu_ps(weight + j)),
                   _mm256_mul_ps(_mm256_mul_ps(s1, inv), _mm256_loadu_ps(weight + j + 8)));
      }
      for (; j + 8 <= n; j += 8) {
        const __m256 s = Load8<D>(x + j);
        Store8<D>(y + j, _mm256_mul_ps(_mm256_mul_ps(s, inv), _mm256_loadu_ps(weight + j)));
      }
      if (j < n) {
        const int64_t m = n - j;
        const __m256 s = LoadPartial<D>(x + j, m);
        StorePartial<D>(
            y + j, m,
            _mm256_mul_ps(_mm256_mul_ps(s, inv), LoadPartial<DType::kFloat32>(weight + j, m)));
      }
    }
  }

  // s rounded to dtype D, and its dtype-D bits stored at dst when non-null.
  ACCEL_AVX512 static __m512 RoundAndStore16(__m512 v, T* dst) {
    if constexpr (D == DType::kFloat32) {
      if (dst != nullptr) _mm512_storeu_ps(dst, v);
      return v;
    } else {
      const __m256i bits = Narrow16<D>(v);
      if (dst != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bits);
      return Widen16<D>(bits);
    }
  }

  // Row on AVX-512, bit-identical to it. buf holds n + 16 floats. Without a
  // residual, s is also kept in buf in fp32 (pass 2 then reads it from L1
  // rather than converting the input again). kStream: non-temporal stores
  // for the output and prefetching of the next row (large tensors, see
  // simd512.h); the caller fences.
  template <bool kStream>
  ACCEL_AVX512 void Row512(int64_t r, float* buf) const {
    const int64_t off = r * n;
    const T* x = input + off;
    __m256 total = _mm256_setzero_ps();
    if (residual != nullptr) {
      const T* res = residual + off;
      T* res_out = residual_out != nullptr ? residual_out + off : nullptr;
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        __m512 acc = _mm512_setzero_ps();  // Row's [acc0 | acc1]
        int64_t j = b;
        for (; j + 16 <= e; j += 16) {
          const __m512 s = RoundAndStore16(_mm512_add_ps(Load16<D>(x + j), Load16<D>(res + j)),
                                           res_out != nullptr ? res_out + j : nullptr);
          _mm512_storeu_ps(buf + j, s);
          acc = _mm512_fmadd_ps(s, s, acc);
        }
        __m256 acc0 = _mm512_castps512_ps256(acc);
        const __m256 acc1 = _mm512_extractf32x8_ps(acc, 1);
        for (; j < e; j += 8) {  // as Row: 8 at a time into acc0
          const int64_t m = std::min<int64_t>(8, e - j);
          const __m256 s =
              RoundTo<D>(_mm256_add_ps(LoadPartial<D>(x + j, m), LoadPartial<D>(res + j, m)));
          _mm256_storeu_ps(buf + j, s);
          if (res_out != nullptr) StorePartial<D>(res_out + j, m, s);
          acc0 = _mm256_fmadd_ps(s, s, acc0);
        }
        total = _mm256_add_ps(total, _mm256_add_ps(acc0, acc1));
      }
    } else {
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps();
        int64_t j = b;
        for (; j + 32 <= e; j += 32) {
          const __m512 a = Load16<D>(x + j), c = Load16<D>(x + j + 16);
          _mm512_storeu_ps(buf + j, a);
          _mm512_storeu_ps(buf + j + 16, c);
          acc01 = _mm512_fmadd_ps(a, a, acc01);
          acc23 = _mm512_fmadd_ps(c, c, acc23);
        }
        __m256 acc0 = _mm512_castps512_ps256(acc01);
        const __m256 acc1 = _mm512_extractf32x8_ps(acc01, 1);
        const __m256 acc2 = _mm512_castps512_ps256(acc23);
        const __m256 acc3 = _mm512_extractf32x8_ps(acc23, 1);
        for (; j < e; j += 8) {
          const __m256 a = LoadPartial<D>(x + j, std::min<int64_t>(8, e - j));
          _mm256_storeu_ps(buf + j, a);
          acc0 = _mm256_fmadd_ps(a, a, acc0);
        }
        total = _mm256_add_ps(total,
                              _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
      }
    }
    const float mean = HorizontalSum(total) / static_cast<float>(n);
    const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(mean + eps));

    T* y = output + off;
    int64_t j = 0;
    // The next row's input (and residual) is fetched during this pass.
    const bool prefetch = kStream && r + 1 < rows;
    const T* next_x = x + n;
    const T* next_res = residual != nullptr ? residual + off + n : nullptr;
    for (; j + 32 <= n; j += 32) {
      if (prefetch) {
        PrefetchLines(next_x + j, 32 * sizeof(T));
        if (next_res != nullptr) PrefetchLines(next_res + j, 32 * sizeof(T));
      }
      const __m512 s0 = _mm512_loadu_ps(buf + j), s1 = _mm512_loadu_ps(buf + j + 16);
      StoreOut16<D, kStream>(y + j,
                             _mm512_mul_ps(_mm512_mul_ps(s0, inv), _mm512_loadu_ps(weight + j)));
      StoreOut16<D, kStream>(
          y + j + 16, _mm512_mul_ps(_mm512_mul_ps(s1, inv), _mm512_loadu_ps(weight + j + 16)));
    }
    for (; j < n; j += 16) {
      const int64_t m = std::min<int64_t>(16, n - j);
      const __m512 s = _mm512_loadu_ps(buf + j);  // buf has room for a full vector
      StorePartial16<D>(
          y + j, m,
          _mm512_mul_ps(_mm512_mul_ps(s, inv), LoadPartial16<DType::kFloat32>(weight + j, m)));
    }
  }
};

}  // namespace

void RmsNorm(const RmsNormArgs& args, const TensorView& output, const TensorView* residual_out) {
  const int64_t rows = args.input.rows();
  const int64_t n = args.input.last_dim();
  if (rows == 0 || n == 0) return;

  // Without a residual, s = input: a requested residual output is a copy.
  if (!args.residual && residual_out != nullptr && residual_out->data != args.input.data) {
    ConvertFloats(args.input.dtype, args.input.data, args.input.dtype, residual_out->data,
                  rows * n);
  }

  // 16-bit weights in fp32, in a per-thread buffer that only grows (the
  // pool's threads read it while this one waits in ParallelFor): a vector
  // per call was a 16 KB malloc and free for every one-row request of 4096.
  // Rows wider than kKeptWeight (1 Mi elements) get a buffer of their own,
  // so that no thread keeps more than 4 MB.
  constexpr int64_t kKeptWeight = int64_t{1} << 20;
  const float* weight = args.weight.as<float>();
  std::vector<float> wide_weight;
  if (args.weight.dtype != DType::kFloat32) {
    thread_local std::vector<float> kept_weight;
    std::vector<float>& buffer = n <= kKeptWeight ? kept_weight : wide_weight;
    if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
    ConvertFloats(args.weight.dtype, args.weight.data, DType::kFloat32, buffer.data(), n);
    weight = buffer.data();
  }

  DispatchFloat(args.input.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = Storage<D>;
    RowKernel<D> k{args.input.as<T>(),
                   args.residual ? args.residual->as<T>() : nullptr,
                   output.as<T>(),
                   args.residual && residual_out != nullptr ? residual_out->as<T>() : nullptr,
                   weight,
                   rows,
                   n,
                   args.eps};
    const int64_t grain = std::max<int64_t>(1, kGrainElements / n);
    const bool avx512 = HasAvx512();
    const bool stream = rows * n * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
    ParallelFor(rows, grain, [&](int64_t r0, int64_t r1) {
      // Per-thread row buffer for s, padded to whole vectors; grows only.
      thread_local std::vector<float> buf;
      if ((avx512 || args.residual) && static_cast<int64_t>(buf.size()) < n + 16) {
        buf.resize(n + 16);
      }
      if (avx512 && stream) {
        for (int64_t r = r0; r < r1; ++r) k.template Row512<true>(r, buf.data());
        _mm_sfence();  // the non-temporal stores, before another thread reads them
      } else if (avx512) {
        for (int64_t r = r0; r < r1; ++r) k.template Row512<false>(r, buf.data());
      } else {
        for (int64_t r = r0; r < r1; ++r) k.Row(r, buf.data());
      }
    });
  });
}

}  // namespace accel::kernels::cpu
