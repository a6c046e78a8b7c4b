#include "server/metrics.h"

#include "server/status_util.h"

namespace accel::server {

const char* MethodName(Method method) {
  static constexpr const char* kNames[kNumMethods] = {
      "RmsNorm",     "SwiGlu",      "Linear",      "Ffn",           "Rope",
      "BuildRopeCache", "Quantize", "Dequantize",  "QuantizationError", "QuantizeWeight",
      "PutTensor",   "LoadTensors", "GetTensor",   "ListTensors",   "DeleteTensor",
      "GetServerInfo", "Stream"};
  const int i = static_cast<int>(method);
  return i >= 0 && i < kNumMethods ? kNames[i] : "Unknown";
}

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double decade = 1e-5; decade < 10.0; decade *= 10) {
    for (double step : {1.0, 2.0, 5.0}) bounds.push_back(decade * step);
  }
  bounds.push_back(10.0);
  return bounds;
}

ServerMetrics::ServerMetrics(prometheus::Registry& registry, const BuildInfo& build_info)
    : requests_family_(prometheus::BuildCounter()
                           .Name("accel_requests_total")
                           .Help("Finished requests by method and gRPC status code")
                           .Register(registry)),
      duration_family_(prometheus::BuildHistogram()
                           .Name("accel_request_duration_seconds")
                           .Help("Server-side time from receipt to reply, by method")
                           .Register(registry)),
      bytes_received_(prometheus::BuildCounter()
                          .Name("accel_bytes_received_total")
                          .Help("Tensor payload bytes received")
                          .Register(registry)
                          .Add({})),
      bytes_sent_(prometheus::BuildCounter()
                      .Name("accel_bytes_sent_total")
                      .Help("Tensor payload bytes sent")
                      .Register(registry)
                      .Add({})) {
  const auto buckets = LatencyBuckets();
  for (int i = 0; i < kNumMethods; ++i) {
    duration_[i] = &duration_family_.Add({{"method", MethodName(static_cast<Method>(i))}}, buckets);
  }
  prometheus::BuildGauge()
      .Name("accel_build_info")
      .Help("Constant 1, labelled with the build and serving device")
      .Register(registry)
      .Add({{"version", build_info.version},
            {"backend", build_info.backend},
            {"device", build_info.device}})
      .Set(1);
}

prometheus::Counter& ServerMetrics::RequestCounter(Method method, absl::StatusCode code) {
  int c = static_cast<int>(code);
  if (c < 0 || c >= kNumStatusCodes) c = static_cast<int>(absl::StatusCode::kUnknown);
  std::atomic<prometheus::Counter*>& slot = requests_[static_cast<int>(method)][c];
  prometheus::Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    // Family::Add is thread-safe and returns the existing child for equal
    // labels, so a race here only repeats a lookup.
    counter = &requests_family_.Add(
        {{"method", MethodName(method)},
         {"code", StatusCodeName(static_cast<absl::StatusCode>(c))}});
    slot.store(counter, std::memory_order_release);
  }
  return *counter;
}

void ServerMetrics::RecordRequest(Method method, absl::StatusCode code, double seconds) {
  RequestCounter(method, code).Increment();
  duration_[static_cast<int>(method)]->Observe(seconds);
}

}  // namespace accel::server
