// accel-server: serves the accel.v1.TensorOps API (see proto/ and API.md).
//
// Prints "listening grpc=HOST:PORT metrics=HOST:PORT" once both ports are
// open, so scripts and tests can use port 0. SIGTERM or SIGINT drains the
// server (health NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish
// within --shutdown_grace_s) and exits 0. Logs (stderr): one start-up
// summary, rate-limited warnings for rejected requests and, with
// --access_log, one line per finished call.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "accel/util/logging.h"
#include "server/blas_env.h"
#include "server/server.h"

ABSL_FLAG(std::string, grpc_address, "0.0.0.0:50051",
          "gRPC listen address (port 0: any free port)");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9464",
          "Prometheus /metrics listen address (port 0: any free port)");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{512} << 20,
          "Largest gRPC message in either direction, in bytes");
ABSL_FLAG(int64_t, max_resident_bytes, 0,
          "Resident tensor memory limit in bytes (0: 90% of free device memory, RAM on CPU)");
ABSL_FLAG(std::string, model_dir, "",
          "Directory LoadTensors reads safetensors files from (empty: LoadTensors disabled)");
ABSL_FLAG(std::string, device, "auto", "auto, cpu or cuda:N");
ABSL_FLAG(std::string, auth_token, "",
          "When set, calls need 'authorization: Bearer <token>' metadata");
ABSL_FLAG(int, executor_threads, 0, "Threads running requests (0: one per core)");
ABSL_FLAG(int64_t, max_queue_size, 4096, "Queued requests before RESOURCE_EXHAUSTED");
ABSL_FLAG(bool, batching, true, "Batch concurrent compatible requests into one launch");
ABSL_FLAG(int64_t, max_batch_rows, 4096, "Most rows (tokens) in one batched launch");
ABSL_FLAG(int64_t, max_queue_delay_us, 0,
          "Longest wait for a batch to fill, in microseconds (0: take what queued meanwhile)");
ABSL_FLAG(int, max_inflight_batches, 2, "Batched launches of one op and shape in flight at once");
ABSL_FLAG(int64_t, inline_request_bytes, 64 * 1024,
          "Batchable requests up to this many payload bytes run on the gRPC thread when their "
          "queue is idle (0: never)");
ABSL_FLAG(std::vector<std::string>, preload, {},
          "Safetensors files to load before reporting SERVING: comma-separated PATH or "
          "PATH:PREFIX, relative to --model_dir; repeatable");
ABSL_FLAG(bool, access_log, false,
          "Log one line per finished call (method, code, bytes, latency, peer) to stderr");
ABSL_FLAG(double, shutdown_grace_s, 10.0,
          "Seconds in-flight calls get to finish after SIGTERM before they are cancelled");

namespace {

// Takes every "--preload=V" / "--preload V" out of argv and returns the
// values: absl keeps only the last occurrence of a flag, and --preload is
// repeatable. (One given in a --flagfile still reaches the absl flag.)
std::vector<std::string> TakePreloadArgs(int& argc, char** argv) {
  std::vector<std::string> values;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") {  // the rest are positional
      while (i < argc) argv[out++] = argv[i++];
      break;
    }
    if (arg.starts_with("--")) arg.remove_prefix(1);
    if (arg.starts_with("-preload=")) {
      values.emplace_back(arg.substr(std::string_view("-preload=").size()));
    } else if (arg == "-preload" && i + 1 < argc) {
      values.emplace_back(argv[++i]);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  argv[argc] = nullptr;
  return values;
}

}  // namespace

int main(int argc, char** argv) {
  accel::server::EnsureOpenBlasCoreType(argv);  // may re-exec: must come first
  absl::SetProgramUsageMessage("accel-server: tensor ops of LLM inference over gRPC");
  std::vector<std::string> preload_args = TakePreloadArgs(argc, argv);
  absl::ParseCommandLine(argc, argv);
  // Debian builds Abseil without NDEBUG, which leaves Mutex's deadlock
  // detector on: a lock-order graph update on every contended Lock (1.1% of
  // the server's cycles under a stream of one-row requests, perf). Lock
  // order is checked by the tests' builds, not in production.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block the stop signals in every thread (gRPC's included, which inherit
  // this mask); main waits for them with sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  accel::server::ServerOptions options;
  options.grpc_address = absl::GetFlag(FLAGS_grpc_address);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_resident_bytes = absl::GetFlag(FLAGS_max_resident_bytes);
  options.model_dir = absl::GetFlag(FLAGS_model_dir);
  options.device = absl::GetFlag(FLAGS_device);
  options.auth_token = absl::GetFlag(FLAGS_auth_token);
  options.executor_threads = absl::GetFlag(FLAGS_executor_threads);
  options.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  options.batching = absl::GetFlag(FLAGS_batching);
  options.max_batch_rows = absl::GetFlag(FLAGS_max_batch_rows);
  options.max_queue_delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  options.max_inflight_batches = absl::GetFlag(FLAGS_max_inflight_batches);
  options.inline_request_bytes = absl::GetFlag(FLAGS_inline_request_bytes);
  options.access_log = absl::GetFlag(FLAGS_access_log);
  preload_args.push_back(absl::StrJoin(absl::GetFlag(FLAGS_preload), ","));
  for (const std::string& list : preload_args) {
    for (absl::string_view spec : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      options.preload.emplace_back(absl::StripAsciiWhitespace(spec));
    }
  }

  auto server = accel::server::Server::Start(options);
  if (!server.ok()) {
    LOG(ERROR) << "accel-server failed to start: " << server.status();
    return 1;
  }
  LOG(INFO) << "malloc=" << ACCEL_MALLOC_NAME;
  std::cout << (*server)->ListeningLine() << std::endl;

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  LOG(INFO) << "received " << (signal_number == SIGTERM ? "SIGTERM" : "SIGINT") << ", draining";
  const auto grace =
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_shutdown_grace_s) * 1000));
  (*server)->Shutdown(grace);
  LOG(INFO) << "accel-server stopped";
  return 0;
}
