#include "server/op_runner.h"

#include <chrono>
#include <cmath>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "accel/kernels/ops.h"
#include "accel/util/status_macros.h"
#include "server/metrics.h"
#include "server/tensor_codec.h"

namespace accel::server {
namespace {

using kernels::ConstTensorView;
using kernels::DType;
using kernels::OutputSpec;

constexpr double kDefaultRopeBase = 10000.0;

}  // namespace

absl::Status RunQuantizationError(const OpEnv& env, const v1::QuantizationErrorRequest& req,
                                  v1::QuantizationErrorResponse* resp) {
  ASSIGN_OR_RETURN(ResolvedInput original, ResolveInput(req.original(), "original", *env.store));
  ASSIGN_OR_RETURN(ResolvedInput values, ResolveInput(req.values(), "values", *env.store));
  ASSIGN_OR_RETURN(ResolvedInput scales, ResolveInput(req.scales(), "scales", *env.store));
  kernels::QuantizationErrorArgs args{original.view, values.view, scales.view};
  RETURN_IF_ERROR(kernels::CheckQuantizationError(args));
  CallScope scope(*env.device, env.metrics, Op::kQuantizationError);
  ASSIGN_OR_RETURN(args.original, StageInput(scope, original));
  ASSIGN_OR_RETURN(args.values, StageInput(scope, values));
  ASSIGN_OR_RETURN(args.scales, StageInput(scope, scales));
  ASSIGN_OR_RETURN(kernels::QuantizationErrorStats stats,
                   kernels::QuantizationError(scope.ctx(), args));
  RETURN_IF_ERROR(scope.Finish());
  resp->set_max_abs_error(stats.max_abs_error);
  resp->set_mean_abs_error(stats.mean_abs_error);
  resp->set_relative_error_pct(stats.relative_error_pct);
  resp->set_snr_db(stats.snr_db);
  return absl::OkStatus();
}

absl::Status RunBuildRopeCache(const OpEnv& env, const v1::BuildRopeCacheRequest& req,
                               v1::TensorInfo* resp) {
  RETURN_IF_ERROR(ValidateTensorName(req.name(), "name"));
  const double base = req.has_base() ? req.base() : kDefaultRopeBase;
  RETURN_IF_ERROR(kernels::CheckRopeCacheParams(req.max_seq_len(), req.head_dim(), base));
  if (!req.overwrite() && env.store->Get(req.name()).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("name: a resident tensor named '", req.name(),
                                                 "' exists (set overwrite to replace it)"));
  }
  const int64_t half = req.head_dim() / 2;
  const int64_t table_elements = req.max_seq_len() * half;
  const int64_t nbytes = 2 * table_elements * static_cast<int64_t>(sizeof(float));
  ASSIGN_OR_RETURN(Reservation reservation, env.store->Reserve(nbytes));

  // Built on the host in fp64 (as the contract requires) and copied once.
  std::vector<float> host(2 * table_elements);
  const auto start = std::chrono::steady_clock::now();
  kernels::BuildRopeCache(req.max_seq_len(), req.head_dim(), base, host.data(),
                          host.data() + table_elements);
  if (env.metrics != nullptr && env.device->is_cuda()) {
    // No kernel runs on the GPU for this op, so no CallScope times it: its
    // host build is its kernel phase (on the CPU, RunOpAndRecord times it).
    env.metrics->ObserveCompute(
        Op::kBuildRopeCache, Phase::kKernel,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  auto tensor = std::make_shared<ResidentTensor>();
  tensor->name = req.name();
  tensor->dtype = DType::kFloat32;
  tensor->shape = {2, req.max_seq_len(), half};
  ASSIGN_OR_RETURN(tensor->values, kernels::Buffer::Allocate(env.device->backend(), nbytes));
  RETURN_IF_ERROR(kernels::CopyToBuffer(host.data(), nbytes, tensor->values));
  FillTensorInfo(*tensor, env.store->device_name(), resp);
  return env.store->Insert(std::move(tensor), req.overwrite(), reservation);
}

absl::Status RunQuantizeWeight(const OpEnv& env, const v1::QuantizeWeightRequest& req,
                               v1::TensorInfo* resp) {
  if (req.source().empty()) {
    return absl::InvalidArgumentError("source: required (the name of a resident float weight)");
  }
  ASSIGN_OR_RETURN(ResidentTensorPtr source, env.store->Get(req.source(), "source"));
  if (source->quantized() || !kernels::IsFloat(source->dtype)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "source: '", req.source(), "' is ", source->quantized() ? "already quantized" : "",
        source->quantized() ? "" : kernels::DTypeName(source->dtype),
        "; QuantizeWeight needs a float weight"));
  }
  if (source->shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("source: expected a 2-D weight [N, K], found shape ",
                     kernels::ShapeToString(source->shape)));
  }
  const std::string& target = req.target().empty() ? req.source() : req.target();
  RETURN_IF_ERROR(ValidateTensorName(target, "target"));
  kernels::QuantizeArgs args{source->view(), kernels::Granularity::kPerRow};
  ASSIGN_OR_RETURN(kernels::QuantizeSpec spec, kernels::CheckQuantize(args));
  ASSIGN_OR_RETURN(QuantizedOutput out, MakeQuantizedOutput(env, target, spec));
  CallScope scope(*env.device, env.metrics, Op::kQuantizeWeight);
  RETURN_IF_ERROR(kernels::Quantize(scope.ctx(), args, out.values, out.scales));
  RETURN_IF_ERROR(scope.Finish());
  FillTensorInfo(*out.tensor, env.store->device_name(), resp);
  const bool overwrite = target == req.source() || req.overwrite();
  return env.store->Insert(std::move(out.tensor), overwrite, out.reservation);
}

}  // namespace accel::server
