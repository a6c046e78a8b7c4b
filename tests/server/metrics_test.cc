// ServerMetrics and ResidentCollector as Prometheus sees them: recorded
// values serialized with prometheus-cpp's TextSerializer (what /metrics
// serves), checked line by line.
#include "server/metrics.h"

#include <cstring>
#include <memory>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server/call_metrics.h"
#include "server/resident_collector.h"
#include "server/service_context.h"
#include "server/tensor_store.h"

namespace accel::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Serialize(const prometheus::Collectable& collectable) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, collectable.Collect());
  return out.str();
}

// Lines are matched whole, so "x 1" does not match "x 10".
::testing::Matcher<std::string> HasLine(const std::string& line) {
  return HasSubstr("\n" + line + "\n");
}

class ServerMetricsTest : public ::testing::Test {
 protected:
  prometheus::Registry registry_;
  ServerMetrics metrics_{registry_, {"1.2.3", "cpu", "Test CPU"}};
};

TEST_F(ServerMetricsTest, ExportsBuildInfo) {
  EXPECT_THAT(Serialize(registry_),
              HasLine(R"(accel_build_info{backend="cpu",device="Test CPU",version="1.2.3"} 1)"));
}

TEST_F(ServerMetricsTest, CountsRequestsByMethodAndCode) {
  metrics_.RecordRequest(Method::kRmsNorm, absl::StatusCode::kOk, 0.003);
  metrics_.RecordRequest(Method::kRmsNorm, absl::StatusCode::kOk, 0.004);
  metrics_.RecordRequest(Method::kSwiGlu, absl::StatusCode::kInvalidArgument, 0.00002);
  const std::string text = Serialize(registry_);
  EXPECT_THAT(text, HasLine(R"(accel_requests_total{code="OK",method="RmsNorm"} 2)"));
  EXPECT_THAT(text, HasLine(R"(accel_requests_total{code="INVALID_ARGUMENT",method="SwiGlu"} 1)"));
  // Children appear on first use only: no zero series for every code.
  EXPECT_THAT(text, Not(HasSubstr(R"(accel_requests_total{code="OK",method="SwiGlu"})")));
}

TEST_F(ServerMetricsTest, RequestDurationHistogramHasCumulativeBuckets) {
  metrics_.RecordRequest(Method::kRmsNorm, absl::StatusCode::kOk, 0.003);
  metrics_.RecordRequest(Method::kRmsNorm, absl::StatusCode::kOk, 0.004);
  metrics_.RecordRequest(Method::kRmsNorm, absl::StatusCode::kInternal, 20.0);
  const std::string text = Serialize(registry_);
  const std::string bucket = R"(accel_request_duration_seconds_bucket{method="RmsNorm",le=)";
  EXPECT_THAT(text, HasLine(bucket + R"("1e-05"} 0)"));
  EXPECT_THAT(text, HasLine(bucket + R"("0.002"} 0)"));
  EXPECT_THAT(text, HasLine(bucket + R"("0.005"} 2)"));
  EXPECT_THAT(text, HasLine(bucket + R"("10"} 2)"));
  EXPECT_THAT(text, HasLine(bucket + R"("+Inf"} 3)"));
  EXPECT_THAT(text, HasLine(R"(accel_request_duration_seconds_count{method="RmsNorm"} 3)"));
  EXPECT_THAT(text, HasLine(R"(accel_request_duration_seconds_sum{method="RmsNorm"} 20.007)"));
  // Every method has its histogram from the start, so rates are 0, not absent.
  EXPECT_THAT(text, HasLine(R"(accel_request_duration_seconds_count{method="Stream"} 0)"));
}

TEST_F(ServerMetricsTest, LatencyBucketsResolveTenMicrosecondsToTenSeconds) {
  const auto buckets = LatencyBuckets();
  ASSERT_EQ(buckets.size(), 19u);
  EXPECT_DOUBLE_EQ(buckets.front(), 1e-5);
  EXPECT_DOUBLE_EQ(buckets.back(), 10.0);
  for (size_t i = 1; i < buckets.size(); ++i) EXPECT_LT(buckets[i - 1], buckets[i]);
}

TEST_F(ServerMetricsTest, RecordsPerOpQueueComputeAndPending) {
  metrics_.AddPending(Op::kRmsNorm, 1);
  metrics_.AddPending(Op::kRmsNorm, 1);
  metrics_.AddPending(Op::kRmsNorm, -1);
  metrics_.ObserveQueue(Op::kLinear, 0.00015);
  metrics_.ObserveCompute(Op::kLinear, Phase::kKernel, 0.0015);
  metrics_.ObserveCompute(Op::kLinear, Phase::kH2D, 0.1);  // no such phase on the CPU
  const std::string text = Serialize(registry_);
  EXPECT_THAT(text, HasLine(R"(accel_pending_requests{op="rms_norm"} 1)"));
  EXPECT_THAT(text, HasLine(R"(accel_pending_requests{op="quantization_error"} 0)"));
  EXPECT_THAT(text, HasLine(R"(accel_queue_duration_seconds_bucket{op="linear",le="0.0001"} 0)"));
  EXPECT_THAT(text, HasLine(R"(accel_queue_duration_seconds_bucket{op="linear",le="0.0002"} 1)"));
  EXPECT_THAT(text, HasLine(R"(accel_queue_duration_seconds_count{op="linear"} 1)"));
  EXPECT_THAT(
      text,
      HasLine(R"(accel_compute_duration_seconds_bucket{op="linear",phase="kernel",le="0.002"} 1)"));
  EXPECT_THAT(text,
              HasLine(R"(accel_compute_duration_seconds_count{op="linear",phase="kernel"} 1)"));
  EXPECT_THAT(text, Not(HasSubstr(R"(phase="h2d")")));
}

TEST(ServerMetrics, CudaBackendHasCopyPhases) {
  prometheus::Registry registry;
  ServerMetrics metrics(registry, {"1.2.3", "cuda", "H100"});
  metrics.ObserveCompute(Op::kFfn, Phase::kH2D, 0.0001);
  metrics.ObserveCompute(Op::kFfn, Phase::kD2H, 0.0001);
  const std::string text = Serialize(registry);
  EXPECT_THAT(text, HasLine(R"(accel_compute_duration_seconds_count{op="ffn",phase="h2d"} 1)"));
  EXPECT_THAT(text, HasLine(R"(accel_compute_duration_seconds_count{op="ffn",phase="d2h"} 1)"));
  EXPECT_THAT(text, HasLine(R"(accel_compute_duration_seconds_count{op="ffn",phase="kernel"} 0)"));
}

TEST_F(ServerMetricsTest, HostComputeTimeIsTheKernelPhaseOnTheCpu) {
  metrics_.ObserveHostCompute(Op::kRope, 0.0003);
  EXPECT_THAT(Serialize(registry_),
              HasLine(R"(accel_compute_duration_seconds_count{op="rope",phase="kernel"} 1)"));
}

TEST(ServerMetrics, HostComputeTimeIsIgnoredOnCudaWhereEventsTimeThePhases) {
  prometheus::Registry registry;
  ServerMetrics metrics(registry, {"1.2.3", "cuda", "H100"});
  metrics.ObserveHostCompute(Op::kRope, 0.0003);
  metrics.ObserveCompute(Op::kRope, Phase::kKernel, 0.00002);
  const std::string text = Serialize(registry);
  EXPECT_THAT(text, HasLine(R"(accel_compute_duration_seconds_count{op="rope",phase="kernel"} 1)"));
  EXPECT_THAT(
      text,
      HasLine(R"(accel_compute_duration_seconds_bucket{op="rope",phase="kernel",le="0.0001"} 1)"));
}

TEST_F(ServerMetricsTest, RecordsLaunchesOfBatchableOpsOnly) {
  metrics_.ObserveLaunch(Op::kSwiGlu, 1, 7);
  metrics_.ObserveLaunch(Op::kSwiGlu, 3, 300);
  metrics_.ObserveLaunch(Op::kBuildRopeCache, 1, 0);  // not batched: ignored
  const std::string text = Serialize(registry_);
  EXPECT_THAT(text, HasLine(R"(accel_batch_requests_bucket{op="swiglu",le="1"} 1)"));
  EXPECT_THAT(text, HasLine(R"(accel_batch_requests_bucket{op="swiglu",le="4"} 2)"));
  EXPECT_THAT(text, HasLine(R"(accel_batch_requests_sum{op="swiglu"} 4)"));
  EXPECT_THAT(text, HasLine(R"(accel_batch_rows_bucket{op="swiglu",le="4"} 0)"));
  EXPECT_THAT(text, HasLine(R"(accel_batch_rows_bucket{op="swiglu",le="8"} 1)"));
  EXPECT_THAT(text, HasLine(R"(accel_batch_rows_bucket{op="swiglu",le="512"} 2)"));
  EXPECT_THAT(text, HasLine(R"(accel_batch_rows_bucket{op="swiglu",le="65536"} 2)"));
  EXPECT_THAT(text, HasLine(R"(accel_batch_rows_sum{op="swiglu"} 307)"));
  EXPECT_THAT(text, Not(HasSubstr(R"(accel_batch_rows_count{op="build_rope_cache"})")));
}

TEST_F(ServerMetricsTest, CountsPayloadBytes) {
  metrics_.AddBytesReceived(100);
  metrics_.AddBytesReceived(23);
  metrics_.AddBytesSent(4096);
  const std::string text = Serialize(registry_);
  EXPECT_THAT(text, HasLine("accel_bytes_received_total 123"));
  EXPECT_THAT(text, HasLine("accel_bytes_sent_total 4096"));
}

TEST(OpNames, AreSnakeCaseAndMapFromMethods) {
  EXPECT_STREQ(OpName(Op::kRmsNorm), "rms_norm");
  EXPECT_STREQ(OpName(Op::kQuantizationError), "quantization_error");
  EXPECT_EQ(OpOfMethod(Method::kSwiGlu), Op::kSwiGlu);
  EXPECT_EQ(OpOfMethod(Method::kQuantizeWeight), Op::kQuantizeWeight);
  EXPECT_EQ(OpOfMethod(Method::kPutTensor), std::nullopt);
  v1::StreamRequest request;
  EXPECT_EQ(OpOfStreamRequest(request), std::nullopt);
  request.mutable_rope();
  EXPECT_EQ(OpOfStreamRequest(request), Op::kRope);
}

TEST(LaunchRows, CountsLeadingDimensionsOfTheMainTensor) {
  ServiceContext service;
  v1::RmsNormResponse rms_norm;
  for (int64_t d : {2, 3, 64}) rms_norm.mutable_output()->add_shape(d);
  EXPECT_EQ(LaunchRows(service, v1::RmsNormRequest(), rms_norm), 6);
  v1::RopeResponse rope;  // [B, S, H, D]: rows are tokens
  for (int64_t d : {2, 5, 8, 64}) rope.mutable_q()->add_shape(d);
  EXPECT_EQ(LaunchRows(service, v1::RopeRequest(), rope), 10);
  v1::SwiGluResponse vector;
  vector.mutable_output()->add_shape(128);
  EXPECT_EQ(LaunchRows(service, v1::SwiGluRequest(), vector), 1);
}

// A CPU tensor of `nbytes` zero bytes.
std::shared_ptr<ResidentTensor> MakeBytes(const std::string& name, int64_t nbytes) {
  auto tensor = std::make_shared<ResidentTensor>();
  tensor->name = name;
  tensor->dtype = kernels::DType::kInt8;
  tensor->shape = {nbytes};
  auto buffer = kernels::Buffer::Allocate(kernels::Backend::kCpu, static_cast<size_t>(nbytes));
  if (!buffer.ok()) std::abort();
  tensor->values = *std::move(buffer);
  std::memset(tensor->values.data(), 0, static_cast<size_t>(nbytes));
  return tensor;
}

TEST(ResidentCollector, ReportsTheStoreAndDeviceMemoryAtScrapeTime) {
  TensorStore store(TensorStore::Options{1 << 20, "cpu"});
  ResidentCollector collector(&store, [] { return DeviceMemory{300, 1000}; });
  EXPECT_THAT(Serialize(collector), HasLine("accel_resident_bytes 0"));

  Reservation none;
  ASSERT_TRUE(store.Insert(MakeBytes("a", 1000), false, none).ok());
  ASSERT_TRUE(store.Insert(MakeBytes("b", 24), false, none).ok());
  std::string text = Serialize(collector);
  EXPECT_THAT(text, HasLine("# TYPE accel_resident_bytes gauge"));
  EXPECT_THAT(text, HasLine("accel_resident_tensors 2"));
  EXPECT_THAT(text, HasLine("accel_resident_bytes 1024"));
  EXPECT_THAT(text, HasLine("accel_resident_limit_bytes 1048576"));
  EXPECT_THAT(text, HasLine(R"(accel_device_memory_bytes{state="used"} 300)"));
  EXPECT_THAT(text, HasLine(R"(accel_device_memory_bytes{state="total"} 1000)"));

  ASSERT_TRUE(store.Remove("a").ok());
  text = Serialize(collector);
  EXPECT_THAT(text, HasLine("accel_resident_tensors 1"));
  EXPECT_THAT(text, HasLine("accel_resident_bytes 24"));
}

TEST(ResidentCollector, HostMemoryIsConsistent) {
  const DeviceMemory memory = HostMemory();
  EXPECT_GT(memory.total_bytes, 0);
  EXPECT_GT(memory.used_bytes, 0);
  EXPECT_LE(memory.used_bytes, memory.total_bytes);
}

}  // namespace
}  // namespace accel::server
