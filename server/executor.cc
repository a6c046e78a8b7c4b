#include "server/executor.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace accel::server {

Executor::Executor(Options options) : options_(options) {
  const int threads = options_.threads < 1 ? 1 : options_.threads;
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

Executor::~Executor() { Shutdown(); }

absl::Status Executor::Schedule(absl::AnyInvocable<void() &&> task) {
  return TrySchedule(&task);  // on refusal `task` dies here, unrun
}

absl::Status Executor::TrySchedule(absl::AnyInvocable<void() &&>* task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the server is draining for shutdown");
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queue_size) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request queue is full (", queue_.size(),
        " waiting, --max_queue_size=", options_.max_queue_size, "); retry with backoff"));
  }
  queue_.push_back(std::move(*task));
  return absl::OkStatus();
}

void Executor::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
  }
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  workers_.clear();
}

int64_t Executor::pending() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

void Executor::WorkerLoop() {
  if (options_.thread_init) options_.thread_init();
  while (true) {
    absl::AnyInvocable<void() &&> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Executor* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping, and everything ran
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    std::move(task)();
  }
}

}  // namespace accel::server
