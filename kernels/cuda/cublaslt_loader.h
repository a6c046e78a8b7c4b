// cuBLASLt, loaded with dlopen on first use instead of linked.
//
// Why: libcublasLt.so carries ~94 KB of static TLS. Linked normally, that TLS
// is part of every thread's static TLS block, and glibc then refuses to
// create threads with small stacks: the metrics endpoint's civetweb workers
// (100 KB stacks) failed to start ("null context when constructing
// CivetServer") in any process that linked cuBLASLt. A library loaded with
// dlopen gets dynamic TLS, allocated only in the threads that use it.
//
// The inline functions below stand for the cuBLASLt entry points of the same
// name without the "cublas" prefix (LtMatmul for cublasLtMatmul): distinct
// names, so argument-dependent lookup can never pick the real symbol. When the library cannot be
// loaded every call returns CUBLAS_STATUS_NOT_INITIALIZED and cublasLtGetStatusString says why.
// Thread-safe (loaded once under std::call_once).
#pragma once

#include <cublasLt.h>

namespace accel::kernels::cuda {

struct CublasLtApi {
  bool loaded = false;
  const char* load_error = "";
  decltype(&::cublasLtCreate) create = nullptr;
  decltype(&::cublasLtDestroy) destroy = nullptr;
  decltype(&::cublasLtGetStatusName) get_status_name = nullptr;
  decltype(&::cublasLtGetStatusString) get_status_string = nullptr;
  decltype(&::cublasLtMatmul) matmul = nullptr;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) algo_get_heuristic = nullptr;
  decltype(&::cublasLtMatmulDescCreate) desc_create = nullptr;
  decltype(&::cublasLtMatmulDescDestroy) desc_destroy = nullptr;
  decltype(&::cublasLtMatmulDescSetAttribute) desc_set_attribute = nullptr;
  decltype(&::cublasLtMatmulPreferenceCreate) preference_create = nullptr;
  decltype(&::cublasLtMatmulPreferenceDestroy) preference_destroy = nullptr;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) preference_set_attribute = nullptr;
  decltype(&::cublasLtMatrixLayoutCreate) layout_create = nullptr;
  decltype(&::cublasLtMatrixLayoutDestroy) layout_destroy = nullptr;
};

// The resolved table (loads the library on the first call).
const CublasLtApi& CublasLt();

inline cublasStatus_t LtCreate(cublasLtHandle_t* handle) {
  const CublasLtApi& lt = CublasLt();
  return lt.loaded ? lt.create(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t LtDestroy(cublasLtHandle_t handle) {
  return CublasLt().loaded ? CublasLt().destroy(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline const char* LtGetStatusName(cublasStatus_t status) {
  return CublasLt().loaded ? CublasLt().get_status_name(status) : "CUBLAS_STATUS_NOT_INITIALIZED";
}
inline const char* LtGetStatusString(cublasStatus_t status) {
  return CublasLt().loaded ? CublasLt().get_status_string(status) : CublasLt().load_error;
}
template <typename... Args>
inline cublasStatus_t LtMatmul(Args... args) {
  return CublasLt().loaded ? CublasLt().matmul(args...) : CUBLAS_STATUS_NOT_INITIALIZED;
}
template <typename... Args>
inline cublasStatus_t LtMatmulAlgoGetHeuristic(Args... args) {
  return CublasLt().loaded ? CublasLt().algo_get_heuristic(args...) : CUBLAS_STATUS_NOT_INITIALIZED;
}
template <typename... Args>
inline cublasStatus_t LtMatmulDescCreate(Args... args) {
  return CublasLt().loaded ? CublasLt().desc_create(args...) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t LtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  return CublasLt().loaded ? CublasLt().desc_destroy(desc) : CUBLAS_STATUS_NOT_INITIALIZED;
}
template <typename... Args>
inline cublasStatus_t LtMatmulDescSetAttribute(Args... args) {
  return CublasLt().loaded ? CublasLt().desc_set_attribute(args...) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t LtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  return CublasLt().loaded ? CublasLt().preference_create(pref) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t LtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  return CublasLt().loaded ? CublasLt().preference_destroy(pref) : CUBLAS_STATUS_NOT_INITIALIZED;
}
template <typename... Args>
inline cublasStatus_t LtMatmulPreferenceSetAttribute(Args... args) {
  return CublasLt().loaded ? CublasLt().preference_set_attribute(args...)
                           : CUBLAS_STATUS_NOT_INITIALIZED;
}
template <typename... Args>
inline cublasStatus_t LtMatrixLayoutCreate(Args... args) {
  return CublasLt().loaded ? CublasLt().layout_create(args...) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t LtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  return CublasLt().loaded ? CublasLt().layout_destroy(layout) : CUBLAS_STATUS_NOT_INITIALIZED;
}

}  // namespace accel::kernels::cuda
