// Conversions between float dtypes: known bit patterns, ties to even,
// subnormals, inf and NaN, an exhaustive fp16 round trip, and the bulk
// (vector) path against the scalar one.
#include "accel/kernels/convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "reference.h"
#include "test_util.h"

namespace accel::kernels {
namespace {

using testing::RoundTo;

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Convert, HalfToFloatKnownPatterns) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(Bits(HalfToFloat(0x8000)), 0x80000000u);
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7c01)));
}

TEST(Convert, FloatToHalfKnownPatterns) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // the tie above the max rounds to inf
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e30f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  // Subnormals and ties to even at the bottom of the range.
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);                          // tie -> even (0)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25) * 1.01f), 0x0001);                  // above the tie
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);                          // 1.5 ulp -> 2
  EXPECT_EQ(FloatToHalf(std::ldexp(5.0f, -25)), 0x0002);                          // 2.5 ulp -> 2
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25)), 0x0400);  // carry
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
  // Ties to even in the normal range: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(3.0f, -11)), 0x3c02);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_NE(FloatToHalf(FromBits(0x7f800001u)) & 0x0200, 0) << "a NaN becomes a quiet NaN";
}

TEST(Convert, BFloat16KnownPatterns) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(-2.0f), 0xc000);
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3f818000u)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBFloat16(FromBits(0x7f7fffffu)), 0x7f80);  // max float rounds to inf
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBFloat16(FromBits(0x00000001u)), 0x0000);  // float subnormal
  EXPECT_EQ(FloatToBFloat16(FromBits(0x00018000u)), 0x0002);  // subnormal tie -> even
  const uint16_t nan = FloatToBFloat16(FromBits(0x7f800001u));
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(nan)));
}

TEST(Convert, HalfRoundTripIsExhaustivelyExact) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const double want = testing::DecodeElement(DType::kFloat16, &h, 0);  // the low 16 bits
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(want));
      ASSERT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f))));
    } else {
      ASSERT_EQ(static_cast<double>(f), want) << "pattern 0x" << std::hex << h;
      ASSERT_EQ(FloatToHalf(f), h) << "pattern 0x" << std::hex << h;
    }
  }
}

TEST(Convert, HalfMidpointsRoundToEven) {
  // Every midpoint between adjacent finite halves of the same sign.
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const double a = HalfToFloat(static_cast<uint16_t>(h | sign));
      const double b = HalfToFloat(static_cast<uint16_t>((h + 1) | sign));
      const float mid = static_cast<float>((a + b) / 2);  // exact in fp32
      const uint16_t want = static_cast<uint16_t>(((h & 1) ? h + 1 : h) | sign);
      ASSERT_EQ(FloatToHalf(mid), want) << "between 0x" << std::hex << h << " and 0x" << h + 1;
    }
  }
}

TEST(Convert, RandomFloatsMatchTheReferenceRounding) {
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 1000000; ++i) {
    // Exponents spanning the fp16 range and beyond, including subnormals.
    uint32_t u = bits(rng);
    u = (u & 0x807fffffu) | ((95u + (u >> 23) % 50u) << 23);
    const float f = FromBits(u);
    ASSERT_EQ(static_cast<double>(HalfToFloat(FloatToHalf(f))), RoundTo(DType::kFloat16, f))
        << "seed=" << seed << " f=" << f;
    ASSERT_EQ(static_cast<double>(BFloat16ToFloat(FloatToBFloat16(f))),
              RoundTo(DType::kBFloat16, f))
        << "seed=" << seed << " f=" << f;
  }
}

class ConvertBulk : public ::testing::TestWithParam<std::tuple<DType, DType, int64_t>> {};

TEST_P(ConvertBulk, MatchesScalarConversions) {
  const auto [src_dtype, dst_dtype, n] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  testing::HostTensor src = testing::RandomTensor(src_dtype, {n}, rng, -70000, 70000);
  // Specials: NaN, infinities, fp16 subnormals, ties.
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::ldexp(1.0f, -25),
                            std::ldexp(3.0f, -25),
                            1.0f + std::ldexp(1.0f, -11),
                            65520.0f,
                            -0.0f,
                            1e-30f};
  for (int64_t i = 0; i < n; i += 3) src.Set(i, specials[(i / 3) % 9]);
  testing::HostTensor dst(dst_dtype, {n});
  ConvertFloats(src_dtype, src.data(), dst_dtype, dst.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = testing::DecodeElement(src_dtype, src.data(), i);
    const double want = RoundTo(dst_dtype, v);
    const double got = testing::DecodeElement(dst_dtype, dst.data(), i);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << "seed=" << seed << " index " << i;
    } else {
      ASSERT_EQ(got, want) << "seed=" << seed << " index " << i << " value " << v;
      ASSERT_EQ(std::signbit(got), std::signbit(want)) << "index " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllPairs, ConvertBulk,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values<int64_t>(1, 7, 8, 33, 4095, 200003)));

TEST(Convert, ZeroElementsIsANoOp) {
  ConvertFloats(DType::kFloat32, nullptr, DType::kFloat16, nullptr, 0);
}

}  // namespace
}  // namespace accel::kernels
