// Linear and Ffn against the fp64 reference: float weights of every dtype
// (mixed with the input's), W8A16 with per-row and per-tensor scales, biases,
// zero rows and odd shapes.
#include <gtest/gtest.h>

#include <cmath>

#include "accel/kernels/ops.h"
#include "reference.h"
#include "test_util.h"
#include "weight_util.h"

namespace accel::kernels {
namespace {

using testing::AllClose;
using testing::HostTensor;

using testing::MakeWeight;
using testing::RefFfn;
using testing::TestWeight;
using testing::WeightKind;

struct LinearCase {
  int64_t m, k, n;
};

class LinearTest
    : public ::testing::TestWithParam<std::tuple<DType, LinearCase, WeightKind, bool>> {};

TEST_P(LinearTest, MatchesReference) {
  const auto [dtype, c, kind, with_bias] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  const Shape in_shape = c.m == 6 ? Shape{2, 3, c.k} : Shape{c.m, c.k};
  HostTensor x = testing::RandomTensor(dtype, in_shape, rng);
  TestWeight w = MakeWeight(kind, dtype, c.n, c.k, rng);
  HostTensor bias = testing::RandomTensor(DType::kBFloat16, {c.n}, rng);
  LinearArgs args{x.view(), w.view(), std::nullopt};
  if (with_bias) args.bias = bias.view();
  auto spec = CheckLinear(args);
  ASSERT_TRUE(spec.ok()) << spec.status();
  Shape out_shape = in_shape;
  out_shape.back() = c.n;
  ASSERT_EQ(spec->shape, out_shape);
  ASSERT_EQ(spec->dtype, dtype);
  HostTensor out(dtype, out_shape);
  ASSERT_TRUE(Linear(ExecContext{}, args, out.mut()).ok());

  const std::vector<double> bv = bias.values();
  std::vector<double> mag;
  const auto want = testing::Linear(x.values(), w.values.values(), w.ref_scales(),
                                    with_bias ? &bv : nullptr, c.m, c.k, c.n, &mag);
  // fp32 accumulation error scales with sum |x w|, not with |y|.
  for (double& v : mag) v *= dtype == DType::kFloat32 ? 1e-5 : 1e-4;
  EXPECT_TRUE(AllClose(
      out, want, testing::DefaultTolerance(dtype),
      testing::Ctx(seed, absl::StrCat("kind=", static_cast<int>(kind), " bias=", with_bias)),
      &mag));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LinearTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(LinearCase{0, 5, 3}, LinearCase{1, 1, 1},
                                         LinearCase{3, 17, 5}, LinearCase{6, 64, 33},
                                         LinearCase{2, 4095, 9}, LinearCase{5, 300, 1100}),
                       ::testing::Values(WeightKind::kSameFloat, WeightKind::kOtherFloat,
                                         WeightKind::kInt8PerRow, WeightKind::kInt8PerTensor),
                       ::testing::Bool()));

TEST(Linear, LargeKWithInt8WeightSpansSeveralWeightBlocks) {
  // K * N > one 4 MiB fp32 weight block: the blocked conversion path.
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  const int64_t m = 3, k = 8193, n = 300;
  HostTensor x = testing::RandomTensor(DType::kBFloat16, {m, k}, rng);
  TestWeight w = MakeWeight(WeightKind::kInt8PerRow, DType::kBFloat16, n, k, rng);
  HostTensor out(DType::kBFloat16, {m, n});
  ASSERT_TRUE(Linear(ExecContext{}, {x.view(), w.view(), std::nullopt}, out.mut()).ok());
  std::vector<double> mag;
  const auto want =
      testing::Linear(x.values(), w.values.values(), w.ref_scales(), nullptr, m, k, n, &mag);
  for (double& v : mag) v *= 1e-4;
  EXPECT_TRUE(AllClose(out, want, testing::DefaultTolerance(DType::kBFloat16),
                       testing::Ctx(seed, "blocked"), &mag));
}

TEST(Linear, KZeroGivesBias) {
  HostTensor x(DType::kFloat32, {2, 0});
  HostTensor w(DType::kFloat32, {3, 0});
  HostTensor b(DType::kFloat32, {3});
  for (int i = 0; i < 3; ++i) b.Set(i, i + 1);
  HostTensor out(DType::kFloat32, {2, 3});
  ASSERT_TRUE(
      Linear(ExecContext{}, {x.view(), {w.view(), std::nullopt}, b.view()}, out.mut()).ok());
  EXPECT_EQ(out.values(), (std::vector<double>{1, 2, 3, 1, 2, 3}));
}

// A scratch allocator that records its use.
class CountingScratch : public ScratchAllocator {
 public:
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    blocks_.emplace_back((bytes + 255) / 256 * 256 / sizeof(double) + 32);
    return static_cast<void*>(blocks_.back().data());
  }
  size_t calls() const { return blocks_.size(); }

 private:
  std::vector<std::vector<double>> blocks_;
};

// --------------------------------------------------------------------- Ffn

struct FfnCase {
  int64_t m, h, i;
};

class FfnTest : public ::testing::TestWithParam<std::tuple<DType, FfnCase, WeightKind, bool>> {};

TEST_P(FfnTest, MatchesReference) {
  const auto [dtype, c, kind, with_bias] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor x = testing::RandomTensor(dtype, {c.m, c.h}, rng);
  TestWeight wg = MakeWeight(kind, dtype, c.i, c.h, rng);
  TestWeight wu = MakeWeight(kind == WeightKind::kInt8PerRow ? WeightKind::kInt8PerTensor : kind,
                             dtype, c.i, c.h, rng);
  TestWeight wd = MakeWeight(kind == WeightKind::kSameFloat ? WeightKind::kOtherFloat : kind, dtype,
                             c.h, c.i, rng);
  HostTensor bg = testing::RandomTensor(DType::kFloat32, {c.i}, rng);
  HostTensor bu = testing::RandomTensor(DType::kFloat16, {c.i}, rng);
  HostTensor bd = testing::RandomTensor(DType::kBFloat16, {c.h}, rng);
  FfnArgs args{x.view(), wg.view(), wu.view(), wd.view(), std::nullopt, std::nullopt, std::nullopt};
  if (with_bias) {
    args.b_gate = bg.view();
    args.b_up = bu.view();
    args.b_down = bd.view();
  }
  auto spec = CheckFfn(args);
  ASSERT_TRUE(spec.ok()) << spec.status();
  HostTensor out(dtype, {c.m, c.h});
  CountingScratch scratch;
  ExecContext ctx;
  if (with_bias) ctx.scratch = &scratch;  // both the heap and the allocator
  ASSERT_TRUE(Ffn(ctx, args, out.mut()).ok());
  if (with_bias && c.m > 0) {
    EXPECT_GT(scratch.calls(), 0u);
  }

  const auto bgv = bg.values(), buv = bu.values(), bdv = bd.values();
  std::vector<double> mag;
  const auto want =
      RefFfn(x.values(), wg, wu, wd, with_bias ? &bgv : nullptr, with_bias ? &buv : nullptr,
             with_bias ? &bdv : nullptr, c.m, c.h, c.i, &mag);
  for (double& v : mag) v *= dtype == DType::kFloat32 ? 3e-5 : 1e-4;
  EXPECT_TRUE(AllClose(out, want, testing::DefaultTolerance(dtype),
                       testing::Ctx(seed, absl::StrCat("ffn kind=", static_cast<int>(kind))),
                       &mag));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FfnTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(FfnCase{0, 8, 16}, FfnCase{1, 3, 5}, FfnCase{3, 17, 33},
                                         FfnCase{2, 64, 176}, FfnCase{1030, 8, 12}),
                       ::testing::Values(WeightKind::kSameFloat, WeightKind::kOtherFloat,
                                         WeightKind::kInt8PerRow),
                       ::testing::Bool()));

}  // namespace
}  // namespace accel::kernels
