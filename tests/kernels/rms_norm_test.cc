// RmsNorm against the fp64 reference: every float dtype, odd and boundary
// widths, zero rows, mixed weight dtypes, with and without a residual, and a
// residual output that aliases the residual input.
#include <gtest/gtest.h>

#include <tuple>

#include "accel/kernels/ops.h"
#include "reference.h"
#include "test_util.h"

namespace accel::kernels {
namespace {

using testing::AllClose;
using testing::Ctx;
using testing::HostTensor;
using testing::RandomTensor;

enum class Residual { kNone, kSeparateOut, kAliasedOut, kNoOut };

struct Case {
  int64_t rows;
  int64_t n;
};

class RmsNormTest : public ::testing::TestWithParam<std::tuple<DType, Case, Residual>> {};

TEST_P(RmsNormTest, MatchesReference) {
  const auto [dtype, c, mode] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  // A weight dtype other than the input's half of the time.
  const DType wdtype = c.n % 2 ? testing::FloatDTypes()[(static_cast<int>(dtype)) % 3] : dtype;
  const Shape shape = c.rows == 5 ? Shape{1, 5, c.n} : Shape{c.rows, c.n};
  HostTensor x = RandomTensor(dtype, shape, rng);
  HostTensor w = RandomTensor(wdtype, {c.n}, rng, 0.5, 1.5);
  HostTensor r = RandomTensor(dtype, shape, rng);
  HostTensor out(dtype, shape);
  HostTensor rout(dtype, shape);

  RmsNormArgs args{x.view(), w.view(), std::nullopt, 1e-5f};
  if (mode != Residual::kNone) args.residual = r.view();
  ASSERT_TRUE(CheckRmsNorm(args).ok());
  const std::vector<double> rv = r.values();
  std::vector<double> s;
  const std::vector<double> want =
      testing::RmsNorm(dtype, x.values(), mode == Residual::kNone ? nullptr : &rv, w.values(), c.n,
                       static_cast<double>(1e-5f), &s);

  TensorView rout_view = mode == Residual::kAliasedOut ? r.mut() : rout.mut();
  const TensorView* rout_ptr = mode == Residual::kNoOut ? nullptr : &rout_view;
  ASSERT_TRUE(RmsNorm(ExecContext{}, args, out.mut(), rout_ptr).ok());

  const std::string what =
      Ctx(seed, absl::StrCat("weight=", DTypeName(wdtype), " mode=", static_cast<int>(mode)));
  EXPECT_TRUE(AllClose(out, want, testing::DefaultTolerance(dtype), what));
  if (mode == Residual::kSeparateOut || mode == Residual::kAliasedOut) {
    const HostTensor& got_s = mode == Residual::kAliasedOut ? r : rout;
    // s is rounded once from an exact fp32 sum: it matches the reference
    // within one ulp (the reference rounds the exact sum).
    EXPECT_TRUE(AllClose(got_s, s, {0, 0}, what + " residual_out"));
  }
  if (mode == Residual::kNone) {
    // Without a residual, a requested residual output is s = input.
    EXPECT_TRUE(AllClose(rout, x.values(), {0, 0}, what + " residual_out copy"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsNormTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(Case{0, 7}, Case{1, 1}, Case{3, 3}, Case{5, 17},
                                         Case{2, 4095}, Case{3, 4096}, Case{2, 8193},
                                         Case{1, 262147}),
                       ::testing::Values(Residual::kNone, Residual::kSeparateOut,
                                         Residual::kAliasedOut, Residual::kNoOut)),
    [](const auto& info) {
      const Case c = std::get<1>(info.param);
      return absl::StrCat(DTypeName(std::get<0>(info.param)), "_", c.rows, "x", c.n, "_mode",
                          static_cast<int>(std::get<2>(info.param)));
    });

TEST(RmsNorm, InPlaceOutputAndResidual) {
  // output aliases input and residual_out aliases residual: the server's
  // in-place form.
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor x = RandomTensor(DType::kBFloat16, {4, 4099}, rng);
  HostTensor w = RandomTensor(DType::kFloat32, {4099}, rng);
  HostTensor r = RandomTensor(DType::kBFloat16, {4, 4099}, rng);
  const std::vector<double> rv = r.values();
  std::vector<double> s;
  const auto want =
      testing::RmsNorm(DType::kBFloat16, x.values(), &rv, w.values(), 4099, 1e-6f, &s);
  RmsNormArgs args{x.view(), w.view(), r.view(), 1e-6f};
  TensorView rout = r.mut();
  ASSERT_TRUE(RmsNorm(ExecContext{}, args, x.mut(), &rout).ok());
  EXPECT_TRUE(
      AllClose(x, want, testing::DefaultTolerance(DType::kBFloat16), Ctx(seed, "in place")));
  EXPECT_TRUE(AllClose(r, s, {0, 0}, Ctx(seed, "in place residual")));
}

TEST(RmsNorm, ZeroRowGivesZeroAndEpsZeroIsAllowed) {
  HostTensor x(DType::kFloat32, {2, 8});  // zeros
  HostTensor w(DType::kFloat32, {8});
  for (int i = 0; i < 8; ++i) w.Set(i, 1.0);
  x.Set(8, 3.0);  // row 1 = [3, 0, ...]
  HostTensor out(DType::kFloat32, {2, 8});
  ASSERT_TRUE(
      RmsNorm(ExecContext{}, {x.view(), w.view(), std::nullopt, 1e-6f}, out.mut(), nullptr).ok());
  EXPECT_EQ(out.values()[0], 0.0);
  EXPECT_NEAR(out.values()[8], 3.0 / std::sqrt(9.0 / 8 + 1e-6), 1e-5);
  ASSERT_TRUE(
      RmsNorm(ExecContext{}, {x.view(), w.view(), std::nullopt, 0.0f}, out.mut(), nullptr).ok());
  EXPECT_NEAR(out.values()[8], std::sqrt(8.0), 1e-5);
}

TEST(RmsNorm, BatchedRowsAreBitIdenticalToSingleRows) {
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  const int64_t n = 4101;
  HostTensor x = RandomTensor(DType::kFloat16, {9, n}, rng);
  HostTensor w = RandomTensor(DType::kBFloat16, {n}, rng);
  HostTensor out(DType::kFloat16, {9, n});
  ASSERT_TRUE(
      RmsNorm(ExecContext{}, {x.view(), w.view(), std::nullopt, 1e-6f}, out.mut(), nullptr).ok());
  for (int64_t r = 0; r < 9; ++r) {
    ConstTensorView row{DType::kFloat16, {1, n}, static_cast<const uint16_t*>(x.data()) + r * n};
    HostTensor one(DType::kFloat16, {1, n});
    ASSERT_TRUE(
        RmsNorm(ExecContext{}, {row, w.view(), std::nullopt, 1e-6f}, one.mut(), nullptr).ok());
    ASSERT_EQ(0, std::memcmp(one.data(), static_cast<const uint16_t*>(out.data()) + r * n, n * 2))
        << "seed=" << seed << " row " << r;
  }
}

}  // namespace
}  // namespace accel::kernels
