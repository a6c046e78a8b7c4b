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
