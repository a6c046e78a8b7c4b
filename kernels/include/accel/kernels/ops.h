// The op library: one Check and one run function per op of API.md.
//
// Check<Op>(args) validates shapes and dtypes and returns the output's
// dtype and shape; its messages name the request field (the same names as
// the proto) with what was expected and what was found, so the service can
// return them to the client unchanged. The run function assumes its args
// passed Check and that the outputs have the checked shapes; it dispatches
// to the backend named by the ExecContext (kernels/ops.cc is the only place
// that chooses between CPU and CUDA) and returns INTERNAL for device errors.
//
// Numeric contract (API.md): math in fp32, one rounding at the end, output
// dtype = dtype of the main input; weights may be any float dtype.
//
// Thread-safety: every function is reentrant; concurrent calls must not
// write the same output memory.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/tensor.h"

namespace accel::kernels {

enum class Backend { kCpu, kCuda };

// Per-call scratch memory on the backend's device, released when the call's
// owner drops it. Backends that need none may get a null allocator.
class ScratchAllocator {
 public:
  virtual ~ScratchAllocator() = default;
  // Returns at least `bytes` bytes aligned to 256, valid until the allocator
  // is destroyed or reset by its owner.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
};

// Where and how an op runs. Pointers in the views must live on this backend.
struct ExecContext {
  Backend backend = Backend::kCpu;
  // cudaStream_t for Backend::kCuda; unused on the CPU.
  void* stream = nullptr;
  // Scratch for ops that need intermediates (Ffn, Linear on the CPU use the
  // heap when this is null).
  ScratchAllocator* scratch = nullptr;
};

// Result description from a Check function.
struct OutputSpec {
  DType dtype = DType::kUnspecified;
  Shape shape;
};

// A weight operand: a float tensor, or an int8 tensor with fp32 scales
// ([] per tensor or [N] per output row).
struct WeightView {
  ConstTensorView values;
  std::optional<ConstTensorView> scales;  // set iff quantized
  bool quantized() const { return scales.has_value(); }
};

// ---------------------------------------------------------------- RmsNorm
struct RmsNormArgs {
  ConstTensorView input;                    // [..., N] float
  ConstTensorView weight;                   // [N] any float dtype
  std::optional<ConstTensorView> residual;  // shape and dtype of input
  float eps = 1e-6f;                        // finite, >= 0
};
absl::StatusOr<OutputSpec> CheckRmsNorm(const RmsNormArgs& args);
// With a residual, s = round(input + residual) is written to *residual_out
// when it is non-null (it may alias args.residual); output = RmsNorm(s).
absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args, const TensorView& output,
                     const TensorView* residual_out);

// ----------------------------------------------------------------- SwiGlu
struct SwiGluArgs {
  ConstTensorView gate;  // any shape, float
  ConstTensorView up;    // shape and dtype of gate
};
absl::StatusOr<OutputSpec> CheckSwiGlu(const SwiGluArgs& args);
absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args, const TensorView& output);

// ----------------------------------------------------------------- Linear
struct LinearArgs {
  ConstTensorView input;                // [..., K] float
  WeightView weight;                    // [N, K]
  std::optional<ConstTensorView> bias;  // [N] any float dtype
};
absl::StatusOr<OutputSpec> CheckLinear(const LinearArgs& args);
absl::Status Linear(const ExecContext& ctx, const LinearArgs& args, const TensorView& output);
// Rows up to which Linear on `backend` computes each output row from its
// own input row alone, with the same bits whatever the row count (given
// checked args, the input 16-byte aligned as staged inputs are): up to
// that many rows of several calls may then run as one launch. 0 where no
// such bound holds: on the CPU (OpenBLAS blocks by M) and for float
// weights on a GPU (cuBLAS chooses its kernel by M). On a GPU, int8
// weights on the W8A16 small-M kernel: 32 (tests/kernels/cuda_linear_test
// checks row ranges at every offset of a 32-row call bit for bit).
int64_t LinearBatchInvariantRows(Backend backend, const LinearArgs& args);

// -------------------------------------------------------------------- Ffn
struct FfnArgs {
  ConstTensorView input;                        // [..., H] float
  WeightView w_gate;                            // [I, H]
  WeightView w_up;                              // [I, H]
  WeightView w_down;                            // [H, I]
  std::optional<ConstTensorView> b_gate, b_up;  // [I]
  std::optional<ConstTensorView> b_down;        // [H]
};
absl::StatusOr<OutputSpec> CheckFfn(const FfnArgs& args);
absl::Status Ffn(const ExecContext& ctx, const FfnArgs& args, const TensorView& output);
// As LinearBatchInvariantRows, for the whole block (checked args): three
// Linear calls and an elementwise SwiGLU per row, so the smallest bound of
// the three (the down projection reads the intermediate in the input dtype).
int64_t FfnBatchInvariantRows(Backend backend, const FfnArgs& args);

// ------------------------------------------------------------------- Rope
enum class RopeStyle { kInterleaved = 0, kHalfSplit = 1 };

struct RopeArgs {
  ConstTensorView q;                         // [B, S, Hq, D] float, D even
  std::optional<ConstTensorView> k;          // [B, S, Hk, D], dtype of q, Hk <= Hq
  ConstTensorView cos;                       // [P, D/2] FLOAT32
  ConstTensorView sin;                       // [P, D/2] FLOAT32
  int64_t position_offset = 0;               // used when positions is absent
  std::optional<ConstTensorView> positions;  // INT32/INT64 [S] or [B, S], host memory
  RopeStyle style = RopeStyle::kInterleaved;
};
// Also checks every position against the cache (positions must be readable
// on the host). Returns the spec of the q output; k's output has k's shape.
absl::StatusOr<OutputSpec> CheckRope(const RopeArgs& args);
absl::Status Rope(const ExecContext& ctx, const RopeArgs& args, const TensorView& q_out,
                  const TensorView* k_out);

// Host-only: cos/sin tables of [max_seq_len, head_dim / 2] with angle
// p * base^(-2i / head_dim), computed in fp64 and rounded once to fp32.
absl::Status CheckRopeCacheParams(int64_t max_seq_len, int64_t head_dim, double base);
void BuildRopeCache(int64_t max_seq_len, int64_t head_dim, double base, float* cos, float* sin);

// --------------------------------------------------------------- Quantize
enum class Granularity { kPerTensor = 0, kPerRow = 1 };

struct QuantizeArgs {
  ConstTensorView input;  // float, any shape (rank >= 1 for kPerRow)
  Granularity granularity = Granularity::kPerTensor;
};
struct QuantizeSpec {
  OutputSpec values;  // INT8, shape of input
  OutputSpec scales;  // FLOAT32, [] or [rows]
};
absl::StatusOr<QuantizeSpec> CheckQuantize(const QuantizeArgs& args);
// INVALID_ARGUMENT if the input holds a NaN or an infinity; the outputs are
// then unspecified.
absl::Status Quantize(const ExecContext& ctx, const QuantizeArgs& args, const TensorView& values,
                      const TensorView& scales);

// ------------------------------------------------------------- Dequantize
struct DequantizeArgs {
  ConstTensorView values;  // INT8
  ConstTensorView scales;  // FLOAT32 [] or [rows of values]
  DType dtype = DType::kFloat16;
};
absl::StatusOr<OutputSpec> CheckDequantize(const DequantizeArgs& args);
absl::Status Dequantize(const ExecContext& ctx, const DequantizeArgs& args,
                        const TensorView& output);

// ------------------------------------------------------ QuantizationError
struct QuantizationErrorArgs {
  ConstTensorView original;  // float
  ConstTensorView values;    // INT8, shape of original
  ConstTensorView scales;    // FLOAT32 [] or [rows]
};
struct QuantizationErrorStats {
  double max_abs_error = 0;
  double mean_abs_error = 0;
  double relative_error_pct = 0;
  double snr_db = 0;
};
absl::Status CheckQuantizationError(const QuantizationErrorArgs& args);
absl::StatusOr<QuantizationErrorStats> QuantizationError(const ExecContext& ctx,
                                                         const QuantizationErrorArgs& args);

}  // namespace accel::kernels
