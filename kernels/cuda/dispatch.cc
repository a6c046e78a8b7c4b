#include "cuda/dispatch.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "accel/util/status_macros.h"
#include "cuda/launch.h"
#include "cuda/linear.h"

namespace accel::kernels::cuda {
namespace {

ElemType Elem(DType dtype) { return static_cast<ElemType>(dtype); }
cudaStream_t Stream(const ExecContext& ctx) { return static_cast<cudaStream_t>(ctx.stream); }

absl::StatusOr<void*> Scratch(const ExecContext& ctx, size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  if (ctx.scratch == nullptr) {
    return absl::InternalError(absl::StrCat(what, " on CUDA needs scratch memory (", bytes,
                                            " bytes) but the ExecContext has no allocator"));
  }
  return ctx.scratch->Allocate(bytes);
}

LinearParams WeightParams(const WeightView& w, const std::optional<ConstTensorView>& bias) {
  LinearParams p;
  p.n = w.values.shape[0];
  p.k = w.values.shape[1];
  p.weight = w.values.data;
  p.weight_dtype = Elem(w.values.dtype);
  if (w.quantized()) {
    p.scales = w.scales->as<float>();
    p.per_row_scales = w.scales->rank() == 1;
  }
  if (bias.has_value()) {
    p.bias = bias->data;
    p.bias_dtype = Elem(bias->dtype);
  }
  return p;
}

// Copies `count` values back from the device after the stream's work, for
// the ops whose result decides the status (Quantize, QuantizationError).
template <typename T>
absl::Status ReadBack(const ExecContext& ctx, const void* device, T* host, size_t count,
                      const char* what) {
  RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(host, device, count * sizeof(T), cudaMemcpyDeviceToHost, Stream(ctx)), what));
  return CudaStatus(cudaStreamSynchronize(Stream(ctx)), what);
}

}  // namespace

absl::Status CudaStatus(int error, const char* what) {
  const auto e = static_cast<cudaError_t>(error);
  if (e == cudaSuccess) return absl::OkStatus();
  if (e == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of device memory in ", what, ": ", cudaGetErrorString(e)));
  }
  return absl::InternalError(
      absl::StrCat("CUDA error in ", what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
}

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args, const TensorView& output,
                     const TensorView* residual_out) {
  RmsNormParams p;
  p.input = args.input.data;
  p.residual = args.residual.has_value() ? args.residual->data : nullptr;
  p.weight = args.weight.data;
  p.output = output.data;
  p.residual_out = residual_out != nullptr ? residual_out->data : nullptr;
  p.dtype = Elem(args.input.dtype);
  p.weight_dtype = Elem(args.weight.dtype);
  p.rows = args.input.rows();
  p.cols = args.input.last_dim();
  p.eps = args.eps;
  return CudaStatus(LaunchRmsNorm(p, Stream(ctx)), "RmsNorm");
}

absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args, const TensorView& output) {
  SwiGluParams p;
  p.gate = args.gate.data;
  p.up = args.up.data;
  p.output = output.data;
  p.dtype = Elem(args.gate.dtype);
  p.n = args.gate.num_elements();
  return CudaStatus(LaunchSwiGlu(p, Stream(ctx)), "SwiGlu");
}

absl::Status Linear(const ExecContext& ctx, const LinearArgs& args, const TensorView& output) {
  LinearParams p = WeightParams(args.weight, args.bias);
  p.input = args.input.data;
  p.dtype = Elem(args.input.dtype);
  p.m = args.input.rows();
  p.output = output.data;
  p.workspace_bytes = LinearWorkspaceBytes(p);
  ASSIGN_OR_RETURN(p.workspace, Scratch(ctx, p.workspace_bytes, "Linear"));
  return CudaStatus(LaunchLinear(p, Stream(ctx)), "Linear");
}

int64_t LinearBatchInvariantRows(const LinearArgs& args) {
  // The W8A16 small-M kernel's own predicate, for one row of an input as
  // staged (aligned); every m up to its bound then takes that kernel.
  alignas(16) static const char kAlignedRow[16] = {};
  LinearParams p = WeightParams(args.weight, args.bias);
  p.input = kAlignedRow;
  p.dtype = Elem(args.input.dtype);
  p.m = 1;
  return W8A16SkinnySupports(p) ? kW8A16SkinnyMaxRows : 0;
}

absl::Status Ffn(const ExecContext& ctx, const FfnArgs& args, const TensorView& output) {
  FfnParams p;
  p.input = args.input.data;
  p.dtype = Elem(args.input.dtype);
  p.m = args.input.rows();
  p.hidden = args.input.last_dim();
  p.inter = args.w_gate.values.shape[0];
  p.gate = WeightParams(args.w_gate, args.b_gate);
  p.up = WeightParams(args.w_up, args.b_up);
  p.down = WeightParams(args.w_down, args.b_down);
  p.output = output.data;
  p.workspace_bytes = FfnWorkspaceBytes(p);
  ASSIGN_OR_RETURN(p.workspace, Scratch(ctx, p.workspace_bytes, "Ffn"));
  return CudaStatus(LaunchFfn(p, Stream(ctx)), "Ffn");
}

absl::Status Rope(const ExecContext& ctx, const RopeArgs& args, const TensorView& q_out,
                  const TensorView* k_out) {
  RopeParams p;
  p.q = args.q.data;
  p.q_out = q_out.data;
  p.dtype = Elem(args.q.dtype);
  p.batch = args.q.shape[0];
  p.seq = args.q.shape[1];
  p.q_heads = args.q.shape[2];
  p.head_dim = args.q.shape[3];
  if (args.k.has_value()) {
    p.k = args.k->data;
    p.k_out = k_out != nullptr ? k_out->data : nullptr;
    p.k_heads = args.k->shape[2];
  }
  p.cos = args.cos.as<float>();
  p.sin = args.sin.as<float>();
  p.table_len = args.cos.shape[0];
  if (args.positions.has_value()) {
    p.positions = args.positions->data;
    p.positions_dtype = Elem(args.positions->dtype);
    p.positions_per_batch = args.positions->rank() == 2;
  }
  p.position_offset = args.position_offset;
  p.half_split = args.style == RopeStyle::kHalfSplit;
  return CudaStatus(LaunchRope(p, Stream(ctx)), "Rope");
}

absl::Status Quantize(const ExecContext& ctx, const QuantizeArgs& args, const TensorView& values,
                      const TensorView& scales) {
  QuantizeParams p;
  p.input = args.input.data;
  p.dtype = Elem(args.input.dtype);
  p.per_row = args.granularity == Granularity::kPerRow;
  p.rows = p.per_row ? args.input.rows() : 1;
  p.cols = p.per_row ? args.input.last_dim() : args.input.num_elements();
  p.values = values.as<int8_t>();
  p.scales = scales.as<float>();
  const size_t workspace = p.per_row ? 0 : QuantizeWorkspaceBytes();
  ASSIGN_OR_RETURN(void* scratch, Scratch(ctx, workspace + 256, "Quantize"));
  p.nonfinite = static_cast<int*>(scratch);
  p.workspace = workspace > 0 ? static_cast<char*>(scratch) + 256 : nullptr;
  RETURN_IF_ERROR(
      CudaStatus(cudaMemsetAsync(p.nonfinite, 0, sizeof(int), Stream(ctx)), "Quantize"));
  RETURN_IF_ERROR(CudaStatus(LaunchQuantize(p, Stream(ctx)), "Quantize"));
  int nonfinite = 0;
  RETURN_IF_ERROR(ReadBack(ctx, p.nonfinite, &nonfinite, 1, "Quantize"));
  if (nonfinite != 0) {
    return absl::InvalidArgumentError(
        "input: holds a NaN or an infinity; quantization needs finite values");
  }
  return absl::OkStatus();
}

absl::Status Dequantize(const ExecContext& ctx, const DequantizeArgs& args,
                        const TensorView& output) {
  DequantizeParams p;
  p.values = args.values.as<int8_t>();
  p.scales = args.scales.as<float>();
  p.per_row = args.scales.rank() == 1;
  p.rows = p.per_row ? args.values.rows() : 1;
  p.cols = p.per_row ? args.values.last_dim() : args.values.num_elements();
  p.output = output.data;
  p.out_dtype = Elem(args.dtype);
  return CudaStatus(LaunchDequantize(p, Stream(ctx)), "Dequantize");
}

absl::StatusOr<QuantizationErrorStats> QuantizationError(const ExecContext& ctx,
                                                         const QuantizationErrorArgs& args) {
  QuantErrorParams p;
  p.original = args.original.data;
  p.dtype = Elem(args.original.dtype);
  p.values = args.values.as<int8_t>();
  p.scales = args.scales.as<float>();
  p.per_row = args.scales.rank() == 1;
  p.rows = p.per_row ? args.original.rows() : 1;
  p.cols = p.per_row ? args.original.last_dim() : args.original.num_elements();
  const int count = QuantErrorStatsCount();
  ASSIGN_OR_RETURN(void* stats, Scratch(ctx, count * sizeof(double), "QuantizationError"));
  p.stats = static_cast<double*>(stats);
  RETURN_IF_ERROR(CudaStatus(LaunchQuantizationError(p, Stream(ctx)), "QuantizationError"));
  std::vector<double> host(count);
  RETURN_IF_ERROR(ReadBack(ctx, p.stats, host.data(), count, "QuantizationError"));
  QuantizationErrorStats out;
  FinishQuantizationError(host.data(), args.original.num_elements(), &out.max_abs_error,
                          &out.mean_abs_error, &out.relative_error_pct, &out.snr_db);
  return out;
}

}  // namespace accel::kernels::cuda
