// Rotary position embedding on the CPU, and the host-side cache builder.
//
// Work is split by token (b, s): each token's cos/sin row is expanded once
// into per-lane coefficient vectors and reused for all of its q and k heads.
// The rotations have AVX2 and AVX-512 forms (chosen at run time) that do the
// same fp32 operations per element, so the same bits.
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/simd512.h"

namespace accel::kernels::cpu {
namespace {

// INTERLEAVED: with C = (c0, c0, c1, c1, ...) and S = (-s0, s0, -s1, s1, ...),
// x' = x * C + swap_pairs(x) * S gives x'[2i] = x[2i] c - x[2i+1] s and
// x'[2i+1] = x[2i+1] c + x[2i] s.
template <DType D>
void RotateInterleaved(const Storage<D>* x, Storage<D>* y, int64_t d, const float* cc,
                       const float* ss) {
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    const __m256 v = Load8<D>(x + j);
    const __m256 sw = _mm256_permute_ps(v, 0xB1);
    Store8<D>(y + j, _mm256_fmadd_ps(v, _mm256_loadu_ps(cc + j),
                                     _mm256_mul_ps(sw, _mm256_loadu_ps(ss + j))));
  }
  if (j < d) {
    const int64_t m = d - j;
    const __m256 v = LoadPartial<D>(x + j, m);
    const __m256 sw = _mm256_permute_ps(v, 0xB1);
    StorePartial<D>(
        y + j, m,
        _mm256_fmadd_ps(v, _mm256_loadu_ps(cc + j), _mm256_mul_ps(sw, _mm256_loadu_ps(ss + j))));
  }
}

// HALF_SPLIT: pairs (i, i + D/2).
template <DType D>
void RotateHalfSplit(const Storage<D>* x, Storage<D>* y, int64_t half, const float* c,
                     const float* s) {
  int64_t i = 0;
  auto rotate = [](__m256 x1, __m256 x2, __m256 cv, __m256 sv, __m256* o1, __m256* o2) {
    *o1 = _mm256_fmsub_ps(x1, cv, _mm256_mul_ps(x2, sv));
    *o2 = _mm256_fmadd_ps(x2, cv, _mm256_mul_ps(x1, sv));
  };
  for (; i + 8 <= half; i += 8) {
    __m256 o1, o2;
    rotate(Load8<D>(x + i), Load8<D>(x + half + i), _mm256_loadu_ps(c + i), _mm256_loadu_ps(s + i),
           &o1, &o2);
    Store8<D>(y + i, o1);
    Store8<D>(y + half + i, o2);
  }
  if (i < half) {
    const int64_t m = half - i;
    __m256 o1, o2;
    rotate(LoadPartial<D>(x + i, m), LoadPartial<D>(x + half + i, m),
           LoadPartial<DType::kFloat32>(c + i, m), LoadPartial<DType::kFloat32>(s + i, m), &o1,
           &o2);
    StorePartial<D>(y + i, m, o1);
    StorePartial<D>(y + half + i, m, o2);
  }
}

template <DType D, bool kStream>
ACCEL_AVX512 void RotateInterleaved512(const Storage<D>* x, Storage<D>* y, int64_t d,
                                       const float* cc, const float* ss) {
  for (int64_t j = 0; j < d; j += 16) {
    const int64_t m = std::min<int64_t>(16, d - j);
    const __m512 v = m == 16 ? Load16<D>(x + j) : LoadPartial16<D>(x + j, m);
    const __m512 sw = _mm512_permute_ps(v, 0xB1);
    // cc and ss are padded to whole vectors.
    const __m512 r =
        _mm512_fmadd_ps(v, _mm512_loadu_ps(cc + j), _mm512_mul_ps(sw, _mm512_loadu_ps(ss + j)));
    if (m == 16) {
      StoreOut16<D, kStream>(y + j, r);
    } else {
      StorePartial16<D>(y + j, m, r);
    }
  }
}

// kStream: non-temporal stores for the output (large outputs, see
// simd512.h); the caller fences.
template <DType D, bool kStream>
ACCEL_AVX512 void RotateHalfSplit512(const Storage<D>* x, Storage<D>* y, int64_t half,
                                     const float* c, const float* s) {
  int64_t i = 0;
  for (; i + 16 <= half; i += 16) {
    const __m512 x1 = Load16<D>(x + i), x2 = Load16<D>(x + half + i);
    const __m512 cv = _mm512_loadu_ps(c + i), sv = _mm512_loadu_ps(s + i);
    StoreOut16<D, kStream>(y + i, _mm512_fmsub_ps(x1, cv, _mm512_mul_ps(x2, sv)));
    StoreOut16<D, kStream>(y + half + i, _mm512_fmadd_ps(x2, cv, _mm512_mul_ps(x1, sv)));
  }
  if (i < half) {
    const int64_t m = half - i;
    const __m512 x1 = LoadPartial16<D>(x + i, m), x2 = LoadPartial16<D>(x + half + i, m);
    const __m512 cv = LoadPartial16<DType::kFloat32>(c + i, m);
    const __m512 sv = LoadPartial16<DType::kFloat32>(s + i, m);
    StorePartial16<D>(y + i, m, _mm512_fmsub_ps(x1, cv, _mm512_mul_ps(x2, sv)));
    StorePartial16<D>(y + half + i, m, _mm512_fmadd_ps(x2, cv, _mm512_mul_ps(x1, sv)));
  }
}

// Rotates every head of tokens [t0, t1): Run with AVX2, Run512 with AVX-512
// (a separate function so that the 512-bit rotations inline into its loop).
template <DType D>
struct RopeTokens {
  using T = Storage<D>;
  const T* q;
  T* qo;
  const T* k;
  T* ko;
  int64_t hq, hk, d;
  const float* cos;
  const float* sin;
  bool interleaved;

  // Expanded coefficients of position p for the interleaved layout in cc/ss
  // (thread-local, padded to whole vectors); returns the cos/sin rows.
  void Coefficients(int64_t p, const float** c, const float** sn, std::vector<float>& cc,
                    std::vector<float>& ss) const {
    const int64_t half = d / 2;
    *c = cos + p * half;
    *sn = sin + p * half;
    if (!interleaved) return;
    if (static_cast<int64_t>(cc.size()) < d + 16) {
      cc.assign(d + 16, 0.0f);
      ss.assign(d + 16, 0.0f);
    }
    for (int64_t i = 0; i < half; ++i) {
      cc[2 * i] = cc[2 * i + 1] = (*c)[i];
      ss[2 * i] = -(*sn)[i];
      ss[2 * i + 1] = (*sn)[i];
    }
  }

  const T* Src(int64_t t, int64_t h) const {
    return h < hq ? q + (t * hq + h) * d : k + (t * hk + h - hq) * d;
  }
  T* Dst(int64_t t, int64_t h) const {
    return h < hq ? qo + (t * hq + h) * d : ko + (t * hk + h - hq) * d;
  }

  template <typename PositionFn>
  void Run(int64_t t0, int64_t t1, const PositionFn& position) const {
    thread_local std::vector<float> cc, ss;
    for (int64_t t = t0; t < t1; ++t) {
      const float *c, *sn;
      Coefficients(position(t), &c, &sn, cc, ss);
      for (int64_t h = 0; h < hq + hk; ++h) {
        if (interleaved) {
          RotateInterleaved<D>(Src(t, h), Dst(t, h), d, cc.data(), ss.data());
        } else {
          RotateHalfSplit<D>(Src(t, h), Dst(t, h), d / 2, c, sn);
        }
      }
    }
  }

  template <bool kStream, typename PositionFn>
  ACCEL_AVX512 void Run512(int64_t t0, int64_t t1, const PositionFn& position) const {
    thread_local std::vector<float> cc, ss;
    for (int64_t t = t0; t < t1; ++t) {
      const float *c, *sn;
      Coefficients(position(t), &c, &sn, cc, ss);
      for (int64_t h = 0; h < hq + hk; ++h) {
        if (interleaved) {
          RotateInterleaved512<D, kStream>(Src(t, h), Dst(t, h), d, cc.data(), ss.data());
        } else {
          RotateHalfSplit512<D, kStream>(Src(t, h), Dst(t, h), d / 2, c, sn);
        }
      }
    }
    if constexpr (kStream) _mm_sfence();  // before another thread reads the output
  }
};

}  // namespace

void Rope(const RopeArgs& args, const TensorView& q_out, const TensorView* k_out) {
  const int64_t b = args.q.shape[0], s = args.q.shape[1], hq = args.q.shape[2];
  const int64_t d = args.q.shape[3];
  const bool has_k = args.k.has_value() && k_out != nullptr;
  const int64_t hk = has_k ? args.k->shape[2] : 0;
  const int64_t tokens = b * s;
  if (tokens == 0 || hq + hk == 0) return;
  const float* cos = args.cos.as<float>();
  const float* sin = args.sin.as<float>();
  const bool interleaved = args.style == RopeStyle::kInterleaved;

  auto position = [&](int64_t t) -> int64_t {
    if (!args.positions) return args.position_offset + t % s;
    return PositionAt(*args.positions, args.positions->rank() == 2 ? t : t % s);
  };

  DispatchFloat(args.q.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = Storage<D>;
    const T* q = args.q.as<T>();
    T* qo = q_out.as<T>();
    const T* k = has_k ? args.k->as<T>() : nullptr;
    T* ko = has_k ? k_out->as<T>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, 16 * 1024 / ((hq + hk) * d));
    const RopeTokens<D> tokens_fn{q, qo, k, ko, hq, hk, d, cos, sin, interleaved};
    const bool stream = tokens * (hq + hk) * d * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
    if (HasAvx512() && stream) {
      ParallelFor(tokens, grain, [&](int64_t t0, int64_t t1) {
        tokens_fn.template Run512<true>(t0, t1, position);
      });
    } else if (HasAvx512()) {
      ParallelFor(tokens, grain, [&](int64_t t0, int64_t t1) {
        tokens_fn.template Run512<false>(t0, t1, position);
      });
    } else {
      ParallelFor(tokens, grain, [&](int64_t t0, int64_t t1) { tokens_fn.Run(t0, t1, position); });
    }
  });
}

void BuildRopeCache(int64_t max_seq_len, int64_t head_dim, double base, float* cos, float* sin) {
  const int64_t half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  }
  // Double-precision sin/cos are ~20 ns each: spread long caches over threads.
  ParallelFor(max_seq_len, std::max<int64_t>(1, 4096 / half), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * inv_freq[i];
        cos[p * half + i] = static_cast<float>(std::cos(angle));
        sin[p * half + i] = static_cast<float>(std::sin(angle));
      }
    }
  });
}

}  // namespace accel::kernels::cpu
