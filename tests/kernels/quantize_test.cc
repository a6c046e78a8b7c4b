// Quantize, Dequantize and QuantizationError against the reference:
// every float dtype, per tensor and per row, odd shapes, round-half-even
// cases, clamps, zero scales, and the rejection of NaN and infinities.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "accel/kernels/ops.h"
#include "reference.h"
#include "test_util.h"

namespace accel::kernels {
namespace {

using testing::HostTensor;

struct Quantized {
  HostTensor values, scales;
};

absl::StatusOr<Quantized> RunQuantize(const HostTensor& x, Granularity g) {
  QuantizeArgs args{x.view(), g};
  auto spec = CheckQuantize(args);
  if (!spec.ok()) return spec.status();
  Quantized q{HostTensor(spec->values.dtype, spec->values.shape),
              HostTensor(spec->scales.dtype, spec->scales.shape)};
  absl::Status st = Quantize(ExecContext{}, args, q.values.mut(), q.scales.mut());
  if (!st.ok()) return st;
  return q;
}

class QuantizeTest : public ::testing::TestWithParam<std::tuple<DType, Shape, Granularity>> {};

TEST_P(QuantizeTest, MatchesReferenceExactly) {
  const auto [dtype, shape, gran] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor x = testing::RandomTensor(dtype, shape, rng, -3, 3);
  if (x.size() > 40) x.Set(37, 0.0);  // a row may hold zeros
  auto q = RunQuantize(x, gran);
  ASSERT_TRUE(q.ok()) << q.status();

  const int64_t len = shape.empty() ? 1 : shape.back();
  const int64_t rows = RowsOf(shape);
  std::vector<int8_t> want_q;
  std::vector<float> want_s;
  testing::Quantize(x.values(), rows, len, gran == Granularity::kPerRow, &want_q, &want_s);
  const auto got_s = q->scales.values();
  ASSERT_EQ(got_s.size(), want_s.size());
  for (size_t i = 0; i < want_s.size(); ++i) {
    ASSERT_EQ(got_s[i], want_s[i]) << "seed=" << seed << " scale " << i;
  }
  const auto got_q = q->values.values();
  bool any_nonzero = false;
  for (size_t i = 0; i < want_q.size(); ++i) {
    ASSERT_EQ(got_q[i], want_q[i])
        << "seed=" << seed << " shape=" << ShapeToString(shape) << " first bad index " << i;
    any_nonzero |= got_q[i] != 0;
  }
  if (x.size() > 0) {
    EXPECT_TRUE(any_nonzero);
  }

  // Dequantize to every float dtype: values * scale in fp32, one rounding.
  for (DType out_dtype : testing::FloatDTypes()) {
    DequantizeArgs dargs{q->values.view(), q->scales.view(), out_dtype};
    auto dspec = CheckDequantize(dargs);
    ASSERT_TRUE(dspec.ok()) << dspec.status();
    HostTensor deq(out_dtype, dspec->shape);
    ASSERT_TRUE(Dequantize(ExecContext{}, dargs, deq.mut()).ok());
    std::vector<double> want(want_q.size());
    for (size_t i = 0; i < want.size(); ++i) {
      want[i] = static_cast<double>(want_q[i]) * want_s[want_s.size() == 1 ? 0 : i / len];
    }
    EXPECT_TRUE(testing::AllClose(deq, want, {0, 0}, testing::Ctx(seed, "dequantize")));
  }

  // QuantizationError of the pair.
  QuantizationErrorArgs eargs{x.view(), q->values.view(), q->scales.view()};
  ASSERT_TRUE(CheckQuantizationError(eargs).ok());
  auto stats = QuantizationError(ExecContext{}, eargs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  const testing::ErrorStats ref = testing::QuantizationError(x.values(), want_q, want_s, len);
  EXPECT_EQ(stats->max_abs_error, ref.max_abs_error) << "seed=" << seed;
  EXPECT_NEAR(stats->mean_abs_error, ref.mean_abs_error, 1e-12 + 1e-9 * ref.mean_abs_error);
  EXPECT_NEAR(stats->relative_error_pct, ref.relative_error_pct, 1e-9 * ref.relative_error_pct);
  if (x.size() > 0) {
    EXPECT_NEAR(stats->snr_db, ref.snr_db, 1e-6) << "seed=" << seed;
    EXPECT_GT(stats->snr_db, 20.0);
  } else {
    EXPECT_EQ(stats->snr_db, 0.0);
    EXPECT_EQ(stats->mean_abs_error, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, QuantizeTest,
                         ::testing::ValuesIn(testing::QuantizeCases(
                             {Shape{}, Shape{1}, Shape{3}, Shape{17, 5}, Shape{4095},
                              Shape{3, 8193}, Shape{0, 7}, Shape{2, 3, 17}, Shape{300001}})));

TEST(Quantize, RoundsHalfToEvenAndClamps) {
  // absmax 127 gives scale 1 exactly, so x / scale = x.
  HostTensor x(DType::kFloat32, {12});
  const double in[] = {0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 125.5, 127, -127, 3.49999, 0};
  for (int i = 0; i < 12; ++i) x.Set(i, in[i]);
  auto q = RunQuantize(x, Granularity::kPerTensor);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->scales.values()[0], 1.0);
  EXPECT_EQ(q->values.values(),
            (std::vector<double>{0, 2, 2, 0, -2, -2, 126, 126, 127, -127, 3, 0}));
}

TEST(Quantize, ValuesStayWithinPlusMinus127) {
  // A scale that rounds down makes x / scale exceed 127 slightly: clamped.
  HostTensor x(DType::kFloat32, {4});
  x.Set(0, 1.0);
  x.Set(1, -1.0);
  x.Set(2, 0.3);
  x.Set(3, 1.0);
  auto q = RunQuantize(x, Granularity::kPerRow);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->values.values()[0], 127);
  EXPECT_EQ(q->values.values()[1], -127);
  EXPECT_EQ(q->scales.shape, Shape{1});
}

TEST(Quantize, ZeroScaleBecomesOne) {
  HostTensor x(DType::kBFloat16, {2, 4});  // zeros
  x.Set(4, 2.0);                           // row 1 is not zero
  auto q = RunQuantize(x, Granularity::kPerRow);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->scales.values()[0], 1.0);
  EXPECT_EQ(q->scales.values()[1], static_cast<double>(2.0f / 127.0f));
  HostTensor z(DType::kFloat16, {5});
  auto qz = RunQuantize(z, Granularity::kPerTensor);
  ASSERT_TRUE(qz.ok());
  EXPECT_EQ(qz->scales.values()[0], 1.0);
  EXPECT_EQ(qz->values.values(), std::vector<double>(5, 0.0));
}

TEST(Quantize, RejectsNaNAndInfinityNamingTheElement) {
  for (DType dtype : testing::FloatDTypes()) {
    for (Granularity g : {Granularity::kPerTensor, Granularity::kPerRow}) {
      struct Bad {
        double value;
        const char* name;
      };
      for (Bad bad : {Bad{std::numeric_limits<double>::quiet_NaN(), "NaN"},
                      Bad{std::numeric_limits<double>::infinity(), "inf"},
                      Bad{-std::numeric_limits<double>::infinity(), "-inf"}}) {
        HostTensor x(dtype, {4, 9});
        for (int64_t i = 0; i < x.size(); ++i) x.Set(i, 0.25 * i);
        x.Set(17, bad.value);
        x.Set(30, bad.value);
        auto q = RunQuantize(x, g);
        ASSERT_FALSE(q.ok());
        EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_EQ(q.status().message(), absl::StrCat("input: element 17 is ", bad.name,
                                                     "; quantization needs finite values"));
      }
    }
  }
}

TEST(Quantize, PerRowOfARank0InputIsRejected) {
  HostTensor x(DType::kFloat32, {});
  auto q = RunQuantize(x, Granularity::kPerRow);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("input:"), std::string::npos) << q.status();
}

TEST(QuantizationError, KnownSmallCase) {
  HostTensor x(DType::kFloat32, {3});
  x.Set(0, 1.0);
  x.Set(1, 2.0);
  x.Set(2, 0.01);
  HostTensor v(DType::kInt8, {3});
  v.Set(0, 1);
  v.Set(1, 2);
  v.Set(2, 0);
  HostTensor s(DType::kFloat32, {});
  s.Set(0, 1.25);
  auto st = QuantizationError(ExecContext{}, {x.view(), v.view(), s.view()});
  ASSERT_TRUE(st.ok());
  // diffs: -0.25, -0.5, 0.01 (fp32).
  EXPECT_DOUBLE_EQ(st->max_abs_error, 0.5);
  EXPECT_NEAR(st->mean_abs_error, (0.25 + 0.5 + 0.01) / 3, 1e-7);
  EXPECT_DOUBLE_EQ(st->relative_error_pct, 25.0);  // 0.01 is below 10% of max |orig|
  const double snr = 10 * std::log10(((1 + 4 + 1e-4) / 3) / ((0.0625 + 0.25 + 1e-4) / 3 + 1e-10));
  EXPECT_NEAR(st->snr_db, snr, 1e-5);
}

}  // namespace
}  // namespace accel::kernels
