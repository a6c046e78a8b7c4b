// LoadTensors: reads tensors from a safetensors file under --model_dir into
// resident buffers, with optional name filtering, dtype cast and int8
// quantization, and inserts them into the store all or nothing.
//
// Used by the service's LoadTensors and by --preload at start-up.
// Thread-safe (the store serialises the insert).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "accel/kernels/ops.h"
#include "server/tensor_store.h"

namespace accel::server {

struct LoadOptions {
  // Directory every path is resolved under; a path that escapes it (by
  // "..", an absolute path or a symbolic link) is INVALID_ARGUMENT.
  std::filesystem::path model_dir;
  std::string path;    // relative to model_dir
  std::string prefix;  // prepended to each stored name
  // Globs (* and ?; every other character, '/' and '.' included, matches
  // itself) on the names in the file, before the prefix; empty = all. A
  // non-empty list that matches no tensor is NOT_FOUND.
  std::vector<std::string> include;
  // Cast float tensors to this dtype (FLOAT32, FLOAT16 or BFLOAT16, rounded
  // to nearest even; any other value is INVALID_ARGUMENT); integer tensors
  // keep theirs. kUnspecified keeps the file's dtype.
  kernels::DType dtype = kernels::DType::kUnspecified;
  // Store 2-D float tensors as int8 per-row quantized tensors (FLOAT32
  // scales [rows]); other tensors are loaded (and cast) as without it.
  bool quantize_int8 = false;
  bool overwrite = false;
  kernels::Backend backend = kernels::Backend::kCpu;
};

// Returns the inserted tensors in file order. Errors name the file and the
// tensor: NOT_FOUND for a missing file, INVALID_ARGUMENT for an escaping
// path, a malformed file or an unsupported dtype, ALREADY_EXISTS or
// RESOURCE_EXHAUSTED from the store.
absl::StatusOr<std::vector<ResidentTensorPtr>> LoadSafetensors(const LoadOptions& options,
                                                               TensorStore& store);

}  // namespace accel::server
