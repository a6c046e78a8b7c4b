// What the unary handlers and the Stream reactor record around one op, so
// both paths measure the same things: the op runner's time as the kernel
// phase, and the launch it made (1 request of N rows: this is the path of
// ops that are never batched, and of every op with --batching=false; the
// batcher records its launches itself, in RunBatch); plus the optional
// access log.
//
// Stateless and thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "accel/v1/tensor_ops.pb.h"
#include "server/metrics.h"
#include "server/service_context.h"

namespace accel::server {

// The op a stream message carries; nullopt when none is set.
std::optional<Op> OpOfStreamRequest(const v1::StreamRequest& request);

// Rows (tokens) of one request, for accel_batch_rows: the leading
// dimensions of its main tensor ([..., N] -> prod(...); Rope's [B, S, H, D]
// -> B * S). 0 for the ops that are not batched.
int64_t LaunchRows(const ServiceContext& service, const v1::RmsNormRequest& request,
                   const v1::RmsNormResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::SwiGluRequest& request,
                   const v1::SwiGluResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::LinearRequest& request,
                   const v1::LinearResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::FfnRequest& request,
                   const v1::FfnResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::RopeRequest& request,
                   const v1::RopeResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::QuantizeRequest& request,
                   const v1::QuantizeResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::DequantizeRequest& request,
                   const v1::DequantizeResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::QuantizationErrorRequest& request,
                   const v1::QuantizationErrorResponse& response);
int64_t LaunchRows(const ServiceContext& service, const v1::BuildRopeCacheRequest& request,
                   const v1::TensorInfo& response);
int64_t LaunchRows(const ServiceContext& service, const v1::QuantizeWeightRequest& request,
                   const v1::TensorInfo& response);

// Runs `runner` and, when it succeeds, records its time as
// accel_compute_duration_seconds{op, phase="kernel"} (CPU backend; on cuda
// the call's CallScope records the device phases) and one launch.
template <typename Request, typename Response>
absl::Status RunOpAndRecord(const ServiceContext& service, Op op,
                            absl::Status (*runner)(const OpEnv&, const Request&, Response*),
                            const Request& request, Response* response) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = runner(service.env, request, response);
  if (status.ok()) {
    service.metrics->ObserveHostCompute(op, SecondsSince(start));
    service.metrics->ObserveLaunch(op, 1, LaunchRows(service, request, *response));
  }
  return status;
}

// Writes one access-log line (LOG(INFO)): method, code, bytes both ways,
// latency in microseconds and peer. Callers check service.access_log first,
// so that the log costs nothing when it is off.
void LogAccess(const grpc::CallbackServerContext& call, Method method, absl::StatusCode code,
               int64_t request_bytes, int64_t response_bytes,
               std::chrono::steady_clock::time_point start);

}  // namespace accel::server
