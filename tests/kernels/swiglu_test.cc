// SwiGlu against the fp64 reference, including saturated gates.
#include <gtest/gtest.h>

#include "accel/kernels/ops.h"
#include "reference.h"
#include "test_util.h"

namespace accel::kernels {
namespace {

using testing::AllClose;
using testing::HostTensor;

class SwiGluTest : public ::testing::TestWithParam<std::tuple<DType, Shape>> {};

TEST_P(SwiGluTest, MatchesReference) {
  const auto [dtype, shape] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor g = testing::RandomTensor(dtype, shape, rng, -12, 12);
  HostTensor u = testing::RandomTensor(dtype, shape, rng);
  const double extremes[] = {-100, -30, -1e-3, 0, 1e-3, 30, 100, -87, 89};
  for (int64_t i = 0; i < g.size(); i += 11) g.Set(i, extremes[(i / 11) % 9]);
  HostTensor out(dtype, shape);
  SwiGluArgs args{g.view(), u.view()};
  ASSERT_TRUE(CheckSwiGlu(args).ok());
  ASSERT_TRUE(SwiGlu(ExecContext{}, args, out.mut()).ok());
  EXPECT_TRUE(AllClose(out, testing::SwiGlu(g.values(), u.values()),
                       testing::DefaultTolerance(dtype), testing::Ctx(seed, "swiglu")));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SwiGluTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(Shape{0, 5}, Shape{}, Shape{1}, Shape{3}, Shape{17},
                                         Shape{3, 4095}, Shape{8193}, Shape{2, 3, 100003})));

TEST(SwiGlu, ElementResultsDoNotDependOnPosition) {
  // The same values at different offsets (vector body vs tail) give the same bits.
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor g = testing::RandomTensor(DType::kFloat32, {13}, rng, -10, 10);
  HostTensor u = testing::RandomTensor(DType::kFloat32, {13}, rng);
  HostTensor out(DType::kFloat32, {13});
  ASSERT_TRUE(SwiGlu(ExecContext{}, {g.view(), u.view()}, out.mut()).ok());
  for (int64_t off = 0; off < 13; ++off) {
    HostTensor one(DType::kFloat32, {1});
    ConstTensorView gv{DType::kFloat32, {1}, static_cast<const float*>(g.data()) + off};
    ConstTensorView uv{DType::kFloat32, {1}, static_cast<const float*>(u.data()) + off};
    ASSERT_TRUE(SwiGlu(ExecContext{}, {gv, uv}, one.mut()).ok());
    ASSERT_EQ(one.values()[0], out.values()[off]) << "seed=" << seed << " offset " << off;
  }
}

}  // namespace
}  // namespace accel::kernels
