// A fixed pool of threads that runs request work off the gRPC threads, with
// a bounded queue: the gRPC handlers never block, and a full queue answers
// RESOURCE_EXHAUSTED at once instead of growing without bound.
//
// Used by the service for every op and for slow resident-tensor calls
// (LoadTensors, BuildRopeCache, QuantizeWeight). Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace accel::server {

class Executor {
 public:
  struct Options {
    // Worker threads. The CPU kernels spread each large op over all cores
    // themselves, so a few workers suffice to overlap small requests.
    int threads = 2;
    // Most tasks waiting to run; more is RESOURCE_EXHAUSTED.
    int64_t max_queue_size = 1024;
    // Runs first on each worker thread (e.g. to select the GPU and create
    // the thread's stream); may be empty.
    std::function<void()> thread_init;
  };
  explicit Executor(Options options);
  ~Executor();  // Shutdown()
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Takes ownership of `task` and runs it on a worker. RESOURCE_EXHAUSTED
  // when the queue is full, UNAVAILABLE after Shutdown(); the task is then
  // destroyed without running.
  absl::Status Schedule(absl::AnyInvocable<void() &&> task);
  // The same, but a refused task stays in *task, unrun, for the caller to
  // run or answer itself (a task that must run exactly once).
  absl::Status TrySchedule(absl::AnyInvocable<void() &&>* task);

  // Runs every queued task, then joins the workers. Idempotent.
  void Shutdown();

  int64_t pending() const;

 private:
  void WorkerLoop();

  const Options options_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace accel::server
