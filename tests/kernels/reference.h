// An independent fp64 oracle for the kernel tests.
//
// Nothing here calls the kernels' code: elements are decoded from their bit
// patterns, the math is done in double, and rounding to a dtype is a generic
// round-to-nearest-even on doubles. The kernels must agree with it within
// the tolerances of API.md. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "accel/kernels/tensor.h"

namespace accel::kernels::testing {

// Element i of a tensor of any dtype as a double (exact for every dtype).
double DecodeElement(DType dtype, const void* data, int64_t i);
std::vector<double> Decode(const ConstTensorView& v);

// x rounded to the nearest value of a float dtype, ties to even, overflowing
// to infinity (FLOAT32 is rounded via the hardware double->float cast).
double RoundTo(DType dtype, double x);
// The spacing of dtype's values at the magnitude of x (its ulp).
double UlpOf(DType dtype, double x);

// RmsNorm over rows of n. With a residual, s = RoundTo(dtype, x + r) is
// returned in *s (else s = x), and the result is computed from s.
std::vector<double> RmsNorm(DType dtype, const std::vector<double>& x,
                            const std::vector<double>* residual, const std::vector<double>& w,
                            int64_t n, double eps, std::vector<double>* s);

std::vector<double> SwiGlu(const std::vector<double>& g, const std::vector<double>& u);

// y[m, n] = sum_k x[m, k] w[n, k] * scale(n) + bias[n]. scales empty: none;
// one element: per tensor; else per row n. abs_dot (if set) receives
// sum_k |x w scale|, the natural scale of the rounding error of y.
std::vector<double> Linear(const std::vector<double>& x, const std::vector<double>& w,
                           const std::vector<double>& scales, const std::vector<double>* bias,
                           int64_t m, int64_t k, int64_t n, std::vector<double>* abs_dot);

// Rotates x [B, S, H, D] with cos/sin [P, D/2] at pos[b * S + s].
std::vector<double> Rope(const std::vector<double>& x, int64_t b, int64_t s, int64_t h, int64_t d,
                         const std::vector<double>& cos, const std::vector<double>& sin,
                         const std::vector<int64_t>& pos, bool interleaved);

// Quantize per the contract (fp32 scale and division, half-even rounding).
void Quantize(const std::vector<double>& x, int64_t rows, int64_t len, bool per_row,
              std::vector<int8_t>* q, std::vector<float>* scales);

struct ErrorStats {
  double max_abs_error, mean_abs_error, relative_error_pct, snr_db;
};
ErrorStats QuantizationError(const std::vector<double>& x, const std::vector<int8_t>& q,
                             const std::vector<float>& scales, int64_t len);

}  // namespace accel::kernels::testing
