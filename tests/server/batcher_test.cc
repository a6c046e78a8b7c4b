// The Batcher's threads around PlanBatch: tasks of one key queued while that
// key is busy share the next launch; keys stay apart; full queues, gone
// callers and failed batches are answered as the header promises.
#include "server/batcher.h"

#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace accel::server {
namespace {

using ::testing::ElementsAre;

// What the fake tasks saw: launches (the ids in each) and final statuses.
struct Log {
  absl::Mutex mu;
  std::vector<std::vector<int>> launches ABSL_GUARDED_BY(mu);
  std::map<int, absl::Status> done ABSL_GUARDED_BY(mu);

  void WaitDone(size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done.size() >= n; };
    mu.Await(absl::Condition(&enough));
  }
  void WaitLaunches(size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return launches.size() >= n; };
    mu.Await(absl::Condition(&enough));
  }
};

class FakeTask final : public BatchTask {
 public:
  FakeTask(int id, std::string key, Log* log) : id_(id), key_(std::move(key)), log_(log) {}

  // The first launch of this task blocks until `gate` is notified.
  FakeTask& BlockOn(absl::Notification* gate) {
    gate_ = gate;
    return *this;
  }
  FakeTask& Alive(absl::Status status) {
    alive_ = std::move(status);
    return *this;
  }
  FakeTask& Deadline(BatchClock::time_point deadline) {
    deadline_ = deadline;
    return *this;
  }
  // Launches holding this task fail; so does a launch of it alone.
  FakeTask& Bad() {
    bad_ = true;
    return *this;
  }
  FakeTask& Inline() {
    inline_ = true;
    return *this;
  }
  FakeTask& MaxBatchRows(int64_t rows) {
    max_batch_rows_ = rows;
    return *this;
  }
  FakeTask& MaxInflight(int launches) {
    max_inflight_ = launches;
    return *this;
  }

  Op op() const override { return Op::kRmsNorm; }
  const std::string& key() const override { return key_; }
  int64_t rows() const override { return 1; }
  BatchClock::time_point deadline() const override { return deadline_; }
  absl::Status CheckAlive() override { return alive_; }
  bool runs_inline() const override { return inline_; }
  int64_t max_batch_rows() const override { return max_batch_rows_; }
  int max_inflight_launches() const override { return max_inflight_; }

  absl::Status LaunchBatch(std::span<BatchTask* const> batch) override {
    std::vector<int> ids;
    bool bad = false;
    for (BatchTask* task : batch) {
      auto* fake = static_cast<FakeTask*>(task);
      ids.push_back(fake->id_);
      bad |= fake->bad_;
    }
    {
      absl::MutexLock lock(&log_->mu);
      log_->launches.push_back(ids);
    }
    if (gate_ != nullptr) gate_->WaitForNotification();
    return bad ? absl::InvalidArgumentError("bad input") : absl::OkStatus();
  }
  void Done(absl::Status status) override {
    absl::MutexLock lock(&log_->mu);
    log_->done[id_] = std::move(status);
  }

 private:
  const int id_;
  const std::string key_;
  Log* log_;
  absl::Notification* gate_ = nullptr;
  absl::Status alive_;
  BatchClock::time_point deadline_ = BatchClock::time_point::max();
  bool bad_ = false;
  bool inline_ = false;
  int64_t max_batch_rows_ = std::numeric_limits<int64_t>::max();
  int max_inflight_ = std::numeric_limits<int>::max();
};

Batcher::Options TestOptions() {
  Batcher::Options options;
  options.threads = 2;
  return options;
}

absl::Status Schedule(Batcher& batcher, std::unique_ptr<FakeTask> task) {
  std::unique_ptr<BatchTask> base = std::move(task);
  return batcher.Schedule(&base);
}

std::unique_ptr<FakeTask> Task(int id, const std::string& key, Log* log) {
  return std::make_unique<FakeTask>(id, key, log);
}

TEST(Batcher, RunsATaskAndDeliversItsStatus) {
  Log log;
  Batcher batcher(TestOptions());
  ASSERT_TRUE(Schedule(batcher, Task(1, "a", &log)).ok());
  log.WaitDone(1);
  absl::MutexLock lock(&log.mu);
  EXPECT_TRUE(log.done[1].ok());
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1)));
}

TEST(Batcher, TasksQueuedWhileTheKeyIsBusyShareTheNextLaunch) {
  Log log;
  absl::Notification gate;
  Batcher batcher(TestOptions());
  auto first = Task(1, "a", &log);
  first->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  for (int id = 2; id <= 4; ++id) ASSERT_TRUE(Schedule(batcher, Task(id, "a", &log)).ok());
  gate.Notify();
  log.WaitDone(4);
  absl::MutexLock lock(&log.mu);
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1), ElementsAre(2, 3, 4)));
  for (const auto& [id, status] : log.done) EXPECT_TRUE(status.ok()) << id;
}

TEST(Batcher, AKeyKeepsUpToMaxInflightLaunchesRunningAndQueuesTheRest) {
  Log log;
  absl::Notification gate;
  Batcher::Options options = TestOptions();
  options.threads = 3;
  options.max_inflight_per_key = 2;
  Batcher batcher(options);
  auto first = Task(1, "a", &log);
  first->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  auto second = Task(2, "a", &log);
  second->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(second)).ok());
  log.WaitLaunches(2);  // launched beside the first: a second slot was free
  // Both slots are busy (a third worker is idle): these wait, then share.
  for (int id = 3; id <= 5; ++id) ASSERT_TRUE(Schedule(batcher, Task(id, "a", &log)).ok());
  absl::SleepFor(absl::Milliseconds(50));
  {
    absl::MutexLock lock(&log.mu);
    EXPECT_EQ(log.launches.size(), 2u);
    EXPECT_TRUE(log.done.empty());
  }
  gate.Notify();
  log.WaitDone(5);
  absl::MutexLock lock(&log.mu);
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1), ElementsAre(2), ElementsAre(3, 4, 5)));
  for (const auto& [id, status] : log.done) EXPECT_TRUE(status.ok()) << id;
}

TEST(Batcher, AKeysOwnInflightLimitHoldsItsNextBatchBackBelowMaxInflight) {
  Log log;
  absl::Notification gate;
  Batcher::Options options = TestOptions();
  options.threads = 3;
  options.max_inflight_per_key = 2;
  Batcher batcher(options);
  auto first = Task(1, "ffn", &log);
  first->MaxInflight(1).BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  // A second slot of --max_inflight_batches is free, but not this key's.
  for (int id = 2; id <= 4; ++id) {
    auto task = Task(id, "ffn", &log);
    task->MaxInflight(1).Inline();
    ASSERT_TRUE(Schedule(batcher, std::move(task)).ok());
  }
  absl::SleepFor(absl::Milliseconds(50));
  {
    absl::MutexLock lock(&log.mu);
    EXPECT_EQ(log.launches.size(), 1u);
    EXPECT_TRUE(log.done.empty());
  }
  gate.Notify();
  log.WaitDone(4);
  absl::MutexLock lock(&log.mu);
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1), ElementsAre(2, 3, 4)));
}

// Runs offloaded closures on threads of its own (or refuses them all).
class FakeOffload {
 public:
  explicit FakeOffload(bool accept) : accept_(accept) {}
  ~FakeOffload() {
    for (std::thread& t : threads_) t.join();
  }
  Offload Get() {
    return [this](absl::AnyInvocable<void() &&>* closure) {
      absl::MutexLock lock(&mu_);
      ++calls_;
      if (!accept_) return absl::ResourceExhaustedError("full");
      threads_.emplace_back(std::move(*closure));
      return absl::OkStatus();
    };
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  const bool accept_;
  absl::Mutex mu_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

// One launch of 1 + `queued` tasks of key "a" (the queued ones wait behind
// a blocked first launch), with `offload`.
void RunOneBigBatch(Log& log, Offload offload, int queued) {
  absl::Notification gate;
  Batcher::Options options = TestOptions();
  options.offload = std::move(offload);
  Batcher batcher(options);
  auto first = Task(0, "a", &log);
  first->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  for (int id = 1; id <= queued; ++id) ASSERT_TRUE(Schedule(batcher, Task(id, "a", &log)).ok());
  gate.Notify();
  log.WaitDone(static_cast<size_t>(queued) + 1);
}

TEST(Batcher, ALargeBatchAnswersInChunksOnOtherThreads) {
  Log log;
  FakeOffload offload(/*accept=*/true);
  RunOneBigBatch(log, offload.Get(), 20);
  // 20 answers: chunks of 8 go out while more than 8 remain (two), the
  // last 4 are answered by the worker.
  EXPECT_EQ(offload.calls(), 2);
  absl::MutexLock lock(&log.mu);
  ASSERT_EQ(log.launches.size(), 2u);
  EXPECT_EQ(log.launches[1].size(), 20u);
  for (const auto& [id, status] : log.done) EXPECT_TRUE(status.ok()) << id;
}

TEST(Batcher, AnswersARefusedChunkItself) {
  Log log;
  FakeOffload offload(/*accept=*/false);
  RunOneBigBatch(log, offload.Get(), 20);
  EXPECT_EQ(offload.calls(), 2);
  absl::MutexLock lock(&log.mu);
  EXPECT_EQ(log.done.size(), 21u);
  for (const auto& [id, status] : log.done) EXPECT_TRUE(status.ok()) << id;
}

TEST(Batcher, DifferentKeysNeverShareALaunchAndRunSideBySide) {
  Log log;
  absl::Notification gate;
  Batcher batcher(TestOptions());
  auto first = Task(1, "a", &log);
  first->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  ASSERT_TRUE(Schedule(batcher, Task(2, "b", &log)).ok());
  log.WaitDone(1);  // b finished while a is still blocked on the other worker
  {
    absl::MutexLock lock(&log.mu);
    EXPECT_EQ(log.done.count(2), 1u);
    EXPECT_EQ(log.done.count(1), 0u);
  }
  gate.Notify();
  log.WaitDone(2);
  absl::MutexLock lock(&log.mu);
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1), ElementsAre(2)));
}

TEST(Batcher, RejectsWhenQueueFull) {
  Log log;
  absl::Notification gate;
  Batcher::Options options = TestOptions();
  options.max_queue_size = 2;
  Batcher batcher(options);
  auto first = Task(1, "a", &log);
  first->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);  // launched: no longer waiting
  ASSERT_TRUE(Schedule(batcher, Task(2, "a", &log)).ok());
  ASSERT_TRUE(Schedule(batcher, Task(3, "a", &log)).ok());
  std::unique_ptr<BatchTask> refused = Task(4, "a", &log);
  const absl::Status status = batcher.Schedule(&refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_NE(refused, nullptr);  // still the caller's, never run
  gate.Notify();
  log.WaitDone(3);
  absl::MutexLock lock(&log.mu);
  EXPECT_EQ(log.done.count(4), 0u);
}

TEST(Batcher, DropsGoneCallersBeforeTheLaunch) {
  Log log;
  absl::Notification gate;
  Batcher batcher(TestOptions());
  auto first = Task(1, "a", &log);
  first->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  auto cancelled = Task(2, "a", &log);
  cancelled->Alive(absl::CancelledError("client cancelled"));
  ASSERT_TRUE(Schedule(batcher, std::move(cancelled)).ok());
  auto expired = Task(3, "a", &log);
  expired->Deadline(BatchClock::now() - std::chrono::seconds(1));
  ASSERT_TRUE(Schedule(batcher, std::move(expired)).ok());
  ASSERT_TRUE(Schedule(batcher, Task(4, "a", &log)).ok());
  gate.Notify();
  log.WaitDone(4);
  absl::MutexLock lock(&log.mu);
  EXPECT_EQ(log.done[2].code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(log.done[3].code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(log.done[4].ok());
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1), ElementsAre(4)));
}

TEST(Batcher, AFailedBatchRunsEachTaskAloneSoOnlyTheBadOneFails) {
  Log log;
  absl::Notification gate;
  Batcher batcher(TestOptions());
  auto first = Task(1, "a", &log);
  first->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  ASSERT_TRUE(Schedule(batcher, Task(2, "a", &log)).ok());
  auto bad = Task(3, "a", &log);
  bad->Bad();
  ASSERT_TRUE(Schedule(batcher, std::move(bad)).ok());
  gate.Notify();
  log.WaitDone(3);
  absl::MutexLock lock(&log.mu);
  EXPECT_TRUE(log.done[2].ok());
  EXPECT_EQ(log.done[3].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(log.launches,
              ElementsAre(ElementsAre(1), ElementsAre(2, 3), ElementsAre(2), ElementsAre(3)));
}

TEST(Batcher, WaitsUpToMaxQueueDelayForABatchToFill) {
  Log log;
  Batcher::Options options = TestOptions();
  options.max_queue_delay = std::chrono::milliseconds(200);
  Batcher batcher(options);
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(Schedule(batcher, Task(id, "a", &log)).ok());
  log.WaitDone(3);
  absl::MutexLock lock(&log.mu);
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1, 2, 3)));
}

TEST(Batcher, LaunchesAtMaxBatchRowsWithoutWaitingForTheDelay) {
  Log log;
  Batcher::Options options = TestOptions();
  options.max_batch_rows = 2;
  options.max_queue_delay = std::chrono::hours(1);  // never reached
  Batcher batcher(options);
  for (int id = 1; id <= 4; ++id) ASSERT_TRUE(Schedule(batcher, Task(id, "a", &log)).ok());
  log.WaitDone(4);
  absl::MutexLock lock(&log.mu);
  EXPECT_THAT(log.launches, ElementsAre(ElementsAre(1, 2), ElementsAre(3, 4)));
}

TEST(Batcher, AKeysOwnRowLimitCapsItsLaunchesBelowMaxBatchRows) {
  Log log;
  absl::Notification gate;
  Batcher::Options options = TestOptions();
  options.max_inflight_per_key = 1;
  Batcher batcher(options);
  auto first = Task(1, "linear", &log);
  first->MaxBatchRows(2).BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(first)).ok());
  log.WaitLaunches(1);
  for (int id = 2; id <= 6; ++id) {
    auto task = Task(id, "linear", &log);
    task->MaxBatchRows(2);
    ASSERT_TRUE(Schedule(batcher, std::move(task)).ok());
  }
  gate.Notify();
  log.WaitDone(6);
  absl::MutexLock lock(&log.mu);
  EXPECT_THAT(log.launches,
              ElementsAre(ElementsAre(1), ElementsAre(2, 3), ElementsAre(4, 5), ElementsAre(6)));
}

TEST(Batcher, AnInlineTaskOfAnIdleKeyRunsOnTheSchedulingThread) {
  Log log;
  Batcher batcher(TestOptions());
  auto task = Task(1, "a", &log);
  task->Inline();
  ASSERT_TRUE(Schedule(batcher, std::move(task)).ok());
  // Done already ran, here: no worker was involved.
  absl::MutexLock lock(&log.mu);
  EXPECT_EQ(log.done.count(1), 1u);
}

TEST(Batcher, KeepsAnIdleKeysQueueAndDropsOnlyTheExcessBeyondTheLimit) {
  Log log;
  Batcher batcher(TestOptions());
  // An inline task's launch, and its queue's bookkeeping, end before
  // Schedule returns: the counts below are exact.
  int id = 0;
  auto run_inline = [&](const std::string& key) {
    auto task = Task(id++, key, &log);
    task->Inline();
    ASSERT_TRUE(Schedule(batcher, std::move(task)).ok());
  };
  run_inline("a");
  EXPECT_EQ(batcher.queue_count(), 1u);  // idle, kept for the next "a"
  run_inline("a");
  EXPECT_EQ(batcher.queue_count(), 1u);

  // Keys that never come back (weights replaced) do not pile up, and the
  // limit's worth of idle queues stays.
  for (size_t k = 0; k < Batcher::kQueuesKept * 2; ++k) run_inline(absl::StrCat("w@", k));
  EXPECT_EQ(batcher.queue_count(), Batcher::kQueuesKept);
  absl::MutexLock lock(&log.mu);
  EXPECT_EQ(log.done.size(), static_cast<size_t>(id));
  for (const auto& [task_id, status] : log.done) EXPECT_TRUE(status.ok()) << task_id;
}

TEST(Batcher, AnInlineTaskRunsHereWhileASlotIsFreeAndQueuesWhenAllAreBusy) {
  Log log;
  absl::Notification gate;
  Batcher::Options options = TestOptions();
  options.max_inflight_per_key = 2;
  Batcher batcher(options);
  auto blocked = Task(1, "a", &log);
  blocked->BlockOn(&gate);
  ASSERT_TRUE(Schedule(batcher, std::move(blocked)).ok());
  log.WaitLaunches(1);  // one slot busy, on a worker
  auto second = Task(2, "a", &log);
  second->Inline();
  ASSERT_TRUE(Schedule(batcher, std::move(second)).ok());
  {
    absl::MutexLock lock(&log.mu);
    EXPECT_EQ(log.done.count(2), 1u) << "the free slot ran it on this thread";
  }
  // Both slots busy: an inline task now waits for a worker like any other.
  absl::Notification gate2;
  auto third = Task(3, "a", &log);
  third->BlockOn(&gate2);
  ASSERT_TRUE(Schedule(batcher, std::move(third)).ok());
  log.WaitLaunches(3);
  auto fourth = Task(4, "a", &log);
  fourth->Inline();
  ASSERT_TRUE(Schedule(batcher, std::move(fourth)).ok());
  {
    absl::MutexLock lock(&log.mu);
    EXPECT_EQ(log.done.count(4), 0u) << "queued behind the two launches in flight";
  }
  gate.Notify();
  gate2.Notify();
  log.WaitDone(4);
  absl::MutexLock lock(&log.mu);
  for (const auto& [id, status] : log.done) EXPECT_TRUE(status.ok()) << id;
}

TEST(Batcher, ShutdownLaunchesWhatIsQueuedAndThenRefuses) {
  Log log;
  Batcher::Options options = TestOptions();
  options.max_queue_delay = std::chrono::hours(1);
  Batcher batcher(options);
  ASSERT_TRUE(Schedule(batcher, Task(1, "a", &log)).ok());
  batcher.Shutdown();
  {
    absl::MutexLock lock(&log.mu);
    EXPECT_TRUE(log.done[1].ok());
  }
  EXPECT_EQ(Schedule(batcher, Task(2, "a", &log)).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace accel::server
