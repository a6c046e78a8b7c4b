#include "server/stream_reactor.h"

#include <utility>

#include "server/batch_ops.h"
#include "server/call_metrics.h"
#include "server/op_runner.h"
#include "server/status_util.h"

namespace accel::server {

void RunStreamRequest(const ServiceContext& service, const v1::StreamRequest& request,
                      v1::StreamResponse* response) {
  response->set_id(request.id());
  absl::Status status;
  switch (request.op_case()) {
    case v1::StreamRequest::kRmsNorm:
      status = RunOpAndRecord(service, Op::kRmsNorm, RunRmsNorm, request.rms_norm(),
                              response->mutable_rms_norm());
      break;
    case v1::StreamRequest::kSwiglu:
      status = RunOpAndRecord(service, Op::kSwiGlu, RunSwiGlu, request.swiglu(),
                              response->mutable_swiglu());
      break;
    case v1::StreamRequest::kRope:
      status =
          RunOpAndRecord(service, Op::kRope, RunRope, request.rope(), response->mutable_rope());
      break;
    case v1::StreamRequest::kQuantize:
      status = RunOpAndRecord(service, Op::kQuantize, RunQuantize, request.quantize(),
                              response->mutable_quantize());
      break;
    case v1::StreamRequest::kDequantize:
      status = RunOpAndRecord(service, Op::kDequantize, RunDequantize, request.dequantize(),
                              response->mutable_dequantize());
      break;
    case v1::StreamRequest::kQuantizationError:
      status = RunOpAndRecord(service, Op::kQuantizationError, RunQuantizationError,
                              request.quantization_error(), response->mutable_quantization_error());
      break;
    case v1::StreamRequest::kLinear:
      status = RunOpAndRecord(service, Op::kLinear, RunLinear, request.linear(),
                              response->mutable_linear());
      break;
    case v1::StreamRequest::kFfn:
      status = RunOpAndRecord(service, Op::kFfn, RunFfn, request.ffn(), response->mutable_ffn());
      break;
    case v1::StreamRequest::OP_NOT_SET:
      status = absl::InvalidArgumentError(
          "op: required (set one of rms_norm, swiglu, rope, quantize, dequantize, "
          "quantization_error, linear, ffn)");
      break;
  }
  if (!status.ok()) {
    response->clear_result();
    response->set_code(static_cast<int32_t>(status.code()));
    response->set_message(std::string(status.message()));
  }
}

namespace {

// Prepares one batchable stream message and submits it; `done` finishes the
// message. A validation error is returned (and `done` dropped): the caller
// answers it like a refused message.
template <typename Traits>
absl::Status SubmitStreamOp(ServiceContext* service, grpc::CallbackServerContext* call,
                            const typename Traits::Request& req, typename Traits::Response* resp,
                            absl::AnyInvocable<void(absl::Status) &&> done) {
  absl::StatusOr<typename Traits::Item> item = Traits::Prepare(service->env, req, resp);
  if (!item.ok()) return item.status();
  // A small message may run on this (gRPC) thread when its queue is idle,
  // as a small unary call does: the caller holds no lock, so done() may
  // take the reactor's.
  const bool runs_inline =
      static_cast<int64_t>(req.ByteSizeLong()) <= service->inline_request_bytes;
  std::unique_ptr<BatchTask> task = std::make_unique<OpTask<Traits>>(
      &service->env, std::move(*item), call, runs_inline, std::move(done));
  return SubmitTask(*service, &task);
}

}  // namespace

absl::Status StreamReactor::ScheduleBatched(std::shared_ptr<const v1::StreamRequest> request, Op op,
                                            std::chrono::steady_clock::time_point start) {
  auto response = std::make_unique<v1::StreamResponse>();
  response->set_id(request->id());
  v1::StreamResponse* out = response.get();
  auto done = [this, request, response = std::move(response), op,
               start](absl::Status status) mutable {
    FinishMessage(*request, std::move(response), op, start, status);
  };
  switch (request->op_case()) {
    case v1::StreamRequest::kRmsNorm:
      return SubmitStreamOp<RmsNormOp>(service_, call_, request->rms_norm(),
                                       out->mutable_rms_norm(), std::move(done));
    case v1::StreamRequest::kSwiglu:
      return SubmitStreamOp<SwiGluOp>(service_, call_, request->swiglu(), out->mutable_swiglu(),
                                      std::move(done));
    case v1::StreamRequest::kRope:
      return SubmitStreamOp<RopeOp>(service_, call_, request->rope(), out->mutable_rope(),
                                    std::move(done));
    case v1::StreamRequest::kQuantize:
      return SubmitStreamOp<QuantizeOp>(service_, call_, request->quantize(),
                                        out->mutable_quantize(), std::move(done));
    case v1::StreamRequest::kDequantize:
      return SubmitStreamOp<DequantizeOp>(service_, call_, request->dequantize(),
                                          out->mutable_dequantize(), std::move(done));
    case v1::StreamRequest::kLinear:
      return SubmitStreamOp<LinearOp>(service_, call_, request->linear(), out->mutable_linear(),
                                      std::move(done));
    case v1::StreamRequest::kFfn:
      return SubmitStreamOp<FfnOp>(service_, call_, request->ffn(), out->mutable_ffn(),
                                   std::move(done));
    default:
      return absl::InternalError("ScheduleBatched: not a batchable op");
  }
}

bool StreamReactor::Batchable(const v1::StreamRequest& request) {
  switch (request.op_case()) {
    case v1::StreamRequest::kRmsNorm:
    case v1::StreamRequest::kSwiglu:
    case v1::StreamRequest::kRope:
    case v1::StreamRequest::kQuantize:
    case v1::StreamRequest::kDequantize:
    case v1::StreamRequest::kLinear:
    case v1::StreamRequest::kFfn:
      return true;
    default:
      return false;
  }
}

void StreamReactor::FinishMessage(const v1::StreamRequest& request,
                                  std::unique_ptr<v1::StreamResponse> response, Op op,
                                  std::chrono::steady_clock::time_point start,
                                  const absl::Status& status) {
  if (!status.ok()) {
    response->clear_result();
    response->set_code(static_cast<int32_t>(status.code()));
    response->set_message(std::string(status.message()));
  }
  ServerMetrics* metrics = service_->metrics;
  metrics->AddPending(op, -1);
  metrics->RecordRequest(Method::kStream, status.code(), SecondsSince(start));
  if (service_->access_log) {
    LogAccess(*call_, Method::kStream, status.code(), static_cast<int64_t>(request.ByteSizeLong()),
              static_cast<int64_t>(response->ByteSizeLong()), start);
  }
  Enqueue(std::move(response));
}

StreamReactor::StreamReactor(ServiceContext* service, grpc::CallbackServerContext* call)
    : service_(service), call_(call), start_(std::chrono::steady_clock::now()) {
  absl::Status admitted = Admit(*service_, *call_);
  if (!admitted.ok()) {
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
    }
    service_->metrics->RecordRequest(Method::kStream, admitted.code(), 0.0);
    Finish(ToGrpcStatus(admitted));
    return;
  }
  bool finish;
  {
    absl::MutexLock lock(&mu_);
    finish = Pump();
  }
  if (finish) FinishStream();
}

void StreamReactor::FinishStream() {
  // Read under no lock: finished_ is set, nothing else touches broken_ now.
  bool broken;
  {
    absl::MutexLock lock(&mu_);
    broken = broken_;
  }
  Finish(broken ? grpc::Status(grpc::StatusCode::CANCELLED, "the client went away")
                : grpc::Status::OK);
}

void StreamReactor::OnReadDone(bool ok) {
  const auto start = std::chrono::steady_clock::now();
  std::shared_ptr<v1::StreamRequest> request;
  bool finish;
  {
    absl::MutexLock lock(&mu_);
    reading_ = false;
    if (ok) {
      // Counted in flight first, so the stream cannot finish before its
      // answer is written. The next read starts once this message is
      // scheduled (or, when small, run and answered): started now, it
      // would complete on another gRPC thread while this one still works,
      // and the two would hand the stream back and forth (measured: a
      // stream of one-row requests ran no faster than unary calls).
      ++in_flight_;
      scheduling_ = true;
      request = std::make_shared<v1::StreamRequest>(std::move(request_));
      request_.Clear();
    } else {
      reads_done_ = true;
    }
    finish = Pump();
  }
  if (request != nullptr) {
    // Outside the lock: the message may run (and be answered) on this thread.
    Schedule(std::move(request), start);
    absl::MutexLock lock(&mu_);
    scheduling_ = false;
    finish = Pump();
  }
  if (finish) FinishStream();
}

void StreamReactor::Schedule(std::shared_ptr<const v1::StreamRequest> request,
                             std::chrono::steady_clock::time_point start) {
  ServerMetrics* metrics = service_->metrics;
  metrics->AddBytesReceived(static_cast<int64_t>(request->ByteSizeLong()));
  const std::optional<Op> op = OpOfStreamRequest(*request);
  if (op) metrics->AddPending(*op, 1);
  absl::Status scheduled;
  if (service_->batcher != nullptr && op && Batchable(*request)) {
    scheduled = ScheduleBatched(request, *op, start);
  } else {
    scheduled = service_->executor->Schedule([this, request, op, start] {
      ServerMetrics* metrics = service_->metrics;
      if (op) metrics->ObserveQueue(*op, SecondsSince(start));
      auto response = std::make_unique<v1::StreamResponse>();
      RunStreamRequest(*service_, *request, response.get());
      if (op) metrics->AddPending(*op, -1);
      const auto code = static_cast<absl::StatusCode>(response->code());
      metrics->RecordRequest(Method::kStream, code, SecondsSince(start));
      if (service_->access_log) {
        // One line per message, as accel_requests_total{method="Stream"} counts.
        LogAccess(*call_, Method::kStream, code, static_cast<int64_t>(request->ByteSizeLong()),
                  static_cast<int64_t>(response->ByteSizeLong()), start);
      }
      Enqueue(std::move(response));
    });
  }
  if (!scheduled.ok()) {
    // Full queue or draining: answer this message, keep the stream.
    if (op) metrics->AddPending(*op, -1);
    auto response = std::make_unique<v1::StreamResponse>();
    response->set_id(request->id());
    response->set_code(static_cast<int32_t>(scheduled.code()));
    response->set_message(std::string(scheduled.message()));
    metrics->RecordRequest(Method::kStream, scheduled.code(), 0.0);
    if (service_->access_log) {
      LogAccess(*call_, Method::kStream, scheduled.code(),
                static_cast<int64_t>(request->ByteSizeLong()),
                static_cast<int64_t>(response->ByteSizeLong()), start);
    }
    Enqueue(std::move(response));
  }
}

void StreamReactor::OnWriteDone(bool ok) {
  bool finish;
  {
    absl::MutexLock lock(&mu_);
    if (writing_ != nullptr) {
      service_->metrics->AddBytesSent(static_cast<int64_t>(writing_->ByteSizeLong()));
    }
    writing_ = nullptr;
    --in_flight_;
    if (!ok) broken_ = true;
    finish = Pump();
  }
  if (finish) FinishStream();
}

void StreamReactor::Enqueue(std::unique_ptr<v1::StreamResponse> response) {
  bool finish;
  {
    absl::MutexLock lock(&mu_);
    to_write_.push_back(std::move(response));
    finish = Pump();
  }
  if (finish) FinishStream();
}

bool StreamReactor::Pump() {
  if (finished_) return false;
  if (broken_) {
    // The client is gone: drop queued answers, finish once the executor has
    // handed back every request it holds.
    in_flight_ -= static_cast<int>(to_write_.size());
    to_write_.clear();
  }
  if (writing_ == nullptr && !to_write_.empty()) {
    writing_ = std::move(to_write_.front());
    to_write_.pop_front();
    StartWrite(writing_.get());
  }
  if (!reading_ && !scheduling_ && !reads_done_ && !broken_ && in_flight_ < kMaxInFlight) {
    reading_ = true;
    StartRead(&request_);
  }
  if ((reads_done_ || broken_) && !reading_ && in_flight_ == 0 && writing_ == nullptr) {
    finished_ = true;
    return true;
  }
  return false;
}

}  // namespace accel::server
