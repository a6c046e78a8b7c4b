#include "accel/kernels/tensor.h"

#include "absl/strings/str_join.h"

namespace accel::kernels {

size_t ItemSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kInt8:
      return 1;
    case DType::kInt64:
      return 8;
    case DType::kUnspecified:
      return 0;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "FLOAT32";
    case DType::kFloat16:
      return "FLOAT16";
    case DType::kBFloat16:
      return "BFLOAT16";
    case DType::kInt8:
      return "INT8";
    case DType::kInt32:
      return "INT32";
    case DType::kInt64:
      return "INT64";
    case DType::kUnspecified:
      return "DTYPE_UNSPECIFIED";
  }
  return "DTYPE_UNKNOWN";
}

bool IsFloat(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

int64_t NumElements(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t RowsOf(std::span<const int64_t> shape) {
  return shape.empty() ? 1 : NumElements(shape.first(shape.size() - 1));
}

std::string ShapeToString(std::span<const int64_t> shape) {
  return "[" + absl::StrJoin(shape, ", ") + "]";
}

}  // namespace accel::kernels
