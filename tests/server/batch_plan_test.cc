// PlanBatch, the batcher's pure decision, on explicit times (no threads, no
// sleeps): when a queue launches, how much it takes, and what it drops.
#include "server/batch_plan.h"

#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace accel::server {
namespace {

using std::chrono::microseconds;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

// An injected clock: t(us) is a fixed origin plus us microseconds.
BatchClock::time_point t(int64_t us) { return BatchClock::time_point{} + microseconds(us); }

QueuedRequest Req(int64_t rows, int64_t enqueued_us,
                  BatchClock::time_point deadline = BatchClock::time_point::max()) {
  return QueuedRequest{rows, t(enqueued_us), deadline};
}

BatchPlanOptions Options(int64_t max_rows, int64_t delay_us) {
  BatchPlanOptions options;
  options.max_batch_rows = max_rows;
  options.max_queue_delay = microseconds(delay_us);
  return options;
}

TEST(PlanBatch, EmptyQueuePlansNothing) {
  const BatchPlan plan = PlanBatch({}, t(0), Options(8, 0));
  EXPECT_EQ(plan.launch, 0u);
  EXPECT_THAT(plan.expired, IsEmpty());
  EXPECT_FALSE(plan.wake_at.has_value());
}

TEST(PlanBatch, ZeroDelayLaunchesWhateverQueuedAtOnce) {
  const std::vector<QueuedRequest> queue = {Req(1, 0), Req(1, 5), Req(2, 9)};
  const BatchPlan plan = PlanBatch(queue, t(10), Options(4096, 0));
  EXPECT_EQ(plan.launch, 3u);
  EXPECT_FALSE(plan.wake_at.has_value());
}

TEST(PlanBatch, GrowsUntilTheNextRequestWouldPassMaxBatchRows) {
  // 3 + 4 = 7 fit in 8; adding 2 more would make 9.
  const std::vector<QueuedRequest> queue = {Req(3, 0), Req(4, 1), Req(2, 2), Req(1, 3)};
  const BatchPlan plan = PlanBatch(queue, t(10), Options(8, 0));
  EXPECT_EQ(plan.launch, 2u);  // arrival order: no skipping ahead to the 1-row request
}

TEST(PlanBatch, ARequestLargerThanMaxBatchRowsLaunchesAlone) {
  const std::vector<QueuedRequest> queue = {Req(100, 0), Req(1, 1)};
  const BatchPlan plan = PlanBatch(queue, t(0), Options(8, 1000));
  EXPECT_EQ(plan.launch, 1u);
}

TEST(PlanBatch, WaitsForTheDelayUntilTheBatchIsFull) {
  const std::vector<QueuedRequest> queue = {Req(1, 100), Req(1, 150)};
  const BatchPlan waiting = PlanBatch(queue, t(200), Options(8, 500));
  EXPECT_EQ(waiting.launch, 0u);
  ASSERT_TRUE(waiting.wake_at.has_value());
  EXPECT_EQ(*waiting.wake_at, t(600));  // the oldest's arrival + the delay

  const BatchPlan due = PlanBatch(queue, t(600), Options(8, 500));
  EXPECT_EQ(due.launch, 2u);
}

TEST(PlanBatch, LaunchesBeforeTheDelayOnceMaxBatchRowsAreQueued) {
  const std::vector<QueuedRequest> exactly = {Req(4, 0), Req(4, 1)};
  EXPECT_EQ(PlanBatch(exactly, t(2), Options(8, 1000)).launch, 2u);
  // More than fits: launch the part that fits now, the rest waits its turn.
  const std::vector<QueuedRequest> more = {Req(4, 0), Req(3, 1), Req(2, 2)};
  EXPECT_EQ(PlanBatch(more, t(3), Options(8, 1000)).launch, 2u);
}

TEST(PlanBatch, DropsExpiredRequestsAndNeverCountsThem) {
  const std::vector<QueuedRequest> queue = {Req(1, 0, /*deadline=*/t(50)), Req(1, 10),
                                            Req(1, 20, /*deadline=*/t(40)),
                                            Req(1, 30, /*deadline=*/t(500))};
  const BatchPlan plan = PlanBatch(queue, t(60), Options(2, 0));
  EXPECT_THAT(plan.expired, ElementsAre(0u, 2u));
  EXPECT_EQ(plan.launch, 2u);  // the two live ones (indices 1 and 3)
}

TEST(PlanBatch, AnExpiredHeadDoesNotStartTheDelayClock) {
  // The expired request arrived long ago; the live one only at 900.
  const std::vector<QueuedRequest> queue = {Req(1, 0, /*deadline=*/t(10)), Req(1, 900)};
  const BatchPlan plan = PlanBatch(queue, t(1000), Options(8, 500));
  EXPECT_THAT(plan.expired, ElementsAre(0u));
  EXPECT_EQ(plan.launch, 0u);
  EXPECT_EQ(plan.wake_at, t(1400));
}

TEST(PlanBatch, FlushLaunchesWithoutWaiting) {
  const std::vector<QueuedRequest> queue = {Req(1, 0)};
  BatchPlanOptions options = Options(8, 1'000'000);
  options.flush = true;
  EXPECT_EQ(PlanBatch(queue, t(1), options).launch, 1u);
}

}  // namespace
}  // namespace accel::server
