// Rope against the fp64 reference: both styles, every float dtype, odd
// head dims, GQA, offsets, per-token positions ([S] and [B, S], INT32 and
// INT64), a 100000-entry cache, in-place use; and BuildRopeCache.
#include <gtest/gtest.h>

#include <cmath>

#include "accel/kernels/ops.h"
#include "reference.h"
#include "test_util.h"

namespace accel::kernels {
namespace {

using testing::AllClose;
using testing::HostTensor;

enum class Pos { kOffset, kPerToken32, kPerBatch64, kPerBatch32 };

struct RopeCase {
  int64_t b, s, hq, hk, d, p;
};

// A cos/sin table of the right shape with arbitrary (not necessarily
// trigonometric) values: the kernel must use whatever it is given.
void MakeTables(int64_t p, int64_t half, std::mt19937_64& rng, HostTensor* cos, HostTensor* sin) {
  *cos = testing::RandomTensor(DType::kFloat32, {p, half}, rng, -1, 1);
  *sin = testing::RandomTensor(DType::kFloat32, {p, half}, rng, -1, 1);
}

class RopeTest : public ::testing::TestWithParam<std::tuple<DType, RopeCase, RopeStyle, Pos>> {};

TEST_P(RopeTest, MatchesReference) {
  const auto [dtype, c, style, pos_kind] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor q = testing::RandomTensor(dtype, {c.b, c.s, c.hq, c.d}, rng);
  HostTensor k = testing::RandomTensor(dtype, {c.b, c.s, c.hk, c.d}, rng);
  HostTensor cos, sin;
  MakeTables(c.p, c.d / 2, rng, &cos, &sin);

  RopeArgs args;
  args.q = q.view();
  if (c.hk > 0) args.k = k.view();
  args.cos = cos.view();
  args.sin = sin.view();
  args.style = style;
  std::vector<int64_t> pos(c.b * c.s);
  HostTensor positions;
  std::uniform_int_distribution<int64_t> any(0, c.p - 1);
  switch (pos_kind) {
    case Pos::kOffset: {
      args.position_offset = c.p - c.s;  // the last positions of the cache
      for (int64_t t = 0; t < c.b * c.s; ++t) pos[t] = args.position_offset + t % c.s;
      break;
    }
    case Pos::kPerToken32: {
      positions = HostTensor(DType::kInt32, {c.s});
      for (int64_t s = 0; s < c.s; ++s) positions.Set(s, any(rng));
      for (int64_t t = 0; t < c.b * c.s; ++t) pos[t] = positions.values()[t % c.s];
      args.positions = positions.view();
      break;
    }
    case Pos::kPerBatch64:
    case Pos::kPerBatch32: {
      positions =
          HostTensor(pos_kind == Pos::kPerBatch64 ? DType::kInt64 : DType::kInt32, {c.b, c.s});
      for (int64_t t = 0; t < c.b * c.s; ++t) {
        pos[t] = t == 0 ? c.p - 1 : any(rng);
        positions.Set(t, pos[t]);
      }
      args.positions = positions.view();
      break;
    }
  }
  auto spec = CheckRope(args);
  ASSERT_TRUE(spec.ok()) << spec.status();
  HostTensor q_out(dtype, q.shape), k_out(dtype, k.shape);
  TensorView kv = k_out.mut();
  ASSERT_TRUE(Rope(ExecContext{}, args, q_out.mut(), c.hk > 0 ? &kv : nullptr).ok());

  const bool inter = style == RopeStyle::kInterleaved;
  const auto cv = cos.values(), sv = sin.values();
  const auto tol = testing::DefaultTolerance(dtype);
  const std::string what = testing::Ctx(
      seed, absl::StrCat("style=", static_cast<int>(style), " pos=", static_cast<int>(pos_kind)));
  EXPECT_TRUE(AllClose(q_out, testing::Rope(q.values(), c.b, c.s, c.hq, c.d, cv, sv, pos, inter),
                       tol, what + " q"));
  if (c.hk > 0) {
    EXPECT_TRUE(AllClose(k_out, testing::Rope(k.values(), c.b, c.s, c.hk, c.d, cv, sv, pos, inter),
                         tol, what + " k"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeTest,
    ::testing::Combine(
        ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
        ::testing::Values(RopeCase{1, 1, 1, 1, 2, 1}, RopeCase{2, 3, 4, 2, 6, 16},
                          RopeCase{1, 5, 3, 3, 18, 9}, RopeCase{2, 7, 8, 2, 128, 100000},
                          RopeCase{3, 4, 2, 0, 64, 50}, RopeCase{1, 2, 5, 1, 34, 8}),
        ::testing::Values(RopeStyle::kInterleaved, RopeStyle::kHalfSplit),
        ::testing::Values(Pos::kOffset, Pos::kPerToken32, Pos::kPerBatch64, Pos::kPerBatch32)));

TEST(Rope, InPlaceMatchesOutOfPlace) {
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalfSplit}) {
    HostTensor q = testing::RandomTensor(DType::kBFloat16, {2, 3, 4, 22}, rng);
    HostTensor cos, sin;
    MakeTables(10, 11, rng, &cos, &sin);
    RopeArgs args;
    args.q = q.view();
    args.cos = cos.view();
    args.sin = sin.view();
    args.position_offset = 2;
    args.style = style;
    HostTensor out(DType::kBFloat16, q.shape);
    ASSERT_TRUE(Rope(ExecContext{}, args, out.mut(), nullptr).ok());
    ASSERT_TRUE(Rope(ExecContext{}, args, q.mut(), nullptr).ok());
    EXPECT_EQ(0, std::memcmp(q.data(), out.data(), q.size() * 2)) << "seed=" << seed;
  }
}

TEST(Rope, PositionZeroWithTheBuiltCacheIsIdentity) {
  std::vector<float> cos(4 * 8), sin(4 * 8);
  BuildRopeCache(4, 16, 10000.0, cos.data(), sin.data());
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor q = testing::RandomTensor(DType::kFloat16, {1, 1, 2, 16}, rng);
  RopeArgs args;
  args.q = q.view();
  args.cos = {DType::kFloat32, {4, 8}, cos.data()};
  args.sin = {DType::kFloat32, {4, 8}, sin.data()};
  HostTensor out(DType::kFloat16, q.shape);
  ASSERT_TRUE(Rope(ExecContext{}, args, out.mut(), nullptr).ok());
  EXPECT_EQ(0, std::memcmp(q.data(), out.data(), q.size() * 2));
}

TEST(BuildRopeCache, MatchesTheFormulaInDouble) {
  for (auto [len, dim, base] : {std::tuple<int64_t, int64_t, double>{1, 2, 10000.0},
                                {37, 6, 10000.0},
                                {100000, 128, 500000.0},
                                {5, 130, 2.5}}) {
    ASSERT_TRUE(CheckRopeCacheParams(len, dim, base).ok());
    const int64_t half = dim / 2;
    std::vector<float> cos(len * half), sin(len * half);
    BuildRopeCache(len, dim, base, cos.data(), sin.data());
    std::mt19937_64 rng(len);
    std::uniform_int_distribution<int64_t> pick(0, len * half - 1);
    for (int t = 0; t < 2000; ++t) {
      const int64_t idx = t == 0 ? len * half - 1 : pick(rng);
      const int64_t p = idx / half, i = idx % half;
      // Independent form: exp(-(2i/d) ln base) instead of pow; equal to well below fp32 ulp.
      const double angle = static_cast<double>(p) * std::exp(-(2.0 * i / dim) * std::log(base));
      // One rounding to fp32: within half an fp32 ulp (2^-25 below 1) of the true value.
      const double tol = std::ldexp(1.0, -25) + 1e-14 * angle;
      ASSERT_NEAR(cos[idx], std::cos(angle), tol) << len << " " << idx;
      ASSERT_NEAR(sin[idx], std::sin(angle), tol) << len << " " << idx;
    }
    EXPECT_EQ(cos[0], 1.0f);
    EXPECT_EQ(sin[0], 0.0f);
  }
}

}  // namespace
}  // namespace accel::kernels
