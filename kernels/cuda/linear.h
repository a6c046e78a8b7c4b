// Internals of the CUDA Linear: the paths LaunchLinear chooses between, and
// the W8A16 small-M kernel's launcher (w8a16.cu). Used by linear.cu, ffn.cu,
// the CUDA linear tests and the benchmark (which times each path on its
// own); the service only sees cuda/launch.h.
//
// CUDA runtime and std headers only (nvcc and g++ both include it).
// Thread-safety: every function is reentrant.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "cuda/launch.h"

namespace accel::kernels::cuda {

enum class LinearPath {
  kAuto = 0,      // what LaunchLinear picks (ChooseLinearPath)
  kCublas,        // float weight of the input's dtype: one cuBLASLt GEMM
  kFp32,          // mixed float dtypes: both sides converted to fp32, fp32 GEMM
  kW8A16Skinny,   // int8 weight, few rows: our tensor-core kernel (w8a16.cu)
  kW8A16Gemm,     // int8 weight, many rows on Hopper: our wgmma GEMM (w8a16_gemm.cu)
  kW8A16Dequant,  // int8 weight: dequantize to the input dtype + cuBLASLt GEMM
};

const char* LinearPathName(LinearPath path);

// Rows up to which LaunchLinear runs int8 weights through the W8A16
// small-M kernel (decode and small batches); above, the W8A16 GEMM where it
// runs and has the tiles to fill the GPU, else dequantize + cuBLASLt.
inline constexpr int64_t kW8A16SkinnyMaxRows = 32;

// The path LaunchLinear takes for p.
LinearPath ChooseLinearPath(const LinearParams& p);

// Whether `path` can run p (kAuto always can).
bool LinearPathSupports(LinearPath path, const LinearParams& p);

// LinearWorkspaceBytes / LaunchLinear with the path forced (kAuto: chosen).
// cudaErrorNotSupported when the path cannot run p.
size_t LinearWorkspaceBytesFor(const LinearParams& p, LinearPath path);
cudaError_t LaunchLinearWith(const LinearParams& p, LinearPath path, cudaStream_t stream);

// Whether `path` runs p's GEMM through the fp32 staging fallback (cuBLASLt
// lacks the direct configuration, or an fp32 GEMM feeds a 16-bit output):
// for the benchmark's report. Asks cuBLASLt (needs a device).
bool LinearPathStaged(const LinearParams& p, LinearPath path);

// ------------------------------------------------------------- w8a16.cu
// The small-M W8A16 kernel: fp16/bf16 input and output, int8 weight, m <=
// kW8A16SkinnyMaxRows, k a multiple of 16 and at most 2^26, input and
// weight 16-byte aligned. Needs no workspace.
bool W8A16SkinnySupports(const LinearParams& p);
cudaError_t LaunchW8A16Skinny(const LinearParams& p, cudaStream_t stream);

// ------------------------------------------------------- w8a16_gemm.cu
// The W8A16 GEMM for many rows (prefill): Hopper only (built for sm_90a,
// run on compute capability 9.0), fp16/bf16 input and output, int8
// weight, k a multiple of 16, input and weight 16-byte aligned; any m, n.
// Needs no workspace. Preferred: supported, and enough 128 x 256 tiles to
// fill at least half the GPU (below, dequantize + cuBLASLt is as fast).
enum class W8A16GemmVariant {
  kAuto,          // one CTA per tile up to one wave, persistent above
  kTilePerBlock,  // one CTA per output tile
  kPersistent,    // one CTA per SM, looping over tiles
};
bool W8A16GemmSupports(const LinearParams& p);
bool W8A16GemmPreferred(const LinearParams& p);
cudaError_t LaunchW8A16Gemm(const LinearParams& p, cudaStream_t stream,
                            W8A16GemmVariant variant = W8A16GemmVariant::kAuto);

}  // namespace accel::kernels::cuda
