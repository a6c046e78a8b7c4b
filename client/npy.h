// Reading and writing NumPy .npy files, the tensor format of accelctl and of
// the client tests.
//
// Reads format versions 1.0, 2.0 and 3.0; writes 1.0, or 2.0 when the header
// would not fit 1.0's 16-bit length. Only the dtypes the service has a use
// for are supported, little-endian and in C (row-major) order:
//
//   '<f4' FLOAT32   '<f2' FLOAT16   '|i1' (or '<i1') INT8   '<i4' INT32   '<i8' INT64
//
// BFLOAT16 has no NumPy dtype: WriteNpy stores a BFLOAT16 tensor as '<f4'.
// The widening is exact (every bfloat16 is a float32 with 16 zero low bits), so
// casting the file back to bfloat16 (e.g. `accelctl put --dtype bfloat16`)
// gives the original bits. Anything else (float64, uint8, bool, big-endian,
// Fortran order, structured dtypes) is an INVALID_ARGUMENT naming the file and
// what it found, with a hint where there is an obvious fix.
//
// All functions are pure apart from their file I/O and are thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/tensor.h"

namespace accel {

// A dense array read from a .npy file. `data` holds prod(shape) *
// ItemSize(dtype) bytes, row-major and little-endian (the layout of
// accel.v1.Tensor.data). A 0-d array has an empty shape.
struct NpyArray {
  kernels::DType dtype = kernels::DType::kUnspecified;
  kernels::Shape shape;
  std::string data;
};

// Parses the bytes of a .npy file. `source` names them in error messages
// (ReadNpy passes the path).
absl::StatusOr<NpyArray> ParseNpy(std::string_view bytes, std::string_view source = "npy data");

// Reads a .npy file. NOT_FOUND when it does not exist; INVALID_ARGUMENT when
// it is not a .npy file this reader supports.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// The bytes of a .npy file holding the tensor (dtype, shape, data): header
// then data. `data` must hold exactly prod(shape) * ItemSize(dtype) bytes.
// BFLOAT16 is widened to '<f4' (see above).
absl::StatusOr<std::string> SerializeNpy(kernels::DType dtype, const kernels::Shape& shape,
                                         std::string_view data);

// Writes SerializeNpy(dtype, shape, data) to `path`, replacing the file;
// converts a BFLOAT16 tensor piecewise, so memory use stays near the input's.
absl::Status WriteNpy(const std::string& path, kernels::DType dtype, const kernels::Shape& shape,
                      std::string_view data);

// The NumPy type string written for `dtype` ('<f4' for FLOAT32 and BFLOAT16),
// or nullptr for DTYPE_UNSPECIFIED.
const char* NpyDescr(kernels::DType dtype);

}  // namespace accel
