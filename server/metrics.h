// Prometheus metrics of the server, registered once at start-up on an
// injected registry (no global singleton). Label children are created on
// first use and cached in atomics, so recording on the hot path is one
// atomic load plus the metric's own atomic update: no lock that a scrape
// can hold.
//
// Names (histograms in seconds, buckets from 10 us to 10 s):
//   accel_requests_total{method, code}          counter
//   accel_request_duration_seconds{method}      histogram, receipt to reply
//   accel_bytes_received_total / _sent_total    counters (tensor payloads)
//   accel_build_info{version, backend, device}  gauge = 1
// Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace accel::server {

// Every RPC of the service, for per-method metrics.
enum class Method : int {
  kRmsNorm,
  kSwiGlu,
  kLinear,
  kFfn,
  kRope,
  kBuildRopeCache,
  kQuantize,
  kDequantize,
  kQuantizationError,
  kQuantizeWeight,
  kPutTensor,
  kLoadTensors,
  kGetTensor,
  kListTensors,
  kDeleteTensor,
  kGetServerInfo,
  kStream,
  kCount,
};
const char* MethodName(Method method);

inline constexpr int kNumMethods = static_cast<int>(Method::kCount);
inline constexpr int kNumStatusCodes = 17;

class ServerMetrics {
 public:
  struct BuildInfo {
    std::string version, backend, device;
  };
  ServerMetrics(prometheus::Registry& registry, const BuildInfo& build_info);

  // One finished call (a unary RPC, a stream message, a streaming RPC).
  void RecordRequest(Method method, absl::StatusCode code, double seconds);
  void AddBytesReceived(int64_t bytes) { bytes_received_.Increment(static_cast<double>(bytes)); }
  void AddBytesSent(int64_t bytes) { bytes_sent_.Increment(static_cast<double>(bytes)); }

 private:
  prometheus::Counter& RequestCounter(Method method, absl::StatusCode code);

  prometheus::Family<prometheus::Counter>& requests_family_;
  prometheus::Family<prometheus::Histogram>& duration_family_;
  prometheus::Counter& bytes_received_;
  prometheus::Counter& bytes_sent_;
  std::array<prometheus::Histogram*, kNumMethods> duration_{};
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumStatusCodes>, kNumMethods>
      requests_{};
};

// Bucket bounds (seconds) resolving 10 us to 10 s: 1-2-5 steps per decade.
prometheus::Histogram::BucketBoundaries LatencyBuckets();

}  // namespace accel::server
