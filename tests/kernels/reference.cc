#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace accel::kernels::testing {
namespace {

// Value of an IEEE binary16 / bfloat16 bit pattern from its fields.
double DecodeBits(uint32_t bits, int exp_bits, int mant_bits) {
  const uint32_t sign = bits >> (exp_bits + mant_bits);
  const uint32_t exp = (bits >> mant_bits) & ((1u << exp_bits) - 1);
  const uint32_t mant = bits & ((1u << mant_bits) - 1);
  const int bias = (1 << (exp_bits - 1)) - 1;
  double v;
  if (exp == (1u << exp_bits) - 1) {
    v = mant == 0 ? std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(mant), 1 - bias - mant_bits);
  } else {
    v = std::ldexp(static_cast<double>(mant + (1u << mant_bits)),
                   static_cast<int>(exp) - bias - mant_bits);
  }
  return sign ? -v : v;
}

struct Format {
  int mant_bits;  // explicit mantissa bits
  int min_exp;    // exponent of the smallest normal
  double max;     // largest finite value
};

Format FormatOf(DType d) {
  switch (d) {
    case DType::kFloat16:
      return {10, -14, 65504.0};
    case DType::kBFloat16:
      return {7, -126, std::ldexp(255.0, 120)};
    default:
      return {23, -126, std::numeric_limits<float>::max()};
  }
}

}  // namespace

double DecodeElement(DType dtype, const void* data, int64_t i) {
  const auto* p = static_cast<const uint8_t*>(data);
  switch (dtype) {
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
    case DType::kFloat16:
    case DType::kBFloat16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return dtype == DType::kFloat16 ? DecodeBits(h, 5, 10) : DecodeBits(h, 8, 7);
    }
    case DType::kInt8:
      return static_cast<int8_t>(p[i]);
    case DType::kInt32: {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case DType::kInt64: {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      return static_cast<double>(v);
    }
    default:
      return std::numeric_limits<double>::quiet_NaN();
  }
}

std::vector<double> Decode(const ConstTensorView& v) {
  std::vector<double> out(v.num_elements());
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i)
    out[i] = DecodeElement(v.dtype, v.data, i);
  return out;
}

double RoundTo(DType dtype, double x) {
  if (dtype == DType::kFloat32) return static_cast<float>(x);
  if (std::isnan(x) || std::isinf(x) || x == 0) return x;
  const Format f = FormatOf(dtype);
  int e;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e)
  const int lead = std::max(e - 1, f.min_exp);
  const double ulp = std::ldexp(1.0, lead - f.mant_bits);
  const double r = std::nearbyint(x / ulp) * ulp;  // default rounding mode: ties to even
  if (std::fabs(r) > f.max) return std::copysign(std::numeric_limits<double>::infinity(), x);
  return r;
}

double UlpOf(DType dtype, double x) {
  const Format f = FormatOf(dtype);
  if (x == 0 || !std::isfinite(x)) return std::ldexp(1.0, f.min_exp - f.mant_bits);
  int e;
  std::frexp(x, &e);
  return std::ldexp(1.0, std::max(e - 1, f.min_exp) - f.mant_bits);
}

std::vector<double> RmsNorm(DType dtype, const std::vector<double>& x,
                            const std::vector<double>* residual, const std::vector<double>& w,
                            int64_t n, double eps, std::vector<double>* s) {
  std::vector<double> sv(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    sv[i] = residual ? RoundTo(dtype, x[i] + (*residual)[i]) : x[i];
  }
  std::vector<double> y(x.size());
  const int64_t rows = n == 0 ? 0 : static_cast<int64_t>(x.size()) / n;
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < n; ++j) ss += sv[r * n + j] * sv[r * n + j];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    for (int64_t j = 0; j < n; ++j) y[r * n + j] = sv[r * n + j] * inv * w[j];
  }
  if (s) *s = sv;
  return y;
}

std::vector<double> SwiGlu(const std::vector<double>& g, const std::vector<double>& u) {
  std::vector<double> y(g.size());
  for (size_t i = 0; i < g.size(); ++i) y[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return y;
}

std::vector<double> Linear(const std::vector<double>& x, const std::vector<double>& w,
                           const std::vector<double>& scales, const std::vector<double>* bias,
                           int64_t m, int64_t k, int64_t n, std::vector<double>* abs_dot) {
  std::vector<double> y(m * n);
  if (abs_dot) abs_dot->assign(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0, mag = 0;
      for (int64_t t = 0; t < k; ++t) {
        acc += x[i * k + t] * w[j * k + t];
        mag += std::fabs(x[i * k + t] * w[j * k + t]);
      }
      const double sc = scales.empty() ? 1.0 : scales.size() == 1 ? scales[0] : scales[j];
      y[i * n + j] = acc * sc + (bias ? (*bias)[j] : 0.0);
      if (abs_dot)
        (*abs_dot)[i * n + j] = mag * std::fabs(sc) + (bias ? std::fabs((*bias)[j]) : 0.0);
    }
  }
  return y;
}

std::vector<double> Rope(const std::vector<double>& x, int64_t b, int64_t s, int64_t h, int64_t d,
                         const std::vector<double>& cos, const std::vector<double>& sin,
                         const std::vector<int64_t>& pos, bool interleaved) {
  std::vector<double> y(x.size());
  const int64_t half = d / 2;
  for (int64_t t = 0; t < b * s; ++t) {
    const int64_t p = pos[t];
    for (int64_t hh = 0; hh < h; ++hh) {
      const double* xr = x.data() + (t * h + hh) * d;
      double* yr = y.data() + (t * h + hh) * d;
      for (int64_t i = 0; i < half; ++i) {
        const double c = cos[p * half + i], sn = sin[p * half + i];
        const int64_t a = interleaved ? 2 * i : i;
        const int64_t bb = interleaved ? 2 * i + 1 : i + half;
        yr[a] = xr[a] * c - xr[bb] * sn;
        yr[bb] = xr[a] * sn + xr[bb] * c;
      }
    }
  }
  return y;
}

void Quantize(const std::vector<double>& x, int64_t rows, int64_t len, bool per_row,
              std::vector<int8_t>* q, std::vector<float>* scales) {
  q->assign(x.size(), 0);
  scales->clear();
  const int64_t groups = per_row ? rows : 1;
  const int64_t glen = per_row ? len : static_cast<int64_t>(x.size());
  for (int64_t g = 0; g < groups; ++g) {
    double absmax = 0;
    for (int64_t i = 0; i < glen; ++i) absmax = std::max(absmax, std::fabs(x[g * glen + i]));
    // The contract: scale = absmax / 127 in fp32, q = half-even(x / scale) in fp32.
    float scale = static_cast<float>(absmax) / 127.0f;
    if (scale == 0.0f) scale = 1.0f;
    scales->push_back(scale);
    for (int64_t i = 0; i < glen; ++i) {
      const float r = static_cast<float>(x[g * glen + i]) / scale;
      (*q)[g * glen + i] = static_cast<int8_t>(std::clamp(std::nearbyint(r), -127.0f, 127.0f));
    }
  }
}

ErrorStats QuantizationError(const std::vector<double>& x, const std::vector<int8_t>& q,
                             const std::vector<float>& scales, int64_t len) {
  ErrorStats st{0, 0, 0, 0};
  const size_t n = x.size();
  if (n == 0) return st;
  std::vector<double> diff(n);
  double max_orig = 0, sum_abs = 0, sq_d = 0, sq_o = 0;
  for (size_t i = 0; i < n; ++i) {
    const float sc = scales.size() == 1 ? scales[0] : scales[i / len];
    // diff = original - dequantized, in fp32 as the contract says.
    const float deq = static_cast<float>(q[i]) * sc;
    diff[i] = static_cast<float>(static_cast<float>(x[i]) - deq);
    st.max_abs_error = std::max(st.max_abs_error, std::fabs(diff[i]));
    max_orig = std::max(max_orig, std::fabs(x[i]));
    sum_abs += std::fabs(diff[i]);
    sq_d += diff[i] * diff[i];
    sq_o += x[i] * x[i];
  }
  for (size_t i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > 0.1 * max_orig) {
      st.relative_error_pct =
          std::max(st.relative_error_pct, 100.0 * std::fabs(diff[i]) / std::fabs(x[i]));
    }
  }
  st.mean_abs_error = sum_abs / n;
  st.snr_db = 10.0 * std::log10((sq_o / n) / (sq_d / n + 1e-10));
  return st;
}

}  // namespace accel::kernels::testing
