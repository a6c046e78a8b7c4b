// The dynamic batcher: concurrent requests whose op, dtype, trailing shape,
// resident weights and parameters agree (the same batch key) wait in one
// queue and run as one launch over their concatenated rows.
//
// The service decodes and validates a request on the gRPC thread, wraps it
// in a BatchTask (server/batch_ops.h) and calls Schedule. Worker threads
// take a queue's next batch when PlanBatch (batch_plan.h) says so: at
// once with --max_queue_delay_us=0 (a batch is then whatever queued while
// that key's launches in flight ran), when --max_batch_rows are queued, or
// when the oldest request has waited the delay. A key has at most
// max_inflight_per_key launches in flight (--max_inflight_batches, 2): on
// a GPU each worker has its own stream, so the staging copy, H2D, kernel
// and D2H of consecutive batches of one key overlap (a pipeline of
// streams, each batch finished by its own synchronisation); on either
// backend a free slot lets a small request run at once. Before the launch, requests whose caller
// cancelled or whose deadline passed are answered and dropped, so they never delay others. A full
// batcher (--max_queue_size tasks waiting) answers RESOURCE_EXHAUSTED at once.
//
// Different keys run in parallel on different workers; the queue with the
// oldest launchable request goes first. Requests that share no key with
// anyone (an output name, an inline weight, a per-tensor Quantize) do not
// come here: the service runs them alone on the executor (RunBatch with one
// task), through the same launch code.
//
// Thread-safety: Schedule and Shutdown may be called from any thread. A
// task's methods are called by one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/batch_plan.h"
#include "server/metrics.h"

namespace accel::server {

// One request waiting for a launch. Implemented per op by OpTask
// (batch_ops.h); tests implement it directly.
class BatchTask {
 public:
  virtual ~BatchTask() = default;

  virtual Op op() const = 0;
  // Tasks with equal keys may share a launch (and share a queue).
  virtual const std::string& key() const = 0;
  // Rows (tokens) this task adds to a launch.
  virtual int64_t rows() const = 0;
  // The most rows a launch of this key may hold, below --max_batch_rows
  // when the op's results depend on the row count beyond it (Linear).
  // Equal for all tasks of a key.
  virtual int64_t max_batch_rows() const { return std::numeric_limits<int64_t>::max(); }
  // The most launches of this key in flight at once, below
  // --max_inflight_batches for ops that stream a large weight per launch
  // (Linear, Ffn on a GPU): two launches in flight would each read the
  // weights, while one at a time lets the next batch grow. Equal for all
  // tasks of a key.
  virtual int max_inflight_launches() const { return std::numeric_limits<int>::max(); }
  // The caller's deadline on the steady clock; time_point::max() if none.
  virtual BatchClock::time_point deadline() const { return BatchClock::time_point::max(); }
  // OK while the caller still waits; CANCELLED or DEADLINE_EXCEEDED after.
  virtual absl::Status CheckAlive() { return absl::OkStatus(); }
  // Runs `batch` (tasks of this task's key; this one is batch[0]) as one
  // launch and fills their responses. On an error no response may be used:
  // RunBatch then runs each task alone to find whose request failed.
  virtual absl::Status LaunchBatch(std::span<BatchTask* const> batch) = 0;
  // Delivers the final status (the response is filled when it is OK).
  // Called exactly once, on any thread; the task is destroyed after.
  virtual void Done(absl::Status status) = 0;
  // True when the task is cheap enough to run on the thread that schedules
  // it, when its queue is idle: nothing waiting and a launch slot free
  // (skips a thread hop for small requests).
  virtual bool runs_inline() const { return false; }

  // Set by Batcher::Schedule.
  BatchClock::time_point enqueued;
};

// Runs a closure on another thread, or answers an error and leaves it in
// *closure, unrun (Executor::TrySchedule).
using Offload = std::function<absl::Status(absl::AnyInvocable<void() &&>* closure)>;

// Runs `batch` (non-empty, one key) as one launch and calls every task's
// Done: tasks whose caller is gone get CANCELLED/DEADLINE_EXCEEDED without
// running; if the launch fails, each remaining task is run alone, so one
// bad request cannot fail its neighbours. Records the queue time of each
// task and the launch (requests, rows, kernel time) when `metrics` is set.
// With `offload`, a large batch's answers (Done: gRPC sends each response
// on the thread that calls it, ~10 us each) are split into chunks run on
// other threads, so that this thread is free for the next batch sooner.
void RunBatch(ServerMetrics* metrics, std::vector<std::unique_ptr<BatchTask>> batch,
              const Offload& offload = nullptr);

class Batcher {
 public:
  struct Options {
    // See BatchPlanOptions: rows per launch (--max_batch_rows, default
    // 4096) and the longest wait for a batch to fill (--max_queue_delay_us,
    // default 0).
    int64_t max_batch_rows = 4096;
    std::chrono::microseconds max_queue_delay{0};
    // Tasks waiting in all queues; more is RESOURCE_EXHAUSTED
    // (--max_queue_size, default 4096).
    int64_t max_queue_size = 4096;
    // Worker threads.
    int threads = 2;
    // Launches of one key in flight at once (--max_inflight_batches);
    // while all are busy, that key's new requests queue for the next batch.
    int max_inflight_per_key = 1;
    // Runs first on each worker (selects the GPU, creates its stream).
    std::function<void()> thread_init;
    // Where launches are recorded; may be null.
    ServerMetrics* metrics = nullptr;
    // Where a batch's answers may run (see RunBatch); may be empty.
    Offload offload;
  };

  explicit Batcher(Options options);
  ~Batcher();  // Shutdown()
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Takes ownership of *task (leaving it null) and answers OK; it may run
  // and finish before Schedule returns when it runs_inline(). Otherwise
  // leaves *task with the caller and answers RESOURCE_EXHAUSTED (full) or
  // UNAVAILABLE (shut down).
  absl::Status Schedule(std::unique_ptr<BatchTask>* task);

  // Launches everything queued without waiting for batches to fill, then
  // joins the workers. Idempotent.
  void Shutdown();

  // Tasks waiting (not yet launched).
  int64_t queued() const;
  // Idle queues (nothing waiting or in flight) are kept for their key's
  // next request: a key that comes back does not allocate and free a queue
  // per request. Beyond this many queues, idle ones are dropped until there
  // are this many again (keys hold tensor addresses: a replaced weight
  // leaves its old key behind). A model's keys (a few per layer) fit; the
  // workers' scan over the queues stays a few hundred entries.
  static constexpr size_t kQueuesKept = 256;
  // Keys with a queue, idle ones included.
  size_t queue_count() const;

 private:
  struct Queue {
    std::deque<std::unique_ptr<BatchTask>> tasks;
    int in_flight = 0;  // launches of this key running now
  };
  // std::unordered_map: references stay valid while other keys come and go.
  using QueueMap = std::unordered_map<std::string, Queue>;
  // What a worker took out of the queues under the lock.
  struct Taken {
    QueueMap::value_type* queue = nullptr;  // the batch's; in flight, so not erased
    std::vector<std::unique_ptr<BatchTask>> batch;
    std::vector<std::unique_ptr<BatchTask>> expired;
  };

  void WorkerLoop();
  // Plans every queue with a free launch slot; moves the batch whose oldest task is oldest
  // (and every expired task) into *taken. Returns false when there is
  // nothing to do now; *wake_at is then the next time a plan may change.
  bool TakeLocked(BatchClock::time_point now, Taken* taken, BatchClock::time_point* wake_at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a launch from `queue`: one fewer in flight.
  void LaunchedLocked(QueueMap::value_type* queue) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Launches of `task`'s key allowed in flight at once (at least 1).
  int InflightLimit(const BatchTask& task) const;
  // Drops idle queues while there are more than kQueuesKept (only the
  // excess: the others stay for their keys).
  void DropIdleQueuesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  QueueMap queues_ ABSL_GUARDED_BY(mu_);
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  // Bumped whenever a worker may find new work: a task queued on a key with
  // a free launch slot, a slot freed on a key with tasks waiting.
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace accel::server
