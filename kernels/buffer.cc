#include "accel/kernels/buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

#ifndef ACCEL_WITH_CUDA
#define ACCEL_WITH_CUDA 0
#endif
#if ACCEL_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/launch.h"
#endif

namespace accel::kernels {
namespace {

// Host buffers are aligned for the widest vector loads (AVX-512).
constexpr size_t kHostAlignment = 64;

#if ACCEL_WITH_CUDA
// Out of memory is the caller's problem to report (RESOURCE_EXHAUSTED, as
// for a full quota); anything else is a device error (INTERNAL).
absl::Status CudaStatus(cudaError_t err, const char* what, size_t nbytes) {
  if (err == cudaSuccess) return absl::OkStatus();
  if (err == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of device memory ", what, " ", nbytes, " bytes"));
  }
  return absl::InternalError(absl::StrCat("CUDA error ", what, " ", nbytes, " bytes: ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}
#endif

}  // namespace

Buffer::~Buffer() { Release(); }

Buffer::Buffer(Buffer&& other) noexcept
    : backend_(other.backend_), data_(other.data_), size_(other.size_), device_(other.device_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Release();
    backend_ = other.backend_;
    data_ = other.data_;
    size_ = other.size_;
    device_ = other.device_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

absl::StatusOr<Buffer> Buffer::Allocate(Backend backend, size_t nbytes) {
  if (backend == Backend::kCuda) {
#if ACCEL_WITH_CUDA
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    void* data = nullptr;
    if (err == cudaSuccess) err = cuda::DeviceAlloc(device, nbytes, &data);
    if (err != cudaSuccess) return CudaStatus(err, "allocating", nbytes);
    return Buffer(backend, data, nbytes, device);
#else
    return absl::UnimplementedError("device buffers need the CUDA backend, which is not built");
#endif
  }
  if (backend != Backend::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat("unknown backend ", static_cast<int>(backend)));
  }
  // aligned_alloc needs a size that is a multiple of the alignment, and we
  // want a non-null pointer for zero bytes.
  const size_t rounded = (nbytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
  void* data = std::aligned_alloc(kHostAlignment, rounded == 0 ? kHostAlignment : rounded);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of host memory allocating ", nbytes, " bytes"));
  }
  return Buffer(backend, data, nbytes);
}

void Buffer::Release() {
  if (data_ != nullptr) {
#if ACCEL_WITH_CUDA
    if (backend_ == Backend::kCuda) {
      cuda::DeviceFree(device_, data_);
    } else {
      std::free(data_);
    }
#else
    std::free(data_);
#endif
  }
  data_ = nullptr;
  size_ = 0;
}

absl::Status CopyToBuffer(const void* host_src, size_t nbytes, Buffer& dst, size_t offset) {
  if (offset > dst.size() || nbytes > dst.size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat("copy of ", nbytes, " bytes at offset ", offset,
                                                   " overruns a buffer of ", dst.size()));
  }
  if (nbytes == 0) return absl::OkStatus();
  char* to = static_cast<char*>(dst.data()) + offset;
#if ACCEL_WITH_CUDA
  if (dst.backend() == Backend::kCuda) {
    // Synchronous (the store's put path); cudaMemcpyDefault lets unified
    // addressing find the buffer's device whatever the current one is.
    return CudaStatus(cudaMemcpy(to, host_src, nbytes, cudaMemcpyDefault), "copying to the device",
                      nbytes);
  }
#endif
  std::memcpy(to, host_src, nbytes);
  return absl::OkStatus();
}

absl::Status CopyFromBuffer(const Buffer& src, size_t offset, size_t nbytes, void* host_dst) {
  if (offset > src.size() || nbytes > src.size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat("copy of ", nbytes, " bytes at offset ", offset,
                                                   " overruns a buffer of ", src.size()));
  }
  if (nbytes == 0) return absl::OkStatus();
  const char* from = static_cast<const char*>(src.data()) + offset;
#if ACCEL_WITH_CUDA
  if (src.backend() == Backend::kCuda) {
    return CudaStatus(cudaMemcpy(host_dst, from, nbytes, cudaMemcpyDefault),
                      "copying from the device", nbytes);
  }
#endif
  std::memcpy(host_dst, from, nbytes);
  return absl::OkStatus();
}

}  // namespace accel::kernels
