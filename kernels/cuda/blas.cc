// cuBLASLt glue for Linear/Ffn (see blas.h).
//
// Our tensors are row-major and cuBLASLt is column-major, so
// D[m, n] = X[m, k] @ W[n, k]^T is computed as the column-major
// D^T[n, m] = op(W)[n, k] @ X^T[k, m] with op = transpose: the "TN" layout
// that every cuBLASLt kernel family supports. The per-output-column int8
// scale is then an alpha vector over the rows of D^T, and the bias a
// per-row epilogue vector.
//
// Descriptors, layouts and the heuristic's algorithm are built once per
// configuration and kept in a per-thread cache: the request path then only
// sets the bias pointer and launches. fp32 inputs use CUBLAS_COMPUTE_32F,
// which never downgrades to TF32 (cuBLASLt uses TF32 only when asked with
// CUBLAS_COMPUTE_32F_FAST_TF32), as the contract's fp32 math requires.
#include "cuda/blas.h"

#include "cuda/cublaslt_loader.h"

#include <cstring>
#include <string>
#include <unordered_map>

namespace accel::kernels::cuda::blas {
namespace {

thread_local std::string last_error;

cudaError_t Fail(cublasStatus_t st, const char* what) {
  last_error = std::string(what) + ": " + LtGetStatusName(st) + " (" + LtGetStatusString(st) + ")";
  switch (st) {
    case CUBLAS_STATUS_SUCCESS:
      return cudaSuccess;
    case CUBLAS_STATUS_ALLOC_FAILED:
      return cudaErrorMemoryAllocation;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return cudaErrorNotSupported;
    case CUBLAS_STATUS_INVALID_VALUE:
      return cudaErrorInvalidValue;
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return cudaErrorInitializationError;
    case CUBLAS_STATUS_EXECUTION_FAILED: {
      // The launch's own error says more (and may be sticky).
      const cudaError_t err = cudaGetLastError();
      return err != cudaSuccess ? err : cudaErrorLaunchFailure;
    }
    default:
      return cudaErrorUnknown;
  }
}

// Largest power of two dividing the address, capped at 256 (cuBLASLt's
// default assumption, which would be wrong for sub-views and row offsets).
uint32_t AlignmentOf(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

struct Key {
  int ab_type, d_type, bias_type;
  bool alpha_vector, bias;
  int64_t m, n, k, ldx, ldw, ldd;
  uint32_t align_x, align_w, align_d;
  size_t workspace_bytes;
  bool operator==(const Key& o) const { return std::memcmp(this, &o, sizeof(Key)) == 0; }
};

struct KeyHash {
  size_t operator()(const Key& key) const {
    // FNV-1a over the bytes (Key is zero-initialised, so padding is zero).
    const auto* p = reinterpret_cast<const unsigned char*>(&key);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(Key); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

// A configuration's descriptors and chosen algorithm (ok = false: cuBLASLt
// has none, remembered so that we ask only once).
struct Plan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  std::unordered_map<Key, Plan, KeyHash> plans;
};

// Per-thread handles and plans; destroyed with the thread.
struct ThreadState {
  std::unordered_map<int, DeviceState> devices;
  ~ThreadState() {
    for (auto& [device, state] : devices) {
      for (auto& [key, plan] : state.plans) {
        if (plan.a) LtMatrixLayoutDestroy(plan.a);
        if (plan.b) LtMatrixLayoutDestroy(plan.b);
        if (plan.d) LtMatrixLayoutDestroy(plan.d);
        if (plan.desc) LtMatmulDescDestroy(plan.desc);
      }
      if (state.handle) LtDestroy(state.handle);
    }
  }
};

thread_local ThreadState thread_state;

cudaError_t GetDeviceState(DeviceState** out) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  DeviceState& state = thread_state.devices[device];
  if (state.handle == nullptr) {
    const cublasStatus_t st = LtCreate(&state.handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
      state.handle = nullptr;
      return Fail(st, "cublasLtCreate");
    }
  }
  *out = &state;
  return cudaSuccess;
}

Key MakeKey(const Gemm& g) {
  Key key;
  std::memset(&key, 0, sizeof key);
  key.ab_type = g.ab_type;
  key.d_type = g.d_type;
  key.bias_type = g.bias != nullptr ? g.bias_type : 0;
  key.alpha_vector = g.alpha_vector != nullptr;
  key.bias = g.bias != nullptr;
  key.m = g.m;
  key.n = g.n;
  key.k = g.k;
  key.ldx = g.ldx;
  key.ldw = g.ldw;
  key.ldd = g.ldd;
  key.align_x = AlignmentOf(g.x);
  key.align_w = AlignmentOf(g.w);
  key.align_d = AlignmentOf(g.d);
  key.workspace_bytes = g.workspace_bytes;
  return key;
}

#define ACCEL_LT_TRY(call)                                     \
  do {                                                         \
    const cublasStatus_t st_ = (call);                         \
    if (st_ != CUBLAS_STATUS_SUCCESS) return Fail(st_, #call); \
  } while (0)

cudaError_t BuildPlan(cublasLtHandle_t handle, const Gemm& g, const Key& key, Plan* plan) {
  ACCEL_LT_TRY(LtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  ACCEL_LT_TRY(
      LtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a));
  ACCEL_LT_TRY(
      LtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b));
  if (key.alpha_vector) {
    const int32_t mode = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO;
    ACCEL_LT_TRY(LtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, &mode,
                                          sizeof mode));
  }
  if (key.bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    ACCEL_LT_TRY(LtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                          sizeof epilogue));
    const int32_t bias_type = g.bias_type;
    ACCEL_LT_TRY(LtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                          &bias_type, sizeof bias_type));
    ACCEL_LT_TRY(LtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                          sizeof g.bias));
  }
  // Column-major views (see the file comment): A = W^T stored [k, n],
  // B = X^T stored [k, m], D = D^T stored [n, m].
  ACCEL_LT_TRY(LtMatrixLayoutCreate(&plan->a, g.ab_type, g.k, g.n, g.ldw));
  ACCEL_LT_TRY(LtMatrixLayoutCreate(&plan->b, g.ab_type, g.k, g.m, g.ldx));
  ACCEL_LT_TRY(LtMatrixLayoutCreate(&plan->d, g.d_type, g.n, g.m, g.ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  ACCEL_LT_TRY(LtMatmulPreferenceCreate(&pref));
  cublasStatus_t st = LtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &g.workspace_bytes, sizeof g.workspace_bytes);
  const struct {
    cublasLtMatmulPreferenceAttributes_t attr;
    uint32_t value;
  } aligns[] = {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_w},
                {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_x},
                {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
                {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
  for (const auto& a : aligns) {
    if (st == CUBLAS_STATUS_SUCCESS) {
      st = LtMatmulPreferenceSetAttribute(pref, a.attr, &a.value, sizeof a.value);
    }
  }
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = LtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->d, plan->d, pref, 1,
                                  &result, &count);
  }
  LtMatmulPreferenceDestroy(pref);
  // NOT_SUPPORTED (or no result) means "no kernel for this configuration":
  // a cached negative answer, not an error.
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && count == 0)) {
    plan->ok = false;
    return cudaSuccess;
  }
  if (st != CUBLAS_STATUS_SUCCESS) return Fail(st, "cublasLtMatmulAlgoGetHeuristic");
  plan->algo = result.algo;
  plan->ok = true;
  return cudaSuccess;
}

cudaError_t GetPlan(const Gemm& g, DeviceState** state_out, Plan** plan_out) {
  DeviceState* state = nullptr;
  const cudaError_t err = GetDeviceState(&state);
  if (err != cudaSuccess) return err;
  const Key key = MakeKey(g);
  auto it = state->plans.find(key);
  if (it == state->plans.end()) {
    Plan plan;
    const cudaError_t build = BuildPlan(state->handle, g, key, &plan);
    if (build != cudaSuccess) {
      // A half-built plan is not cached: free what was made.
      if (plan.a) LtMatrixLayoutDestroy(plan.a);
      if (plan.b) LtMatrixLayoutDestroy(plan.b);
      if (plan.d) LtMatrixLayoutDestroy(plan.d);
      if (plan.desc) LtMatmulDescDestroy(plan.desc);
      return build;
    }
    it = state->plans.emplace(key, plan).first;
  }
  *state_out = state;
  *plan_out = &it->second;
  return cudaSuccess;
}

}  // namespace

size_t WorkspaceBytes(int64_t m, int64_t n, int64_t k) {
  const double flops =
      2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  return flops >= 1e9 ? size_t{32} << 20 : size_t{4} << 20;
}

bool Supported(const Gemm& g) {
  if (g.m == 0 || g.n == 0) return true;
  DeviceState* state = nullptr;
  Plan* plan = nullptr;
  return GetPlan(g, &state, &plan) == cudaSuccess && plan->ok;
}

cudaError_t Run(const Gemm& g, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return cudaSuccess;
  if (g.k <= 0) return cudaErrorInvalidValue;
  DeviceState* state = nullptr;
  Plan* plan = nullptr;
  const cudaError_t err = GetPlan(g, &state, &plan);
  if (err != cudaSuccess) return err;
  if (!plan->ok) {
    last_error = "cuBLASLt has no algorithm for this GEMM configuration";
    return cudaErrorNotSupported;
  }
  if (g.bias != nullptr) {
    ACCEL_LT_TRY(LtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                          sizeof g.bias));
  }
  static const float kOne = 1.0f, kZero = 0.0f;
  // Alpha vector mode reads n alphas from the device and never reads beta.
  const void* alpha = g.alpha_vector != nullptr ? static_cast<const void*>(g.alpha_vector) : &kOne;
  ACCEL_LT_TRY(LtMatmul(state->handle, plan->desc, alpha, g.w, plan->a, g.x, plan->b, &kZero, g.d,
                        plan->d, g.d, plan->d, &plan->algo, g.workspace, g.workspace_bytes,
                        stream));
  return cudaSuccess;
}

const char* LastError() { return last_error.c_str(); }

}  // namespace accel::kernels::cuda::blas
