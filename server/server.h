// The accel-serve server: wires the store, executor, metrics, the
// TensorOps service, health and reflection onto a gRPC server and a
// Prometheus exposer.
//
// Start() returns once both ports listen and any --preload finished (health
// turns SERVING only then; the gRPC port opens after preloading, so no
// client can see a half-loaded server); Shutdown() drains (health turns
// NOT_SERVING, new calls get UNAVAILABLE, in-flight calls finish within the
// grace period) and stops. Used by main.cc and, in-process, by the
// integration tests. Thread-safe: Shutdown and Wait may be called from any
// thread; Shutdown is idempotent.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace grpc {
class Server;
}
namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace accel::server {

struct ServerOptions {
  // gRPC listen address; port 0 picks a free port.
  std::string grpc_address = "0.0.0.0:50051";
  // Prometheus listen address (path /metrics); port 0 picks a free port.
  std::string metrics_address = "0.0.0.0:9464";
  // Largest gRPC message in either direction, in bytes.
  int64_t max_message_bytes = int64_t{512} << 20;
  // Resident memory limit in bytes; 0: 90% of the device's free memory at
  // start (RAM on the CPU).
  int64_t max_resident_bytes = 0;
  // Root for LoadTensors paths; empty disables LoadTensors.
  std::string model_dir;
  // Safetensors files to load before the server reports SERVING, each
  // "path" or "path:prefix" (split at the first ':'), the path relative to
  // model_dir. A file that fails to load fails Start.
  std::vector<std::string> preload;
  // Log one line per finished call (method, code, bytes, latency, peer).
  bool access_log = false;
  // "auto" (first GPU if any, else CPU), "cpu" or "cuda:N".
  std::string device = "auto";
  // When set, every TensorOps call needs "authorization: Bearer <token>".
  std::string auth_token;
  // Executor threads; 0 = one per core.
  int executor_threads = 0;
  // Requests waiting for a worker before RESOURCE_EXHAUSTED.
  int64_t max_queue_size = 4096;
  // Batching settings (reported by GetServerInfo; see the batcher).
  bool batching = true;
  int64_t max_batch_rows = 4096;
  int64_t max_queue_delay_us = 0;
  // Launches of one batch key in flight at once (>= 1). On a GPU each runs
  // on its worker's stream, so consecutive batches overlap their copies and
  // kernels; on either backend a second slot lets a small request run at
  // once (inline) while a batch is out. Measured best at 2 (bench/RESULTS.md).
  int max_inflight_batches = 2;
  // Batchable requests of at most this many payload bytes run on the gRPC
  // thread when their queue is idle, saving two thread hand-offs; 0: never.
  int64_t inline_request_bytes = 64 * 1024;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();  // Shutdown(0)
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int grpc_port() const;
  int metrics_port() const;
  // "HOST:PORT" of the gRPC endpoint, for clients ("localhost:PORT" for
  // wildcard binds).
  std::string grpc_target() const;
  // "listening grpc=HOST:PORT metrics=HOST:PORT": printed at start-up.
  std::string ListeningLine() const;

  // Drains and stops; in-flight calls get up to `grace` to finish, then are
  // cancelled.
  void Shutdown(std::chrono::milliseconds grace);
  // Blocks until Shutdown has completed.
  void Wait();

 private:
  struct State;
  explicit Server(std::unique_ptr<State> state);

  std::unique_ptr<State> state_;
  absl::Mutex shutdown_mu_;
  bool shutdown_started_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  bool shutdown_done_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace accel::server
