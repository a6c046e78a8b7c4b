// Helpers for the CUDA kernel tests: device detection (tests skip without a
// GPU), device copies of HostTensors, and a ScratchAllocator over
// cudaMalloc.
//
// Test-only; each test owns its objects (not thread-safe).
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "accel/kernels/ops.h"
#include "test_util.h"

namespace accel::kernels::testing {

inline bool HaveCudaDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define ACCEL_SKIP_WITHOUT_CUDA()                       \
  do {                                                  \
    if (!::accel::kernels::testing::HaveCudaDevice()) { \
      GTEST_SKIP() << "no CUDA device";                 \
    }                                                   \
  } while (0)

#define ACCEL_CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// A device copy of a tensor (or an uninitialised device tensor), freed on
// destruction. `offset_bytes` places the data that far past a 256-aligned
// allocation, to test unaligned views.
class DeviceTensor {
 public:
  DeviceTensor(DType dtype, Shape shape, size_t offset_bytes = 0)
      : dtype_(dtype), shape_(std::move(shape)), offset_(offset_bytes) {
    const size_t bytes = nbytes() + offset_ + 16;
    if (cudaMalloc(&base_, bytes) != cudaSuccess) base_ = nullptr;
  }
  explicit DeviceTensor(const HostTensor& h, size_t offset_bytes = 0)
      : DeviceTensor(h.dtype, h.shape, offset_bytes) {
    if (base_ != nullptr && nbytes() > 0) {
      cudaMemcpy(data(), h.data(), nbytes(), cudaMemcpyHostToDevice);
    }
  }
  ~DeviceTensor() {
    if (base_ != nullptr) cudaFree(base_);
  }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  bool ok() const { return base_ != nullptr; }
  size_t nbytes() const { return static_cast<size_t>(NumElements(shape_)) * ItemSize(dtype_); }
  void* data() const { return static_cast<char*>(base_) + offset_; }
  ConstTensorView view() const { return {dtype_, shape_, data()}; }
  TensorView mut() const { return {dtype_, shape_, data()}; }
  // Fills with 0xFF bytes: NaN for every float dtype, so an element the
  // kernel forgot to write fails the comparison.
  void Poison() const {
    if (nbytes() > 0) cudaMemset(data(), 0xFF, nbytes());
  }
  HostTensor ToHost() const {
    HostTensor h(dtype_, shape_);
    if (nbytes() > 0) cudaMemcpy(h.data(), data(), nbytes(), cudaMemcpyDeviceToHost);
    return h;
  }

 private:
  DType dtype_;
  Shape shape_;
  size_t offset_;
  void* base_ = nullptr;
};

// Scratch from cudaMalloc, freed when the allocator dies (the test
// synchronises its stream first). Counts its calls.
class DeviceScratch : public ScratchAllocator {
 public:
  ~DeviceScratch() override {
    for (void* p : blocks_) cudaFree(p);
  }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes == 0 ? 256 : bytes);
    if (err != cudaSuccess) {
      return absl::ResourceExhaustedError(
          absl::StrCat("scratch of ", bytes, " bytes: ", cudaGetErrorString(err)));
    }
    blocks_.push_back(p);
    return p;
  }
  size_t calls() const { return blocks_.size(); }

 private:
  std::vector<void*> blocks_;
};

}  // namespace accel::kernels::testing
