#include "server/metrics.h"

#include "server/status_util.h"

namespace accel::server {
namespace {

prometheus::Histogram::BucketBoundaries PowersOfTwo(double largest) {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double bound = 1; bound <= largest; bound *= 2) bounds.push_back(bound);
  return bounds;
}

}  // namespace

const char* MethodName(Method method) {
  static constexpr const char* kNames[kNumMethods] = {"RmsNorm",
                                                      "SwiGlu",
                                                      "Linear",
                                                      "Ffn",
                                                      "Rope",
                                                      "BuildRopeCache",
                                                      "Quantize",
                                                      "Dequantize",
                                                      "QuantizationError",
                                                      "QuantizeWeight",
                                                      "PutTensor",
                                                      "LoadTensors",
                                                      "GetTensor",
                                                      "ListTensors",
                                                      "DeleteTensor",
                                                      "GetServerInfo",
                                                      "Stream"};
  const int i = static_cast<int>(method);
  return i >= 0 && i < kNumMethods ? kNames[i] : "Unknown";
}

const char* OpName(Op op) {
  static constexpr const char* kNames[kNumOps] = {"rms_norm",
                                                  "swiglu",
                                                  "linear",
                                                  "ffn",
                                                  "rope",
                                                  "quantize",
                                                  "dequantize",
                                                  "quantization_error",
                                                  "build_rope_cache",
                                                  "quantize_weight"};
  const int i = static_cast<int>(op);
  return i >= 0 && i < kNumOps ? kNames[i] : "unknown";
}

std::optional<Op> OpOfMethod(Method method) {
  switch (method) {
    case Method::kRmsNorm:
      return Op::kRmsNorm;
    case Method::kSwiGlu:
      return Op::kSwiGlu;
    case Method::kLinear:
      return Op::kLinear;
    case Method::kFfn:
      return Op::kFfn;
    case Method::kRope:
      return Op::kRope;
    case Method::kBuildRopeCache:
      return Op::kBuildRopeCache;
    case Method::kQuantize:
      return Op::kQuantize;
    case Method::kDequantize:
      return Op::kDequantize;
    case Method::kQuantizationError:
      return Op::kQuantizationError;
    case Method::kQuantizeWeight:
      return Op::kQuantizeWeight;
    default:
      return std::nullopt;
  }
}

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kH2D:
      return "h2d";
    case Phase::kKernel:
      return "kernel";
    case Phase::kD2H:
      return "d2h";
    default:
      return "unknown";
  }
}

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double decade = 1e-5; decade < 10.0; decade *= 10) {
    for (double step : {1.0, 2.0, 5.0}) bounds.push_back(decade * step);
  }
  bounds.push_back(10.0);
  return bounds;
}

// Batches hold at most --max_batch_rows rows (default 4096), one or more per
// request; a single long prompt may pass that, hence rows up to 64K.
prometheus::Histogram::BucketBoundaries BatchRequestBuckets() { return PowersOfTwo(4096); }
prometheus::Histogram::BucketBoundaries BatchRowBuckets() { return PowersOfTwo(65536); }

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
  const auto latency = LatencyBuckets();
  for (int i = 0; i < kNumMethods; ++i) {
    duration_[i] = &duration_family_.Add({{"method", MethodName(static_cast<Method>(i))}}, latency);
  }

  auto& queue_family = prometheus::BuildHistogram()
                           .Name("accel_queue_duration_seconds")
                           .Help("Time a request waited for a worker (or a batch), by op")
                           .Register(registry);
  auto& compute_family = prometheus::BuildHistogram()
                             .Name("accel_compute_duration_seconds")
                             .Help("Time of one launch by op and phase (h2d, kernel, d2h)")
                             .Register(registry);
  auto& batch_requests_family = prometheus::BuildHistogram()
                                    .Name("accel_batch_requests")
                                    .Help("Requests per launch, by op")
                                    .Register(registry);
  auto& batch_rows_family = prometheus::BuildHistogram()
                                .Name("accel_batch_rows")
                                .Help("Rows (tokens) per launch, by op")
                                .Register(registry);
  auto& pending_family = prometheus::BuildGauge()
                             .Name("accel_pending_requests")
                             .Help("Requests queued or running, by op")
                             .Register(registry);
  const bool device_copies = build_info.backend == "cuda";
  device_timed_ = device_copies;
  const auto request_buckets = BatchRequestBuckets();
  const auto row_buckets = BatchRowBuckets();
  for (int i = 0; i < kNumOps; ++i) {
    const std::string op = OpName(static_cast<Op>(i));
    queue_[i] = &queue_family.Add({{"op", op}}, latency);
    pending_[i] = &pending_family.Add({{"op", op}});
    for (int p = 0; p < kNumPhases; ++p) {
      const Phase phase = static_cast<Phase>(p);
      // Series for phases that cannot happen would read as "always 0 s".
      if (phase != Phase::kKernel && !device_copies) continue;
      compute_[i][p] = &compute_family.Add({{"op", op}, {"phase", PhaseName(phase)}}, latency);
    }
    if (i < kNumBatchableOps) {
      batch_requests_[i] = &batch_requests_family.Add({{"op", op}}, request_buckets);
      batch_rows_[i] = &batch_rows_family.Add({{"op", op}}, row_buckets);
    }
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
    // Created on first use, not up front: 17 methods x 17 codes of zeros
    // would bloat every scrape. Family::Add is thread-safe and returns the
    // existing child for equal labels, so a race here only repeats a lookup.
    counter = &requests_family_.Add({{"method", MethodName(method)},
                                     {"code", StatusCodeName(static_cast<absl::StatusCode>(c))}});
    slot.store(counter, std::memory_order_release);
  }
  return *counter;
}

void ServerMetrics::RecordRequest(Method method, absl::StatusCode code, double seconds) {
  RequestCounter(method, code).Increment();
  duration_[static_cast<int>(method)]->Observe(seconds);
}

void ServerMetrics::ObserveCompute(Op op, Phase phase, double seconds) {
  prometheus::Histogram* histogram = compute_[Index(op)][static_cast<int>(phase)];
  if (histogram != nullptr) histogram->Observe(seconds);
}

void ServerMetrics::ObserveHostCompute(Op op, double seconds) {
  if (!device_timed_) ObserveCompute(op, Phase::kKernel, seconds);
}

void ServerMetrics::ObserveLaunch(Op op, int64_t requests, int64_t rows) {
  const int i = Index(op);
  if (i >= kNumBatchableOps) return;
  batch_requests_[i]->Observe(static_cast<double>(requests));
  batch_rows_[i]->Observe(static_cast<double>(rows));
}

}  // namespace accel::server
