// The CUDA half of kernels/ops.cc: turns checked op arguments into the
// launch.h params, supplies scratch from the ExecContext, and converts the
// launchers' cudaError_t into absl::Status (the one place that does).
//
// g++ only (uses Abseil); compiled when ACCEL_WITH_CUDA is on. Called only by
// ops.cc after Check<Op> passed. Thread-safe like the launchers.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/ops.h"

#ifndef ACCEL_WITH_CUDA
#define ACCEL_WITH_CUDA 0
#endif

namespace accel::kernels::cuda {

#if ACCEL_WITH_CUDA

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args, const TensorView& output,
                     const TensorView* residual_out);
absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args, const TensorView& output);
absl::Status Linear(const ExecContext& ctx, const LinearArgs& args, const TensorView& output);
int64_t LinearBatchInvariantRows(const LinearArgs& args);
absl::Status Ffn(const ExecContext& ctx, const FfnArgs& args, const TensorView& output);
// args.positions, when set, must be device memory here (Check read a host copy).
absl::Status Rope(const ExecContext& ctx, const RopeArgs& args, const TensorView& q_out,
                  const TensorView* k_out);
absl::Status Quantize(const ExecContext& ctx, const QuantizeArgs& args, const TensorView& values,
                      const TensorView& scales);
absl::Status Dequantize(const ExecContext& ctx, const DequantizeArgs& args,
                        const TensorView& output);
absl::StatusOr<QuantizationErrorStats> QuantizationError(const ExecContext& ctx,
                                                         const QuantizationErrorArgs& args);

// INTERNAL "CUDA error in <what>: <message>" (RESOURCE_EXHAUSTED for out of
// memory); OK for cudaSuccess.
absl::Status CudaStatus(int error, const char* what);

#else  // !ACCEL_WITH_CUDA: every entry point says the backend is absent.

template <typename... Args>
absl::Status NotBuilt(const Args&...) {
  return absl::UnimplementedError(
      "this build has no CUDA backend (configure with -DACCEL_CUDA=ON)");
}
template <typename... Args>
absl::Status RmsNorm(const Args&... args) {
  return NotBuilt(args...);
}
template <typename... Args>
absl::Status SwiGlu(const Args&... args) {
  return NotBuilt(args...);
}
template <typename... Args>
absl::Status Linear(const Args&... args) {
  return NotBuilt(args...);
}
inline int64_t LinearBatchInvariantRows(const LinearArgs&) { return 0; }
template <typename... Args>
absl::Status Ffn(const Args&... args) {
  return NotBuilt(args...);
}
template <typename... Args>
absl::Status Rope(const Args&... args) {
  return NotBuilt(args...);
}
template <typename... Args>
absl::Status Quantize(const Args&... args) {
  return NotBuilt(args...);
}
template <typename... Args>
absl::Status Dequantize(const Args&... args) {
  return NotBuilt(args...);
}
template <typename... Args>
absl::StatusOr<QuantizationErrorStats> QuantizationError(const Args&... args) {
  return NotBuilt(args...);
}

#endif  // ACCEL_WITH_CUDA

}  // namespace accel::kernels::cuda
