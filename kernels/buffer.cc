#include "accel/kernels/buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace accel::kernels {
namespace {

// Host buffers are aligned for the widest vector loads (AVX-512).
constexpr size_t kHostAlignment = 64;

}  // namespace

Buffer::~Buffer() { Release(); }

Buffer::Buffer(Buffer&& other) noexcept
    : backend_(other.backend_), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Release();
    backend_ = other.backend_;
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

absl::StatusOr<Buffer> Buffer::Allocate(Backend backend, size_t nbytes) {
  if (backend != Backend::kCpu) {
    return absl::UnimplementedError("device buffers need the CUDA backend, which is not built");
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
  if (data_ != nullptr) std::free(data_);
  data_ = nullptr;
  size_ = 0;
}

absl::Status CopyToBuffer(const void* host_src, size_t nbytes, Buffer& dst, size_t offset) {
  if (offset > dst.size() || nbytes > dst.size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat("copy of ", nbytes, " bytes at offset ", offset,
                                                   " overruns a buffer of ", dst.size()));
  }
  if (nbytes > 0) std::memcpy(static_cast<char*>(dst.data()) + offset, host_src, nbytes);
  return absl::OkStatus();
}

absl::Status CopyFromBuffer(const Buffer& src, size_t offset, size_t nbytes, void* host_dst) {
  if (offset > src.size() || nbytes > src.size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat("copy of ", nbytes, " bytes at offset ", offset,
                                                   " overruns a buffer of ", src.size()));
  }
  if (nbytes > 0) std::memcpy(host_dst, static_cast<const char*>(src.data()) + offset, nbytes);
  return absl::OkStatus();
}

}  // namespace accel::kernels
