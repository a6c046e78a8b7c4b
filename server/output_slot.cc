#include "server/output_slot.h"

#include "absl/strings/str_cat.h"
#include "accel/util/status_macros.h"
#include "accel/util/string_view.h"
#include "server/tensor_codec.h"

namespace accel::server {

absl::Status CheckFitsInMessage(const OpEnv& env, int64_t nbytes, absl::string_view field) {
  if (nbytes <= env.max_message_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      field, ": the result has ", nbytes, " bytes, more than --max_message_bytes (",
      env.max_message_bytes,
      "); set an output name to keep it resident and read it with GetTensor, which streams it "
      "in chunks"));
}

absl::StatusOr<kernels::ConstTensorView> StageInput(CallScope& scope, const ResolvedInput& input,
                                                    int64_t reads) {
  if (input.resident != nullptr) return input.view;
  return scope.Stage(input.view, reads);
}

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

absl::StatusOr<OutputSlot> OutputSlot::Make(const OpEnv& env, CallScope& scope,
                                            const std::string& name, absl::string_view name_field,
                                            const kernels::OutputSpec& spec, v1::Tensor* proto) {
  OutputSlot slot;
  if (name.empty()) {
    const int64_t nbytes = kernels::NumElements(spec.shape) * kernels::ItemSize(spec.dtype);
    RETURN_IF_ERROR(CheckFitsInMessage(env, nbytes, name_field));
    slot.view_ = PrepareOutputTensor(spec, proto);
    ASSIGN_OR_RETURN(slot.view_.data, scope.ResultBuffer(slot.view_.data, slot.view_.nbytes()));
    return slot;
  }
  RETURN_IF_ERROR(ValidateTensorName(name, ToStd(name_field)));
  auto tensor = std::make_shared<ResidentTensor>();
  tensor->name = name;
  tensor->dtype = spec.dtype;
  tensor->shape = spec.shape;
  const int64_t nbytes = kernels::NumElements(spec.shape) * kernels::ItemSize(spec.dtype);
  ASSIGN_OR_RETURN(slot.reservation_, env.store->Reserve(nbytes));
  ASSIGN_OR_RETURN(tensor->values, kernels::Buffer::Allocate(env.device->backend(), nbytes));
  slot.view_ = kernels::TensorView{spec.dtype, spec.shape, tensor->values.data()};
  slot.store_ = env.store;
  slot.tensor_ = std::move(tensor);
  DescribeTensor(spec, proto);
  return slot;
}

absl::Status OutputSlot::Commit() {
  if (tensor_ == nullptr) return absl::OkStatus();
  RETURN_IF_ERROR(store_->Insert(std::move(tensor_), /*overwrite=*/true, reservation_));
  tensor_ = nullptr;
  return absl::OkStatus();
}

}  // namespace accel::server
