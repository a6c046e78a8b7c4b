// The CUDA backend's caching allocator for device and pinned host memory.
//
// Device memory is taken from the driver once and reused, so the request
// path never calls cudaMalloc or cudaFree (each can synchronise the device).
// Used by kernels::Buffer, the server's per-call scratch and staging
// (server/serving_device.cc) and the tests. Only in builds with the CUDA
// backend (ACCEL_WITH_CUDA). Thread-safe. A freed block returns to the cache
// at once and any thread may get it next: free only memory whose device work
// has completed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace accel::kernels::cuda {

cudaError_t DeviceAlloc(int device, size_t bytes, void** ptr);
void DeviceFree(int device, void* ptr);
// Pinned host memory for staging copies, cached likewise. Mapped into the
// device's address space: with unified addressing (every 64-bit Linux
// process) a kernel may use the returned pointer directly.
cudaError_t PinnedAlloc(size_t bytes, void** ptr);
void PinnedFree(void* ptr);

// What the caching allocator holds on one device (device >= 0) or in pinned
// host memory (device = kPinnedMemory): for GetServerInfo, metrics and the
// tests that check that steady-state traffic never reaches the driver.
inline constexpr int kPinnedMemory = -1;
struct MemoryStats {
  uint64_t driver_allocs = 0;   // cudaMalloc / cudaHostAlloc calls that succeeded
  uint64_t driver_frees = 0;    // cudaFree / cudaFreeHost calls
  uint64_t reserved_bytes = 0;  // held from the driver: in use + cached
  uint64_t in_use_bytes = 0;    // handed out and not yet freed (rounded sizes)
  uint64_t cached_bytes = 0;    // free blocks kept for reuse
};
MemoryStats GetMemoryStats(int device);
// Returns every cached (free) block of `device` (or kPinnedMemory) to the
// driver. cudaFree synchronises the device: never on the request path.
cudaError_t ReleaseCachedMemory(int device);

}  // namespace accel::kernels::cuda
