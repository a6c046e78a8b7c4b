// The caching allocator behind DeviceAlloc/DeviceFree and PinnedAlloc/
// PinnedFree (declared in cuda/launch.h).
//
// cudaMalloc and cudaFree can synchronise the whole device and take
// milliseconds for large blocks, so the request path must not call them.
// Each device (and pinned host memory) has a pool: requests are rounded up to
// a size class, freed blocks go to a free list ordered by size, and a request
// takes the smallest cached block that fits (at most twice its class, so a
// small request never pins down a huge block). The driver is called only on a
// miss; when it is out of memory, every cached block of that pool is given
// back and the allocation is tried once more. After warm-up, traffic of
// recurring shapes is served from the free lists alone.
//
// A freed block may be handed out again at once, to any thread: the caller
// must free a block only when no queued device work still uses it (after
// synchronising the stream that used it), or when all later users are
// ordered after that work on the same stream.
//
// Thread-safety: every function is thread-safe; a pool's lists are guarded
// by its mutex, which is never held across a driver call. g++ translation
// unit: CUDA runtime C API and std only.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/launch.h"

namespace accel::kernels::cuda {
namespace {

constexpr size_t kSmallLimit = size_t{1} << 20;    // below: 512-byte granularity
constexpr size_t kSmallGranule = 512;              // keeps 16-byte vector and 256 B alignment
constexpr size_t kLargeGranule = size_t{2} << 20;  // the driver's own large-page size
constexpr int kMaxDevices = 64;

// Size classes: multiples of 512 B below 1 MiB (recurring small shapes get
// their exact class); above, four classes per power of two (at most 25%
// waste) rounded up to 2 MiB, so that nearby sizes share blocks.
size_t RoundSize(size_t bytes) {
  if (bytes == 0) return kSmallGranule;  // a zero-byte block still has an address
  if (bytes < kSmallLimit) return (bytes + kSmallGranule - 1) / kSmallGranule * kSmallGranule;
  size_t pow2 = kSmallLimit;
  while (pow2 <= bytes / 2) pow2 *= 2;  // largest power of two <= bytes
  const size_t step = pow2 / 4;
  size_t r = (bytes + step - 1) / step * step;
  r = (r + kLargeGranule - 1) / kLargeGranule * kLargeGranule;
  return r < bytes ? bytes : r;  // (overflow guard for absurd sizes)
}

class Pool {
 public:
  // device >= 0: device memory of that device; kPinnedMemory: pinned host.
  explicit Pool(int device) : device_(device) {}

  cudaError_t Alloc(size_t bytes, void** ptr) {
    if (ptr == nullptr) return cudaErrorInvalidValue;
    *ptr = nullptr;
    const size_t size = RoundSize(bytes);
    if (size < bytes) return cudaErrorMemoryAllocation;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first / 2 <= size) {
        *ptr = it->second;
        in_use_.emplace(it->second, it->first);
        stats_.in_use_bytes += it->first;
        stats_.cached_bytes -= it->first;
        free_.erase(it);
        return cudaSuccess;
      }
    }
    void* p = nullptr;
    cudaError_t err = DriverAlloc(size, &p);
    if (err == cudaErrorMemoryAllocation) {
      // Cached blocks of other sizes may be what the driver is missing.
      (void)cudaGetLastError();  // the failed call set the thread's last error
      err = ReleaseCached();
      if (err == cudaSuccess) err = DriverAlloc(size, &p);
      if (err == cudaErrorMemoryAllocation) (void)cudaGetLastError();
    }
    if (err != cudaSuccess) return err;
    std::lock_guard<std::mutex> lock(mu_);
    in_use_.emplace(p, size);
    stats_.driver_allocs += 1;
    stats_.reserved_bytes += size;
    stats_.in_use_bytes += size;
    *ptr = p;
    return cudaSuccess;
  }

  void Free(void* ptr) {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_use_.find(ptr);
    if (it == in_use_.end()) {
      // A programming error (double free, or a pointer of another pool):
      // continuing would hand one block to two owners.
      std::fprintf(stderr, "accel cuda allocator: free of unknown pointer %p (pool %d)\n", ptr,
                   device_);
      std::abort();
    }
    free_.emplace(it->second, ptr);
    stats_.in_use_bytes -= it->second;
    stats_.cached_bytes += it->second;
    in_use_.erase(it);
  }

  cudaError_t ReleaseCached() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      stats_.cached_bytes = 0;
    }
    cudaError_t first_err = cudaSuccess;
    uint64_t freed_bytes = 0, frees = 0;
    {
      DeviceScope scope(device_);
      for (const auto& [size, p] : blocks) {
        const cudaError_t err = device_ == kPinnedMemory ? cudaFreeHost(p) : cudaFree(p);
        if (err != cudaSuccess && first_err == cudaSuccess) first_err = err;
        freed_bytes += size;
        ++frees;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.reserved_bytes -= freed_bytes;
    stats_.driver_frees += frees;
    return first_err;
  }

  MemoryStats Stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  // Makes `device` current for the driver calls of a device pool and puts
  // the caller's device back afterwards (the current device is per thread
  // state the caller owns).
  class DeviceScope {
   public:
    explicit DeviceScope(int device) {
      if (device == kPinnedMemory) return;
      if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
        switched_ = cudaSetDevice(device) == cudaSuccess;
      }
    }
    ~DeviceScope() {
      if (switched_) (void)cudaSetDevice(previous_);
    }
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

   private:
    int previous_ = -1;
    bool switched_ = false;
  };

  cudaError_t DriverAlloc(size_t size, void** p) {
    DeviceScope scope(device_);
    // Portable: a pinned staging block may serve copies to any device.
    // Mapped: kernels may read and write it in place over PCIe (the server
    // does so for small tensors; with unified addressing the device pointer
    // is the host pointer).
    return device_ == kPinnedMemory
               ? cudaHostAlloc(p, size, cudaHostAllocPortable | cudaHostAllocMapped)
               : cudaMalloc(p, size);
  }

  const int device_;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;         // size class -> cached block
  std::unordered_map<void*, size_t> in_use_;  // handed-out block -> its size
  MemoryStats stats_;
};

// Pools live for the whole process and are never destroyed: at exit the
// driver may already be gone, and the OS reclaims everything anyway.
Pool* PoolFor(int device) {
  static Pool* const* pools = [] {
    auto** p = new Pool*[kMaxDevices + 1];
    for (int i = 0; i <= kMaxDevices; ++i) p[i] = new Pool(i == kMaxDevices ? kPinnedMemory : i);
    return p;
  }();
  if (device == kPinnedMemory) return pools[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) return nullptr;
  return pools[device];
}

}  // namespace

cudaError_t DeviceAlloc(int device, size_t bytes, void** ptr) {
  Pool* pool = device >= 0 ? PoolFor(device) : nullptr;
  if (pool == nullptr) return cudaErrorInvalidDevice;
  return pool->Alloc(bytes, ptr);
}

void DeviceFree(int device, void* ptr) {
  if (ptr == nullptr) return;
  Pool* pool = device >= 0 ? PoolFor(device) : nullptr;
  if (pool == nullptr) {
    std::fprintf(stderr, "accel cuda allocator: free on invalid device %d\n", device);
    std::abort();
  }
  pool->Free(ptr);
}

cudaError_t PinnedAlloc(size_t bytes, void** ptr) {
  return PoolFor(kPinnedMemory)->Alloc(bytes, ptr);
}

void PinnedFree(void* ptr) { PoolFor(kPinnedMemory)->Free(ptr); }

MemoryStats GetMemoryStats(int device) {
  Pool* pool = PoolFor(device);
  return pool == nullptr ? MemoryStats{} : pool->Stats();
}

cudaError_t ReleaseCachedMemory(int device) {
  Pool* pool = PoolFor(device);
  if (pool == nullptr) return cudaErrorInvalidDevice;
  return pool->ReleaseCached();
}

}  // namespace accel::kernels::cuda
