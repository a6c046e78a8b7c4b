// Conversions between absl::Status (used everywhere inside the server) and
// grpc::Status (used only at the RPC boundary), plus small builders for the
// field-naming error messages of API.md. The codes are the same numbers in
// both libraries, so the conversion is a cast. Thread-safe, stateless.
#pragma once

#include <string_view>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace accel::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// "OK", "INVALID_ARGUMENT", ...: the gRPC names, for metrics and logs.
const char* StatusCodeName(absl::StatusCode code);

}  // namespace accel::server
