// Prometheus metrics of the server, registered once at start-up on an
// injected registry (no global singleton). Every label child that the hot
// path records into is created in the constructor (the requests counter's
// per-code children on first use, cached in atomics), so recording is an
// array index plus the metric's own update: no registry or family lock that
// a scrape can hold. (prometheus-cpp's Histogram guards its buckets with its
// own mutex, which a scrape holds only while it copies ~20 counters.)
//
// Names (histograms in seconds, buckets from 10 us to 10 s):
//   accel_requests_total{method, code}               counter
//   accel_request_duration_seconds{method}           histogram, receipt to reply
//   accel_queue_duration_seconds{op}                 histogram, wait for a worker or
//                                                    for the launch of its batch
//   accel_compute_duration_seconds{op, phase}        histogram; phase kernel (host wall
//                                                    time) on the CPU; h2d, kernel, d2h
//                                                    (CUDA events) on the cuda backend
//   accel_batch_requests{op}, accel_batch_rows{op}   histograms, one sample per launch
//   accel_pending_requests{op}                       gauge, queued or running
//   accel_bytes_received_total / _sent_total         counters (tensor payloads)
//   accel_build_info{version, backend, device}       gauge = 1
// The resident-memory gauges are computed at scrape time by
// ResidentCollector (resident_collector.h), not here.
// Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
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

// The ops that run on the executor, for per-op metrics ("rms_norm", ...).
// The first kNumBatchableOps can be batched and have batch histograms.
enum class Op : int {
  kRmsNorm,
  kSwiGlu,
  kLinear,
  kFfn,
  kRope,
  kQuantize,
  kDequantize,
  kQuantizationError,
  kBuildRopeCache,
  kQuantizeWeight,
  kCount,
};
const char* OpName(Op op);
// The op a unary RPC runs; nullopt for the tensor-management RPCs.
std::optional<Op> OpOfMethod(Method method);

inline constexpr int kNumOps = static_cast<int>(Op::kCount);
inline constexpr int kNumBatchableOps = static_cast<int>(Op::kBuildRopeCache);

// Where compute time goes: host-to-device copy, the kernels, device-to-host
// copy. The CPU backend has only kKernel.
enum class Phase : int { kH2D, kKernel, kD2H, kCount };
const char* PhaseName(Phase phase);
inline constexpr int kNumPhases = static_cast<int>(Phase::kCount);

class ServerMetrics {
 public:
  struct BuildInfo {
    std::string version, backend, device;
  };
  // Registers every family on `registry`, which must outlive this object.
  // The h2d and d2h compute phases exist only when backend is "cuda".
  ServerMetrics(prometheus::Registry& registry, const BuildInfo& build_info);

  // One finished call (a unary RPC, a stream message, a streaming RPC).
  void RecordRequest(Method method, absl::StatusCode code, double seconds);
  void AddBytesReceived(int64_t bytes) { bytes_received_.Increment(static_cast<double>(bytes)); }
  void AddBytesSent(int64_t bytes) { bytes_sent_.Increment(static_cast<double>(bytes)); }

  // accel_pending_requests{op} += delta: +1 when a request is queued, -1 when
  // it finished (or was refused by the queue).
  void AddPending(Op op, int delta) { pending_[Index(op)]->Increment(delta); }
  // Time a request waited before its launch (in the batcher's queue, or the
  // executor's for requests that run alone).
  void ObserveQueue(Op op, double seconds) { queue_[Index(op)]->Observe(seconds); }
  // Time of one phase of one launch; a phase the backend lacks is ignored.
  // On cuda, CallScope records every phase from CUDA events (device time).
  void ObserveCompute(Op op, Phase phase, double seconds);
  // A launch's wall time on the host: its kernel phase on the CPU backend;
  // ignored on cuda, whose phases come from the device (above).
  void ObserveHostCompute(Op op, double seconds);
  // One launch of `requests` requests holding `rows` rows in all (the
  // batcher records each batch, RunOpAndRecord each unbatched call); ignored
  // for ops that are not batchable.
  void ObserveLaunch(Op op, int64_t requests, int64_t rows);

 private:
  static int Index(Op op) { return static_cast<int>(op); }
  prometheus::Counter& RequestCounter(Method method, absl::StatusCode code);

  prometheus::Family<prometheus::Counter>& requests_family_;
  prometheus::Family<prometheus::Histogram>& duration_family_;
  prometheus::Counter& bytes_received_;
  prometheus::Counter& bytes_sent_;
  std::array<prometheus::Histogram*, kNumMethods> duration_{};
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumStatusCodes>, kNumMethods>
      requests_{};
  std::array<prometheus::Histogram*, kNumOps> queue_{};
  std::array<std::array<prometheus::Histogram*, kNumPhases>, kNumOps> compute_{};  // null: absent
  std::array<prometheus::Histogram*, kNumBatchableOps> batch_requests_{};
  std::array<prometheus::Histogram*, kNumBatchableOps> batch_rows_{};
  std::array<prometheus::Gauge*, kNumOps> pending_{};
  bool device_timed_ = false;  // cuda: phases come from CallScope's events
};

// Bucket bounds (seconds) resolving 10 us to 10 s: 1-2-5 steps per decade.
prometheus::Histogram::BucketBoundaries LatencyBuckets();
// Requests per launch: powers of two from 1 to 4096.
prometheus::Histogram::BucketBoundaries BatchRequestBuckets();
// Rows (tokens) per launch: powers of two from 1 to 65536.
prometheus::Histogram::BucketBoundaries BatchRowBuckets();

}  // namespace accel::server
