// LaunchLinear and LinearWorkspaceBytes: output[m, n] = input[m, k] @ W^T
// (* scale for int8) + bias, on one of four paths (linear.h):
//
//  kCublas       float W of the input's dtype: one cuBLASLt GEMM, fp32
//                accumulation, the bias in cuBLASLt's epilogue.
//  kFp32         W of another float dtype ("read as fp32"): the input and W
//                converted to fp32 in the workspace (exact), an fp32 GEMM,
//                rounded once to the output dtype.
//  kW8A16Skinny  int8 W, m <= 32, k a multiple of 16 and <= 2^26, input
//                and W 16-byte aligned (W8A16SkinnySupports): w8a16.cu, no
//                workspace.
//  kW8A16Gemm    int8 W and more rows on Hopper: w8a16_gemm.cu (wgmma, the
//                weights dequantised in registers, scale and bias in its
//                epilogue), no workspace.
//  kW8A16Dequant int8 W otherwise (or too few tiles for the GEMM to fill
//                the GPU): W dequantised to the input dtype in the
//                workspace (integers up to 127 are exact in fp16, bf16 and
//                fp32: the scale is NOT folded in, it would round), then a
//                GEMM whose alpha vector is the per-row scale: the scale
//                multiplies the fp32 sum after the K loop, as the contract
//                says.
//
// When cuBLASLt has no kernel for a configuration (an epilogue or alpha
// mode it lacks for these types), the GEMM writes fp32 into a staging
// buffer and our epilogue kernel applies scale and bias and rounds: slower,
// same numbers. Converted weights are processed in blocks of rows so that
// the workspace stays bounded (kMaxConvertedWeightBytes).
//
// Launchers never allocate or synchronise; workspace comes from the caller
// (256-byte aligned, LinearWorkspaceBytes bytes).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/blas.h"
#include "cuda/common.cuh"
#include "cuda/linear.h"

namespace accel::kernels::cuda {
namespace {

// Largest block of converted weights: the benchmark shapes (up to 11008 x
// 4096 in fp16, 90 MB) convert in one piece; fp32 copies of them in two.
constexpr size_t kMaxConvertedWeightBytes = size_t{128} << 20;
// Largest fp32 staging buffer of the fallback epilogue (rows are processed
// in blocks that fit).
constexpr size_t kMaxStagingBytes = size_t{32} << 20;
constexpr size_t kAlign = 256;

size_t AlignUp(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

cudaDataType CudaType(ElemType t) {
  switch (t) {
    case ElemType::kF16:
      return CUDA_R_16F;
    case ElemType::kBF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

// ---------------------------------------------------------------- kernels

// dst[i] = Dst(src[i]) for n elements; exact for every use here (widening
// float conversions, int8 -> any float type).
template <typename Src, typename Dst>
__global__ void ConvertKernel(const Src* __restrict__ src, Dst* __restrict__ dst, FlatPlan plan) {
  constexpr int kVec = 8;
  FlatLoop<kVec>(
      plan,
      [&](int64_t i) {
        const Vec<Src, kVec> v = LoadVec<Src, kVec>(src + i);
        Vec<Dst, kVec> o;
#pragma unroll
        for (int j = 0; j < kVec; ++j) o.v[j] = FromFloat<Dst>(static_cast<float>(v.v[j]));
        StoreVec<Dst, kVec>(dst + i, o);
      },
      [&](int64_t i) { dst[i] = FromFloat<Dst>(static_cast<float>(src[i])); });
}

template <typename Src, typename Dst>
cudaError_t Convert(const void* src, void* dst, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const FlatPlan plan =
      PlanFlat(n, 8, {{dst, static_cast<int>(sizeof(Dst))}, {src, static_cast<int>(sizeof(Src))}});
  ConvertKernel<Src, Dst><<<FlatBlocks(plan.nvec + plan.scalars()), kFlatThreads, 0, stream>>>(
      static_cast<const Src*>(src), static_cast<Dst*>(dst), plan);
  return cudaGetLastError();
}

// n elements of a float type (or int8) -> fp32 or `to`.
cudaError_t ConvertTo(ElemType from, const void* src, ElemType to, void* dst, int64_t n,
                      cudaStream_t stream) {
  if (from == ElemType::kI8) {
    return DispatchFloat(to, [&](auto tag) {
      using D = typename decltype(tag)::type;
      return Convert<int8_t, D>(src, dst, n, stream);
    });
  }
  if (to != ElemType::kF32) return cudaErrorInvalidValue;
  switch (from) {
    case ElemType::kF16:
      return Convert<__half, float>(src, dst, n, stream);
    case ElemType::kBF16:
      return Convert<__nv_bfloat16, float>(src, dst, n, stream);
    case ElemType::kF32:
      return cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToDevice,
                             stream);
    default:
      return cudaErrorInvalidValue;
  }
}

__global__ void ExpandScaleKernel(const float* __restrict__ scale, float* __restrict__ out,
                                  int64_t n) {
  const float s = *scale;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = s;
  }
}

struct EpilogueArgs {
  const float* c = nullptr;  // [rows, cols] fp32, row stride ldc; null: zeros (k = 0)
  int64_t ldc = 0;
  void* y = nullptr;  // [rows, cols] of T, row stride ldy
  int64_t ldy = 0;
  int64_t rows = 0, cols = 0;
  const float* scales = nullptr;  // [cols], [1] (per_row false) or null
  bool per_row = true;
  const void* bias = nullptr;  // [cols] of bias_type, or null
  ElemType bias_type = ElemType::kF32;
};

// y = round(c * scale + bias): the fp32 epilogue of the staging fallback
// and of k = 0.
template <typename T>
__global__ void EpilogueKernel(EpilogueArgs a) {
  const int64_t total = a.rows * a.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / a.cols, j = e % a.cols;
    float v = a.c != nullptr ? a.c[i * a.ldc + j] : 0.0f;
    if (a.scales != nullptr) v *= a.per_row ? a.scales[j] : a.scales[0];
    if (a.bias != nullptr) v += LoadAsFloat(a.bias, a.bias_type, j);
    static_cast<T*>(a.y)[i * a.ldy + j] = FromFloat<T>(v);
  }
}

cudaError_t Epilogue(ElemType out_type, const EpilogueArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.cols == 0) return cudaSuccess;
  return DispatchFloat(out_type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    EpilogueKernel<T><<<FlatBlocks(a.rows * a.cols), kFlatThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

// ------------------------------------------------------------------ plans

// Everything both LinearWorkspaceBytes and LaunchLinear derive from the
// params: which buffers the path needs, where they lie in the workspace,
// and whether the GEMM goes straight to the output or through staging.
struct Plan {
  LinearPath path = LinearPath::kAuto;
  ElemType ab = ElemType::kF32;  // GEMM operand type
  bool convert_x = false;        // input -> fp32 copy (kFp32 with a 16-bit input)
  bool convert_w = false;        // weight block -> ab copy
  int64_t block_rows = 0;        // weight rows per GEMM (n when not converted)
  bool expand_scale = false;     // per-tensor scale -> [n] alpha vector
  bool bias_to_f32 = false;      // bias -> fp32 copy (cuBLASLt takes d_type or fp32)
  bool staging = false;          // GEMM -> fp32 staging -> our epilogue
  int64_t staging_rows = 0;      // rows per staged GEMM
  size_t gemm_ws = 0;
  // Workspace offsets (bytes) and total.
  size_t off_x = 0, off_w = 0, off_scale = 0, off_bias = 0, off_stage = 0, off_gemm = 0;
  size_t total = 0;
};

// The GEMM of one block of weight rows [n0, n0 + rows) writing straight to
// the output, as blas sees it. Pointers into the workspace are offsets from
// `ws` (a fake 256-aligned base when only sizes are wanted: alignment is all
// blas looks at before launch).
blas::Gemm DirectGemm(const LinearParams& p, const Plan& plan, char* ws, int64_t n0, int64_t rows) {
  blas::Gemm g;
  const size_t ab_size = static_cast<size_t>(FloatSize(plan.ab));
  const size_t out_size = static_cast<size_t>(FloatSize(p.dtype));
  g.x = plan.convert_x ? static_cast<const void*>(ws + plan.off_x) : p.input;
  g.w = plan.convert_w ? static_cast<const void*>(ws + plan.off_w)
                       : static_cast<const void*>(static_cast<const char*>(p.weight) +
                                                  static_cast<size_t>(n0 * p.k) * ab_size);
  g.ab_type = CudaType(plan.ab);
  g.d_type = CudaType(p.dtype);
  g.d = static_cast<char*>(p.output) + static_cast<size_t>(n0) * out_size;
  g.m = p.m;
  g.n = rows;
  g.k = p.k;
  g.ldx = p.k;
  g.ldw = p.k;
  g.ldd = p.n;
  if (p.weight_dtype == ElemType::kI8) {
    g.alpha_vector = plan.expand_scale ? reinterpret_cast<const float*>(ws + plan.off_scale) + n0
                                       : p.scales + n0;
  }
  if (p.bias != nullptr) {
    if (plan.bias_to_f32) {
      g.bias = reinterpret_cast<const float*>(ws + plan.off_bias) + n0;
      g.bias_type = CUDA_R_32F;
    } else {
      g.bias = static_cast<const char*>(p.bias) +
               static_cast<size_t>(n0) * static_cast<size_t>(FloatSize(p.bias_dtype));
      g.bias_type = CudaType(p.bias_dtype);
    }
  }
  g.workspace = ws + plan.off_gemm;
  g.workspace_bytes = plan.gemm_ws;
  return g;
}

// The staged GEMM of rows [r0, r0 + rows) x weight block [n0, n0 + cols):
// fp32 out, no alpha, no bias.
blas::Gemm StagedGemm(const LinearParams& p, const Plan& plan, char* ws, int64_t n0, int64_t cols,
                      int64_t r0, int64_t rows) {
  blas::Gemm g = DirectGemm(p, plan, ws, n0, cols);
  const size_t ab_size = static_cast<size_t>(FloatSize(plan.ab));
  g.x = static_cast<const char*>(g.x) + static_cast<size_t>(r0 * p.k) * ab_size;
  g.m = rows;
  g.d = ws + plan.off_stage;
  g.d_type = CUDA_R_32F;
  g.ldd = cols;
  g.alpha_vector = nullptr;
  g.bias = nullptr;
  return g;
}

// for_launch: decide staging from what cuBLASLt supports for the actual
// pointers. Sizing (false) always reserves the staging buffer, placed last,
// so that a launch with differently aligned pointers than the size query
// still fits; the other offsets are the same either way.
Plan MakePlan(const LinearParams& p, LinearPath path, bool for_launch) {
  Plan plan;
  plan.path = path;
  // No products (k = 0: the epilogue writes the bias) or no output: nothing
  // to hold.
  if (p.m == 0 || p.n == 0 || p.k == 0) return plan;
  const bool int8 = p.weight_dtype == ElemType::kI8;
  switch (path) {
    case LinearPath::kCublas:
      plan.ab = p.dtype;
      break;
    case LinearPath::kFp32:
      plan.ab = ElemType::kF32;
      plan.convert_x = p.dtype != ElemType::kF32;
      plan.convert_w = p.weight_dtype != ElemType::kF32;
      break;
    case LinearPath::kW8A16Dequant:
      plan.ab = p.dtype;
      plan.convert_w = true;
      plan.expand_scale = !p.per_row_scales;
      break;
    default:
      return plan;  // kW8A16Skinny, kW8A16Gemm: no workspace
  }
  plan.block_rows = p.n;
  if (plan.convert_w) {
    const int64_t row_bytes = p.k * FloatSize(plan.ab);
    int64_t rows = static_cast<int64_t>(kMaxConvertedWeightBytes) / row_bytes;
    if (rows < p.n) {
      // Equal blocks (a multiple of 128 rows, so every block's pointers keep
      // the first one's alignment) rather than a big one and a small tail.
      rows = std::max<int64_t>(rows, 128);
      const int64_t blocks = CeilDiv(p.n, rows);
      rows = CeilDiv(CeilDiv(p.n, blocks), 128) * 128;
      plan.block_rows = std::min(rows, p.n);
    }
  }
  // cuBLASLt's bias must be of the output's dtype or fp32 and 16-byte aligned.
  plan.bias_to_f32 = p.bias != nullptr && p.bias_dtype != ElemType::kF32 &&
                     (p.bias_dtype != p.dtype || !IsAligned(p.bias, 16));
  if (p.bias != nullptr && p.bias_dtype == ElemType::kF32 && !IsAligned(p.bias, 16)) {
    plan.bias_to_f32 = true;
  }
  plan.gemm_ws = blas::WorkspaceBytes(p.m, p.n, p.k);

  size_t off = 0;
  auto take = [&](bool need, size_t bytes) {
    const size_t at = off;
    if (need) off += AlignUp(bytes);
    return at;
  };
  plan.off_gemm = take(true, plan.gemm_ws);
  plan.off_x = take(plan.convert_x, static_cast<size_t>(p.m * p.k) * 4);
  plan.off_w = take(plan.convert_w, static_cast<size_t>(plan.block_rows * p.k) *
                                        static_cast<size_t>(FloatSize(plan.ab)));
  plan.off_scale = take(int8 && plan.expand_scale, static_cast<size_t>(p.n) * 4);
  plan.off_bias = take(plan.bias_to_f32, static_cast<size_t>(p.n) * 4);
  // An fp32 GEMM cannot write 16-bit outputs; otherwise only a missing
  // cuBLASLt configuration sends us through staging. (The fake base only
  // gives the workspace-resident operands their real 256-byte alignment.)
  const bool f32_into_16 = plan.ab == ElemType::kF32 && p.dtype != ElemType::kF32;
  plan.staging =
      f32_into_16 || !for_launch ||
      !blas::Supported(DirectGemm(p, plan, reinterpret_cast<char*>(kAlign), 0, plan.block_rows));
  if (plan.staging) {
    const int64_t row_bytes = plan.block_rows * 4;
    plan.staging_rows =
        std::clamp<int64_t>(static_cast<int64_t>(kMaxStagingBytes) / row_bytes, 1, p.m);
    plan.off_stage = take(true, static_cast<size_t>(plan.staging_rows * row_bytes));
  }
  plan.total = off;
  return plan;
}

cudaError_t RunPlan(const LinearParams& p, const Plan& plan, cudaStream_t stream) {
  if (p.k == 0) {
    // No products: the output is the bias (or zeros), rounded.
    EpilogueArgs e;
    e.y = p.output;
    e.ldy = p.n;
    e.rows = p.m;
    e.cols = p.n;
    e.bias = p.bias;
    e.bias_type = p.bias_dtype;
    return Epilogue(p.dtype, e, stream);
  }
  char* ws = static_cast<char*>(p.workspace);
  if (ws == nullptr || p.workspace_bytes < plan.total || !IsAligned(ws, kAlign)) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaSuccess;
  if (plan.convert_x) {
    err = ConvertTo(p.dtype, p.input, ElemType::kF32, ws + plan.off_x, p.m * p.k, stream);
    if (err != cudaSuccess) return err;
  }
  if (plan.expand_scale) {
    ExpandScaleKernel<<<FlatBlocks(p.n), kFlatThreads, 0, stream>>>(
        p.scales, reinterpret_cast<float*>(ws + plan.off_scale), p.n);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (plan.bias_to_f32) {
    err = ConvertTo(p.bias_dtype, p.bias, ElemType::kF32, ws + plan.off_bias, p.n, stream);
    if (err != cudaSuccess) return err;
  }
  const size_t w_item =
      static_cast<size_t>(p.weight_dtype == ElemType::kI8 ? 1 : FloatSize(p.weight_dtype));
  for (int64_t n0 = 0; n0 < p.n; n0 += plan.block_rows) {
    const int64_t rows = std::min(plan.block_rows, p.n - n0);
    if (plan.convert_w) {
      err = ConvertTo(p.weight_dtype,
                      static_cast<const char*>(p.weight) + static_cast<size_t>(n0 * p.k) * w_item,
                      plan.ab, ws + plan.off_w, rows * p.k, stream);
      if (err != cudaSuccess) return err;
    }
    if (!plan.staging) {
      err = blas::Run(DirectGemm(p, plan, ws, n0, rows), stream);
      if (err != cudaSuccess) return err;
      continue;
    }
    for (int64_t r0 = 0; r0 < p.m; r0 += plan.staging_rows) {
      const int64_t mr = std::min(plan.staging_rows, p.m - r0);
      err = blas::Run(StagedGemm(p, plan, ws, n0, rows, r0, mr), stream);
      if (err != cudaSuccess) return err;
      EpilogueArgs e;
      e.c = reinterpret_cast<const float*>(ws + plan.off_stage);
      e.ldc = rows;
      e.y = static_cast<char*>(p.output) +
            static_cast<size_t>(r0 * p.n + n0) * static_cast<size_t>(FloatSize(p.dtype));
      e.ldy = p.n;
      e.rows = mr;
      e.cols = rows;
      if (p.weight_dtype == ElemType::kI8) {
        e.scales = p.per_row_scales ? p.scales + n0 : p.scales;
        e.per_row = p.per_row_scales;
      }
      if (p.bias != nullptr) {
        e.bias = static_cast<const char*>(p.bias) +
                 static_cast<size_t>(n0) * static_cast<size_t>(FloatSize(p.bias_dtype));
        e.bias_type = p.bias_dtype;
      }
      err = Epilogue(p.dtype, e, stream);
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

bool ValidParams(const LinearParams& p) {
  const bool weight_ok =
      IsFloatType(p.weight_dtype) || (p.weight_dtype == ElemType::kI8 && p.scales != nullptr);
  const bool bias_ok = p.bias == nullptr || IsFloatType(p.bias_dtype);
  return IsFloatType(p.dtype) && weight_ok && bias_ok && p.m >= 0 && p.n >= 0 && p.k >= 0;
}

}  // namespace

const char* LinearPathName(LinearPath path) {
  switch (path) {
    case LinearPath::kAuto:
      return "auto";
    case LinearPath::kCublas:
      return "cublas";
    case LinearPath::kFp32:
      return "fp32";
    case LinearPath::kW8A16Skinny:
      return "w8a16_skinny";
    case LinearPath::kW8A16Gemm:
      return "w8a16_gemm";
    case LinearPath::kW8A16Dequant:
      return "w8a16_dequant";
  }
  return "?";
}

LinearPath ChooseLinearPath(const LinearParams& p) {
  if (p.weight_dtype == ElemType::kI8) {
    if (W8A16SkinnySupports(p)) return LinearPath::kW8A16Skinny;
    return W8A16GemmPreferred(p) ? LinearPath::kW8A16Gemm : LinearPath::kW8A16Dequant;
  }
  return p.weight_dtype == p.dtype ? LinearPath::kCublas : LinearPath::kFp32;
}

bool LinearPathSupports(LinearPath path, const LinearParams& p) {
  if (!ValidParams(p)) return false;
  const bool int8 = p.weight_dtype == ElemType::kI8;
  switch (path) {
    case LinearPath::kAuto:
      return true;
    case LinearPath::kCublas:
      return !int8 && p.weight_dtype == p.dtype;
    case LinearPath::kFp32:
      return !int8;
    case LinearPath::kW8A16Skinny:
      return W8A16SkinnySupports(p);
    case LinearPath::kW8A16Gemm:
      return W8A16GemmSupports(p);
    case LinearPath::kW8A16Dequant:
      return int8;
  }
  return false;
}

size_t LinearWorkspaceBytesFor(const LinearParams& p, LinearPath path) {
  if (path == LinearPath::kAuto) path = ChooseLinearPath(p);
  if (!LinearPathSupports(path, p)) return 0;
  return MakePlan(p, path, /*for_launch=*/false).total;
}

cudaError_t LaunchLinearWith(const LinearParams& p, LinearPath path, cudaStream_t stream) {
  if (!ValidParams(p)) return cudaErrorInvalidValue;
  if (path == LinearPath::kAuto) path = ChooseLinearPath(p);
  if (!LinearPathSupports(path, p)) return cudaErrorNotSupported;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  if (path == LinearPath::kW8A16Skinny) return LaunchW8A16Skinny(p, stream);
  if (path == LinearPath::kW8A16Gemm) return LaunchW8A16Gemm(p, stream);
  return RunPlan(p, MakePlan(p, path, /*for_launch=*/true), stream);
}

bool LinearPathStaged(const LinearParams& p, LinearPath path) {
  if (path == LinearPath::kAuto) path = ChooseLinearPath(p);
  if (!LinearPathSupports(path, p) || path == LinearPath::kW8A16Skinny ||
      path == LinearPath::kW8A16Gemm) {
    return false;
  }
  return MakePlan(p, path, /*for_launch=*/true).staging;
}

size_t LinearWorkspaceBytes(const LinearParams& p) {
  return LinearWorkspaceBytesFor(p, LinearPath::kAuto);
}

cudaError_t LaunchLinear(const LinearParams& p, cudaStream_t stream) {
  return LaunchLinearWith(p, LinearPath::kAuto, stream);
}

}  // namespace accel::kernels::cuda
