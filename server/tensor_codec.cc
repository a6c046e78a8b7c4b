#include "server/tensor_codec.h"

#include "absl/strings/str_cat.h"
#include "accel/util/status_macros.h"
#include "accel/util/string_view.h"

namespace accel::server {

using kernels::ConstTensorView;
using kernels::DType;

absl::StatusOr<DType> DTypeFromProto(int value, absl::string_view field) {
  if (value <= 0 || value > kernels::kMaxDTypeValue) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": expected one of FLOAT32, FLOAT16, BFLOAT16, INT8, INT32, INT64, found ",
        value == 0 ? std::string("DTYPE_UNSPECIFIED") : absl::StrCat("unknown value ", value)));
  }
  return static_cast<DType>(value);
}

absl::StatusOr<kernels::Shape> ShapeFromProto(const google::protobuf::RepeatedField<int64_t>& shape,
                                              absl::string_view field) {
  if (shape.size() > kernels::kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": expected at most ", kernels::kMaxRank,
                                                   " dimensions, found ", shape.size()));
  }
  kernels::Shape result(shape.begin(), shape.end());
  int64_t elements = 1;
  for (size_t i = 0; i < result.size(); ++i) {
    const int64_t d = result[i];
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": expected non-negative extents, found ", d, " at dimension ", i,
                       " of ", kernels::ShapeToString(result)));
    }
    // Checked before multiplying, so the product never overflows.
    if (d != 0 && elements > kernels::kMaxElements / d) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": shape ", kernels::ShapeToString(result), " has more than 2^48 elements"));
    }
    elements *= d;
  }
  return result;
}

absl::StatusOr<ConstTensorView> ViewOfTensor(const v1::Tensor& tensor, absl::string_view field) {
  ASSIGN_OR_RETURN(DType dtype, DTypeFromProto(tensor.dtype(), absl::StrCat(field, ".dtype")));
  ASSIGN_OR_RETURN(kernels::Shape shape,
                   ShapeFromProto(tensor.shape(), absl::StrCat(field, ".shape")));
  ConstTensorView view{dtype, std::move(shape), tensor.data().data()};
  const size_t expected = view.nbytes();
  if (tensor.data().size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".data: expected ", expected, " bytes (",
                     kernels::ShapeToString(view.shape), " x ", kernels::ItemSize(dtype), "-byte ",
                     kernels::DTypeName(dtype), "), found ", tensor.data().size()));
  }
  return view;
}

absl::StatusOr<ResolvedInput> ResolveInput(const v1::TensorRef& ref, absl::string_view field,
                                           const TensorStore& store) {
  switch (ref.source_case()) {
    case v1::TensorRef::kValue: {
      ASSIGN_OR_RETURN(ConstTensorView view, ViewOfTensor(ref.value(), field));
      return ResolvedInput{std::move(view), nullptr};
    }
    case v1::TensorRef::kName: {
      ASSIGN_OR_RETURN(ResidentTensorPtr tensor, store.Get(ref.name(), ToStd(field)));
      if (tensor->quantized()) {
        return absl::FailedPreconditionError(absl::StrCat(
            field, ": '", ref.name(),
            "' is a quantized tensor; this input needs a plain tensor (Dequantize it first)"));
      }
      ConstTensorView view = tensor->view();
      return ResolvedInput{std::move(view), std::move(tensor)};
    }
    case v1::TensorRef::SOURCE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": required (set value to an inline tensor or name to a resident one)"));
}

absl::StatusOr<ResolvedWeight> ResolveWeight(const std::string& name, absl::string_view field,
                                             const TensorStore& store) {
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": required (the name of a resident weight)"));
  }
  ASSIGN_OR_RETURN(ResidentTensorPtr tensor, store.Get(name, ToStd(field)));
  ResolvedWeight weight;
  weight.view.values = tensor->view();
  if (tensor->quantized()) weight.view.scales = tensor->scales_view();
  if (!tensor->quantized() && !kernels::IsFloat(tensor->dtype)) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": '", name, "' is ", kernels::DTypeName(tensor->dtype),
                     "; a weight must be a float tensor or an int8 quantized tensor (see Quantize, "
                     "QuantizeWeight)"));
  }
  weight.resident = std::move(tensor);
  return weight;
}

absl::StatusOr<std::optional<ResolvedInput>> ResolveOptionalBias(const std::string& name,
                                                                 absl::string_view field,
                                                                 const TensorStore& store) {
  if (name.empty()) return std::optional<ResolvedInput>();
  ASSIGN_OR_RETURN(ResidentTensorPtr tensor, store.Get(name, ToStd(field)));
  if (tensor->quantized()) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": '", name, "' is a quantized tensor; a bias must be a float tensor"));
  }
  ConstTensorView view = tensor->view();
  return std::optional<ResolvedInput>(ResolvedInput{std::move(view), std::move(tensor)});
}

void DescribeTensor(const kernels::OutputSpec& spec, v1::Tensor* out) {
  out->set_dtype(DTypeToProto(spec.dtype));
  out->mutable_shape()->Assign(spec.shape.begin(), spec.shape.end());
  out->clear_data();
}

kernels::TensorView PrepareOutputTensor(const kernels::OutputSpec& spec, v1::Tensor* out) {
  DescribeTensor(spec, out);
  kernels::TensorView view{spec.dtype, spec.shape, nullptr};
  std::string* data = out->mutable_data();
  data->resize(view.nbytes());
  view.data = data->data();
  return view;
}

void FillTensorInfo(const ResidentTensor& tensor, const std::string& device, v1::TensorInfo* info) {
  info->set_name(tensor.name);
  info->set_dtype(DTypeToProto(tensor.dtype));
  info->mutable_shape()->Assign(tensor.shape.begin(), tensor.shape.end());
  info->set_nbytes(tensor.nbytes());
  info->set_quantized(tensor.quantized());
  info->set_device(device);
  info->mutable_scales_shape()->Assign(tensor.scales_shape.begin(), tensor.scales_shape.end());
}

}  // namespace accel::server
