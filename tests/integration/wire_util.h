// Helpers shared by the integration tests that talk to a server without our
// client: the server binary to launch, and grpc.health.v1 Check with
// hand-encoded messages (Debian ships no health proto headers).
#pragma once

#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

namespace accel::testing {

// The accel-server binary: $ACCEL_SERVER_BINARY when set (the GPU machine
// runs a bundled copy), else the one this build made.
inline std::string ServerBinary() {
  const char* env = std::getenv("ACCEL_SERVER_BINARY");
  return env != nullptr && *env != '\0' ? env : ACCEL_SERVER_BINARY;
}

// grpc.health.v1.Health/Check: request {service = 1}, response {status = 1};
// returns the status (SERVING = 1), or minus the gRPC code on failure.
inline int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::GenericStub stub(channel);
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1), resp;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", {}, &req, &resp,
                 [&](grpc::Status s) { done.set_value(s); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return -status.error_code();
  std::vector<grpc::Slice> slices;
  resp.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
}

}  // namespace accel::testing
