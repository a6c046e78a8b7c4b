// Tensor descriptions shared by every layer: element types, shapes and
// non-owning views over dense row-major memory.
//
// A view never owns its bytes. Its pointer is valid on the device named by
// the ExecContext it is used with (host memory for the CPU backend, device
// memory for CUDA). Views are plain values: copying one is free and
// thread-safe; the memory they point at is the caller's to guard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace accel::kernels {

// Element types. The numbers equal accel.v1.DType, so the codec converts
// with a range check and a cast.
enum class DType : int {
  kUnspecified = 0,
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kInt8 = 4,
  kInt32 = 5,
  kInt64 = 6,
};

inline constexpr int kMaxDTypeValue = 6;

// Bytes per element; 0 for kUnspecified.
size_t ItemSize(DType dtype);
// "FLOAT32", "BFLOAT16", ... (the proto enum names, used in every message).
const char* DTypeName(DType dtype);
// FLOAT32, FLOAT16 or BFLOAT16.
bool IsFloat(DType dtype);

// A shape is a list of non-negative extents; a 0-d tensor has an empty shape.
using Shape = std::vector<int64_t>;

// Product of the extents (1 for a 0-d shape). The caller must have checked
// the shape with CheckedNumElements if it came from outside.
int64_t NumElements(std::span<const int64_t> shape);
// Product of all but the last extent (1 for a 0-d shape).
int64_t RowsOf(std::span<const int64_t> shape);
// "[4, 4096]"
std::string ShapeToString(std::span<const int64_t> shape);

// Largest tensor we accept, in elements and bytes: far beyond any device,
// small enough that index arithmetic in int64 cannot overflow.
inline constexpr int64_t kMaxElements = int64_t{1} << 48;
inline constexpr int kMaxRank = 8;

// Read-only view of a dense tensor.
struct ConstTensorView {
  DType dtype = DType::kUnspecified;
  Shape shape;
  const void* data = nullptr;

  int64_t rank() const { return static_cast<int64_t>(shape.size()); }
  int64_t num_elements() const { return NumElements(shape); }
  size_t nbytes() const { return static_cast<size_t>(num_elements()) * ItemSize(dtype); }
  // Extent of the last dimension (1 for a 0-d tensor).
  int64_t last_dim() const { return shape.empty() ? 1 : shape.back(); }
  // Product of all but the last extent: the rows of the [rows, last_dim] view.
  int64_t rows() const { return RowsOf(shape); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

// Writable view of a dense tensor.
struct TensorView {
  DType dtype = DType::kUnspecified;
  Shape shape;
  void* data = nullptr;

  int64_t rank() const { return static_cast<int64_t>(shape.size()); }
  int64_t num_elements() const { return NumElements(shape); }
  size_t nbytes() const { return static_cast<size_t>(num_elements()) * ItemSize(dtype); }
  int64_t last_dim() const { return shape.empty() ? 1 : shape.back(); }
  int64_t rows() const { return RowsOf(shape); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
  ConstTensorView AsConst() const { return ConstTensorView{dtype, shape, data}; }
};

}  // namespace accel::kernels
