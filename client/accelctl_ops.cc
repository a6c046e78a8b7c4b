// accelctl subcommands for the ops: each reads its inputs from .npy files (or
// resident tensors given as @name), calls one RPC and writes the results as
// .npy files (or keeps them resident with --output-name).
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "accel/util/status_macros.h"
#include "client/accelctl_io.h"

namespace accel::accelctl {
namespace {

using kernels::DType;

// Flags every op subcommand with a tensor result takes.
const FlagSpec kDTypeFlag{"dtype"};
const FlagSpec kOutputNameFlag{"output-name"};

// Writes `tensor` to the positional argument `out_index`, or reports it
// stored when --output-name kept it on the server.
absl::Status EmitResult(const ParsedArgs& args, size_t out_index, const v1::Tensor& tensor) {
  if (std::optional<std::string> name = args.Get("output-name")) {
    PrintStored(*name, tensor);
    return absl::OkStatus();
  }
  return WriteResult(args.positional[out_index], tensor);
}

absl::Status Exclusive(const ParsedArgs& args, const char* a, const char* b) {
  if (args.Has(a) && args.Has(b)) {
    return UsageError(absl::StrCat("--", a, " and --", b, " cannot be used together"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Required(const ParsedArgs& args, const std::string& flag) {
  std::optional<std::string> value = args.Get(flag);
  if (!value || value->empty()) return UsageError(absl::StrCat("--", flag, " is required"));
  return *value;
}

absl::Status RunRmsNorm(Context& context, const ParsedArgs& args) {
  RETURN_IF_ERROR(CheckOutputArgs(args, 2, 1, "output-name"));
  RETURN_IF_ERROR(Exclusive(args, "residual-out", "residual-output-name"));
  const std::optional<std::string> residual = args.Get("residual");
  const std::optional<std::string> residual_out = args.Get("residual-out");
  const std::string residual_name = args.Get("residual-output-name").value_or("");
  if (!residual && (residual_out || !residual_name.empty())) {
    return UsageError("--residual-out and --residual-output-name need --residual");
  }
  v1::RmsNormRequest request;
  ASSIGN_OR_RETURN(std::optional<double> eps, args.GetDouble("eps"));
  if (eps) request.set_eps(static_cast<float>(*eps));
  ASSIGN_OR_RETURN(std::optional<DType> cast, args.GetDType("dtype"));
  ASSIGN_OR_RETURN(*request.mutable_input(), InputRef(args.positional[0], cast));
  ASSIGN_OR_RETURN(*request.mutable_weight(), InputRef(args.positional[1], cast));
  if (residual) {
    ASSIGN_OR_RETURN(*request.mutable_residual(), InputRef(*residual, cast));
  }
  request.set_return_residual(residual_out.has_value());
  request.set_residual_output_name(residual_name);
  request.set_output_name(args.Get("output-name").value_or(""));

  ASSIGN_OR_RETURN(v1::RmsNormResponse response, context.client->RmsNorm(request));
  RETURN_IF_ERROR(EmitResult(args, 2, response.output()));
  if (residual_out) return WriteResult(*residual_out, response.residual());
  if (!residual_name.empty()) PrintStored(residual_name, response.residual());
  return absl::OkStatus();
}

absl::Status RunSwiGlu(Context& context, const ParsedArgs& args) {
  RETURN_IF_ERROR(CheckOutputArgs(args, 2, 1, "output-name"));
  ASSIGN_OR_RETURN(std::optional<DType> cast, args.GetDType("dtype"));
  v1::SwiGluRequest request;
  ASSIGN_OR_RETURN(*request.mutable_gate(), InputRef(args.positional[0], cast));
  ASSIGN_OR_RETURN(*request.mutable_up(), InputRef(args.positional[1], cast));
  request.set_output_name(args.Get("output-name").value_or(""));
  ASSIGN_OR_RETURN(v1::SwiGluResponse response, context.client->SwiGlu(request));
  return EmitResult(args, 2, response.output());
}

absl::Status RunLinear(Context& context, const ParsedArgs& args) {
  RETURN_IF_ERROR(CheckOutputArgs(args, 2, 1, "output-name"));
  ASSIGN_OR_RETURN(std::optional<DType> cast, args.GetDType("dtype"));
  v1::LinearRequest request;
  ASSIGN_OR_RETURN(*request.mutable_input(), InputRef(args.positional[0], cast));
  request.set_weight(ResidentName(args.positional[1]));
  request.set_bias(ResidentName(args.Get("bias").value_or("")));
  request.set_output_name(args.Get("output-name").value_or(""));
  ASSIGN_OR_RETURN(v1::LinearResponse response, context.client->Linear(request));
  return EmitResult(args, 2, response.output());
}

absl::Status RunFfn(Context& context, const ParsedArgs& args) {
  RETURN_IF_ERROR(CheckOutputArgs(args, 1, 1, "output-name"));
  ASSIGN_OR_RETURN(std::optional<DType> cast, args.GetDType("dtype"));
  v1::FfnRequest request;
  ASSIGN_OR_RETURN(*request.mutable_input(), InputRef(args.positional[0], cast));
  ASSIGN_OR_RETURN(std::string w_gate, Required(args, "w-gate"));
  ASSIGN_OR_RETURN(std::string w_up, Required(args, "w-up"));
  ASSIGN_OR_RETURN(std::string w_down, Required(args, "w-down"));
  request.set_w_gate(ResidentName(w_gate));
  request.set_w_up(ResidentName(w_up));
  request.set_w_down(ResidentName(w_down));
  request.set_b_gate(ResidentName(args.Get("b-gate").value_or("")));
  request.set_b_up(ResidentName(args.Get("b-up").value_or("")));
  request.set_b_down(ResidentName(args.Get("b-down").value_or("")));
  request.set_output_name(args.Get("output-name").value_or(""));
  ASSIGN_OR_RETURN(v1::FfnResponse response, context.client->Ffn(request));
  return EmitResult(args, 1, response.output());
}

absl::Status RunRope(Context& context, const ParsedArgs& args) {
  // Check the whole command line before reading any file.
  RETURN_IF_ERROR(CheckOutputArgs(args, 1, 1, "output-name"));
  RETURN_IF_ERROR(Exclusive(args, "k-out", "k-output-name"));
  RETURN_IF_ERROR(Exclusive(args, "offset", "positions"));
  RETURN_IF_ERROR(Exclusive(args, "cache", "cos"));
  RETURN_IF_ERROR(Exclusive(args, "cache", "sin"));
  const std::optional<std::string> k = args.Get("k");
  const std::optional<std::string> k_out = args.Get("k-out");
  const std::string k_name = args.Get("k-output-name").value_or("");
  if (k && !k_out && k_name.empty()) return UsageError("--k needs --k-out or --k-output-name");
  if (!k && (k_out || !k_name.empty())) return UsageError("--k-out and --k-output-name need --k");
  if (!args.Has("cache") && !(args.Has("cos") && args.Has("sin"))) {
    return UsageError("give --cache NAME, or both --cos C.npy and --sin S.npy");
  }
  v1::RopeRequest request;
  const std::string style = args.Get("style").value_or("interleaved");
  if (style == "interleaved") {
    request.set_style(v1::INTERLEAVED);
  } else if (style == "half_split" || style == "half-split") {
    request.set_style(v1::HALF_SPLIT);
  } else {
    return UsageError(absl::StrCat("--style expects interleaved or half_split, got '", style, "'"));
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> offset, args.GetInt("offset"));
  if (offset) request.set_position_offset(*offset);
  ASSIGN_OR_RETURN(std::optional<DType> cast, args.GetDType("dtype"));

  ASSIGN_OR_RETURN(*request.mutable_q(), InputRef(args.positional[0], cast));
  if (k) {
    ASSIGN_OR_RETURN(*request.mutable_k(), InputRef(*k, cast));
  }
  request.set_k_output_name(k_name);
  if (std::optional<std::string> cache = args.Get("cache")) {
    request.set_cache(ResidentName(*cache));
  } else {
    // The tables are FLOAT32 by contract: never cast them with --dtype.
    ASSIGN_OR_RETURN(*request.mutable_cos(), InputRef(*args.Get("cos"), std::nullopt));
    ASSIGN_OR_RETURN(*request.mutable_sin(), InputRef(*args.Get("sin"), std::nullopt));
  }
  if (std::optional<std::string> positions = args.Get("positions")) {
    ASSIGN_OR_RETURN(*request.mutable_positions(), InputRef(*positions, std::nullopt));
  }
  request.set_output_name(args.Get("output-name").value_or(""));

  ASSIGN_OR_RETURN(v1::RopeResponse response, context.client->Rope(request));
  RETURN_IF_ERROR(EmitResult(args, 1, response.q()));
  if (k_out) return WriteResult(*k_out, response.k());
  if (!k_name.empty()) PrintStored(k_name, response.k());
  return absl::OkStatus();
}

absl::Status RunBuildRopeCache(Context& context, const ParsedArgs& args) {
  v1::BuildRopeCacheRequest request;
  request.set_name(ResidentName(args.positional[0]));
  ASSIGN_OR_RETURN(std::string max_seq_len, Required(args, "max-seq-len"));
  ASSIGN_OR_RETURN(std::string head_dim, Required(args, "head-dim"));
  ASSIGN_OR_RETURN(int64_t max_seq_len_value, ParseInt("--max-seq-len", max_seq_len));
  ASSIGN_OR_RETURN(int64_t head_dim_value, ParseInt("--head-dim", head_dim));
  request.set_max_seq_len(max_seq_len_value);
  request.set_head_dim(head_dim_value);
  ASSIGN_OR_RETURN(std::optional<double> base, args.GetDouble("base"));
  if (base) request.set_base(*base);
  request.set_overwrite(args.Has("overwrite"));
  ASSIGN_OR_RETURN(v1::TensorInfo info, context.client->BuildRopeCache(request));
  std::printf("%s\n", FormatInfo(info).c_str());
  return absl::OkStatus();
}

absl::Status RunQuantize(Context& context, const ParsedArgs& args) {
  RETURN_IF_ERROR(Exclusive(args, "name", "output-name"));
  const std::optional<std::string> store_as =
      args.Has("name") ? args.Get("name") : args.Get("output-name");
  if (store_as) {
    if (args.positional.size() != 1) {
      return UsageError("with --name the quantized tensor stays resident: give IN.npy only");
    }
  } else if (args.positional.size() != 3) {
    return UsageError("expected IN.npy OUT_VALUES.npy OUT_SCALES.npy (or IN.npy --name NAME)");
  }
  ASSIGN_OR_RETURN(std::optional<DType> cast, args.GetDType("dtype"));
  v1::QuantizeRequest request;
  ASSIGN_OR_RETURN(*request.mutable_input(), InputRef(args.positional[0], cast));
  request.set_granularity(args.Has("per-row") ? v1::PER_ROW : v1::PER_TENSOR);
  request.set_output_name(store_as.value_or(""));
  ASSIGN_OR_RETURN(v1::QuantizeResponse response, context.client->Quantize(request));
  if (store_as) {
    const kernels::Shape scales(response.scales().shape().begin(), response.scales().shape().end());
    PrintStored(*store_as, response.values());
    std::printf("  quantized, scales %s\n", kernels::ShapeToString(scales).c_str());
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(WriteResult(args.positional[1], response.values()));
  return WriteResult(args.positional[2], response.scales());
}

absl::Status RunDequantize(Context& context, const ParsedArgs& args) {
  v1::DequantizeRequest request;
  if (std::optional<std::string> name = args.Get("name")) {
    RETURN_IF_ERROR(CheckOutputArgs(args, 0, 1, "output-name"));
    request.set_name(ResidentName(*name));
  } else {
    RETURN_IF_ERROR(CheckOutputArgs(args, 2, 1, "output-name"));
    ASSIGN_OR_RETURN(*request.mutable_values(), InputRef(args.positional[0], std::nullopt));
    ASSIGN_OR_RETURN(*request.mutable_scales(), InputRef(args.positional[1], std::nullopt));
  }
  // Here --dtype is the output dtype (the inputs are int8 and float32).
  ASSIGN_OR_RETURN(std::optional<DType> dtype, args.GetDType("dtype"));
  if (dtype && !kernels::IsFloat(*dtype)) {
    return UsageError("--dtype must be bfloat16, float16 or float32");
  }
  request.set_dtype(static_cast<v1::DType>(dtype.value_or(DType::kUnspecified)));
  request.set_output_name(args.Get("output-name").value_or(""));
  ASSIGN_OR_RETURN(v1::DequantizeResponse response, context.client->Dequantize(request));
  return EmitResult(args, args.positional.size() - 1, response.output());
}

absl::Status RunQuantError(Context& context, const ParsedArgs& args) {
  ASSIGN_OR_RETURN(std::optional<DType> cast, args.GetDType("dtype"));
  v1::QuantizationErrorRequest request;
  ASSIGN_OR_RETURN(*request.mutable_original(), InputRef(args.positional[0], cast));
  ASSIGN_OR_RETURN(*request.mutable_values(), InputRef(args.positional[1], std::nullopt));
  ASSIGN_OR_RETURN(*request.mutable_scales(), InputRef(args.positional[2], std::nullopt));
  ASSIGN_OR_RETURN(v1::QuantizationErrorResponse response,
                   context.client->QuantizationError(request));
  std::printf("max_abs_error       %.9g\n", response.max_abs_error());
  std::printf("mean_abs_error      %.9g\n", response.mean_abs_error());
  std::printf("relative_error_pct  %.9g\n", response.relative_error_pct());
  std::printf("snr_db              %.9g\n", response.snr_db());
  return absl::OkStatus();
}

absl::Status RunQuantizeWeight(Context& context, const ParsedArgs& args) {
  v1::QuantizeWeightRequest request;
  request.set_source(ResidentName(args.positional[0]));
  request.set_target(ResidentName(args.Get("target").value_or("")));
  request.set_overwrite(args.Has("overwrite"));
  ASSIGN_OR_RETURN(v1::TensorInfo info, context.client->QuantizeWeight(request));
  std::printf("%s\n", FormatInfo(info).c_str());
  return absl::OkStatus();
}

}  // namespace

std::vector<Command> OpCommands() {
  const std::pair<const char*, const char*> dtype = {
      "--dtype D", "cast float .npy inputs to bfloat16, float16 or float32 first"};
  const std::pair<const char*, const char*> output_name = {
      "--output-name N", "keep the result resident as N; omit the output file"};
  return {
      {"rmsnorm",
       "IN.npy WEIGHT OUT.npy [--eps E] [--residual R.npy] [--residual-out R_OUT.npy]",
       "RMSNorm over the last dimension, with an optional fused residual add",
       FlagHelp({{"--eps E", "default 1e-6"},
                 {"--residual R", "added to IN first: s = IN + R, normalized"},
                 {"--residual-out R_OUT.npy", "also write s"},
                 {"--residual-output-name N", "keep s resident as N"},
                 dtype,
                 output_name}),
       {{"eps"},
        {"residual"},
        {"residual-out"},
        {"residual-output-name"},
        kDTypeFlag,
        kOutputNameFlag},
       2,
       3,
       RunRmsNorm},
      {"swiglu",
       "GATE.npy UP.npy OUT.npy",
       "silu(GATE) * UP, elementwise",
       FlagHelp({dtype, output_name}),
       {kDTypeFlag, kOutputNameFlag},
       2,
       3,
       RunSwiGlu},
      {"linear",
       "IN.npy WEIGHT_NAME OUT.npy [--bias NAME]",
       "IN @ WEIGHT^T (+ bias) with a resident [N, K] weight (float or int8 quantized)",
       FlagHelp({{"--bias NAME", "a resident [N] bias"}, dtype, output_name}),
       {{"bias"}, kDTypeFlag, kOutputNameFlag},
       2,
       3,
       RunLinear},
      {"ffn",
       "IN.npy --w-gate N --w-up N --w-down N OUT.npy",
       "the LLaMA SwiGLU feed-forward block w_down(silu(w_gate(x)) * w_up(x))",
       FlagHelp({{"--w-gate, --w-up, --w-down N", "resident weights (required)"},
                 {"--b-gate, --b-up, --b-down N", "resident biases (optional)"},
                 dtype,
                 output_name}),
       {{"w-gate"},
        {"w-up"},
        {"w-down"},
        {"b-gate"},
        {"b-up"},
        {"b-down"},
        kDTypeFlag,
        kOutputNameFlag},
       1,
       2,
       RunFfn},
      {"rope",
       "Q.npy OUT_Q.npy [--k K.npy --k-out OUT_K.npy] (--cache NAME | --cos C.npy --sin S.npy) "
       "[--offset N | --positions P.npy] [--style interleaved|half_split]",
       "rotary position embeddings on q (and k)",
       FlagHelp({{"--k K --k-out OUT_K", "also rotate k ([B, S, Hk, D]) into OUT_K"},
                 {"--k-output-name N", "keep the rotated k resident as N"},
                 {"--cache NAME", "a cache made by build-rope-cache"},
                 {"--cos C --sin S", "inline float32 [P, D/2] tables"},
                 {"--offset N", "position of token s is N + s (default 0)"},
                 {"--positions P", "int32/int64 [S] or [B, S] positions"},
                 {"--style S", "interleaved (default) or half_split"},
                 dtype,
                 output_name}),
       {{"k"},
        {"k-out"},
        {"k-output-name"},
        {"cache"},
        {"cos"},
        {"sin"},
        {"offset"},
        {"positions"},
        {"style"},
        kDTypeFlag,
        kOutputNameFlag},
       1,
       2,
       RunRope},
      {"build-rope-cache",
       "NAME --max-seq-len N --head-dim D [--base B] [--overwrite]",
       "build and store a RoPE cos/sin cache",
       FlagHelp({{"--max-seq-len N", "positions 0..N-1 (required)"},
                 {"--head-dim D", "even head dimension (required)"},
                 {"--base B", "default 10000"},
                 {"--overwrite", "replace an existing tensor of that name"}}),
       {{"max-seq-len"}, {"head-dim"}, {"base"}, {"overwrite", false}},
       1,
       1,
       RunBuildRopeCache},
      {"quantize",
       "IN.npy OUT_VALUES.npy OUT_SCALES.npy [--per-row] [--name STORE_AS]",
       "symmetric int8 quantization (values and float32 scales)",
       FlagHelp({{"--per-row", "one scale per row (default: one per tensor)"},
                 {"--name N",
                  "store values and scales as one quantized tensor N (usable as\n"
                  "a linear/ffn weight) instead of writing files; --output-name\n"
                  "is the same"},
                 {"--dtype D", "cast a float .npy input first"}}),
       {{"per-row", false}, {"name"}, kDTypeFlag, kOutputNameFlag},
       1,
       3,
       RunQuantize},
      {"dequantize",
       "VALUES.npy SCALES.npy OUT.npy [--dtype D] | --name Q OUT.npy",
       "values * scale, rounded to --dtype (default float16)",
       FlagHelp({{"--name Q", "dequantize the resident quantized tensor Q"},
                 {"--dtype D", "output dtype: bfloat16, float16 (default) or float32"},
                 output_name}),
       {{"name"}, kDTypeFlag, kOutputNameFlag},
       0,
       3,
       RunDequantize},
      {"quant-error",
       "ORIG.npy VALUES.npy SCALES.npy",
       "error metrics of a quantization (max/mean abs error, relative %, SNR dB)",
       FlagHelp({{"--dtype D", "cast a float ORIG.npy first"}}),
       {kDTypeFlag},
       3,
       3,
       RunQuantError},
      {"quantize-weight",
       "SOURCE [--target T] [--overwrite]",
       "convert a resident float [N, K] weight to int8 per row (in place by default)",
       FlagHelp({{"--target T", "store the result as T instead of replacing SOURCE"},
                 {"--overwrite", "replace an existing tensor named T"}}),
       {{"target"}, {"overwrite", false}},
       1,
       1,
       RunQuantizeWeight},
  };
}

}  // namespace accel::accelctl
