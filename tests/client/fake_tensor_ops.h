// A fake accel.v1.TensorOps service for the client tests: a map of resident
// tensors behind PutTensor/GetTensor/ListTensors/DeleteTensor, an RmsNorm
// that echoes its input, an echoing Stream, and a recorder of what arrived
// (message sizes, metadata), so that the tests can check how the client
// talks without the real server. Not a reference for the op semantics.
//
// FakeServer runs it on 127.0.0.1 on a free port. Thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "accel/v1/tensor_ops.grpc.pb.h"

namespace accel::fake {

class FakeTensorOps final : public v1::TensorOps::Service {
 public:
  struct Stored {
    v1::TensorInfo info;
    std::string data;
    v1::Tensor scales;
  };

  // Calls without "authorization: Bearer <token>" fail UNAUTHENTICATED when set.
  std::string required_token;
  // ListTensors sleeps this long first (for deadline tests).
  std::chrono::milliseconds list_delay{0};
  // GetTensor ends its stream OK without sending a message (a broken server).
  bool get_sends_nothing = false;

  // What PutTensor received, per call: the size of each message's data.
  std::vector<std::vector<size_t>> put_calls() {
    std::lock_guard lock(mu_);
    return put_calls_;
  }
  void Store(const std::string& name, Stored stored) {
    std::lock_guard lock(mu_);
    tensors_[name] = std::move(stored);
  }

  grpc::Status PutTensor(grpc::ServerContext* context,
                         grpc::ServerReader<v1::PutTensorRequest>* reader,
                         v1::TensorInfo* response) override {
    if (auto status = CheckAuth(context); !status.ok()) return status;
    v1::PutTensorRequest message;
    std::vector<size_t> sizes;
    Stored stored;
    bool first = true;
    while (reader->Read(&message)) {
      sizes.push_back(message.data().size());
      if (first) {
        first = false;
        std::lock_guard lock(mu_);
        if (!message.overwrite() && tensors_.contains(message.name())) {
          put_calls_.push_back(sizes);
          // Answer before the client has sent everything, as the real
          // server does.
          return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                              "name: '" + message.name() + "' already exists");
        }
        stored.info.set_name(message.name());
        stored.info.set_dtype(message.dtype());
        *stored.info.mutable_shape() = message.shape();
        stored.info.set_device("cpu");
      }
      stored.data += message.data();
    }
    std::lock_guard lock(mu_);
    put_calls_.push_back(sizes);
    stored.info.set_nbytes(static_cast<int64_t>(stored.data.size()));
    *response = stored.info;
    tensors_[stored.info.name()] = std::move(stored);
    return grpc::Status::OK;
  }

  grpc::Status GetTensor(grpc::ServerContext* context, const v1::GetTensorRequest* request,
                         grpc::ServerWriter<v1::GetTensorResponse>* writer) override {
    if (auto status = CheckAuth(context); !status.ok()) return status;
    Stored stored;
    {
      std::lock_guard lock(mu_);
      auto it = tensors_.find(request->name());
      if (it == tensors_.end()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND,
                            "name: no tensor '" + request->name() + "'");
      }
      stored = it->second;
    }
    if (get_sends_nothing) return grpc::Status::OK;
    const size_t chunk = request->chunk_bytes() > 0 ? request->chunk_bytes() : (1 << 20);
    size_t sent = 0;
    bool first = true;
    do {
      v1::GetTensorResponse message;
      if (first) {
        *message.mutable_info() = stored.info;
        if (stored.info.quantized()) *message.mutable_scales() = stored.scales;
        first = false;
      }
      const size_t n = std::min(chunk, stored.data.size() - sent);
      message.set_data(stored.data.substr(sent, n));
      sent += n;
      if (!writer->Write(message)) break;
    } while (sent < stored.data.size());
    return grpc::Status::OK;
  }

  grpc::Status ListTensors(grpc::ServerContext* context, const v1::ListTensorsRequest*,
                           v1::ListTensorsResponse* response) override {
    if (auto status = CheckAuth(context); !status.ok()) return status;
    std::this_thread::sleep_for(list_delay);
    std::lock_guard lock(mu_);
    for (const auto& [name, stored] : tensors_) *response->add_tensors() = stored.info;
    return grpc::Status::OK;
  }

  grpc::Status DeleteTensor(grpc::ServerContext* context, const v1::DeleteTensorRequest* request,
                            v1::DeleteTensorResponse* response) override {
    if (auto status = CheckAuth(context); !status.ok()) return status;
    std::lock_guard lock(mu_);
    auto it = tensors_.find(request->name());
    if (it == tensors_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "name: no tensor '" + request->name() + "'");
    }
    *response->mutable_deleted() = it->second.info;
    tensors_.erase(it);
    return grpc::Status::OK;
  }

  grpc::Status RmsNorm(grpc::ServerContext* context, const v1::RmsNormRequest* request,
                       v1::RmsNormResponse* response) override {
    if (auto status = CheckAuth(context); !status.ok()) return status;
    if (request->has_eps() && request->eps() < 0) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          "eps: expected a finite value >= 0, found " + std::to_string(request->eps()));
    }
    *response->mutable_output() = request->input().value();
    return grpc::Status::OK;
  }

  grpc::Status Stream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream) override {
    if (auto status = CheckAuth(context); !status.ok()) return status;
    v1::StreamRequest request;
    while (stream->Read(&request)) {
      v1::StreamResponse response;
      response.set_id(request.id());
      if (request.has_rms_norm()) {
        *response.mutable_rms_norm()->mutable_output() = request.rms_norm().input().value();
      } else {
        response.set_code(grpc::StatusCode::UNIMPLEMENTED);
        response.set_message("op: the fake serves rms_norm only");
      }
      stream->Write(response);
    }
    return grpc::Status::OK;
  }

 private:
  grpc::Status CheckAuth(grpc::ServerContext* context) {
    if (required_token.empty()) return grpc::Status::OK;
    auto it = context->client_metadata().find("authorization");
    if (it == context->client_metadata().end() ||
        std::string(it->second.data(), it->second.size()) != "Bearer " + required_token) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or wrong token");
    }
    return grpc::Status::OK;
  }

  std::mutex mu_;
  std::map<std::string, Stored> tensors_;
  std::vector<std::vector<size_t>> put_calls_;
};

// The fake on a free local port. `max_message_bytes` is the server's limit
// both ways (the real server's --max_message_bytes).
class FakeServer {
 public:
  explicit FakeServer(int max_message_bytes = 64 << 20) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.SetMaxReceiveMessageSize(max_message_bytes);
    builder.SetMaxSendMessageSize(max_message_bytes);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { server_->Shutdown(std::chrono::system_clock::now()); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  FakeTensorOps& service() { return service_; }

 private:
  FakeTensorOps service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace accel::fake
