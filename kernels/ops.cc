// Validation of every op's arguments, and dispatch to a backend. This file is
// the only place that chooses between the CPU and the CUDA kernels.
#include "accel/kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "accel/util/status_macros.h"
#include "cpu/kernels.h"

// The kCuda branches call kernels/cuda/dispatch.h, which answers
// UNIMPLEMENTED when the build has no CUDA backend.
#include "cuda/dispatch.h"

namespace accel::kernels {
namespace {

using absl::InvalidArgumentError;
using absl::StrCat;

// ------------------------------------------------------------- messages

std::string DTypeStr(DType d) {
  const int v = static_cast<int>(d);
  if (v < 0 || v > kMaxDTypeValue) return StrCat("DType(", v, ")");
  return DTypeName(d);
}

std::string Shp(const Shape& s) { return ShapeToString(s); }

// A view's shape is sane (rank, extents, element count) and its data is
// present. Every view that reaches a kernel passes here first.
absl::Status CheckView(const char* field, const ConstTensorView& v) {
  if (v.rank() > kMaxRank) {
    return InvalidArgumentError(
        StrCat(field, ": expected rank <= ", kMaxRank, ", found shape ", Shp(v.shape)));
  }
  int64_t n = 1;
  for (int64_t d : v.shape) {
    if (d < 0) {
      return InvalidArgumentError(
          StrCat(field, ": expected non-negative extents, found shape ", Shp(v.shape)));
    }
    // n * d <= kMaxElements, without overflowing.
    if (d != 0 && n > kMaxElements / d) {
      return InvalidArgumentError(StrCat(field, ": shape ", Shp(v.shape),
                                         " has more elements than the limit of ", kMaxElements));
    }
    n *= d;
  }
  if (n > 0 && v.data == nullptr) {
    return InvalidArgumentError(StrCat(field, ": data is null for shape ", Shp(v.shape)));
  }
  return absl::OkStatus();
}

absl::Status CheckFloatTensor(const char* field, const ConstTensorView& v) {
  if (!IsFloat(v.dtype)) {
    return InvalidArgumentError(
        StrCat(field, ": expected FLOAT32, FLOAT16 or BFLOAT16, found ", DTypeStr(v.dtype)));
  }
  return CheckView(field, v);
}

absl::Status ExpectDType(const char* field, const ConstTensorView& v, DType want,
                         const std::string& why) {
  if (v.dtype != want) {
    return InvalidArgumentError(StrCat(field, ": expected ", DTypeStr(want),
                                       why.empty() ? "" : StrCat(" (", why, ")"), ", found ",
                                       DTypeStr(v.dtype)));
  }
  return absl::OkStatus();
}

absl::Status ExpectShape(const char* field, const ConstTensorView& v, const Shape& want,
                         const std::string& why) {
  if (v.shape != want) {
    return InvalidArgumentError(StrCat(field, ": expected shape ", Shp(want),
                                       why.empty() ? "" : StrCat(" (", why, ")"), ", found ",
                                       Shp(v.shape)));
  }
  return absl::OkStatus();
}

absl::Status ExpectRankAtLeast1(const char* field, const ConstTensorView& v, const char* layout) {
  if (v.rank() < 1) {
    return InvalidArgumentError(
        StrCat(field, ": expected shape ", layout, " (rank >= 1), found a 0-d tensor []"));
  }
  return absl::OkStatus();
}

// Scales of an int8 tensor whose [rows, last_dim] view has `rows` rows:
// FLOAT32 [] (per tensor) or [rows] (per row).
absl::Status CheckScales(const char* field, const ConstTensorView& scales, int64_t rows,
                         const std::string& what) {
  RETURN_IF_ERROR(CheckView(field, scales));
  const bool shape_ok = scales.shape.empty() || (scales.rank() == 1 && scales.shape[0] == rows);
  if (scales.dtype != DType::kFloat32 || !shape_ok) {
    return InvalidArgumentError(StrCat(field, ": expected FLOAT32 scales of shape [] or [", rows,
                                       "] (", what, "), found ", DTypeStr(scales.dtype), " ",
                                       Shp(scales.shape)));
  }
  return absl::OkStatus();
}

// A Linear/Ffn weight: rank 2 [rows, cols]; float, or INT8 with FLOAT32
// scales [] or [rows]. want_rows < 0 leaves the row count free.
absl::Status CheckWeight(const char* field, const WeightView& w, int64_t want_rows,
                         int64_t want_cols, const std::string& why) {
  const ConstTensorView& v = w.values;
  if (w.quantized()) {
    if (v.dtype != DType::kInt8) {
      return InvalidArgumentError(
          StrCat(field, ": a quantized weight must hold INT8 values, found ", DTypeStr(v.dtype)));
    }
  } else if (!IsFloat(v.dtype)) {
    return InvalidArgumentError(StrCat(field,
                                       ": expected FLOAT32, FLOAT16 or BFLOAT16, or INT8 with "
                                       "scales, found ",
                                       DTypeStr(v.dtype),
                                       v.dtype == DType::kInt8 ? " without scales" : ""));
  }
  RETURN_IF_ERROR(CheckView(field, v));
  const bool shape_ok =
      v.rank() == 2 && v.shape[1] == want_cols && (want_rows < 0 || v.shape[0] == want_rows);
  if (!shape_ok) {
    const std::string rows = want_rows < 0 ? "N" : StrCat(want_rows);
    return InvalidArgumentError(StrCat(field, ": expected shape [", rows, ", ", want_cols, "] (",
                                       why, "), found ", Shp(v.shape)));
  }
  if (w.quantized()) {
    RETURN_IF_ERROR(CheckScales(field, *w.scales, v.shape[0],
                                StrCat("per tensor or per row of ", Shp(v.shape))));
  }
  return absl::OkStatus();
}

absl::Status CheckBias(const char* field, const std::optional<ConstTensorView>& bias, int64_t n,
                       const std::string& why) {
  if (!bias) return absl::OkStatus();
  RETURN_IF_ERROR(CheckFloatTensor(field, *bias));
  return ExpectShape(field, *bias, Shape{n}, why);
}

Shape WithLastDim(const Shape& s, int64_t last) {
  Shape out = s;
  out.back() = last;
  return out;
}

absl::Status UnknownBackend(Backend b) {
  return absl::InternalError(StrCat("unknown backend ", static_cast<int>(b)));
}

}  // namespace

// ---------------------------------------------------------------- RmsNorm

absl::StatusOr<OutputSpec> CheckRmsNorm(const RmsNormArgs& args) {
  RETURN_IF_ERROR(CheckFloatTensor("input", args.input));
  RETURN_IF_ERROR(ExpectRankAtLeast1("input", args.input, "[..., N]"));
  const int64_t n = args.input.last_dim();
  RETURN_IF_ERROR(CheckFloatTensor("weight", args.weight));
  RETURN_IF_ERROR(ExpectShape("weight", args.weight, Shape{n},
                              StrCat("the last dim of input ", Shp(args.input.shape))));
  if (args.residual) {
    RETURN_IF_ERROR(
        ExpectDType("residual", *args.residual, args.input.dtype, "the dtype of input"));
    RETURN_IF_ERROR(CheckView("residual", *args.residual));
    RETURN_IF_ERROR(
        ExpectShape("residual", *args.residual, args.input.shape, "the shape of input"));
  }
  if (!std::isfinite(args.eps) || args.eps < 0) {
    return InvalidArgumentError(
        StrCat("eps: expected a finite value >= 0, found ", absl::StrCat(args.eps)));
  }
  return OutputSpec{args.input.dtype, args.input.shape};
}

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args, const TensorView& output,
                     const TensorView* residual_out) {
  switch (ctx.backend) {
    case Backend::kCpu:
      cpu::RmsNorm(args, output, residual_out);
      return absl::OkStatus();
    case Backend::kCuda:
      return cuda::RmsNorm(ctx, args, output, residual_out);
  }
  return UnknownBackend(ctx.backend);
}

// ----------------------------------------------------------------- SwiGlu

absl::StatusOr<OutputSpec> CheckSwiGlu(const SwiGluArgs& args) {
  RETURN_IF_ERROR(CheckFloatTensor("gate", args.gate));
  RETURN_IF_ERROR(ExpectDType("up", args.up, args.gate.dtype, "the dtype of gate"));
  RETURN_IF_ERROR(CheckView("up", args.up));
  RETURN_IF_ERROR(ExpectShape("up", args.up, args.gate.shape, "the shape of gate"));
  return OutputSpec{args.gate.dtype, args.gate.shape};
}

absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args, const TensorView& output) {
  switch (ctx.backend) {
    case Backend::kCpu:
      cpu::SwiGlu(args, output);
      return absl::OkStatus();
    case Backend::kCuda:
      return cuda::SwiGlu(ctx, args, output);
  }
  return UnknownBackend(ctx.backend);
}

// ----------------------------------------------------------------- Linear

absl::StatusOr<OutputSpec> CheckLinear(const LinearArgs& args) {
  RETURN_IF_ERROR(CheckFloatTensor("input", args.input));
  RETURN_IF_ERROR(ExpectRankAtLeast1("input", args.input, "[..., K]"));
  const int64_t k = args.input.last_dim();
  RETURN_IF_ERROR(CheckWeight("weight", args.weight, -1, k,
                              StrCat("K = the last dim of input ", Shp(args.input.shape))));
  const int64_t n = args.weight.values.shape[0];
  RETURN_IF_ERROR(CheckBias("bias", args.bias, n,
                            StrCat("N = the first dim of weight ", Shp(args.weight.values.shape))));
  return OutputSpec{args.input.dtype, WithLastDim(args.input.shape, n)};
}

absl::Status Linear(const ExecContext& ctx, const LinearArgs& args, const TensorView& output) {
  switch (ctx.backend) {
    case Backend::kCpu:
      return cpu::Linear(ctx, args, output);
    case Backend::kCuda:
      return cuda::Linear(ctx, args, output);
  }
  return UnknownBackend(ctx.backend);
}

int64_t LinearBatchInvariantRows(Backend backend, const LinearArgs& args) {
  return backend == Backend::kCuda ? cuda::LinearBatchInvariantRows(args) : 0;
}

// -------------------------------------------------------------------- Ffn

absl::StatusOr<OutputSpec> CheckFfn(const FfnArgs& args) {
  RETURN_IF_ERROR(CheckFloatTensor("input", args.input));
  RETURN_IF_ERROR(ExpectRankAtLeast1("input", args.input, "[..., H]"));
  const int64_t h = args.input.last_dim();
  const std::string input_h = StrCat("H = the last dim of input ", Shp(args.input.shape));
  RETURN_IF_ERROR(CheckWeight("w_gate", args.w_gate, -1, h, StrCat("[I, H] with ", input_h)));
  const int64_t i = args.w_gate.values.shape[0];
  const std::string gate_i = StrCat("I = the first dim of w_gate ", Shp(args.w_gate.values.shape));
  RETURN_IF_ERROR(CheckWeight("w_up", args.w_up, i, h, StrCat("the shape of w_gate")));
  RETURN_IF_ERROR(
      CheckWeight("w_down", args.w_down, h, i, StrCat("[H, I] with ", input_h, " and ", gate_i)));
  RETURN_IF_ERROR(CheckBias("b_gate", args.b_gate, i, gate_i));
  RETURN_IF_ERROR(CheckBias("b_up", args.b_up, i, gate_i));
  RETURN_IF_ERROR(CheckBias("b_down", args.b_down, h, input_h));
  return OutputSpec{args.input.dtype, args.input.shape};
}

int64_t FfnBatchInvariantRows(Backend backend, const FfnArgs& args) {
  // One row of each projection's input: only dtype and width matter.
  const ConstTensorView row_h{args.input.dtype, {1, args.input.last_dim()}, args.input.data};
  const ConstTensorView row_i{args.input.dtype, {1, args.w_gate.values.shape[0]}, args.input.data};
  return std::min({LinearBatchInvariantRows(backend, {row_h, args.w_gate, args.b_gate}),
                   LinearBatchInvariantRows(backend, {row_h, args.w_up, args.b_up}),
                   LinearBatchInvariantRows(backend, {row_i, args.w_down, args.b_down})});
}

absl::Status Ffn(const ExecContext& ctx, const FfnArgs& args, const TensorView& output) {
  switch (ctx.backend) {
    case Backend::kCpu:
      return cpu::Ffn(ctx, args, output);
    case Backend::kCuda:
      return cuda::Ffn(ctx, args, output);
  }
  return UnknownBackend(ctx.backend);
}

// ------------------------------------------------------------------- Rope

absl::StatusOr<OutputSpec> CheckRope(const RopeArgs& args) {
  const ConstTensorView& q = args.q;
  RETURN_IF_ERROR(CheckFloatTensor("q", q));
  if (q.rank() != 4) {
    return InvalidArgumentError(
        StrCat("q: expected rank 4 [B, S, Hq, D], found shape ", Shp(q.shape)));
  }
  const int64_t b = q.shape[0], s = q.shape[1], hq = q.shape[2], d = q.shape[3];
  if (d < 2 || d % 2 != 0) {
    return InvalidArgumentError(StrCat("q: expected an even head_dim D >= 2 (the last dim), found ",
                                       d, " in shape ", Shp(q.shape)));
  }
  if (args.k) {
    const ConstTensorView& k = *args.k;
    RETURN_IF_ERROR(ExpectDType("k", k, q.dtype, "the dtype of q"));
    RETURN_IF_ERROR(CheckView("k", k));
    if (k.rank() != 4 || k.shape[0] != b || k.shape[1] != s || k.shape[3] != d) {
      return InvalidArgumentError(StrCat("k: expected shape [", b, ", ", s, ", Hk, ", d,
                                         "] (B, S and D of q ", Shp(q.shape), "), found ",
                                         Shp(k.shape)));
    }
    if (k.shape[2] > hq) {
      return InvalidArgumentError(StrCat("k: expected Hk <= Hq = ", hq, " (heads of q ",
                                         Shp(q.shape), "), found Hk = ", k.shape[2]));
    }
  }
  RETURN_IF_ERROR(ExpectDType("cos", args.cos, DType::kFloat32, ""));
  RETURN_IF_ERROR(CheckView("cos", args.cos));
  if (args.cos.rank() != 2 || args.cos.shape[1] != d / 2) {
    return InvalidArgumentError(StrCat("cos: expected shape [P, ", d / 2,
                                       "] (P positions, D/2 of q ", Shp(q.shape), "), found ",
                                       Shp(args.cos.shape)));
  }
  RETURN_IF_ERROR(ExpectDType("sin", args.sin, DType::kFloat32, ""));
  RETURN_IF_ERROR(CheckView("sin", args.sin));
  RETURN_IF_ERROR(ExpectShape("sin", args.sin, args.cos.shape, "the shape of cos"));
  const int64_t p = args.cos.shape[0];

  if (args.positions) {
    const ConstTensorView& pos = *args.positions;
    if (pos.dtype != DType::kInt32 && pos.dtype != DType::kInt64) {
      return InvalidArgumentError(
          StrCat("positions: expected INT32 or INT64, found ", DTypeStr(pos.dtype)));
    }
    RETURN_IF_ERROR(CheckView("positions", pos));
    const bool per_batch = pos.rank() == 2;
    if (!(pos.shape == Shape{s} || pos.shape == Shape{b, s})) {
      return InvalidArgumentError(StrCat("positions: expected shape [", s, "] or [", b, ", ", s,
                                         "] (S or B, S of q ", Shp(q.shape), "), found ",
                                         Shp(pos.shape)));
    }
    if (args.position_offset != 0) {
      return InvalidArgumentError(StrCat(
          "position_offset: expected 0 when positions is given, found ", args.position_offset));
    }
    const int64_t n = pos.num_elements();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = cpu::PositionAt(pos, i);
      if (v < 0 || v >= p) {
        const std::string index = per_batch ? StrCat(i / s, ", ", i % s) : StrCat(i);
        return InvalidArgumentError(StrCat("positions[", index, "]: position ", v,
                                           " is outside the cache of ", p, " positions"));
      }
    }
  } else if (s > 0 && b > 0) {
    const int64_t first = args.position_offset;
    // first + s - 1 < p, without overflow (s >= 1, p >= 0).
    if (first < 0 || first > p - s) {
      const int64_t last = first > std::numeric_limits<int64_t>::max() - (s - 1)
                               ? std::numeric_limits<int64_t>::max()
                               : first + (s - 1);
      return InvalidArgumentError(StrCat("position_offset: positions ", first, "..", last,
                                         " are outside the cache of ", p, " positions"));
    }
  }
  return OutputSpec{q.dtype, q.shape};
}

absl::Status Rope(const ExecContext& ctx, const RopeArgs& args, const TensorView& q_out,
                  const TensorView* k_out) {
  switch (ctx.backend) {
    case Backend::kCpu:
      cpu::Rope(args, q_out, k_out);
      return absl::OkStatus();
    case Backend::kCuda:
      return cuda::Rope(ctx, args, q_out, k_out);
  }
  return UnknownBackend(ctx.backend);
}

// Upper bounds that keep a cache far below any memory limit's overflow:
// 16M positions, head_dim 65536 and 2^32 entries per table (16 GiB).
constexpr int64_t kMaxRopeSeqLen = int64_t{1} << 24;
constexpr int64_t kMaxRopeHeadDim = int64_t{1} << 16;
constexpr int64_t kMaxRopeEntries = int64_t{1} << 32;

absl::Status CheckRopeCacheParams(int64_t max_seq_len, int64_t head_dim, double base) {
  if (max_seq_len < 1 || max_seq_len > kMaxRopeSeqLen) {
    return InvalidArgumentError(
        StrCat("max_seq_len: expected 1..", kMaxRopeSeqLen, ", found ", max_seq_len));
  }
  if (head_dim < 2 || head_dim % 2 != 0 || head_dim > kMaxRopeHeadDim) {
    return InvalidArgumentError(
        StrCat("head_dim: expected an even value in 2..", kMaxRopeHeadDim, ", found ", head_dim));
  }
  if (max_seq_len * (head_dim / 2) > kMaxRopeEntries) {
    return InvalidArgumentError(StrCat("max_seq_len: a cache of ", max_seq_len, " x ", head_dim / 2,
                                       " entries exceeds the limit of ", kMaxRopeEntries));
  }
  if (!std::isfinite(base) || base <= 0 || base == 1) {
    return InvalidArgumentError(
        StrCat("base: expected a finite value > 0 and != 1, found ", absl::StrCat(base)));
  }
  return absl::OkStatus();
}

void BuildRopeCache(int64_t max_seq_len, int64_t head_dim, double base, float* cos, float* sin) {
  cpu::BuildRopeCache(max_seq_len, head_dim, base, cos, sin);
}

// --------------------------------------------------------------- Quantize

absl::StatusOr<QuantizeSpec> CheckQuantize(const QuantizeArgs& args) {
  RETURN_IF_ERROR(CheckFloatTensor("input", args.input));
  QuantizeSpec spec;
  spec.values = {DType::kInt8, args.input.shape};
  switch (args.granularity) {
    case Granularity::kPerTensor:
      spec.scales = {DType::kFloat32, Shape{}};
      break;
    case Granularity::kPerRow:
      if (args.input.rank() < 1) {
        return InvalidArgumentError(
            "input: PER_ROW quantization needs rank >= 1 (one scale per row of the [rows, last "
            "dim] view), found a 0-d tensor []");
      }
      spec.scales = {DType::kFloat32, Shape{args.input.rows()}};
      break;
    default:
      return InvalidArgumentError(StrCat("granularity: expected PER_TENSOR or PER_ROW, found ",
                                         static_cast<int>(args.granularity)));
  }
  return spec;
}

absl::Status Quantize(const ExecContext& ctx, const QuantizeArgs& args, const TensorView& values,
                      const TensorView& scales) {
  switch (ctx.backend) {
    case Backend::kCpu:
      return cpu::Quantize(args, values, scales);
    case Backend::kCuda:
      return cuda::Quantize(ctx, args, values, scales);
  }
  return UnknownBackend(ctx.backend);
}

// ------------------------------------------------------------- Dequantize

absl::StatusOr<OutputSpec> CheckDequantize(const DequantizeArgs& args) {
  RETURN_IF_ERROR(ExpectDType("values", args.values, DType::kInt8, ""));
  RETURN_IF_ERROR(CheckView("values", args.values));
  RETURN_IF_ERROR(CheckScales("scales", args.scales, args.values.rows(),
                              StrCat("per tensor or per row of values ", Shp(args.values.shape))));
  if (!IsFloat(args.dtype)) {
    return InvalidArgumentError(
        StrCat("dtype: expected FLOAT32, FLOAT16 or BFLOAT16, found ", DTypeStr(args.dtype)));
  }
  return OutputSpec{args.dtype, args.values.shape};
}

absl::Status Dequantize(const ExecContext& ctx, const DequantizeArgs& args,
                        const TensorView& output) {
  switch (ctx.backend) {
    case Backend::kCpu:
      cpu::Dequantize(args, output);
      return absl::OkStatus();
    case Backend::kCuda:
      return cuda::Dequantize(ctx, args, output);
  }
  return UnknownBackend(ctx.backend);
}

// ------------------------------------------------------ QuantizationError

absl::Status CheckQuantizationError(const QuantizationErrorArgs& args) {
  RETURN_IF_ERROR(CheckFloatTensor("original", args.original));
  RETURN_IF_ERROR(ExpectDType("values", args.values, DType::kInt8, ""));
  RETURN_IF_ERROR(CheckView("values", args.values));
  RETURN_IF_ERROR(ExpectShape("values", args.values, args.original.shape, "the shape of original"));
  RETURN_IF_ERROR(CheckScales("scales", args.scales, args.values.rows(),
                              StrCat("per tensor or per row of values ", Shp(args.values.shape))));
  return absl::OkStatus();
}

absl::StatusOr<QuantizationErrorStats> QuantizationError(const ExecContext& ctx,
                                                         const QuantizationErrorArgs& args) {
  switch (ctx.backend) {
    case Backend::kCpu:
      return cpu::QuantizationError(args);
    case Backend::kCuda:
      return cuda::QuantizationError(ctx, args);
  }
  return UnknownBackend(ctx.backend);
}

}  // namespace accel::kernels
