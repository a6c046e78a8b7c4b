#include "server/batch_plan.h"

namespace accel::server {

BatchPlan PlanBatch(std::span<const QueuedRequest> queue, BatchClock::time_point now,
                    const BatchPlanOptions& options) {
  BatchPlan plan;
  // Growth cap: the batch takes requests in arrival order while their rows
  // fit in max_batch_rows. A bigger batch would amortise more, but every
  // request in it waits for the whole launch, so the cap bounds the latency
  // one request can add to its neighbours (leveldb's BuildBatchGroup caps its
  // write groups for the same reason).
  int64_t batch_rows = 0;
  size_t fitting = 0;
  bool full = false;  // a live request was left out for lack of room
  std::optional<BatchClock::time_point> oldest;
  for (size_t i = 0; i < queue.size(); ++i) {
    const QueuedRequest& request = queue[i];
    if (request.deadline <= now) {
      plan.expired.push_back(i);
      continue;
    }
    if (!oldest) oldest = request.enqueued;
    if (full) continue;
    if (fitting > 0 && batch_rows + request.rows > options.max_batch_rows) {
      full = true;
      continue;
    }
    batch_rows += request.rows;
    ++fitting;
  }
  if (fitting == 0) return plan;
  full = full || batch_rows >= options.max_batch_rows;
  const bool waited_enough = now - *oldest >= options.max_queue_delay;
  if (options.flush || full || waited_enough) {
    plan.launch = fitting;
  } else {
    plan.wake_at = *oldest + options.max_queue_delay;
  }
  return plan;
}

}  // namespace accel::server
