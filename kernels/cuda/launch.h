// The CUDA backend's launchers: one per op family, called only from
// kernels/ops.cc after Check<Op> validated the arguments.
//
// This header is included by g++ translation units (ops.cc) and by nvcc
// ones (kernels/cuda/*.cu), so it uses only the CUDA runtime's C API and
// std headers: no Abseil, no protobuf. Every launcher computes its own launch
// configuration, never allocates device memory (scratch comes in through the
// params), never synchronises, and returns the launch's cudaError_t.
// Pointers are device pointers unless a field says otherwise; all tensors are
// dense row-major; element counts and offsets are 64-bit.
//
// Thread-safety: launchers are reentrant; the cuBLAS handles in Blas are per
// (thread, device) and created on first use.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "accel/kernels/cuda_memory.h"

namespace accel::kernels::cuda {

// Element types, numbered as kernels::DType (and accel.v1.DType).
enum class ElemType : int { kF32 = 1, kF16 = 2, kBF16 = 3, kI8 = 4, kI32 = 5, kI64 = 6 };

// ------------------------------------------------------------------ RmsNorm
struct RmsNormParams {
  const void* input = nullptr;     // [rows, cols] of dtype
  const void* residual = nullptr;  // [rows, cols] of dtype, or null
  const void* weight = nullptr;    // [cols] of weight_dtype
  void* output = nullptr;          // [rows, cols] of dtype
  void* residual_out = nullptr;    // [rows, cols] of dtype, or null; may alias residual
  ElemType dtype = ElemType::kF32;
  ElemType weight_dtype = ElemType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-6f;
};
cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream);

// ------------------------------------------------------------------- SwiGlu
struct SwiGluParams {
  const void* gate = nullptr;
  const void* up = nullptr;
  void* output = nullptr;
  ElemType dtype = ElemType::kF32;
  int64_t n = 0;  // elements
};
cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream);

// --------------------------------------------------------------------- Rope
struct RopeParams {
  const void* q = nullptr;  // [batch, seq, q_heads, head_dim]
  void* q_out = nullptr;
  const void* k = nullptr;  // [batch, seq, k_heads, head_dim], or null
  void* k_out = nullptr;
  ElemType dtype = ElemType::kF32;
  int64_t batch = 0, seq = 0, q_heads = 0, k_heads = 0, head_dim = 0;
  const float* cos = nullptr;  // [table_len, head_dim / 2]
  const float* sin = nullptr;
  int64_t table_len = 0;
  // Per-token positions (already checked to lie in the table), or null to
  // use position_offset + s.
  const void* positions = nullptr;
  ElemType positions_dtype = ElemType::kI64;  // kI32 or kI64
  bool positions_per_batch = false;           // [batch, seq] rather than [seq]
  int64_t position_offset = 0;
  bool half_split = false;  // pairs (i, i + D/2) instead of (2i, 2i + 1)
};
cudaError_t LaunchRope(const RopeParams& p, cudaStream_t stream);

// ---------------------------------------------------------------- Quantize
struct QuantizeParams {
  const void* input = nullptr;  // [rows, cols]
  ElemType dtype = ElemType::kF32;
  int64_t rows = 0, cols = 0;
  bool per_row = false;
  int8_t* values = nullptr;  // [rows, cols]
  float* scales = nullptr;   // [rows] per row, [1] per tensor
  // Device int set to 1 when the input holds a NaN or an infinity (the
  // caller zeroes it first and reads it back after the launch).
  int* nonfinite = nullptr;
  // Per tensor only: QuantizeWorkspaceBytes() bytes of scratch.
  void* workspace = nullptr;
};
size_t QuantizeWorkspaceBytes();
cudaError_t LaunchQuantize(const QuantizeParams& p, cudaStream_t stream);

struct DequantizeParams {
  const int8_t* values = nullptr;  // [rows, cols]
  const float* scales = nullptr;   // [rows] per row, [1] per tensor
  bool per_row = false;
  int64_t rows = 0, cols = 0;
  void* output = nullptr;
  ElemType out_dtype = ElemType::kF16;
};
cudaError_t LaunchDequantize(const DequantizeParams& p, cudaStream_t stream);

// Accumulates the QuantizationError statistics into `stats` (device memory,
// QuantErrorStatsCount() doubles, zeroed by the launcher on `stream`); the
// caller copies them back and finishes the formulas on the host with
// FinishQuantizationError.
struct QuantErrorParams {
  const void* original = nullptr;  // [rows, cols]
  ElemType dtype = ElemType::kF32;
  const int8_t* values = nullptr;
  const float* scales = nullptr;
  bool per_row = false;
  int64_t rows = 0, cols = 0;
  double* stats = nullptr;
};
int QuantErrorStatsCount();
cudaError_t LaunchQuantizationError(const QuantErrorParams& p, cudaStream_t stream);
// From the copied-back stats: max_abs, mean_abs, relative_pct, snr_db.
void FinishQuantizationError(const double* host_stats, int64_t elements, double* max_abs,
                             double* mean_abs, double* relative_pct, double* snr_db);

// ---------------------------------------------------------- Linear and Ffn
// output[m, n] = input[m, k] @ weight[n, k]^T (* scale[n] for int8) + bias[n]
struct LinearParams {
  const void* input = nullptr;
  ElemType dtype = ElemType::kF32;  // of input and output
  int64_t m = 0, k = 0, n = 0;
  const void* weight = nullptr;
  ElemType weight_dtype = ElemType::kF32;  // a float type, or kI8 with scales
  const float* scales = nullptr;           // int8 only: [n] per row or [1]
  bool per_row_scales = true;
  const void* bias = nullptr;  // [n] of bias_dtype, or null
  ElemType bias_dtype = ElemType::kF32;
  void* output = nullptr;
  // Scratch of at least LinearWorkspaceBytes(params) bytes.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
size_t LinearWorkspaceBytes(const LinearParams& p);
cudaError_t LaunchLinear(const LinearParams& p, cudaStream_t stream);

// output = w_down(silu(w_gate x + b_gate) * (w_up x + b_up)) + b_down. The
// three LinearParams carry the weights (their input/output fields are
// ignored); m, hidden and inter give the shapes.
struct FfnParams {
  const void* input = nullptr;  // [m, hidden]
  ElemType dtype = ElemType::kF32;
  int64_t m = 0, hidden = 0, inter = 0;
  LinearParams gate, up, down;
  void* output = nullptr;  // [m, hidden]
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
size_t FfnWorkspaceBytes(const FfnParams& p);
cudaError_t LaunchFfn(const FfnParams& p, cudaStream_t stream);

// Device memory (DeviceAlloc, PinnedAlloc, ...): accel/kernels/cuda_memory.h.

}  // namespace accel::kernels::cuda
