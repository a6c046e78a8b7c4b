// The Executor: tasks run on its workers, a full queue refuses at once (and
// TrySchedule hands the refused task back), and Shutdown runs what is
// queued before it refuses new work.
#include "server/executor.h"

#include <atomic>
#include <utility>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"

namespace accel::server {
namespace {

TEST(Executor, RunsTasksOnItsWorkersAndCallsThreadInitFirst) {
  std::atomic<int> inits{0}, ran{0};
  Executor::Options options;
  options.threads = 3;
  options.thread_init = [&inits] { ++inits; };
  {
    Executor executor(options);
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(executor.Schedule([&ran] { ++ran; }).ok());
  }  // the destructor drains the queue
  EXPECT_EQ(ran.load(), 100);
  EXPECT_EQ(inits.load(), 3);
}

// An executor of one worker blocked on `gate` with `queued` tasks waiting.
struct BlockedExecutor {
  explicit BlockedExecutor(int64_t max_queue_size)
      : executor(Executor::Options{1, max_queue_size, nullptr}) {
    EXPECT_TRUE(executor.Schedule([this] { gate.WaitForNotification(); }).ok());
  }
  ~BlockedExecutor() {
    if (!gate.HasBeenNotified()) gate.Notify();
  }
  absl::Notification gate;
  Executor executor;
};

TEST(Executor, AFullQueueRefusesWithResourceExhaustedNamingTheFlag) {
  BlockedExecutor blocked(/*max_queue_size=*/2);
  // The blocker may still be queued: fill whatever room is left.
  int accepted = 0;
  absl::Status status;
  while ((status = blocked.executor.Schedule([] {})).ok()) ++accepted;
  EXPECT_LE(accepted, 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("--max_queue_size=2"), absl::string_view::npos) << status;
}

TEST(Executor, TryScheduleHandsARefusedTaskBack) {
  BlockedExecutor blocked(/*max_queue_size=*/1);
  while (blocked.executor.Schedule([] {}).ok()) {
  }
  bool ran = false;
  absl::AnyInvocable<void()&&> task = [&ran] { ran = true; };
  EXPECT_EQ(blocked.executor.TrySchedule(&task).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(task != nullptr);  // still ours, unrun
  EXPECT_FALSE(ran);
  std::move(task)();
  EXPECT_TRUE(ran);
}

TEST(Executor, ShutdownRunsWhatIsQueuedThenRefuses) {
  std::atomic<int> ran{0};
  Executor executor(Executor::Options{1, 100, nullptr});
  absl::Notification gate;
  ASSERT_TRUE(executor.Schedule([&gate] { gate.WaitForNotification(); }).ok());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(executor.Schedule([&ran] { ++ran; }).ok());
  gate.Notify();
  executor.Shutdown();
  EXPECT_EQ(ran.load(), 10);
  absl::AnyInvocable<void()&&> late = [&ran] { ++ran; };
  EXPECT_EQ(executor.TrySchedule(&late).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(late != nullptr);
  EXPECT_EQ(executor.Schedule([] {}).code(), absl::StatusCode::kUnavailable);
  executor.Shutdown();  // idempotent
  EXPECT_EQ(executor.pending(), 0);
}

}  // namespace
}  // namespace accel::server
