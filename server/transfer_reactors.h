// Reactors for the two chunked transfer RPCs.
//
// PutTensorReactor receives a client stream: the first message declares
// name, dtype and shape (checked, quota reserved, buffer allocated at once),
// later ones append bytes; the tensor becomes visible only after the last
// byte arrived and the total matched. Any failure finishes the call and
// releases everything: the store never sees a partial tensor.
//
// GetTensorReactor streams a resident tensor back in chunks, holding a
// reference so that a concurrent delete cannot free the bytes mid-stream.
//
// Each reactor deletes itself in OnDone. gRPC serialises a reactor's
// callbacks, so their state needs no lock.
#pragma once

#include <chrono>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "accel/v1/tensor_ops.pb.h"
#include "server/service_context.h"
#include "server/tensor_store.h"

namespace accel::server {

class PutTensorReactor final : public grpc::ServerReadReactor<v1::PutTensorRequest> {
 public:
  PutTensorReactor(ServiceContext* service, grpc::CallbackServerContext* call,
                   v1::TensorInfo* response);
  void OnReadDone(bool ok) override;
  void OnDone() override { delete this; }

 private:
  absl::Status Begin(const v1::PutTensorRequest& first);
  absl::Status Append(const std::string& data);
  absl::Status Complete();
  void FinishWith(const absl::Status& status);

  ServiceContext* service_;
  grpc::CallbackServerContext* call_;
  v1::TensorInfo* response_;
  const std::chrono::steady_clock::time_point start_;
  v1::PutTensorRequest message_;
  std::shared_ptr<ResidentTensor> tensor_;  // set once the first message was accepted
  Reservation reservation_;
  bool overwrite_ = false;
  size_t received_ = 0;
};

class GetTensorReactor final : public grpc::ServerWriteReactor<v1::GetTensorResponse> {
 public:
  GetTensorReactor(ServiceContext* service, grpc::CallbackServerContext* call,
                   const v1::GetTensorRequest* request);
  void OnWriteDone(bool ok) override;
  void OnDone() override { delete this; }

 private:
  absl::Status Start(const v1::GetTensorRequest& request);
  // Writes the next chunk, or finishes when every byte went out.
  void WriteNext();
  void FinishWith(const absl::Status& status);

  ServiceContext* service_;
  grpc::CallbackServerContext* call_;
  const v1::GetTensorRequest* request_;  // owned by gRPC until OnDone
  const std::chrono::steady_clock::time_point start_;
  ResidentTensorPtr tensor_;
  v1::GetTensorResponse message_;
  size_t chunk_bytes_ = 0;
  size_t sent_ = 0;
  bool first_ = true;
};

}  // namespace accel::server
