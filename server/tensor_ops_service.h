// The accel.v1.TensorOps service on gRPC's callback API.
//
// Handlers never block: they admit the call (draining, token), then hand the
// work to the executor, whose thread runs the op and finishes the call. With
// batching on, the batchable ops (batch_ops.h) are decoded and validated
// here and go to the batcher, whose worker (or, for a small request whose
// queue is idle, this thread: a few microseconds of CPU kernel) runs them
// and finishes the call.
// Cheap metadata RPCs (ListTensors, DeleteTensor, GetServerInfo) answer
// inline. PutTensor, GetTensor and Stream have their own reactors
// (transfer_reactors.h, stream_reactor.h). Thread-safe.
#pragma once

#include "accel/v1/tensor_ops.grpc.pb.h"
#include "server/service_context.h"

namespace accel::server {

class TensorOpsService final : public v1::TensorOps::CallbackService {
 public:
  explicit TensorOpsService(ServiceContext* service) : service_(service) {}

  grpc::ServerUnaryReactor* RmsNorm(grpc::CallbackServerContext* call,
                                    const v1::RmsNormRequest* req,
                                    v1::RmsNormResponse* resp) override;
  grpc::ServerUnaryReactor* SwiGlu(grpc::CallbackServerContext* call, const v1::SwiGluRequest* req,
                                   v1::SwiGluResponse* resp) override;
  grpc::ServerUnaryReactor* Linear(grpc::CallbackServerContext* call, const v1::LinearRequest* req,
                                   v1::LinearResponse* resp) override;
  grpc::ServerUnaryReactor* Ffn(grpc::CallbackServerContext* call, const v1::FfnRequest* req,
                                v1::FfnResponse* resp) override;
  grpc::ServerUnaryReactor* Rope(grpc::CallbackServerContext* call, const v1::RopeRequest* req,
                                 v1::RopeResponse* resp) override;
  grpc::ServerUnaryReactor* BuildRopeCache(grpc::CallbackServerContext* call,
                                           const v1::BuildRopeCacheRequest* req,
                                           v1::TensorInfo* resp) override;
  grpc::ServerUnaryReactor* Quantize(grpc::CallbackServerContext* call,
                                     const v1::QuantizeRequest* req,
                                     v1::QuantizeResponse* resp) override;
  grpc::ServerUnaryReactor* Dequantize(grpc::CallbackServerContext* call,
                                       const v1::DequantizeRequest* req,
                                       v1::DequantizeResponse* resp) override;
  grpc::ServerUnaryReactor* QuantizationError(grpc::CallbackServerContext* call,
                                              const v1::QuantizationErrorRequest* req,
                                              v1::QuantizationErrorResponse* resp) override;
  grpc::ServerUnaryReactor* QuantizeWeight(grpc::CallbackServerContext* call,
                                           const v1::QuantizeWeightRequest* req,
                                           v1::TensorInfo* resp) override;

  grpc::ServerReadReactor<v1::PutTensorRequest>* PutTensor(grpc::CallbackServerContext* call,
                                                           v1::TensorInfo* resp) override;
  grpc::ServerUnaryReactor* LoadTensors(grpc::CallbackServerContext* call,
                                        const v1::LoadTensorsRequest* req,
                                        v1::LoadTensorsResponse* resp) override;
  grpc::ServerWriteReactor<v1::GetTensorResponse>* GetTensor(
      grpc::CallbackServerContext* call, const v1::GetTensorRequest* req) override;
  grpc::ServerUnaryReactor* ListTensors(grpc::CallbackServerContext* call,
                                        const v1::ListTensorsRequest* req,
                                        v1::ListTensorsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteTensor(grpc::CallbackServerContext* call,
                                         const v1::DeleteTensorRequest* req,
                                         v1::DeleteTensorResponse* resp) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* call,
                                          const v1::GetServerInfoRequest* req,
                                          v1::GetServerInfoResponse* resp) override;

  grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* Stream(
      grpc::CallbackServerContext* call) override;

 private:
  // Admits the call and runs `work` (returning the call's status) on the
  // executor; finishes the reactor and records metrics. `request` and
  // `response` are the call's messages (for byte counts and the access log).
  template <typename Work>
  grpc::ServerUnaryReactor* RunOnExecutor(grpc::CallbackServerContext* call, Method method,
                                          const google::protobuf::Message& request,
                                          const google::protobuf::Message& response, Work work);
  // Prepares the request and submits it to the batcher (batch_ops.h).
  template <typename Traits>
  grpc::ServerUnaryReactor* RunBatched(grpc::CallbackServerContext* call, Method method,
                                       const typename Traits::Request* req,
                                       typename Traits::Response* resp);
  // Answers inline on the gRPC thread (for cheap calls).
  template <typename Work>
  grpc::ServerUnaryReactor* RunInline(grpc::CallbackServerContext* call, Method method,
                                      const google::protobuf::Message& request,
                                      const google::protobuf::Message& response, Work work);
  void Finish(grpc::CallbackServerContext* call, grpc::ServerUnaryReactor* reactor, Method method,
              std::chrono::steady_clock::time_point start, const google::protobuf::Message& request,
              const google::protobuf::Message& response, const absl::Status& status);

  ServiceContext* service_;
};

}  // namespace accel::server
