#include "server/call_metrics.h"

#include "accel/util/logging.h"
#include "server/status_util.h"

namespace accel::server {
namespace {

// Product of all but the last `trailing` dimensions (1 for fewer dims).
int64_t LeadingRows(const google::protobuf::RepeatedField<int64_t>& shape, int trailing = 1) {
  int64_t rows = 1;
  for (int i = 0; i + trailing < shape.size(); ++i) rows *= shape[i];
  return rows;
}

}  // namespace

std::optional<Op> OpOfStreamRequest(const v1::StreamRequest& request) {
  switch (request.op_case()) {
    case v1::StreamRequest::kRmsNorm:
      return Op::kRmsNorm;
    case v1::StreamRequest::kSwiglu:
      return Op::kSwiGlu;
    case v1::StreamRequest::kRope:
      return Op::kRope;
    case v1::StreamRequest::kQuantize:
      return Op::kQuantize;
    case v1::StreamRequest::kDequantize:
      return Op::kDequantize;
    case v1::StreamRequest::kQuantizationError:
      return Op::kQuantizationError;
    case v1::StreamRequest::kLinear:
      return Op::kLinear;
    case v1::StreamRequest::kFfn:
      return Op::kFfn;
    case v1::StreamRequest::OP_NOT_SET:
      break;
  }
  return std::nullopt;
}

// The output tensors carry their shape even when they stay resident, so the
// rows come from the response and need no store lookup.
int64_t LaunchRows(const ServiceContext&, const v1::RmsNormRequest&,
                   const v1::RmsNormResponse& response) {
  return LeadingRows(response.output().shape());
}
int64_t LaunchRows(const ServiceContext&, const v1::SwiGluRequest&,
                   const v1::SwiGluResponse& response) {
  return LeadingRows(response.output().shape());
}
int64_t LaunchRows(const ServiceContext&, const v1::LinearRequest&,
                   const v1::LinearResponse& response) {
  return LeadingRows(response.output().shape());
}
int64_t LaunchRows(const ServiceContext&, const v1::FfnRequest&, const v1::FfnResponse& response) {
  return LeadingRows(response.output().shape());
}
int64_t LaunchRows(const ServiceContext&, const v1::RopeRequest&,
                   const v1::RopeResponse& response) {
  return LeadingRows(response.q().shape(), /*trailing=*/2);
}
int64_t LaunchRows(const ServiceContext&, const v1::QuantizeRequest&,
                   const v1::QuantizeResponse& response) {
  return LeadingRows(response.values().shape());
}
int64_t LaunchRows(const ServiceContext&, const v1::DequantizeRequest&,
                   const v1::DequantizeResponse& response) {
  return LeadingRows(response.output().shape());
}
int64_t LaunchRows(const ServiceContext& service, const v1::QuantizationErrorRequest& request,
                   const v1::QuantizationErrorResponse&) {
  // The response has no tensor: take the shape of `original`.
  if (request.original().has_value()) return LeadingRows(request.original().value().shape());
  auto tensor = service.store->Get(request.original().name());
  if (!tensor.ok()) return 0;  // deleted since the op ran
  int64_t rows = 1;
  const kernels::Shape& shape = (*tensor)->shape;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  return rows;
}
int64_t LaunchRows(const ServiceContext&, const v1::BuildRopeCacheRequest&, const v1::TensorInfo&) {
  return 0;
}
int64_t LaunchRows(const ServiceContext&, const v1::QuantizeWeightRequest&, const v1::TensorInfo&) {
  return 0;
}

void LogAccess(const grpc::CallbackServerContext& call, Method method, absl::StatusCode code,
               int64_t request_bytes, int64_t response_bytes,
               std::chrono::steady_clock::time_point start) {
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::steady_clock::now() - start)
                          .count();
  LOG(INFO) << "access method=" << MethodName(method) << " code=" << StatusCodeName(code)
            << " request_bytes=" << request_bytes << " response_bytes=" << response_bytes
            << " latency_us=" << micros << " peer=" << call.peer();
}

}  // namespace accel::server
