// The CUDA caching allocator and CUDA Buffers: round trips through
// CopyToBuffer/CopyFromBuffer, reuse of freed blocks without new driver
// allocations, many threads at once, out-of-memory as RESOURCE_EXHAUSTED,
// and pinned host memory. Skips without a CUDA device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "accel/kernels/buffer.h"
#include "cuda/launch.h"
#include "cuda_test_util.h"

namespace accel::kernels {
namespace {

int CurrentDevice() {
  int d = 0;
  cudaGetDevice(&d);
  return d;
}

class CudaAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override { ACCEL_SKIP_WITHOUT_CUDA(); }
};

std::vector<uint8_t> RandomBytes(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST_F(CudaAllocatorTest, BufferRoundTrips) {
  std::mt19937_64 rng(1);
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{(1 << 20) + 3}, size_t{5 << 20}}) {
    auto buf = Buffer::Allocate(Backend::kCuda, n);
    ASSERT_TRUE(buf.ok()) << buf.status();
    EXPECT_NE(buf->data(), nullptr);
    EXPECT_EQ(buf->size(), n);
    EXPECT_EQ(buf->backend(), Backend::kCuda);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buf->data()) % 256, 0u);
    const std::vector<uint8_t> src = RandomBytes(n, rng);
    ASSERT_TRUE(CopyToBuffer(src.data(), n, *buf).ok());
    std::vector<uint8_t> back(n, 0xAB);
    ASSERT_TRUE(CopyFromBuffer(*buf, 0, n, back.data()).ok());
    EXPECT_EQ(back, src) << "n=" << n;
    if (n >= 10) {
      // Partial copies at an offset.
      const uint8_t patch[5] = {1, 2, 3, 4, 5};
      ASSERT_TRUE(CopyToBuffer(patch, 5, *buf, n - 7).ok());
      uint8_t got[7];
      ASSERT_TRUE(CopyFromBuffer(*buf, n - 7, 7, got).ok());
      EXPECT_EQ(std::memcmp(got, patch, 5), 0);
      EXPECT_EQ(got[5], src[n - 2]);
    }
    // Ranges past the end are the caller's error, not the device's.
    uint8_t x[2];
    EXPECT_EQ(CopyToBuffer(x, 2, *buf, n).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(CopyFromBuffer(*buf, n, 2, x).code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(CudaAllocatorTest, MovedBufferFreesOnce) {
  const cuda::MemoryStats before = cuda::GetMemoryStats(CurrentDevice());
  {
    auto a = Buffer::Allocate(Backend::kCuda, 4096);
    ASSERT_TRUE(a.ok());
    Buffer b = std::move(*a);
    Buffer c;
    c = std::move(b);
    EXPECT_EQ(c.size(), 4096u);
    EXPECT_EQ(cuda::GetMemoryStats(CurrentDevice()).in_use_bytes, before.in_use_bytes + 4096);
  }
  EXPECT_EQ(cuda::GetMemoryStats(CurrentDevice()).in_use_bytes, before.in_use_bytes);
}

TEST_F(CudaAllocatorTest, SteadyStateReusesBlocksWithoutDriverCalls) {
  const int device = CurrentDevice();
  // A request's worth of sizes: small activations, a mid-size output, two
  // large scratch blocks (one not a class boundary).
  const std::vector<size_t> sizes = {256, 8192, 100000, (3 << 20) + 12345, 90 << 20};
  auto run_request = [&] {
    std::vector<Buffer> live;
    for (size_t s : sizes) {
      auto b = Buffer::Allocate(Backend::kCuda, s);
      ASSERT_TRUE(b.ok()) << b.status();
      live.push_back(std::move(*b));
    }
  };
  run_request();  // warm-up: the driver is called here
  const cuda::MemoryStats warm = cuda::GetMemoryStats(device);
  EXPECT_GE(warm.cached_bytes, 90u << 20);
  for (int i = 0; i < 100; ++i) run_request();
  const cuda::MemoryStats after = cuda::GetMemoryStats(device);
  EXPECT_EQ(after.driver_allocs, warm.driver_allocs);
  EXPECT_EQ(after.reserved_bytes, warm.reserved_bytes);
  EXPECT_EQ(after.in_use_bytes, warm.in_use_bytes);

  // Slightly smaller requests of the same classes reuse the blocks too.
  {
    auto b = Buffer::Allocate(Backend::kCuda, (90 << 20) - 4096);
    ASSERT_TRUE(b.ok());
  }
  EXPECT_EQ(cuda::GetMemoryStats(device).driver_allocs, warm.driver_allocs);

  // Giving the cache back returns the memory to the driver.
  ASSERT_EQ(cuda::ReleaseCachedMemory(device), cudaSuccess);
  const cuda::MemoryStats released = cuda::GetMemoryStats(device);
  EXPECT_EQ(released.cached_bytes, 0u);
  EXPECT_EQ(released.reserved_bytes, released.in_use_bytes);
}

TEST_F(CudaAllocatorTest, ManyThreadsGetDisjointBlocks) {
  const int device = CurrentDevice();
  const cuda::MemoryStats before = cuda::GetMemoryStats(device);
  constexpr int kThreads = 8, kIters = 300;
  std::vector<std::vector<std::pair<uintptr_t, size_t>>> seen(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Threads do not inherit the current device.
      cudaSetDevice(device);
      std::mt19937_64 rng(t);
      std::vector<std::pair<void*, size_t>> live;
      for (int i = 0; i < kIters; ++i) {
        if (live.size() < 6 && (rng() % 3 != 0 || live.empty())) {
          const size_t n = 1 + rng() % (rng() % 4 == 0 ? (4 << 20) : 20000);
          void* p = nullptr;
          if (cuda::DeviceAlloc(device, n, &p) != cudaSuccess || p == nullptr) {
            ++failures;
            continue;
          }
          // Stamp the block: a block handed to two owners at once would
          // show another thread's byte.
          cudaMemset(p, t + 1, std::min<size_t>(n, 64));
          live.emplace_back(p, n);
        } else {
          const size_t j = rng() % live.size();
          uint8_t probe[64];
          const size_t len = std::min<size_t>(live[j].second, 64);
          cudaMemcpy(probe, live[j].first, len, cudaMemcpyDeviceToHost);
          for (size_t b = 0; b < len; ++b) {
            if (probe[b] != t + 1) {
              ++failures;
              break;
            }
          }
          cuda::DeviceFree(device, live[j].first);
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(j));
        }
      }
      for (auto& [p, n] : live) cuda::DeviceFree(device, p);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(cuda::GetMemoryStats(device).in_use_bytes, before.in_use_bytes);
}

TEST_F(CudaAllocatorTest, OutOfMemoryIsResourceExhaustedAndRecoverable) {
  // Far beyond any device (but not an overflow of the size classes).
  auto huge = Buffer::Allocate(Backend::kCuda, size_t{1} << 50);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not left as the thread's error
  auto small = Buffer::Allocate(Backend::kCuda, 1024);
  EXPECT_TRUE(small.ok()) << small.status();
}

TEST_F(CudaAllocatorTest, PinnedMemoryIsCachedAndUsable) {
  void* p = nullptr;
  ASSERT_EQ(cuda::PinnedAlloc(1 << 20, &p), cudaSuccess);
  ASSERT_NE(p, nullptr);
  std::memset(p, 7, 1 << 20);  // host-visible
  auto buf = Buffer::Allocate(Backend::kCuda, 1 << 20);
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(CopyToBuffer(p, 1 << 20, *buf).ok());
  cuda::PinnedFree(p);
  const cuda::MemoryStats warm = cuda::GetMemoryStats(cuda::kPinnedMemory);
  void* q = nullptr;
  ASSERT_EQ(cuda::PinnedAlloc((1 << 20) - 100, &q), cudaSuccess);
  EXPECT_EQ(q, p);  // the cached block came back
  ASSERT_TRUE(CopyFromBuffer(*buf, 0, 1 << 20, q).ok());
  EXPECT_EQ(static_cast<uint8_t*>(q)[12345], 7);
  cuda::PinnedFree(q);
  EXPECT_EQ(cuda::GetMemoryStats(cuda::kPinnedMemory).driver_allocs, warm.driver_allocs);
}

}  // namespace
}  // namespace accel::kernels
