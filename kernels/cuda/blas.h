// The cuBLASLt GEMM behind Linear and Ffn: D = (X @ W^T) * alpha + bias in
// the layout of our tensors (row-major activations, row-major [N, K]
// weights), with fp32 accumulation.
//
// Used by kernels/cuda/linear.cu (and the CUDA linear benchmark, for its
// cuBLAS baseline). Declared with CUDA runtime types only, so nvcc and g++
// translation units can include it; cublasLt itself stays inside blas.cc.
//
// Thread-safety: reentrant. Each (thread, device) has its own cublasLt handle
// and its own cache of descriptors and chosen algorithms, created on first
// use; nothing is shared between threads.
#pragma once

#include <cuda_runtime_api.h>
#include <library_types.h>

#include <cstddef>
#include <cstdint>

namespace accel::kernels::cuda::blas {

// D[m, n] (row-major, row stride ldd elements) =
//   (X[m, k] (row stride ldx) @ W[n, k]^T (row stride ldw)) * alpha + bias[n],
// computed with fp32 accumulation and fp32 epilogue math, rounded once to
// d_type. x_type and w_type must be equal: CUDA_R_16F, CUDA_R_16BF (d_type
// the same or CUDA_R_32F) or CUDA_R_32F (d_type CUDA_R_32F; never TF32).
struct Gemm {
  const void* x = nullptr;
  const void* w = nullptr;
  void* d = nullptr;
  cudaDataType ab_type = CUDA_R_32F;  // of x and w
  cudaDataType d_type = CUDA_R_32F;
  int64_t m = 0, n = 0, k = 0;
  int64_t ldx = 0, ldw = 0, ldd = 0;
  // Optional device array of n floats, one alpha per output column (the
  // per-row int8 scales), applied to the fp32 accumulator before the bias;
  // null means alpha = 1.
  const float* alpha_vector = nullptr;
  // Optional bias [n] on the device, of d_type or CUDA_R_32F, 16-byte aligned.
  const void* bias = nullptr;
  cudaDataType bias_type = CUDA_R_32F;
  // cuBLASLt's scratch (split-K and friends); may be null with 0 bytes.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Bytes of cuBLASLt workspace we hand to a GEMM of this size: enough for the
// split-K kernels of large problems (32 MiB is what cuBLAS itself reserves on
// Hopper), little for small ones.
size_t WorkspaceBytes(int64_t m, int64_t n, int64_t k);

// Whether cuBLASLt has an algorithm for g's types, shape, alignment,
// epilogue and alpha mode (pointers are only looked at for alignment). The
// answer is cached per (thread, device, configuration).
bool Supported(const Gemm& g);

// Runs g on `stream`. cudaErrorNotSupported when Supported(g) is false;
// cudaErrorMemoryAllocation when cuBLASLt could not allocate; cudaSuccess
// for an empty problem (m or n is 0). Requires k > 0.
cudaError_t Run(const Gemm& g, cudaStream_t stream);

// The last cuBLASLt status string of this thread ("" if none), for messages.
const char* LastError();

}  // namespace accel::kernels::cuda::blas
