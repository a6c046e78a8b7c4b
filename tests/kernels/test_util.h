// Helpers for the kernel tests: owning host tensors with random contents,
// and the comparison against the fp64 reference with API.md's tolerances.
//
// Test-only; not thread-safe (each test owns its tensors).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "accel/kernels/convert.h"
#include "accel/kernels/ops.h"
#include "accel/kernels/tensor.h"
#include "reference.h"

namespace accel::kernels::testing {

inline const std::vector<DType>& FloatDTypes() {
  static const std::vector<DType> v = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  return v;
}

// A dense tensor in host memory (8-byte aligned storage).
struct HostTensor {
  DType dtype = DType::kFloat32;
  Shape shape;
  std::vector<uint64_t> storage;

  HostTensor() = default;
  HostTensor(DType d, Shape s) : dtype(d), shape(std::move(s)) {
    storage.assign((NumElements(shape) * ItemSize(dtype) + 7) / 8 + 1, 0);
  }
  int64_t size() const { return NumElements(shape); }
  void* data() { return storage.data(); }
  const void* data() const { return storage.data(); }
  ConstTensorView view() const { return {dtype, shape, storage.data()}; }
  TensorView mut() { return {dtype, shape, storage.data()}; }
  std::vector<double> values() const { return Decode(view()); }

  // Stores v (rounded to the dtype) at flat index i.
  void Set(int64_t i, double v) {
    auto* p = static_cast<uint8_t*>(data());
    switch (dtype) {
      case DType::kFloat32: {
        const float f = static_cast<float>(v);
        std::memcpy(p + 4 * i, &f, 4);
        break;
      }
      case DType::kFloat16: {
        const uint16_t h = FloatToHalf(static_cast<float>(v));
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t h = FloatToBFloat16(static_cast<float>(v));
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      case DType::kInt8:
        p[i] = static_cast<uint8_t>(static_cast<int8_t>(v));
        break;
      case DType::kInt32: {
        const int32_t x = static_cast<int32_t>(v);
        std::memcpy(p + 4 * i, &x, 4);
        break;
      }
      case DType::kInt64: {
        const int64_t x = static_cast<int64_t>(v);
        std::memcpy(p + 8 * i, &x, 8);
        break;
      }
      default:
        break;
    }
  }
};

// A fresh seed per call, printed with every failure.
// The Quantize tests' cases: every float dtype x `shapes` x both
// granularities, less per-row on a 0-d tensor (CheckQuantize rejects it;
// a test of its own covers that).
inline std::vector<std::tuple<DType, Shape, Granularity>> QuantizeCases(
    const std::vector<Shape>& shapes) {
  std::vector<std::tuple<DType, Shape, Granularity>> cases;
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (const Shape& shape : shapes) {
      for (Granularity gran : {Granularity::kPerTensor, Granularity::kPerRow}) {
        if (!(shape.empty() && gran == Granularity::kPerRow))
          cases.emplace_back(dtype, shape, gran);
      }
    }
  }
  return cases;
}

inline uint64_t NewSeed() {
  static std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

inline HostTensor RandomTensor(DType d, Shape s, std::mt19937_64& rng, double lo = -2.0,
                               double hi = 2.0) {
  HostTensor t(d, std::move(s));
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t i = 0; i < t.size(); ++i) t.Set(i, dist(rng));
  return t;
}

struct Tolerance {
  double rtol;
  double atol;
};

// API.md: 1e-5 relative for fp32, atol = rtol = 1e-3 for fp16, 1e-2 for bf16.
inline Tolerance DefaultTolerance(DType d) {
  switch (d) {
    case DType::kFloat16:
      return {1e-3, 1e-3};
    case DType::kBFloat16:
      return {1e-2, 1e-2};
    default:
      return {1e-5, 1e-6};
  }
}

// Compares got (dtype of the tensor) with the unrounded reference: an element
// passes when within atol + rtol * |ref| (+ extra_atol[i] when given) of the
// reference, or within one ulp of the output dtype of the rounded reference.
// Also fails when the output is all zeros but the reference is not.
inline ::testing::AssertionResult AllClose(const HostTensor& got, const std::vector<double>& ref,
                                           Tolerance tol, const std::string& context,
                                           const std::vector<double>* extra_atol = nullptr) {
  const std::vector<double> g = got.values();
  if (g.size() != ref.size()) {
    return ::testing::AssertionFailure()
           << context << ": size " << g.size() << " vs reference " << ref.size();
  }
  int64_t bad = 0, first_bad = -1;
  bool any_nonzero_ref = false, any_nonzero_got = false;
  for (size_t i = 0; i < g.size(); ++i) {
    const double r = ref[i];
    // (Values below atol, such as silu of a very negative gate, may flush to 0.)
    any_nonzero_ref |= std::fabs(RoundTo(got.dtype, r)) > tol.atol;
    any_nonzero_got |= g[i] != 0;
    if (std::isnan(r) && std::isnan(g[i])) continue;
    const double rr = RoundTo(got.dtype, r);
    const double err = std::fabs(g[i] - r);
    double allowed = tol.atol + tol.rtol * std::fabs(r);
    if (extra_atol) allowed += (*extra_atol)[i];
    const bool ok =
        err <= allowed || g[i] == rr || std::fabs(g[i] - rr) <= UlpOf(got.dtype, rr) * 1.0000001;
    if (!ok) {
      if (first_bad < 0) first_bad = static_cast<int64_t>(i);
      ++bad;
    }
  }
  if (bad > 0) {
    return ::testing::AssertionFailure()
           << context << " dtype=" << DTypeName(got.dtype) << " shape=" << ShapeToString(got.shape)
           << ": " << bad << " of " << g.size() << " elements off; first bad index " << first_bad
           << ": got " << g[first_bad] << ", reference " << ref[first_bad] << " (rounded "
           << RoundTo(got.dtype, ref[first_bad]) << ")";
  }
  if (any_nonzero_ref && !any_nonzero_got) {
    return ::testing::AssertionFailure() << context << ": output is all zeros";
  }
  return ::testing::AssertionSuccess();
}

inline std::string Ctx(uint64_t seed, const std::string& what) {
  return absl::StrCat("seed=", seed, " ", what);
}

}  // namespace accel::kernels::testing
