// The batcher's decision, as a pure function: given one queue of requests
// (oldest first) and the time now, which requests to drop because their
// deadline passed, how many to launch now as one batch, or when to look
// again.
//
// Kept apart from the Batcher's threads and locks so that every rule is
// unit-tested with explicit times (tests/server/batch_plan_test.cc), the way
// Triton splits its dynamic batcher's policy from its scheduler thread.
// Stateless and thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace accel::server {

using BatchClock = std::chrono::steady_clock;

// What PlanBatch needs to know of one queued request.
struct QueuedRequest {
  int64_t rows = 0;                 // rows (tokens) it adds to a batch
  BatchClock::time_point enqueued;  // when it joined the queue
  // The caller's deadline; time_point::max() when it has none.
  BatchClock::time_point deadline = BatchClock::time_point::max();
};

struct BatchPlanOptions {
  // A batch grows until the next request would take it past this many rows
  // (a request larger than this still launches, alone).
  int64_t max_batch_rows = 4096;
  // Longest the oldest request may wait for a batch to fill. Zero: launch
  // at once whatever has queued (requests that arrived while this queue's
  // previous batch ran).
  std::chrono::microseconds max_queue_delay{0};
  // Draining for shutdown: launch what is queued without waiting.
  bool flush = false;
};

struct BatchPlan {
  // Indices (ascending) of requests whose deadline passed: drop them with
  // DEADLINE_EXCEEDED, never launch them.
  std::vector<size_t> expired;
  // Launch the first `launch` requests that are not expired, now, as one
  // batch (0: none).
  size_t launch = 0;
  // When launch is 0 and live requests wait: the time to plan again.
  std::optional<BatchClock::time_point> wake_at;
};

BatchPlan PlanBatch(std::span<const QueuedRequest> queue, BatchClock::time_point now,
                    const BatchPlanOptions& options);

}  // namespace accel::server
