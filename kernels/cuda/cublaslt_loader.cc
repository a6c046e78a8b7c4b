#include "cuda/cublaslt_loader.h"

#include <dlfcn.h>

#include <mutex>

namespace accel::kernels::cuda {
namespace {

// The versioned name first (what the CUDA 13 toolkit and driver images ship),
// then the toolkit's usual location for processes without LD_LIBRARY_PATH.
constexpr const char* kCandidates[] = {
    "libcublasLt.so.13",
    "/usr/local/cuda/lib64/libcublasLt.so.13",
    "/usr/local/cuda/lib/libcublasLt.so.13",
    "libcublasLt.so",
};

template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  return *fn != nullptr;
}

CublasLtApi Load() {
  CublasLtApi api;
  void* lib = nullptr;
  for (const char* candidate : kCandidates) {
    lib = dlopen(candidate, RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) break;
  }
  if (lib == nullptr) {
    api.load_error =
        "libcublasLt.so.13 could not be loaded (add the CUDA library folder to "
        "LD_LIBRARY_PATH)";
    return api;
  }
  const bool ok =
      Resolve(lib, "cublasLtCreate", &api.create) &&
      Resolve(lib, "cublasLtDestroy", &api.destroy) &&
      Resolve(lib, "cublasLtGetStatusName", &api.get_status_name) &&
      Resolve(lib, "cublasLtGetStatusString", &api.get_status_string) &&
      Resolve(lib, "cublasLtMatmul", &api.matmul) &&
      Resolve(lib, "cublasLtMatmulAlgoGetHeuristic", &api.algo_get_heuristic) &&
      Resolve(lib, "cublasLtMatmulDescCreate", &api.desc_create) &&
      Resolve(lib, "cublasLtMatmulDescDestroy", &api.desc_destroy) &&
      Resolve(lib, "cublasLtMatmulDescSetAttribute", &api.desc_set_attribute) &&
      Resolve(lib, "cublasLtMatmulPreferenceCreate", &api.preference_create) &&
      Resolve(lib, "cublasLtMatmulPreferenceDestroy", &api.preference_destroy) &&
      Resolve(lib, "cublasLtMatmulPreferenceSetAttribute", &api.preference_set_attribute) &&
      Resolve(lib, "cublasLtMatrixLayoutCreate", &api.layout_create) &&
      Resolve(lib, "cublasLtMatrixLayoutDestroy", &api.layout_destroy);
  if (!ok) {
    api.load_error = "libcublasLt lacks an expected entry point (a CUDA 13 cuBLASLt is needed)";
    return api;
  }
  api.loaded = true;
  return api;
}

}  // namespace

const CublasLtApi& CublasLt() {
  static std::once_flag once;
  static CublasLtApi api;
  std::call_once(once, [] { api = Load(); });
  return api;
}

}  // namespace accel::kernels::cuda
