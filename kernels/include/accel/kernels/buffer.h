// Owning blocks of memory on a backend's device, and copies between them and
// the host.
//
// A Buffer is move-only; it frees its memory when destroyed. CPU buffers are
// 64-byte aligned host memory; CUDA buffers live in device memory (the CUDA
// backend's caching allocator, on the device current when Allocate ran;
// freeing one returns it to that cache, so the caller must free it only when
// no queued device work still uses it). Distinct buffers may be used from
// different threads; one buffer's bytes are guarded by its owner.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/ops.h"

namespace accel::kernels {

class Buffer {
 public:
  Buffer() = default;
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  // RESOURCE_EXHAUSTED when the device has no room. A zero-byte buffer is
  // valid and has a non-null data pointer.
  static absl::StatusOr<Buffer> Allocate(Backend backend, size_t nbytes);

  void* data() const { return data_; }
  size_t size() const { return size_; }
  Backend backend() const { return backend_; }

 private:
  Buffer(Backend backend, void* data, size_t size, int device = 0)
      : backend_(backend), data_(data), size_(size), device_(device) {}
  void Release();

  Backend backend_ = Backend::kCpu;
  void* data_ = nullptr;
  size_t size_ = 0;
  int device_ = 0;  // CUDA buffers: the device whose allocator owns data_
};

// Synchronous copies between host memory and a buffer, at a byte offset.
// INVALID_ARGUMENT when the range does not fit the buffer.
absl::Status CopyToBuffer(const void* host_src, size_t nbytes, Buffer& dst, size_t offset = 0);
absl::Status CopyFromBuffer(const Buffer& src, size_t offset, size_t nbytes, void* host_dst);

}  // namespace accel::kernels
