#include "server/batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace accel::server {
namespace {

double SecondsBetween(BatchClock::time_point from, BatchClock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Answers per thread when a batch's answers are spread out: enough to
// outweigh the hand-off (one wake-up, a few microseconds).
constexpr size_t kAnswersPerChunk = 8;

// Calls Done(status) on every task, all but the last chunk on other threads
// when `offload` takes them.
void Answer(std::vector<std::unique_ptr<BatchTask>> tasks, const absl::Status& status,
            const Offload& offload) {
  size_t next = 0;
  if (offload) {
    while (tasks.size() - next > kAnswersPerChunk) {
      std::vector<std::unique_ptr<BatchTask>> chunk;
      chunk.reserve(kAnswersPerChunk);
      for (size_t i = 0; i < kAnswersPerChunk; ++i) chunk.push_back(std::move(tasks[next++]));
      absl::AnyInvocable<void()&&> answer = [chunk = std::move(chunk), status]() mutable {
        for (std::unique_ptr<BatchTask>& task : chunk) task->Done(status);
      };
      if (!offload(&answer).ok()) std::move(answer)();  // nobody free: answer here
    }
  }
  for (; next < tasks.size(); ++next) tasks[next]->Done(status);
}

}  // namespace

void RunBatch(ServerMetrics* metrics, std::vector<std::unique_ptr<BatchTask>> batch,
              const Offload& offload) {
  const BatchClock::time_point start = BatchClock::now();
  // Callers that are gone cost no kernel time and never delay the others.
  std::vector<std::unique_ptr<BatchTask>> live;
  std::vector<BatchTask*> launch;
  live.reserve(batch.size());
  launch.reserve(batch.size());
  int64_t rows = 0;
  for (std::unique_ptr<BatchTask>& task : batch) {
    if (absl::Status alive = task->CheckAlive(); !alive.ok()) {
      task->Done(std::move(alive));
      task.reset();
      continue;
    }
    if (metrics != nullptr)
      metrics->ObserveQueue(task->op(), SecondsBetween(task->enqueued, start));
    rows += task->rows();
    launch.push_back(task.get());
    live.push_back(std::move(task));
  }
  if (live.empty()) return;
  const Op op = live[0]->op();
  absl::Status status = live[0]->LaunchBatch(launch);
  if (status.ok() || live.size() == 1) {
    if (status.ok() && metrics != nullptr) {
      metrics->ObserveHostCompute(op, SecondsBetween(start, BatchClock::now()));
      metrics->ObserveLaunch(op, static_cast<int64_t>(live.size()), rows);
    }
    Answer(std::move(live), status, offload);
    return;
  }
  // Some request of the batch is bad (e.g. a NaN for Quantize): run each
  // alone, so that only its own caller sees its error.
  for (std::unique_ptr<BatchTask>& task : live) {
    const BatchClock::time_point alone = BatchClock::now();
    BatchTask* one[] = {task.get()};
    absl::Status own = task->LaunchBatch(one);
    if (own.ok() && metrics != nullptr) {
      metrics->ObserveHostCompute(op, SecondsBetween(alone, BatchClock::now()));
      metrics->ObserveLaunch(op, 1, task->rows());
    }
    task->Done(std::move(own));
  }
}

Batcher::Batcher(Options options) : options_(std::move(options)) {
  const int threads = std::max(1, options_.threads);
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

Batcher::~Batcher() { Shutdown(); }

absl::Status Batcher::Schedule(std::unique_ptr<BatchTask>* task) {
  const BatchClock::time_point now = BatchClock::now();
  const std::string& key = (*task)->key();
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the server is draining for shutdown");
  if (queued_ >= options_.max_queue_size) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the batch queue is full (", queued_,
        " requests waiting, --max_queue_size=", options_.max_queue_size, "); retry with backoff"));
  }
  (*task)->enqueued = now;
  QueueMap::value_type& entry = *queues_.try_emplace(key).first;
  Queue& queue = entry.second;
  const int inflight_limit = InflightLimit(**task);
  if ((*task)->runs_inline() && queue.in_flight < inflight_limit && queue.tasks.empty() &&
      options_.max_queue_delay.count() == 0) {
    // A queue with nothing waiting, a free launch slot and no delay would
    // launch this task alone at once anyway: run it here and save the
    // hand-off to a worker (two thread
    // wake-ups, the largest cost of a small request at low load). Tasks of
    // this key that arrive meanwhile queue up for a worker, as they would
    // behind a worker's launch.
    ++queue.in_flight;  // keeps `entry` in the map until LaunchedLocked
    std::vector<std::unique_ptr<BatchTask>> batch;
    batch.push_back(std::move(*task));
    mu_.Unlock();
    RunBatch(options_.metrics, std::move(batch), options_.offload);
    mu_.Lock();
    LaunchedLocked(&entry);
    return absl::OkStatus();
  }
  queue.tasks.push_back(std::move(*task));
  ++queued_;
  // Wake the workers only when one can launch this key now; a key whose
  // slots are all busy wakes them when a launch ends (LaunchedLocked). A
  // wake-up that finds nothing to take costs two futex calls and two
  // context switches: with single-row streams on the CPU, most of the
  // server's futex calls were such wake-ups.
  if (queue.in_flight < inflight_limit) ++epoch_;
  return absl::OkStatus();
}

void Batcher::LaunchedLocked(QueueMap::value_type* queue) {
  --queue->second.in_flight;
  if (queue->second.tasks.empty()) {
    // A free slot with nothing waiting creates no work.
    DropIdleQueuesLocked();
  } else {
    ++epoch_;
  }
}

void Batcher::DropIdleQueuesLocked() {
  for (auto it = queues_.begin(); queues_.size() > kQueuesKept && it != queues_.end();) {
    it = it->second.in_flight == 0 && it->second.tasks.empty() ? queues_.erase(it) : std::next(it);
  }
}

void Batcher::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    ++epoch_;
  }
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  workers_.clear();
}

int64_t Batcher::queued() const {
  absl::MutexLock lock(&mu_);
  return queued_;
}

int Batcher::InflightLimit(const BatchTask& task) const {
  return std::max(1, std::min(options_.max_inflight_per_key, task.max_inflight_launches()));
}

size_t Batcher::queue_count() const {
  absl::MutexLock lock(&mu_);
  return queues_.size();
}

bool Batcher::TakeLocked(BatchClock::time_point now, Taken* taken,
                         BatchClock::time_point* wake_at) {
  BatchPlanOptions plan_options{options_.max_batch_rows, options_.max_queue_delay,
                                /*flush=*/stopping_};
  *wake_at = BatchClock::time_point::max();
  QueueMap::value_type* best_entry = nullptr;
  size_t best_launch = 0;
  std::vector<QueuedRequest> requests;
  for (QueueMap::value_type& entry : queues_) {
    Queue& queue = entry.second;
    if (queue.tasks.empty() || queue.in_flight >= InflightLimit(*queue.tasks.front())) continue;
    requests.clear();
    plan_options.max_batch_rows =
        std::min(options_.max_batch_rows, queue.tasks.front()->max_batch_rows());
    for (const std::unique_ptr<BatchTask>& task : queue.tasks) {
      requests.push_back({task->rows(), task->enqueued, task->deadline()});
    }
    const BatchPlan plan = PlanBatch(requests, now, plan_options);
    // Erase back to front so the indices stay valid.
    for (auto it = plan.expired.rbegin(); it != plan.expired.rend(); ++it) {
      taken->expired.push_back(std::move(queue.tasks[*it]));
      queue.tasks.erase(queue.tasks.begin() + static_cast<std::ptrdiff_t>(*it));
      --queued_;
    }
    if (plan.launch > 0) {
      // FIFO across keys: the queue whose head waited longest goes first.
      if (best_entry == nullptr ||
          queue.tasks.front()->enqueued < best_entry->second.tasks.front()->enqueued) {
        best_entry = &entry;
        best_launch = plan.launch;
      }
    } else if (plan.wake_at) {
      *wake_at = std::min(*wake_at, *plan.wake_at);
    }
  }
  if (best_entry != nullptr) {
    Queue& best = best_entry->second;
    taken->queue = best_entry;
    for (size_t i = 0; i < best_launch; ++i) {
      taken->batch.push_back(std::move(best.tasks.front()));
      best.tasks.pop_front();
    }
    queued_ -= static_cast<int64_t>(best_launch);
    ++best.in_flight;
  }
  // Queues emptied by expiry alone.
  if (!taken->expired.empty()) DropIdleQueuesLocked();
  return best_entry != nullptr || !taken->expired.empty();
}

void Batcher::WorkerLoop() {
  if (options_.thread_init) options_.thread_init();
  absl::MutexLock lock(&mu_);
  while (true) {
    Taken taken;
    BatchClock::time_point wake_at;
    if (TakeLocked(BatchClock::now(), &taken, &wake_at)) {
      mu_.Unlock();
      for (std::unique_ptr<BatchTask>& task : taken.expired) {
        task->Done(absl::DeadlineExceededError("the deadline passed while the request was queued"));
      }
      taken.expired.clear();
      const bool launched = !taken.batch.empty();
      if (launched) RunBatch(options_.metrics, std::move(taken.batch), options_.offload);
      mu_.Lock();
      if (launched) LaunchedLocked(taken.queue);
      continue;
    }
    if (stopping_ && queued_ == 0) return;
    // Sleep until a task arrives, a queue turns idle, or a delay runs out.
    const uint64_t seen = epoch_;
    auto changed = [this, seen]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return epoch_ != seen || stopping_; };
    if (wake_at == BatchClock::time_point::max()) {
      mu_.Await(absl::Condition(&changed));
    } else {
      mu_.AwaitWithTimeout(absl::Condition(&changed),
                           absl::FromChrono(wake_at - BatchClock::now()));
    }
  }
}

}  // namespace accel::server
