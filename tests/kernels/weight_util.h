// Weights for the Linear and Ffn tests (CPU and CUDA): float weights of the
// input's dtype or of another one, and int8 weights with per-row or
// per-tensor scales, with values sized like a real layer's (|w| <= 1/sqrt(k)),
// and the fp64 reference of the Ffn block over them.
//
// Test-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "accel/kernels/ops.h"
#include "reference.h"
#include "test_util.h"

namespace accel::kernels::testing {

enum class WeightKind { kSameFloat, kOtherFloat, kInt8PerRow, kInt8PerTensor };

inline const char* KindName(WeightKind k) {
  switch (k) {
    case WeightKind::kSameFloat:
      return "same_float";
    case WeightKind::kOtherFloat:
      return "other_float";
    case WeightKind::kInt8PerRow:
      return "int8_per_row";
    case WeightKind::kInt8PerTensor:
      return "int8_per_tensor";
  }
  return "?";
}

// A float dtype other than `d`.
inline DType OtherFloat(DType d) { return FloatDTypes()[static_cast<int>(d) % 3]; }

// A weight [rows, cols] on the host: its values and, when quantized, scales.
struct TestWeight {
  HostTensor values;
  HostTensor scales;
  bool quantized = false;

  WeightView view() const {
    WeightView w{values.view(), std::nullopt};
    if (quantized) w.scales = scales.view();
    return w;
  }
  // The reference's scales (none for a float weight).
  std::vector<double> ref_scales() const {
    return quantized ? scales.values() : std::vector<double>{};
  }
};

inline TestWeight MakeWeight(WeightKind kind, DType input_dtype, int64_t rows, int64_t cols,
                             std::mt19937_64& rng) {
  TestWeight w;
  const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(cols, 1)));
  switch (kind) {
    case WeightKind::kSameFloat:
      w.values = RandomTensor(input_dtype, {rows, cols}, rng, -bound, bound);
      break;
    case WeightKind::kOtherFloat:
      w.values = RandomTensor(OtherFloat(input_dtype), {rows, cols}, rng, -bound, bound);
      break;
    case WeightKind::kInt8PerRow:
    case WeightKind::kInt8PerTensor: {
      w.quantized = true;
      w.values = HostTensor(DType::kInt8, {rows, cols});
      std::uniform_int_distribution<int> q(-127, 127);
      for (int64_t i = 0; i < w.values.size(); ++i) w.values.Set(i, q(rng));
      const bool per_row = kind == WeightKind::kInt8PerRow;
      w.scales = RandomTensor(DType::kFloat32, per_row ? Shape{rows} : Shape{}, rng, bound / 200,
                              bound / 100);
      break;
    }
  }
  return w;
}

// The fp64 reference of Ffn: down(SwiGlu(gate(x), up(x))), with biases
// when given; `mag` receives the down projection's sum of |x w scale| (see
// Linear in reference.h), the scale of its rounding error.
inline std::vector<double> RefFfn(const std::vector<double>& x, const TestWeight& wg,
                                  const TestWeight& wu, const TestWeight& wd,
                                  const std::vector<double>* bg, const std::vector<double>* bu,
                                  const std::vector<double>* bd, int64_t m, int64_t h, int64_t i,
                                  std::vector<double>* mag) {
  const auto g = Linear(x, wg.values.values(), wg.ref_scales(), bg, m, h, i, nullptr);
  const auto u = Linear(x, wu.values.values(), wu.ref_scales(), bu, m, h, i, nullptr);
  const auto act = SwiGlu(g, u);
  return Linear(act, wd.values.values(), wd.ref_scales(), bd, m, i, h, mag);
}

}  // namespace accel::kernels::testing
