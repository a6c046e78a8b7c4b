// The Stream RPC: any op over one long-lived bidirectional stream.
//
// Each StreamRequest runs like a unary call: batchable ops through the
// batcher (so messages of all streams and unary calls share launches), the
// others on the executor. Its response
// (with the request's id, a status code and message) is written when ready,
// so responses may come out of order. An error answers that one message and
// leaves the stream open. Back-pressure: at most kMaxInFlight requests of a
// stream are being worked on or waiting to be written; the reactor stops
// reading until one completes, so a fast client cannot make the server
// buffer without bound.
//
// The reactor deletes itself in OnDone, after Finish, which it calls only
// once the client closed its side and nothing is in flight. Executor threads
// and gRPC callbacks share the write queue under mu_.
#pragma once

#include <chrono>
#include <deque>
#include <memory>

#include "absl/status/status.h"
#include "server/metrics.h"

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "accel/v1/tensor_ops.pb.h"
#include "server/service_context.h"

namespace accel::server {

// Runs one stream message's op and fills `response` (id, code, message and
// result). Exposed for tests.
void RunStreamRequest(const ServiceContext& service, const v1::StreamRequest& request,
                      v1::StreamResponse* response);

class StreamReactor final : public grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse> {
 public:
  static constexpr int kMaxInFlight = 64;

  StreamReactor(ServiceContext* service, grpc::CallbackServerContext* call);
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override { delete this; }

 private:
  // Queues a response for writing (from any thread).
  void Enqueue(std::unique_ptr<v1::StreamResponse> response);
  // Starts the next write or read that is due; returns true when the
  // stream must finish now. The caller calls Finish after releasing mu_:
  // OnDone may delete the reactor on another thread as soon as Finish is
  // called.
  bool Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishStream();
  // Runs one message that was read (through the batcher or the executor,
  // or here when small and its queue is idle); its answer is queued by
  // Enqueue. Called without mu_.
  void Schedule(std::shared_ptr<const v1::StreamRequest> request,
                std::chrono::steady_clock::time_point start) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether the message's op goes through the batcher.
  static bool Batchable(const v1::StreamRequest& request);
  // Prepares a batchable message and submits it; an error (invalid
  // request, full queue) is the message's answer.
  absl::Status ScheduleBatched(std::shared_ptr<const v1::StreamRequest> request, Op op,
                               std::chrono::steady_clock::time_point start)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Fills the status into `response`, records the message and queues the
  // response for writing. Called without mu_ (from a batcher thread).
  void FinishMessage(const v1::StreamRequest& request, std::unique_ptr<v1::StreamResponse> response,
                     Op op, std::chrono::steady_clock::time_point start,
                     const absl::Status& status);

  ServiceContext* service_;
  grpc::CallbackServerContext* call_;
  const std::chrono::steady_clock::time_point start_;
  v1::StreamRequest request_;  // target of the pending read

  absl::Mutex mu_;
  std::deque<std::unique_ptr<v1::StreamResponse>> to_write_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<v1::StreamResponse> writing_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // read but not yet written
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  // OnReadDone is handing the message it read to Schedule: the next read
  // waits for it.
  bool scheduling_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed: the client is gone
};

}  // namespace accel::server
