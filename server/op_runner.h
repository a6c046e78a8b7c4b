// One function per op RPC: decode the request, validate it, run the kernel
// and fill the response (or keep the result resident). The unary handlers
// and the Stream RPC both call these, on an executor thread, so an op has
// exactly one implementation on the server side. The batchable ones
// (RmsNorm, SwiGlu, Rope, Quantize, Dequantize, Linear, Ffn) are implemented in
// batch_ops.cc as a launch of one request, the same code a batch runs.
//
// Each function is synchronous and thread-safe; concurrent calls share only
// the store, which is thread-safe.
#pragma once

#include "absl/status/status.h"
#include "accel/v1/tensor_ops.pb.h"
#include "server/output_slot.h"

namespace accel::server {

absl::Status RunRmsNorm(const OpEnv& env, const v1::RmsNormRequest& req, v1::RmsNormResponse* resp);
absl::Status RunSwiGlu(const OpEnv& env, const v1::SwiGluRequest& req, v1::SwiGluResponse* resp);
absl::Status RunLinear(const OpEnv& env, const v1::LinearRequest& req, v1::LinearResponse* resp);
absl::Status RunFfn(const OpEnv& env, const v1::FfnRequest& req, v1::FfnResponse* resp);
absl::Status RunRope(const OpEnv& env, const v1::RopeRequest& req, v1::RopeResponse* resp);
absl::Status RunQuantize(const OpEnv& env, const v1::QuantizeRequest& req,
                         v1::QuantizeResponse* resp);
absl::Status RunDequantize(const OpEnv& env, const v1::DequantizeRequest& req,
                           v1::DequantizeResponse* resp);
absl::Status RunQuantizationError(const OpEnv& env, const v1::QuantizationErrorRequest& req,
                                  v1::QuantizationErrorResponse* resp);
absl::Status RunBuildRopeCache(const OpEnv& env, const v1::BuildRopeCacheRequest& req,
                               v1::TensorInfo* resp);
absl::Status RunQuantizeWeight(const OpEnv& env, const v1::QuantizeWeightRequest& req,
                               v1::TensorInfo* resp);

}  // namespace accel::server
