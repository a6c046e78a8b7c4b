#include "server/service_context.h"

namespace accel::server {

absl::Status Admit(const ServiceContext& service, const grpc::CallbackServerContext& call) {
  if (service.draining.load(std::memory_order_acquire)) {
    return absl::UnavailableError("the server is draining for shutdown; retry on another replica");
  }
  if (service.auth_token.empty()) return absl::OkStatus();
  const auto& metadata = call.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "authorization: missing; this server needs 'authorization: Bearer <token>' metadata");
  }
  const absl::string_view value(it->second.data(), it->second.size());
  const std::string expected = "Bearer " + service.auth_token;
  if (value.size() != expected.size() ||
      !std::equal(value.begin(), value.end(), expected.begin())) {
    return absl::UnauthenticatedError("authorization: the bearer token does not match");
  }
  return absl::OkStatus();
}

absl::Status CheckCallAlive(grpc::CallbackServerContext& call) {
  if (call.deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the caller's deadline passed before the request ran");
  }
  if (call.IsCancelled()) {
    return absl::CancelledError("the caller cancelled the request before it ran");
  }
  return absl::OkStatus();
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace accel::server
