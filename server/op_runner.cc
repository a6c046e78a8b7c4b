#include "server/op_runner.h"

#include <cmath>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "accel/kernels/ops.h"
#include "accel/util/status_macros.h"
#include "server/tensor_codec.h"

namespace accel::server {
namespace {

using kernels::ConstTensorView;
using kernels::DType;
using kernels::OutputSpec;

constexpr float kDefaultEps = 1e-6f;
constexpr double kDefaultRopeBase = 10000.0;

absl::Status DistinctNames(const std::string& a, absl::string_view a_field, const std::string& b,
                           absl::string_view b_field) {
  if (!a.empty() && a == b) {
    return absl::InvalidArgumentError(absl::StrCat(b_field, ": expected a name other than ",
                                                   a_field, ", found '", b, "' for both"));
  }
  return absl::OkStatus();
}

// The input's view where the kernels run: resident tensors already live on
// the device; inline ones are staged there (a no-op on the CPU).
absl::StatusOr<ConstTensorView> OnDevice(CallScope& scope, const ResolvedInput& input) {
  if (input.resident != nullptr) return input.view;
  return scope.Stage(input.view);
}

// A resident quantized result (values + scales), reserved before the kernel
// runs and inserted after it succeeded.
struct QuantizedOutput {
  std::shared_ptr<ResidentTensor> tensor;
  Reservation reservation;
  kernels::TensorView values;
  kernels::TensorView scales;
};

absl::StatusOr<QuantizedOutput> MakeQuantizedOutput(const OpEnv& env, const std::string& name,
                                                    const kernels::QuantizeSpec& spec) {
  QuantizedOutput out;
  out.tensor = std::make_shared<ResidentTensor>();
  out.tensor->name = name;
  out.tensor->dtype = spec.values.dtype;
  out.tensor->shape = spec.values.shape;
  out.tensor->scales_shape = spec.scales.shape;
  const int64_t values_bytes = kernels::NumElements(spec.values.shape);
  const int64_t scales_bytes = kernels::NumElements(spec.scales.shape) * int64_t{4};
  ASSIGN_OR_RETURN(out.reservation, env.store->Reserve(values_bytes + scales_bytes));
  ASSIGN_OR_RETURN(out.tensor->values,
                   kernels::Buffer::Allocate(env.device->backend(), values_bytes));
  ASSIGN_OR_RETURN(kernels::Buffer scales,
                   kernels::Buffer::Allocate(env.device->backend(), scales_bytes));
  out.tensor->scales = std::move(scales);
  out.values = {spec.values.dtype, spec.values.shape, out.tensor->values.data()};
  out.scales = {spec.scales.dtype, spec.scales.shape, out.tensor->scales->data()};
  return out;
}

}  // namespace

absl::Status RunRmsNorm(const OpEnv& env, const v1::RmsNormRequest& req,
                        v1::RmsNormResponse* resp) {
  const TensorStore& store = *env.store;
  ASSIGN_OR_RETURN(ResolvedInput input, ResolveInput(req.input(), "input", store));
  ASSIGN_OR_RETURN(ResolvedInput weight, ResolveInput(req.weight(), "weight", store));
  std::optional<ResolvedInput> residual;
  if (IsSet(req.residual())) {
    ASSIGN_OR_RETURN(residual, ResolveInput(req.residual(), "residual", store));
  }
  const bool want_residual = req.return_residual() || !req.residual_output_name().empty();
  if (want_residual && !residual.has_value()) {
    return absl::InvalidArgumentError(
        req.return_residual() ? "return_residual: needs a residual input (set residual)"
                              : "residual_output_name: needs a residual input (set residual)");
  }
  RETURN_IF_ERROR(DistinctNames(req.output_name(), "output_name", req.residual_output_name(),
                                "residual_output_name"));

  kernels::RmsNormArgs args;
  args.input = input.view;
  args.weight = weight.view;
  if (residual.has_value()) args.residual = residual->view;
  args.eps = req.has_eps() ? req.eps() : kDefaultEps;
  ASSIGN_OR_RETURN(OutputSpec spec, kernels::CheckRmsNorm(args));

  CallScope scope(*env.device);
  ASSIGN_OR_RETURN(args.input, OnDevice(scope, input));
  ASSIGN_OR_RETURN(args.weight, OnDevice(scope, weight));
  if (residual.has_value()) {
    ASSIGN_OR_RETURN(args.residual, OnDevice(scope, *residual));
  }

  ASSIGN_OR_RETURN(OutputSlot output, OutputSlot::Make(env, scope, req.output_name(), "output_name",
                                                       spec, resp->mutable_output()));
  std::optional<OutputSlot> residual_out;
  if (want_residual) {
    ASSIGN_OR_RETURN(residual_out,
                     OutputSlot::Make(env, scope, req.residual_output_name(),
                                      "residual_output_name", spec, resp->mutable_residual()));
  }
  RETURN_IF_ERROR(kernels::RmsNorm(scope.ctx(), args, output.view(),
                                   residual_out.has_value() ? &residual_out->view() : nullptr));
  RETURN_IF_ERROR(scope.Finish());
  RETURN_IF_ERROR(output.Commit());
  if (residual_out.has_value()) RETURN_IF_ERROR(residual_out->Commit());
  return absl::OkStatus();
}

absl::Status RunSwiGlu(const OpEnv& env, const v1::SwiGluRequest& req, v1::SwiGluResponse* resp) {
  ASSIGN_OR_RETURN(ResolvedInput gate, ResolveInput(req.gate(), "gate", *env.store));
  ASSIGN_OR_RETURN(ResolvedInput up, ResolveInput(req.up(), "up", *env.store));
  kernels::SwiGluArgs args{gate.view, up.view};
  ASSIGN_OR_RETURN(OutputSpec spec, kernels::CheckSwiGlu(args));
  CallScope scope(*env.device);
  ASSIGN_OR_RETURN(args.gate, OnDevice(scope, gate));
  ASSIGN_OR_RETURN(args.up, OnDevice(scope, up));
  ASSIGN_OR_RETURN(OutputSlot output, OutputSlot::Make(env, scope, req.output_name(), "output_name",
                                                       spec, resp->mutable_output()));
  RETURN_IF_ERROR(kernels::SwiGlu(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

absl::Status RunLinear(const OpEnv& env, const v1::LinearRequest& req, v1::LinearResponse* resp) {
  ASSIGN_OR_RETURN(ResolvedInput input, ResolveInput(req.input(), "input", *env.store));
  ASSIGN_OR_RETURN(ResolvedWeight weight, ResolveWeight(req.weight(), "weight", *env.store));
  ASSIGN_OR_RETURN(std::optional<ResolvedInput> bias,
                   ResolveOptionalBias(req.bias(), "bias", *env.store));
  kernels::LinearArgs args;
  args.input = input.view;
  args.weight = weight.view;
  if (bias.has_value()) args.bias = bias->view;
  ASSIGN_OR_RETURN(OutputSpec spec, kernels::CheckLinear(args));
  CallScope scope(*env.device);
  ASSIGN_OR_RETURN(args.input, OnDevice(scope, input));
  ASSIGN_OR_RETURN(OutputSlot output, OutputSlot::Make(env, scope, req.output_name(), "output_name",
                                                       spec, resp->mutable_output()));
  RETURN_IF_ERROR(kernels::Linear(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

absl::Status RunFfn(const OpEnv& env, const v1::FfnRequest& req, v1::FfnResponse* resp) {
  const TensorStore& store = *env.store;
  ASSIGN_OR_RETURN(ResolvedInput input, ResolveInput(req.input(), "input", store));
  ASSIGN_OR_RETURN(ResolvedWeight w_gate, ResolveWeight(req.w_gate(), "w_gate", store));
  ASSIGN_OR_RETURN(ResolvedWeight w_up, ResolveWeight(req.w_up(), "w_up", store));
  ASSIGN_OR_RETURN(ResolvedWeight w_down, ResolveWeight(req.w_down(), "w_down", store));
  ASSIGN_OR_RETURN(std::optional<ResolvedInput> b_gate,
                   ResolveOptionalBias(req.b_gate(), "b_gate", store));
  ASSIGN_OR_RETURN(std::optional<ResolvedInput> b_up,
                   ResolveOptionalBias(req.b_up(), "b_up", store));
  ASSIGN_OR_RETURN(std::optional<ResolvedInput> b_down,
                   ResolveOptionalBias(req.b_down(), "b_down", store));
  kernels::FfnArgs args;
  args.input = input.view;
  args.w_gate = w_gate.view;
  args.w_up = w_up.view;
  args.w_down = w_down.view;
  if (b_gate.has_value()) args.b_gate = b_gate->view;
  if (b_up.has_value()) args.b_up = b_up->view;
  if (b_down.has_value()) args.b_down = b_down->view;
  ASSIGN_OR_RETURN(OutputSpec spec, kernels::CheckFfn(args));
  CallScope scope(*env.device);
  ASSIGN_OR_RETURN(args.input, OnDevice(scope, input));
  ASSIGN_OR_RETURN(OutputSlot output, OutputSlot::Make(env, scope, req.output_name(), "output_name",
                                                       spec, resp->mutable_output()));
  RETURN_IF_ERROR(kernels::Ffn(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

absl::Status RunRope(const OpEnv& env, const v1::RopeRequest& req, v1::RopeResponse* resp) {
  const TensorStore& store = *env.store;
  ASSIGN_OR_RETURN(ResolvedInput q, ResolveInput(req.q(), "q", store));
  std::optional<ResolvedInput> k;
  if (IsSet(req.k())) {
    ASSIGN_OR_RETURN(k, ResolveInput(req.k(), "k", store));
  } else if (!req.k_output_name().empty()) {
    return absl::InvalidArgumentError("k_output_name: needs a k input (set k)");
  }
  RETURN_IF_ERROR(
      DistinctNames(req.output_name(), "output_name", req.k_output_name(), "k_output_name"));
  if (req.style() != v1::INTERLEAVED && req.style() != v1::HALF_SPLIT) {
    return absl::InvalidArgumentError(
        absl::StrCat("style: expected INTERLEAVED (0) or HALF_SPLIT (1), found ",
                     static_cast<int>(req.style())));
  }

  kernels::RopeArgs args;
  args.q = q.view;
  if (k.has_value()) args.k = k->view;
  args.style = req.style() == v1::HALF_SPLIT ? kernels::RopeStyle::kHalfSplit
                                             : kernels::RopeStyle::kInterleaved;

  // The cos/sin tables: a resident cache [2, P, D/2], or inline tensors.
  const bool has_inline = IsSet(req.cos()) || IsSet(req.sin());
  ResolvedInput cos, sin;
  ResidentTensorPtr cache;
  if (!req.cache().empty()) {
    if (has_inline) {
      return absl::InvalidArgumentError(
          "cache: expected either cache or inline cos and sin, found both");
    }
    ASSIGN_OR_RETURN(cache, store.Get(req.cache(), "cache"));
    const bool is_cache = !cache->quantized() && cache->dtype == DType::kFloat32 &&
                          cache->shape.size() == 3 && cache->shape[0] == 2;
    if (!is_cache) {
      return absl::FailedPreconditionError(
          absl::StrCat("cache: '", req.cache(),
                       "' is not a RoPE cache: expected FLOAT32 [2, P, D/2] (see "
                       "BuildRopeCache), found ",
                       cache->quantized() ? "quantized " : "", kernels::DTypeName(cache->dtype),
                       " ", kernels::ShapeToString(cache->shape)));
    }
    const kernels::Shape table{cache->shape[1], cache->shape[2]};
    const size_t table_bytes = kernels::NumElements(table) * sizeof(float);
    const char* base = static_cast<const char*>(cache->values.data());
    args.cos = ConstTensorView{DType::kFloat32, table, base};
    args.sin = ConstTensorView{DType::kFloat32, table, base + table_bytes};
  } else {
    if (!IsSet(req.cos()) || !IsSet(req.sin())) {
      return absl::InvalidArgumentError(
          absl::StrCat(IsSet(req.cos()) ? "sin" : "cos",
                       ": required: set cache to the name of a RoPE cache, or both cos and sin"));
    }
    ASSIGN_OR_RETURN(cos, ResolveInput(req.cos(), "cos", store));
    ASSIGN_OR_RETURN(sin, ResolveInput(req.sin(), "sin", store));
    args.cos = cos.view;
    args.sin = sin.view;
  }

  ResolvedInput positions;
  std::string positions_on_host;  // resident positions on a GPU, read back for the range check
  if (IsSet(req.positions())) {
    if (req.position_offset() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "position_offset: expected 0 when positions is set, found ", req.position_offset()));
    }
    ASSIGN_OR_RETURN(positions, ResolveInput(req.positions(), "positions", store));
    args.positions = positions.view;
    if (positions.resident != nullptr && env.device->is_cuda()) {
      positions_on_host.resize(positions.view.nbytes());
      RETURN_IF_ERROR(kernels::CopyFromBuffer(positions.resident->values, 0,
                                              positions_on_host.size(), positions_on_host.data()));
      args.positions->data = positions_on_host.data();
    }
  }
  args.position_offset = req.position_offset();

  // Checks every position against the table, on the host.
  ASSIGN_OR_RETURN(OutputSpec q_spec, kernels::CheckRope(args));

  CallScope scope(*env.device);
  ASSIGN_OR_RETURN(args.q, OnDevice(scope, q));
  if (k.has_value()) {
    ASSIGN_OR_RETURN(args.k, OnDevice(scope, *k));
  }
  if (cache == nullptr) {
    ASSIGN_OR_RETURN(args.cos, OnDevice(scope, cos));
    ASSIGN_OR_RETURN(args.sin, OnDevice(scope, sin));
  }
  if (args.positions.has_value()) {
    ASSIGN_OR_RETURN(args.positions, OnDevice(scope, positions));
  }
  ASSIGN_OR_RETURN(OutputSlot q_out, OutputSlot::Make(env, scope, req.output_name(), "output_name",
                                                      q_spec, resp->mutable_q()));
  std::optional<OutputSlot> k_out;
  if (k.has_value()) {
    const OutputSpec k_spec{k->view.dtype, k->view.shape};
    ASSIGN_OR_RETURN(k_out, OutputSlot::Make(env, scope, req.k_output_name(), "k_output_name",
                                             k_spec, resp->mutable_k()));
  }
  RETURN_IF_ERROR(
      kernels::Rope(scope.ctx(), args, q_out.view(), k_out.has_value() ? &k_out->view() : nullptr));
  RETURN_IF_ERROR(scope.Finish());
  RETURN_IF_ERROR(q_out.Commit());
  if (k_out.has_value()) RETURN_IF_ERROR(k_out->Commit());
  return absl::OkStatus();
}

absl::Status RunQuantize(const OpEnv& env, const v1::QuantizeRequest& req,
                         v1::QuantizeResponse* resp) {
  ASSIGN_OR_RETURN(ResolvedInput input, ResolveInput(req.input(), "input", *env.store));
  if (req.granularity() != v1::PER_TENSOR && req.granularity() != v1::PER_ROW) {
    return absl::InvalidArgumentError(
        absl::StrCat("granularity: expected PER_TENSOR (0) or PER_ROW (1), found ",
                     static_cast<int>(req.granularity())));
  }
  kernels::QuantizeArgs args;
  args.input = input.view;
  args.granularity = req.granularity() == v1::PER_ROW ? kernels::Granularity::kPerRow
                                                      : kernels::Granularity::kPerTensor;
  ASSIGN_OR_RETURN(kernels::QuantizeSpec spec, kernels::CheckQuantize(args));
  CallScope scope(*env.device);
  ASSIGN_OR_RETURN(args.input, OnDevice(scope, input));

  if (req.output_name().empty()) {
    RETURN_IF_ERROR(CheckFitsInMessage(env, kernels::NumElements(spec.values.shape), "values"));
    kernels::TensorView values = PrepareOutputTensor(spec.values, resp->mutable_values());
    kernels::TensorView scales = PrepareOutputTensor(spec.scales, resp->mutable_scales());
    ASSIGN_OR_RETURN(values.data, scope.ResultBuffer(values.data, values.nbytes()));
    ASSIGN_OR_RETURN(scales.data, scope.ResultBuffer(scales.data, scales.nbytes()));
    RETURN_IF_ERROR(kernels::Quantize(scope.ctx(), args, values, scales));
    return scope.Finish();
  }
  RETURN_IF_ERROR(ValidateTensorName(req.output_name(), "output_name"));
  ASSIGN_OR_RETURN(QuantizedOutput out, MakeQuantizedOutput(env, req.output_name(), spec));
  RETURN_IF_ERROR(kernels::Quantize(scope.ctx(), args, out.values, out.scales));
  RETURN_IF_ERROR(scope.Finish());
  DescribeTensor(spec.values, resp->mutable_values());
  DescribeTensor(spec.scales, resp->mutable_scales());
  return env.store->Insert(std::move(out.tensor), /*overwrite=*/true, out.reservation);
}

absl::Status RunDequantize(const OpEnv& env, const v1::DequantizeRequest& req,
                           v1::DequantizeResponse* resp) {
  kernels::DequantizeArgs args;
  if (req.dtype() == v1::DTYPE_UNSPECIFIED) {
    args.dtype = DType::kFloat16;
  } else {
    ASSIGN_OR_RETURN(args.dtype, DTypeFromProto(req.dtype(), "dtype"));
  }
  ResidentTensorPtr quantized;
  ResolvedInput values, scales;
  if (!req.name().empty()) {
    if (IsSet(req.values()) || IsSet(req.scales())) {
      return absl::InvalidArgumentError(
          "name: expected either name or values and scales, found both");
    }
    ASSIGN_OR_RETURN(quantized, env.store->Get(req.name(), "name"));
    if (!quantized->quantized()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "name: '", req.name(), "' is not a quantized tensor (it is ",
          kernels::DTypeName(quantized->dtype), " ", kernels::ShapeToString(quantized->shape),
          "); pass values and scales instead"));
    }
    args.values = quantized->view();
    args.scales = quantized->scales_view();
  } else {
    ASSIGN_OR_RETURN(values, ResolveInput(req.values(), "values", *env.store));
    ASSIGN_OR_RETURN(scales, ResolveInput(req.scales(), "scales", *env.store));
    args.values = values.view;
    args.scales = scales.view;
  }
  ASSIGN_OR_RETURN(OutputSpec spec, kernels::CheckDequantize(args));
  CallScope scope(*env.device);
  if (quantized == nullptr) {
    ASSIGN_OR_RETURN(args.values, OnDevice(scope, values));
    ASSIGN_OR_RETURN(args.scales, OnDevice(scope, scales));
  }
  ASSIGN_OR_RETURN(OutputSlot output, OutputSlot::Make(env, scope, req.output_name(), "output_name",
                                                       spec, resp->mutable_output()));
  RETURN_IF_ERROR(kernels::Dequantize(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

absl::Status RunQuantizationError(const OpEnv& env, const v1::QuantizationErrorRequest& req,
                                  v1::QuantizationErrorResponse* resp) {
  ASSIGN_OR_RETURN(ResolvedInput original, ResolveInput(req.original(), "original", *env.store));
  ASSIGN_OR_RETURN(ResolvedInput values, ResolveInput(req.values(), "values", *env.store));
  ASSIGN_OR_RETURN(ResolvedInput scales, ResolveInput(req.scales(), "scales", *env.store));
  kernels::QuantizationErrorArgs args{original.view, values.view, scales.view};
  RETURN_IF_ERROR(kernels::CheckQuantizationError(args));
  CallScope scope(*env.device);
  ASSIGN_OR_RETURN(args.original, OnDevice(scope, original));
  ASSIGN_OR_RETURN(args.values, OnDevice(scope, values));
  ASSIGN_OR_RETURN(args.scales, OnDevice(scope, scales));
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
  kernels::BuildRopeCache(req.max_seq_len(), req.head_dim(), base, host.data(),
                          host.data() + table_elements);
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
  CallScope scope(*env.device);
  RETURN_IF_ERROR(kernels::Quantize(scope.ctx(), args, out.values, out.scales));
  RETURN_IF_ERROR(scope.Finish());
  FillTensorInfo(*out.tensor, env.store->device_name(), resp);
  const bool overwrite = target == req.source() || req.overwrite();
  return env.store->Insert(std::move(out.tensor), overwrite, out.reservation);
}

}  // namespace accel::server
