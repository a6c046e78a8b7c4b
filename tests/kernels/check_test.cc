// Every Check function's error paths: the code is INVALID_ARGUMENT and the
// message names the request field with what was expected and found. Also the
// CUDA seam: without a CUDA build every op answers UNIMPLEMENTED.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "accel/kernels/ops.h"
#include "test_util.h"

namespace accel::kernels {
namespace {

using testing::HostTensor;

// Passes when status is INVALID_ARGUMENT and its message contains every
// fragment.
::testing::AssertionResult IsInvalid(const absl::Status& status,
                                     std::initializer_list<std::string> fragments) {
  if (status.code() != absl::StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure() << "expected INVALID_ARGUMENT, got " << status;
  }
  for (const std::string& f : fragments) {
    if (status.message().find(f) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "message \"" << status.message() << "\" lacks \"" << f << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

HostTensor T(DType d, Shape s) { return HostTensor(d, std::move(s)); }

// ----------------------------------------------------------------- RmsNorm

TEST(CheckRmsNorm, Errors) {
  HostTensor x = T(DType::kBFloat16, {2, 4096});
  HostTensor w = T(DType::kFloat32, {4096});
  HostTensor r = T(DType::kBFloat16, {2, 4096});
  RmsNormArgs ok{x.view(), w.view(), r.view(), 1e-6f};
  ASSERT_TRUE(CheckRmsNorm(ok).ok());

  RmsNormArgs a = ok;
  HostTensor xi = T(DType::kInt8, {2, 4096});
  a.input = xi.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)),
                        {"input: expected FLOAT32, FLOAT16 or BFLOAT16, found INT8"}));
  a = ok;
  a.input.dtype = DType::kUnspecified;
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"input:", "DTYPE_UNSPECIFIED"}));
  a = ok;
  a.input.dtype = static_cast<DType>(42);
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"input:", "DType(42)"}));

  HostTensor w2 = T(DType::kFloat32, {4095});
  a = ok;
  a.weight = w2.view();
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRmsNorm(a)),
                {"weight: expected shape [4096] (the last dim of input [2, 4096]), found [4095]"}));
  HostTensor wi = T(DType::kInt32, {4096});
  a = ok;
  a.weight = wi.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"weight: expected FLOAT32", "found INT32"}));

  HostTensor r2 = T(DType::kFloat16, {2, 4096});
  a = ok;
  a.residual = r2.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)),
                        {"residual: expected BFLOAT16 (the dtype of input), found FLOAT16"}));
  HostTensor r3 = T(DType::kBFloat16, {4096, 2});
  a = ok;
  a.residual = r3.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)),
                        {"residual: expected shape [2, 4096]", "found [4096, 2]"}));

  for (float eps :
       {-1e-6f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    a = ok;
    a.eps = eps;
    EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"eps: expected a finite value >= 0"}));
  }

  HostTensor scalar = T(DType::kFloat32, {});
  a = ok;
  a.input = scalar.view();
  a.residual.reset();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"input:", "rank >= 1"}));

  a = ok;
  a.input.shape = {2, -4096};
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"input:", "non-negative", "[2, -4096]"}));
  a = ok;
  a.input.shape = {1, 1, 1, 1, 1, 1, 1, 2, 4096};
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"input: expected rank <= 8"}));
  a = ok;
  a.input.shape = {int64_t{1} << 40, int64_t{1} << 40, 4096};
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"input:", "more elements than the limit"}));
  a = ok;
  a.input.data = nullptr;
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRmsNorm(a)), {"input: data is null"}));
}

// ------------------------------------------------------------------ SwiGlu

TEST(CheckSwiGlu, Errors) {
  HostTensor g = T(DType::kFloat16, {3, 5});
  HostTensor u = T(DType::kFloat16, {3, 5});
  ASSERT_TRUE(CheckSwiGlu({g.view(), u.view()}).ok());
  HostTensor gi = T(DType::kInt64, {3, 5});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckSwiGlu({gi.view(), u.view()})),
                        {"gate: expected FLOAT32", "found INT64"}));
  HostTensor ub = T(DType::kBFloat16, {3, 5});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckSwiGlu({g.view(), ub.view()})),
                        {"up: expected FLOAT16 (the dtype of gate), found BFLOAT16"}));
  HostTensor us = T(DType::kFloat16, {5, 3});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckSwiGlu({g.view(), us.view()})),
                        {"up: expected shape [3, 5] (the shape of gate), found [5, 3]"}));
}

// ------------------------------------------------------------ Linear / Ffn

TEST(CheckLinear, Errors) {
  HostTensor x = T(DType::kBFloat16, {2, 64});
  HostTensor w = T(DType::kFloat16, {32, 64});
  HostTensor wq = T(DType::kInt8, {32, 64});
  HostTensor s_row = T(DType::kFloat32, {32});
  HostTensor s_one = T(DType::kFloat32, {});
  HostTensor b = T(DType::kFloat32, {32});
  ASSERT_TRUE(CheckLinear({x.view(), {w.view(), std::nullopt}, b.view()}).ok());
  ASSERT_TRUE(CheckLinear({x.view(), {wq.view(), s_row.view()}, std::nullopt}).ok());
  ASSERT_TRUE(CheckLinear({x.view(), {wq.view(), s_one.view()}, std::nullopt}).ok());

  HostTensor w_bad_k = T(DType::kFloat16, {32, 63});
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckLinear({x.view(), {w_bad_k.view(), std::nullopt}, std::nullopt})),
                {"weight: expected shape [N, 64]", "input [2, 64]", "found [32, 63]"}));
  HostTensor w3 = T(DType::kFloat16, {2, 32, 64});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckLinear({x.view(), {w3.view(), std::nullopt}, std::nullopt})),
                        {"weight:", "found [2, 32, 64]"}));
  EXPECT_TRUE(IsInvalid(StatusOf(CheckLinear({x.view(), {wq.view(), std::nullopt}, std::nullopt})),
                        {"weight:", "INT8 without scales"}));
  EXPECT_TRUE(IsInvalid(StatusOf(CheckLinear({x.view(), {w.view(), s_row.view()}, std::nullopt})),
                        {"weight: a quantized weight must hold INT8 values, found FLOAT16"}));
  HostTensor s_bad = T(DType::kFloat32, {31});
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckLinear({x.view(), {wq.view(), s_bad.view()}, std::nullopt})),
                {"weight: expected FLOAT32 scales of shape [] or [32]", "found FLOAT32 [31]"}));
  HostTensor s_f16 = T(DType::kFloat16, {32});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckLinear({x.view(), {wq.view(), s_f16.view()}, std::nullopt})),
                        {"weight: expected FLOAT32 scales", "found FLOAT16 [32]"}));
  HostTensor b_bad = T(DType::kFloat32, {33});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckLinear({x.view(), {w.view(), std::nullopt}, b_bad.view()})),
                        {"bias: expected shape [32]", "found [33]"}));
  HostTensor b_int = T(DType::kInt32, {32});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckLinear({x.view(), {w.view(), std::nullopt}, b_int.view()})),
                        {"bias: expected FLOAT32, FLOAT16 or BFLOAT16, found INT32"}));
  HostTensor xi = T(DType::kInt8, {2, 64});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckLinear({xi.view(), {w.view(), std::nullopt}, std::nullopt})),
                        {"input: expected FLOAT32, FLOAT16 or BFLOAT16, found INT8"}));
}

TEST(CheckFfn, Errors) {
  HostTensor x = T(DType::kFloat16, {3, 16});
  HostTensor wg = T(DType::kBFloat16, {40, 16});
  HostTensor wu = T(DType::kInt8, {40, 16});
  HostTensor su = T(DType::kFloat32, {40});
  HostTensor wd = T(DType::kFloat32, {16, 40});
  HostTensor bi = T(DType::kFloat32, {40});
  HostTensor bh = T(DType::kFloat32, {16});
  FfnArgs ok{x.view(),
             {wg.view(), std::nullopt},
             {wu.view(), su.view()},
             {wd.view(), std::nullopt},
             bi.view(),
             bi.view(),
             bh.view()};
  ASSERT_TRUE(CheckFfn(ok).ok());
  auto spec = CheckFfn(ok);
  EXPECT_EQ(spec->shape, x.shape);
  EXPECT_EQ(spec->dtype, DType::kFloat16);

  FfnArgs a = ok;
  HostTensor wg_bad = T(DType::kBFloat16, {40, 15});
  a.w_gate = {wg_bad.view(), std::nullopt};
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckFfn(a)), {"w_gate: expected shape [N, 16]", "found [40, 15]"}));
  a = ok;
  HostTensor wu_bad = T(DType::kInt8, {41, 16});
  HostTensor su_bad = T(DType::kFloat32, {41});
  a.w_up = {wu_bad.view(), su_bad.view()};
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckFfn(a)), {"w_up: expected shape [40, 16]", "found [41, 16]"}));
  a = ok;
  HostTensor wd_bad = T(DType::kFloat32, {40, 16});
  a.w_down = {wd_bad.view(), std::nullopt};
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckFfn(a)), {"w_down: expected shape [16, 40]", "found [40, 16]"}));
  a = ok;
  a.b_gate = bh.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckFfn(a)), {"b_gate: expected shape [40]", "found [16]"}));
  a = ok;
  a.b_up = bh.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckFfn(a)), {"b_up: expected shape [40]"}));
  a = ok;
  a.b_down = bi.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckFfn(a)), {"b_down: expected shape [16]", "found [40]"}));
  a = ok;
  HostTensor su_f16 = T(DType::kFloat16, {});
  a.w_up = {wu.view(), su_f16.view()};
  EXPECT_TRUE(IsInvalid(StatusOf(CheckFfn(a)), {"w_up: expected FLOAT32 scales"}));
}

// -------------------------------------------------------------------- Rope

struct RopeFixture {
  HostTensor q = T(DType::kBFloat16, {2, 8, 4, 64});
  HostTensor k = T(DType::kBFloat16, {2, 8, 2, 64});
  HostTensor cos = T(DType::kFloat32, {8192, 32});
  HostTensor sin = T(DType::kFloat32, {8192, 32});
  RopeArgs Args() {
    RopeArgs a;
    a.q = q.view();
    a.k = k.view();
    a.cos = cos.view();
    a.sin = sin.view();
    return a;
  }
};

TEST(CheckRope, ShapeAndDTypeErrors) {
  RopeFixture f;
  ASSERT_TRUE(CheckRope(f.Args()).ok());
  RopeArgs a = f.Args();
  HostTensor q3 = T(DType::kBFloat16, {8, 4, 64});
  a.q = q3.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)),
                        {"q: expected rank 4 [B, S, Hq, D], found shape [8, 4, 64]"}));
  a = f.Args();
  HostTensor q_odd = T(DType::kBFloat16, {2, 8, 4, 63});
  a.q = q_odd.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"q: expected an even head_dim", "found 63"}));
  a = f.Args();
  HostTensor qi = T(DType::kInt32, {2, 8, 4, 64});
  a.q = qi.view();
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRope(a)), {"q: expected FLOAT32, FLOAT16 or BFLOAT16, found INT32"}));
  a = f.Args();
  HostTensor k_big = T(DType::kBFloat16, {2, 8, 5, 64});
  a.k = k_big.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"k: expected Hk <= Hq = 4", "found Hk = 5"}));
  a = f.Args();
  HostTensor k_f16 = T(DType::kFloat16, {2, 8, 2, 64});
  a.k = k_f16.view();
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRope(a)), {"k: expected BFLOAT16 (the dtype of q), found FLOAT16"}));
  a = f.Args();
  HostTensor k_s = T(DType::kBFloat16, {2, 7, 2, 64});
  a.k = k_s.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)),
                        {"k: expected shape [2, 8, Hk, 64]", "found [2, 7, 2, 64]"}));
  a = f.Args();
  HostTensor cos_bad = T(DType::kFloat32, {8192, 64});
  a.cos = cos_bad.view();
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRope(a)), {"cos: expected shape [P, 32]", "found [8192, 64]"}));
  a = f.Args();
  HostTensor cos_f16 = T(DType::kFloat16, {8192, 32});
  a.cos = cos_f16.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"cos: expected FLOAT32, found FLOAT16"}));
  a = f.Args();
  HostTensor sin_bad = T(DType::kFloat32, {8191, 32});
  a.sin = sin_bad.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)),
                        {"sin: expected shape [8192, 32] (the shape of cos), found [8191, 32]"}));
}

TEST(CheckRope, PositionsOutsideTheCacheAreRejected) {
  RopeFixture f;
  RopeArgs a = f.Args();
  a.position_offset = 8184;  // 8184..8191: the last 8 positions
  EXPECT_TRUE(CheckRope(a).ok());
  a.position_offset = 8190;
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRope(a)),
                {"position_offset: positions 8190..8197 are outside the cache of 8192 positions"}));
  a.position_offset = -1;
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"position_offset: positions -1..6 are outside"}));
  a.position_offset = std::numeric_limits<int64_t>::max() - 2;
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"position_offset:"}));

  HostTensor pos = T(DType::kInt64, {2, 8});
  for (int i = 0; i < 16; ++i) pos.Set(i, i * 100);
  a = f.Args();
  a.positions = pos.view();
  EXPECT_TRUE(CheckRope(a).ok());
  pos.Set(15, 9000);
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)),
                        {"positions[1, 7]: position 9000 is outside the cache of 8192 positions"}));
  pos.Set(15, 8192);
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"positions[1, 7]: position 8192"}));
  pos.Set(15, -3);
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"positions[1, 7]: position -3"}));

  HostTensor pos32 = T(DType::kInt32, {8});
  pos32.Set(3, 8192);
  a.positions = pos32.view();
  EXPECT_TRUE(IsInvalid(StatusOf(CheckRope(a)), {"positions[3]: position 8192 is outside"}));

  HostTensor pos_f = T(DType::kFloat32, {8});
  a.positions = pos_f.view();
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRope(a)), {"positions: expected INT32 or INT64, found FLOAT32"}));
  HostTensor pos_shape = T(DType::kInt32, {7});
  a.positions = pos_shape.view();
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRope(a)), {"positions: expected shape [8] or [2, 8]", "found [7]"}));

  HostTensor pos_ok = T(DType::kInt32, {8});
  a.positions = pos_ok.view();
  a.position_offset = 3;
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckRope(a)), {"position_offset: expected 0 when positions is given"}));
}

TEST(CheckRopeCacheParams, Errors) {
  EXPECT_TRUE(CheckRopeCacheParams(8192, 128, 10000).ok());
  EXPECT_TRUE(IsInvalid(CheckRopeCacheParams(0, 128, 10000), {"max_seq_len: expected 1.."}));
  EXPECT_TRUE(IsInvalid(CheckRopeCacheParams(int64_t{1} << 40, 128, 10000), {"max_seq_len:"}));
  EXPECT_TRUE(IsInvalid(CheckRopeCacheParams(8192, 127, 10000),
                        {"head_dim: expected an even value", "found 127"}));
  EXPECT_TRUE(IsInvalid(CheckRopeCacheParams(8192, 0, 10000), {"head_dim:"}));
  EXPECT_TRUE(
      IsInvalid(CheckRopeCacheParams(1 << 24, 1 << 16, 10000), {"max_seq_len:", "exceeds"}));
  for (double base : {0.0, -2.0, 1.0, std::numeric_limits<double>::quiet_NaN(),
                      std::numeric_limits<double>::infinity()}) {
    EXPECT_TRUE(
        IsInvalid(CheckRopeCacheParams(8192, 128, base), {"base: expected a finite value > 0"}));
  }
}

// ------------------------------------------------------------ Quantization

TEST(CheckQuantize, Errors) {
  HostTensor xi = T(DType::kInt8, {4});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckQuantize({xi.view(), Granularity::kPerTensor})),
                        {"input: expected FLOAT32, FLOAT16 or BFLOAT16, found INT8"}));
  HostTensor x = T(DType::kFloat32, {4});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckQuantize({x.view(), static_cast<Granularity>(7)})),
                        {"granularity:"}));
  auto spec = CheckQuantize({T(DType::kFloat16, {3, 5, 7}).view(), Granularity::kPerRow});
  // (The view's memory is gone after the statement, but Check reads only metadata.)
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->scales.shape, Shape{15});
  EXPECT_EQ(spec->values.dtype, DType::kInt8);
}

TEST(CheckDequantize, Errors) {
  HostTensor v = T(DType::kInt8, {3, 5});
  HostTensor s = T(DType::kFloat32, {3});
  ASSERT_TRUE(CheckDequantize({v.view(), s.view(), DType::kBFloat16}).ok());
  HostTensor vf = T(DType::kFloat16, {3, 5});
  EXPECT_TRUE(IsInvalid(StatusOf(CheckDequantize({vf.view(), s.view(), DType::kFloat16})),
                        {"values: expected INT8, found FLOAT16"}));
  HostTensor s5 = T(DType::kFloat32, {5});
  EXPECT_TRUE(
      IsInvalid(StatusOf(CheckDequantize({v.view(), s5.view(), DType::kFloat16})),
                {"scales: expected FLOAT32 scales of shape [] or [3]", "found FLOAT32 [5]"}));
  EXPECT_TRUE(IsInvalid(StatusOf(CheckDequantize({v.view(), s.view(), DType::kInt8})),
                        {"dtype: expected FLOAT32, FLOAT16 or BFLOAT16, found INT8"}));
  EXPECT_TRUE(IsInvalid(StatusOf(CheckDequantize({v.view(), s.view(), DType::kUnspecified})),
                        {"dtype:", "DTYPE_UNSPECIFIED"}));
}

TEST(CheckQuantizationError, Errors) {
  HostTensor o = T(DType::kBFloat16, {3, 5});
  HostTensor v = T(DType::kInt8, {3, 5});
  HostTensor s = T(DType::kFloat32, {});
  ASSERT_TRUE(CheckQuantizationError({o.view(), v.view(), s.view()}).ok());
  HostTensor oi = T(DType::kInt32, {3, 5});
  EXPECT_TRUE(IsInvalid(CheckQuantizationError({oi.view(), v.view(), s.view()}),
                        {"original: expected FLOAT32"}));
  HostTensor v2 = T(DType::kInt8, {5, 3});
  EXPECT_TRUE(IsInvalid(CheckQuantizationError({o.view(), v2.view(), s.view()}),
                        {"values: expected shape [3, 5] (the shape of original), found [5, 3]"}));
  HostTensor vf = T(DType::kFloat32, {3, 5});
  EXPECT_TRUE(IsInvalid(CheckQuantizationError({o.view(), vf.view(), s.view()}),
                        {"values: expected INT8, found FLOAT32"}));
  HostTensor s2 = T(DType::kFloat32, {2});
  EXPECT_TRUE(IsInvalid(CheckQuantizationError({o.view(), v.view(), s2.view()}),
                        {"scales: expected FLOAT32 scales of shape [] or [3]"}));
}

// Which Linear calls may share a launch: int8 weights on the GPU's W8A16
// small-M kernel (batch invariant up to 32 rows), nothing else.
TEST(LinearBatchInvariantRows, OnlyInt8WeightsOnAGpuUpTo32Rows) {
  HostTensor x16 = T(DType::kFloat16, {1, 64});
  HostTensor xb16 = T(DType::kBFloat16, {3, 64});
  HostTensor x32 = T(DType::kFloat32, {1, 64});
  HostTensor wq = T(DType::kInt8, {32, 64});
  HostTensor s_row = T(DType::kFloat32, {32});
  HostTensor s_one = T(DType::kFloat32, {});
  HostTensor w16 = T(DType::kFloat16, {32, 64});
  HostTensor x_k40 = T(DType::kFloat16, {1, 40});
  HostTensor wq_k40 = T(DType::kInt8, {32, 40});
  const WeightView int8_row{wq.view(), s_row.view()};
#if ACCEL_WITH_CUDA
  const int64_t on_gpu = 32;
#else
  const int64_t on_gpu = 0;  // no CUDA build: no GPU kernel at all
#endif

  EXPECT_EQ(LinearBatchInvariantRows(Backend::kCuda, {x16.view(), int8_row, std::nullopt}), on_gpu);
  EXPECT_EQ(LinearBatchInvariantRows(Backend::kCuda, {xb16.view(), int8_row, s_row.view()}),
            on_gpu);
  EXPECT_EQ(LinearBatchInvariantRows(Backend::kCuda,
                                     {x16.view(), {wq.view(), s_one.view()}, std::nullopt}),
            on_gpu);
  // OpenBLAS on the CPU, cuBLAS for float weights, and the dequantize +
  // cuBLAS path (fp32 input, k not a multiple of 16) choose by row count.
  EXPECT_EQ(LinearBatchInvariantRows(Backend::kCpu, {x16.view(), int8_row, std::nullopt}), 0);
  EXPECT_EQ(LinearBatchInvariantRows(Backend::kCuda,
                                     {x16.view(), {w16.view(), std::nullopt}, std::nullopt}),
            0);
  EXPECT_EQ(LinearBatchInvariantRows(Backend::kCuda, {x32.view(), int8_row, std::nullopt}), 0);
  EXPECT_EQ(LinearBatchInvariantRows(Backend::kCuda,
                                     {x_k40.view(), {wq_k40.view(), s_row.view()}, std::nullopt}),
            0);
}

// The block batches where all three projections do.
TEST(FfnBatchInvariantRows, TheSmallestBoundOfItsThreeProjections) {
  HostTensor x = T(DType::kBFloat16, {1, 64});
  HostTensor w_in = T(DType::kInt8, {96, 64}), s_in = T(DType::kFloat32, {96});
  HostTensor w_out = T(DType::kInt8, {64, 96}), s_out = T(DType::kFloat32, {64});
  HostTensor w_out_float = T(DType::kBFloat16, {64, 96});
  const WeightView in{w_in.view(), s_in.view()};
#if ACCEL_WITH_CUDA
  const int64_t on_gpu = 32;
#else
  const int64_t on_gpu = 0;
#endif
  const FfnArgs int8{x.view(), in, in, {w_out.view(), s_out.view()}};
  EXPECT_EQ(FfnBatchInvariantRows(Backend::kCuda, int8), on_gpu);
  EXPECT_EQ(FfnBatchInvariantRows(Backend::kCpu, int8), 0);
  // A float down projection goes through cuBLAS.
  EXPECT_EQ(FfnBatchInvariantRows(Backend::kCuda, {x.view(), in, in, {w_out_float.view()}}), 0);
}

// -------------------------------------------------------------- CUDA seam

TEST(Backend, CudaIsUnimplementedWithoutACudaBuild) {
#if ACCEL_WITH_CUDA
  GTEST_SKIP() << "this build has the CUDA backend (tests/kernels/cuda_*_test.cc cover it)";
#endif
  ExecContext cuda{Backend::kCuda, nullptr, nullptr};
  HostTensor x = T(DType::kFloat32, {2, 4});
  HostTensor w = T(DType::kFloat32, {4});
  HostTensor out = T(DType::kFloat32, {2, 4});
  const absl::Status st =
      RmsNorm(cuda, {x.view(), w.view(), std::nullopt, 1e-6f}, out.mut(), nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(st.message(), "this build has no CUDA backend (configure with -DACCEL_CUDA=ON)");
  EXPECT_EQ(SwiGlu(cuda, {x.view(), x.view()}, out.mut()).code(), absl::StatusCode::kUnimplemented);
  HostTensor s = T(DType::kFloat32, {});
  HostTensor v = T(DType::kInt8, {2, 4});
  EXPECT_EQ(Quantize(cuda, {x.view(), Granularity::kPerTensor}, v.mut(), s.mut()).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(QuantizationError(cuda, {x.view(), v.view(), s.view()}).status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace accel::kernels
