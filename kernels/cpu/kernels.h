// The CPU backend's entry points, one per op of accel/kernels/ops.h.
//
// Called only from kernels/ops.cc after the op's Check function passed, with
// outputs of the checked shapes in host memory. Each function is reentrant
// and multi-threaded internally (cpu/parallel.h; Linear and Ffn also through
// OpenBLAS). Thread-safety as in ops.h: concurrent calls must not write the
// same output memory.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/ops.h"

namespace accel::kernels::cpu {

void RmsNorm(const RmsNormArgs& args, const TensorView& output, const TensorView* residual_out);
void SwiGlu(const SwiGluArgs& args, const TensorView& output);
absl::Status Linear(const ExecContext& ctx, const LinearArgs& args, const TensorView& output);
absl::Status Ffn(const ExecContext& ctx, const FfnArgs& args, const TensorView& output);
void Rope(const RopeArgs& args, const TensorView& q_out, const TensorView* k_out);
void BuildRopeCache(int64_t max_seq_len, int64_t head_dim, double base, float* cos, float* sin);
absl::Status Quantize(const QuantizeArgs& args, const TensorView& values, const TensorView& scales);
void Dequantize(const DequantizeArgs& args, const TensorView& output);
QuantizationErrorStats QuantizationError(const QuantizationErrorArgs& args);

// Whether the kernels run their AVX-512 forms on this machine (see
// cpu/simd512.h; ACCEL_CPU_ISA=avx2 forces the AVX2 ones). Decided once.
bool UsesAvx512();

// Reads position i of a Rope positions tensor (INT32 or INT64).
inline int64_t PositionAt(const ConstTensorView& positions, int64_t i) {
  return positions.dtype == DType::kInt32 ? positions.as<int32_t>()[i] : positions.as<int64_t>()[i];
}

}  // namespace accel::kernels::cpu
