#include "server/tensor_ops_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "accel/util/logging.h"
#include "server/batch_ops.h"
#include "server/call_metrics.h"
#include "server/device_info.h"
#include "server/op_runner.h"
#include "server/status_util.h"
#include "server/stream_reactor.h"
#include "server/tensor_codec.h"
#include "server/tensor_loader.h"
#include "server/transfer_reactors.h"

namespace accel::server {

using Clock = std::chrono::steady_clock;

void TensorOpsService::Finish(grpc::CallbackServerContext* call, grpc::ServerUnaryReactor* reactor,
                              Method method, Clock::time_point start,
                              const google::protobuf::Message& request,
                              const google::protobuf::Message& response,
                              const absl::Status& status) {
  service_->metrics->RecordRequest(method, status.code(), SecondsSince(start));
  if (service_->access_log) {
    // A failed call sends no response message.
    LogAccess(*call, method, status.code(), static_cast<int64_t>(request.ByteSizeLong()),
              status.ok() ? static_cast<int64_t>(response.ByteSizeLong()) : 0, start);
  }
  if (!status.ok() && status.code() != absl::StatusCode::kCancelled &&
      status.code() != absl::StatusCode::kDeadlineExceeded) {
    LOG_EVERY_N_SEC(WARNING, 1.0) << MethodName(method) << " rejected: " << status;
  }
  reactor->Finish(ToGrpcStatus(status));
}

template <typename Work>
grpc::ServerUnaryReactor* TensorOpsService::RunOnExecutor(grpc::CallbackServerContext* call,
                                                          Method method,
                                                          const google::protobuf::Message& request,
                                                          const google::protobuf::Message& response,
                                                          Work work) {
  const Clock::time_point start = Clock::now();
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  ServerMetrics* metrics = service_->metrics;
  // Only the ops carry tensor payloads (LoadTensors runs here too).
  const std::optional<Op> op = OpOfMethod(method);
  if (op) metrics->AddBytesReceived(static_cast<int64_t>(request.ByteSizeLong()));
  absl::Status admitted = Admit(*service_, *call);
  if (admitted.ok()) {
    if (op) metrics->AddPending(*op, 1);
    admitted = service_->executor->Schedule(
        [this, call, reactor, method, op, start, enqueued = Clock::now(), request = &request,
         response = &response, work = std::move(work)]() mutable {
          if (op) service_->metrics->ObserveQueue(*op, SecondsSince(enqueued));
          absl::Status status = CheckCallAlive(*call);
          if (status.ok()) status = work();
          // No longer pending once answered, so a scrape after the reply agrees.
          if (op) service_->metrics->AddPending(*op, -1);
          Finish(call, reactor, method, start, *request, *response, status);
        });
    if (!admitted.ok() && op) metrics->AddPending(*op, -1);
  }
  if (!admitted.ok()) Finish(call, reactor, method, start, request, response, admitted);
  return reactor;
}

template <typename Work>
grpc::ServerUnaryReactor* TensorOpsService::RunInline(grpc::CallbackServerContext* call,
                                                      Method method,
                                                      const google::protobuf::Message& request,
                                                      const google::protobuf::Message& response,
                                                      Work work) {
  const Clock::time_point start = Clock::now();
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  absl::Status status = Admit(*service_, *call);
  if (status.ok()) status = work();
  Finish(call, reactor, method, start, request, response, status);
  return reactor;
}

template <typename Traits>
grpc::ServerUnaryReactor* TensorOpsService::RunBatched(grpc::CallbackServerContext* call,
                                                       Method method,
                                                       const typename Traits::Request* req,
                                                       typename Traits::Response* resp) {
  const Clock::time_point start = Clock::now();
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  ServerMetrics* metrics = service_->metrics;
  const int64_t request_bytes = static_cast<int64_t>(req->ByteSizeLong());
  metrics->AddBytesReceived(request_bytes);
  absl::Status status = Admit(*service_, *call);
  if (status.ok()) {
    // Decoded and validated here, once: a bad request never takes a queue
    // slot, and the key needs the validated shapes.
    absl::StatusOr<typename Traits::Item> item = Traits::Prepare(service_->env, *req, resp);
    status = item.status();
    if (item.ok()) {
      // A small request's kernel (and, on a GPU, its round trip of a few
      // microseconds) costs less than the hand-off to a worker: two thread
      // wake-ups. Large ones leave the gRPC thread to its network work.
      const bool runs_inline = request_bytes <= service_->inline_request_bytes;
      std::unique_ptr<BatchTask> task = std::make_unique<OpTask<Traits>>(
          &service_->env, std::move(*item), call, runs_inline,
          [this, call, reactor, method, start, req, resp](absl::Status status) {
            // No longer pending once answered, so a scrape after the reply agrees.
            service_->metrics->AddPending(Traits::kOp, -1);
            if (status.ok()) {
              service_->metrics->AddBytesSent(static_cast<int64_t>(resp->ByteSizeLong()));
            }
            Finish(call, reactor, method, start, *req, *resp, status);
          });
      metrics->AddPending(Traits::kOp, 1);
      status = SubmitTask(*service_, &task);
      if (!status.ok()) metrics->AddPending(Traits::kOp, -1);
    }
  }
  if (!status.ok()) Finish(call, reactor, method, start, *req, *resp, status);
  return reactor;
}

// The op RPCs: run on the executor, time the op runner, account the payload
// bytes both ways.
#define ACCEL_OP_HANDLER(Rpc, Request, Response, RunFn)                                 \
  grpc::ServerUnaryReactor* TensorOpsService::Rpc(grpc::CallbackServerContext* call,    \
                                                  const Request* req, Response* resp) { \
    return RunOnExecutor(call, Method::k##Rpc, *req, *resp, [this, req, resp] {         \
      absl::Status status = RunOpAndRecord(*service_, Op::k##Rpc, RunFn, *req, resp);   \
      if (status.ok()) {                                                                \
        service_->metrics->AddBytesSent(static_cast<int64_t>(resp->ByteSizeLong()));    \
      }                                                                                 \
      return status;                                                                    \
    });                                                                                 \
  }

// The batchable ops go through the batcher when batching is on, and run
// alone on the executor (exactly as the other ops) when it is off.
#define ACCEL_BATCHED_HANDLER(Rpc, Request, Response, Traits, RunFn)                              \
  grpc::ServerUnaryReactor* TensorOpsService::Rpc(grpc::CallbackServerContext* call,              \
                                                  const Request* req, Response* resp) {           \
    if (service_->batcher != nullptr) return RunBatched<Traits>(call, Method::k##Rpc, req, resp); \
    return RunOnExecutor(call, Method::k##Rpc, *req, *resp, [this, req, resp] {                   \
      absl::Status status = RunOpAndRecord(*service_, Op::k##Rpc, RunFn, *req, resp);             \
      if (status.ok()) {                                                                          \
        service_->metrics->AddBytesSent(static_cast<int64_t>(resp->ByteSizeLong()));              \
      }                                                                                           \
      return status;                                                                              \
    });                                                                                           \
  }

ACCEL_BATCHED_HANDLER(RmsNorm, v1::RmsNormRequest, v1::RmsNormResponse, RmsNormOp, RunRmsNorm)
ACCEL_BATCHED_HANDLER(SwiGlu, v1::SwiGluRequest, v1::SwiGluResponse, SwiGluOp, RunSwiGlu)
ACCEL_BATCHED_HANDLER(Linear, v1::LinearRequest, v1::LinearResponse, LinearOp, RunLinear)
ACCEL_BATCHED_HANDLER(Ffn, v1::FfnRequest, v1::FfnResponse, FfnOp, RunFfn)
ACCEL_BATCHED_HANDLER(Rope, v1::RopeRequest, v1::RopeResponse, RopeOp, RunRope)
ACCEL_OP_HANDLER(BuildRopeCache, v1::BuildRopeCacheRequest, v1::TensorInfo, RunBuildRopeCache)
ACCEL_BATCHED_HANDLER(Quantize, v1::QuantizeRequest, v1::QuantizeResponse, QuantizeOp, RunQuantize)
ACCEL_BATCHED_HANDLER(Dequantize, v1::DequantizeRequest, v1::DequantizeResponse, DequantizeOp,
                      RunDequantize)
ACCEL_OP_HANDLER(QuantizationError, v1::QuantizationErrorRequest, v1::QuantizationErrorResponse,
                 RunQuantizationError)
ACCEL_OP_HANDLER(QuantizeWeight, v1::QuantizeWeightRequest, v1::TensorInfo, RunQuantizeWeight)

#undef ACCEL_OP_HANDLER
#undef ACCEL_BATCHED_HANDLER

grpc::ServerUnaryReactor* TensorOpsService::LoadTensors(grpc::CallbackServerContext* call,
                                                        const v1::LoadTensorsRequest* req,
                                                        v1::LoadTensorsResponse* resp) {
  return RunOnExecutor(
      call, Method::kLoadTensors, *req, *resp, [this, req, resp]() -> absl::Status {
        if (service_->model_dir.empty()) {
          return absl::FailedPreconditionError(
              "path: LoadTensors is disabled: start the server with --model_dir");
        }
        LoadOptions options;
        options.model_dir = service_->model_dir;
        options.path = req->path();
        options.prefix = req->prefix();
        options.include.assign(req->include().begin(), req->include().end());
        if (req->dtype() != v1::DTYPE_UNSPECIFIED) {
          auto dtype = DTypeFromProto(req->dtype(), "dtype");
          if (!dtype.ok()) return dtype.status();
          if (!kernels::IsFloat(*dtype)) {
            return absl::InvalidArgumentError(
                absl::StrCat("dtype: expected FLOAT32, FLOAT16 or BFLOAT16 to cast to, found ",
                             kernels::DTypeName(*dtype)));
          }
          options.dtype = *dtype;
        }
        options.quantize_int8 = req->quantize_int8();
        options.overwrite = req->overwrite();
        options.backend = service_->env.device->backend();
        auto loaded = LoadSafetensors(options, *service_->store);
        if (!loaded.ok()) return loaded.status();
        for (const ResidentTensorPtr& tensor : *loaded) {
          FillTensorInfo(*tensor, service_->store->device_name(), resp->add_tensors());
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* TensorOpsService::ListTensors(grpc::CallbackServerContext* call,
                                                        const v1::ListTensorsRequest* req,
                                                        v1::ListTensorsResponse* resp) {
  return RunInline(call, Method::kListTensors, *req, *resp, [this, resp] {
    for (const ResidentTensorPtr& tensor : service_->store->List()) {
      FillTensorInfo(*tensor, service_->store->device_name(), resp->add_tensors());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TensorOpsService::DeleteTensor(grpc::CallbackServerContext* call,
                                                         const v1::DeleteTensorRequest* req,
                                                         v1::DeleteTensorResponse* resp) {
  return RunInline(call, Method::kDeleteTensor, *req, *resp, [this, req, resp]() -> absl::Status {
    if (req->name().empty()) {
      return absl::InvalidArgumentError("name: required (the resident tensor to delete)");
    }
    auto removed = service_->store->Remove(req->name());
    if (!removed.ok()) return removed.status();
    FillTensorInfo(**removed, service_->store->device_name(), resp->mutable_deleted());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TensorOpsService::GetServerInfo(grpc::CallbackServerContext* call,
                                                          const v1::GetServerInfoRequest* req,
                                                          v1::GetServerInfoResponse* resp) {
  return RunInline(call, Method::kGetServerInfo, *req, *resp, [this, resp] {
    resp->set_version(service_->version);
    resp->set_backend(service_->backend);
    *resp->mutable_device() = service_->env.device->Describe();
    resp->set_resident_bytes(service_->store->resident_bytes());
    resp->set_resident_limit_bytes(service_->store->limit_bytes());
    resp->set_resident_tensors(service_->store->size());
    resp->set_max_message_bytes(service_->env.max_message_bytes);
    *resp->mutable_batching() = service_->batching;
    return absl::OkStatus();
  });
}

grpc::ServerReadReactor<v1::PutTensorRequest>* TensorOpsService::PutTensor(
    grpc::CallbackServerContext* call, v1::TensorInfo* resp) {
  return new PutTensorReactor(service_, call, resp);
}

grpc::ServerWriteReactor<v1::GetTensorResponse>* TensorOpsService::GetTensor(
    grpc::CallbackServerContext* call, const v1::GetTensorRequest* req) {
  return new GetTensorReactor(service_, call, req);
}

grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* TensorOpsService::Stream(
    grpc::CallbackServerContext* call) {
  return new StreamReactor(service_, call);
}

}  // namespace accel::server
