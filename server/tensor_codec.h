// Proto <-> kernel views: decodes request tensors into views over the bytes
// they arrived in (no copy), resolves TensorRefs against the store, and
// prepares response tensors for the kernels to write into.
//
// Every error names the request field ("input.shape: ...") and says what was
// expected and found. Used by the op runners and the resident-tensor RPCs.
// Stateless and thread-safe; views live as long as the message or the
// ResidentTensorPtr they came from.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "accel/kernels/ops.h"
#include "accel/kernels/tensor.h"
#include "accel/v1/tensor_ops.pb.h"
#include "server/tensor_store.h"

namespace accel::server {

// INVALID_ARGUMENT for DTYPE_UNSPECIFIED or a value outside the enum.
absl::StatusOr<kernels::DType> DTypeFromProto(int value, absl::string_view field);
inline v1::DType DTypeToProto(kernels::DType dtype) { return static_cast<v1::DType>(dtype); }

// Checks rank <= kMaxRank, extents >= 0 and an element count that cannot
// overflow; returns the shape.
absl::StatusOr<kernels::Shape> ShapeFromProto(const google::protobuf::RepeatedField<int64_t>& shape,
                                              absl::string_view field);

// A view over an inline tensor, checking dtype, shape and data length.
absl::StatusOr<kernels::ConstTensorView> ViewOfTensor(const v1::Tensor& tensor,
                                                      absl::string_view field);

// An op input: its view plus whatever keeps its bytes alive.
struct ResolvedInput {
  kernels::ConstTensorView view;
  ResidentTensorPtr resident;  // set when the input came by name
};

// Resolves an inline value or a resident name. A quantized resident tensor
// is FAILED_PRECONDITION (ops take plain tensors; weights go through
// ResolveWeight). An unset ref is INVALID_ARGUMENT ("<field>: required").
absl::StatusOr<ResolvedInput> ResolveInput(const v1::TensorRef& ref, absl::string_view field,
                                           const TensorStore& store);
// True when the ref carries a value or a name.
inline bool IsSet(const v1::TensorRef& ref) {
  return ref.source_case() != v1::TensorRef::SOURCE_NOT_SET;
}

// A Linear/Ffn weight or bias by resident name (float or quantized).
struct ResolvedWeight {
  kernels::WeightView view;
  ResidentTensorPtr resident;
};
absl::StatusOr<ResolvedWeight> ResolveWeight(const std::string& name, absl::string_view field,
                                             const TensorStore& store);
// An optional float bias by resident name; an empty name gives nullopt.
absl::StatusOr<std::optional<ResolvedInput>> ResolveOptionalBias(const std::string& name,
                                                                 absl::string_view field,
                                                                 const TensorStore& store);

// Sets dtype and shape of `out` and sizes its data for the kernel to fill;
// returns the writable view.
kernels::TensorView PrepareOutputTensor(const kernels::OutputSpec& spec, v1::Tensor* out);
// Sets dtype and shape only (for results kept resident).
void DescribeTensor(const kernels::OutputSpec& spec, v1::Tensor* out);

void FillTensorInfo(const ResidentTensor& tensor, const std::string& device, v1::TensorInfo* info);

}  // namespace accel::server
