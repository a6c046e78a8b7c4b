// Scalar and bulk conversions between the float element types.
//
// Conversions to 16-bit types round to nearest, ties to even, keep NaN a
// NaN (quiet), and overflow to infinity as IEEE 754 requires. Used by the CPU
// kernels, the safetensors loader (dtype casts), the client (.npy casts) and
// the tests. All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <cstring>

#include "accel/kernels/tensor.h"

namespace accel::kernels {

inline float BFloat16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t FloatToBFloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  // Round to nearest even: add 0x7fff plus the lowest kept bit.
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);

// Converts n elements between float dtypes (FLOAT32, FLOAT16, BFLOAT16).
// Same dtype is a copy. src and dst must not overlap unless equal.
void ConvertFloats(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n);

}  // namespace accel::kernels
