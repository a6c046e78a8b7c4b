// What every RPC handler shares: the store, the executor, the op
// environment, metrics and the server's admission state (draining, token).
//
// Built once by Server and outlives every call. Thread-safe: members are
// thread-safe objects or immutable after construction, except `draining`,
// which is atomic.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "accel/v1/tensor_ops.pb.h"
#include "server/executor.h"
#include "server/metrics.h"
#include "server/output_slot.h"
#include "server/tensor_store.h"

namespace accel::server {

class Batcher;

struct ServiceContext {
  TensorStore* store = nullptr;
  Executor* executor = nullptr;
  // Null when batching is off (--batching=false): every op runs alone.
  Batcher* batcher = nullptr;
  ServerMetrics* metrics = nullptr;
  OpEnv env;
  std::string version;
  std::string backend;      // "cpu" or "cuda"
  std::string model_dir;    // LoadTensors root; empty disables LoadTensors
  std::string auth_token;   // empty: no authentication
  bool access_log = false;  // one LOG(INFO) line per finished call (--access_log)
  // Batchable requests up to this many payload bytes run on the gRPC thread
  // when their queue is idle (--inline_request_bytes; 0: never).
  int64_t inline_request_bytes = 64 * 1024;
  v1::BatchingSettings batching;
  std::atomic<bool> draining{false};
};

// The admission checks every RPC runs first: UNAVAILABLE while draining,
// UNAUTHENTICATED without the configured token.
absl::Status Admit(const ServiceContext& service, const grpc::CallbackServerContext& call);

// CANCELLED or DEADLINE_EXCEEDED when the caller is gone; checked again
// before queued work starts, so abandoned requests cost no kernel time.
absl::Status CheckCallAlive(grpc::CallbackServerContext& call);

// Seconds since `start`, for the duration histograms.
double SecondsSince(std::chrono::steady_clock::time_point start);

}  // namespace accel::server
