// What the CUDA runtime calls of one small request cost on this host: the
// host time of each call a one-row request makes, and the round trip of a
// one-row RmsNorm launched and waited for as the server does (device
// buffers, or mapped pinned host memory read and written over PCIe). On a
// virtual machine these fixed costs, not the kernel, make up most of a
// small request's GPU time (bench/RESULTS.md, "Load (GPU machine)").
//
// Usage: cuda_call_costs [--iters N]   (default 2000; medians are printed)
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "accel/kernels/cuda_memory.h"
#include "cuda/launch.h"

namespace {

using Clock = std::chrono::steady_clock;

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

__global__ void EmptyKernel() {}

double Median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// Median host microseconds of `body` over `iters` runs (after 100 warm-up).
double HostUs(int iters, const std::function<void()>& body) {
  for (int i = 0; i < 100; ++i) body();
  std::vector<double> us(iters);
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    body();
    us[i] = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  }
  return Median(us);
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 2000;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--iters N]\n", argv[0]);
      return 2;
    }
  }
  using namespace accel::kernels::cuda;
  Check(cudaSetDevice(0), "cudaSetDevice");
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  cudaEvent_t begin, end;
  Check(cudaEventCreate(&begin), "event");
  Check(cudaEventCreate(&end), "event");

  // A one-row bf16 RmsNorm of 4096, as load_gen's single-row requests.
  constexpr int64_t kCols = 4096;
  const size_t row_bytes = kCols * 2;
  void *d_in, *d_out, *d_w, *h_in, *h_out;
  Check(cudaMalloc(&d_in, row_bytes), "cudaMalloc");
  Check(cudaMalloc(&d_out, row_bytes), "cudaMalloc");
  Check(cudaMalloc(&d_w, row_bytes), "cudaMalloc");
  Check(cudaMemset(d_in, 0x3c, row_bytes), "memset");
  Check(cudaMemset(d_w, 0x3c, row_bytes), "memset");
  Check(cudaHostAlloc(&h_in, row_bytes, cudaHostAllocMapped), "cudaHostAlloc");
  Check(cudaHostAlloc(&h_out, row_bytes, cudaHostAllocMapped), "cudaHostAlloc");
  std::memset(h_in, 0x3c, row_bytes);
  RmsNormParams p;
  p.weight = d_w;
  p.dtype = p.weight_dtype = ElemType::kBF16;
  p.rows = 1;
  p.cols = kCols;
  auto rms_norm = [&](const void* in, void* out) {
    p.input = in;
    p.output = out;
    Check(LaunchRmsNorm(p, stream), "LaunchRmsNorm");
  };

  std::printf("device %s; medians of %d runs, host microseconds\n", prop.name, iters);
  auto row = [](const char* what, double us) { std::printf("%-58s %8.2f\n", what, us); };
  row("cudaEventRecord", HostUs(iters, [&] { Check(cudaEventRecord(begin, stream), "rec"); }));
  Check(cudaStreamSynchronize(stream), "sync");
  row("empty kernel launch (no wait)", HostUs(iters, [&] {
        EmptyKernel<<<1, 32, 0, stream>>>();
        Check(cudaGetLastError(), "launch");
      }));
  Check(cudaStreamSynchronize(stream), "sync");
  row("cudaStreamSynchronize, idle stream",
      HostUs(iters, [&] { Check(cudaStreamSynchronize(stream), "sync"); }));
  row("empty kernel launch + cudaStreamSynchronize", HostUs(iters, [&] {
        EmptyKernel<<<1, 32, 0, stream>>>();
        Check(cudaStreamSynchronize(stream), "sync");
      }));
  Check(cudaEventRecord(begin, stream), "rec");
  Check(cudaEventRecord(end, stream), "rec");
  Check(cudaEventSynchronize(end), "sync");
  row("cudaEventElapsedTime (both events done)", HostUs(iters, [&] {
        float ms;
        Check(cudaEventElapsedTime(&ms, begin, end), "elapsed");
      }));
  row("PinnedAlloc + PinnedFree 8 KiB (cached)", HostUs(iters, [&] {
        void* q = nullptr;
        Check(PinnedAlloc(row_bytes, &q), "PinnedAlloc");
        PinnedFree(q);
      }));
  row("DeviceAlloc + DeviceFree 8 KiB (cached)", HostUs(iters, [&] {
        void* q = nullptr;
        Check(DeviceAlloc(0, row_bytes, &q), "DeviceAlloc");
        DeviceFree(0, q);
      }));

  // Round trips of one RmsNorm row, and its device time between two events.
  auto round_trip = [&](const char* what, const void* in, void* out, bool timed) {
    std::vector<double> device_us;
    const double host = HostUs(iters, [&] {
      if (timed) Check(cudaEventRecord(begin, stream), "rec");
      rms_norm(in, out);
      if (timed) Check(cudaEventRecord(end, stream), "rec");
      Check(cudaStreamSynchronize(stream), "sync");
      if (timed) {
        float ms = 0;
        Check(cudaEventElapsedTime(&ms, begin, end), "elapsed");
        device_us.push_back(ms * 1e3);
      }
    });
    row(what, host);
    if (timed) {
      // HostUs ran 100 warm-up calls first: their samples are dropped.
      device_us.erase(device_us.begin(), device_us.end() - iters);
      std::printf("%-58s %8.2f\n", "  of which device time between the two events",
                  Median(device_us));
    }
  };
  round_trip("RmsNorm 1x4096 bf16, device buffers: launch + sync", d_in, d_out, false);
  round_trip("  the same between two events (+ cudaEventElapsedTime)", d_in, d_out, true);
  round_trip("RmsNorm 1x4096 bf16, mapped host memory: launch + sync", h_in, h_out, false);
  round_trip("  the same between two events (+ cudaEventElapsedTime)", h_in, h_out, true);
  row("H2D 8 KiB from pinned + RmsNorm + D2H 8 KiB + sync", HostUs(iters, [&] {
        Check(cudaMemcpyAsync(d_in, h_in, row_bytes, cudaMemcpyHostToDevice, stream), "h2d");
        rms_norm(d_in, d_out);
        Check(cudaMemcpyAsync(h_out, d_out, row_bytes, cudaMemcpyDeviceToHost, stream), "d2h");
        Check(cudaStreamSynchronize(stream), "sync");
      }));

  // Where zero-copy stops paying (serving_device.h's kZeroCopyBytes): a
  // batch of R rows read and written over PCIe in place, against the same
  // batch copied in and out around the kernel.
  constexpr int64_t kMaxRows = 128;
  void *d_in_big, *d_out_big, *h_in_big, *h_out_big;
  Check(cudaMalloc(&d_in_big, kMaxRows * row_bytes), "cudaMalloc");
  Check(cudaMalloc(&d_out_big, kMaxRows * row_bytes), "cudaMalloc");
  Check(cudaHostAlloc(&h_in_big, kMaxRows * row_bytes, cudaHostAllocMapped), "cudaHostAlloc");
  Check(cudaHostAlloc(&h_out_big, kMaxRows * row_bytes, cudaHostAllocMapped), "cudaHostAlloc");
  std::memset(h_in_big, 0x3c, kMaxRows * row_bytes);
  std::printf("\n%-6s %10s %22s %22s\n", "rows", "KiB in", "mapped: launch+sync",
              "h2d+kernel+d2h+sync");
  for (int64_t rows : {1, 4, 8, 16, 32, 64, 128}) {
    p.rows = rows;
    const size_t bytes = rows * row_bytes;
    const int sweep_iters = std::max(1, iters / 4);
    const double mapped = HostUs(sweep_iters, [&] {
      rms_norm(h_in_big, h_out_big);
      Check(cudaStreamSynchronize(stream), "sync");
    });
    const double copied = HostUs(sweep_iters, [&] {
      Check(cudaMemcpyAsync(d_in_big, h_in_big, bytes, cudaMemcpyHostToDevice, stream), "h2d");
      rms_norm(d_in_big, d_out_big);
      Check(cudaMemcpyAsync(h_out_big, d_out_big, bytes, cudaMemcpyDeviceToHost, stream), "d2h");
      Check(cudaStreamSynchronize(stream), "sync");
    });
    std::printf("%-6lld %10zu %22.2f %22.2f\n", static_cast<long long>(rows), bytes / 1024, mapped,
                copied);
  }
  p.rows = 1;

  // Large tensors: staged through a pinned buffer (host memcpy, then DMA;
  // what CallScope does) against cudaMemcpy straight from and to pageable
  // memory (the driver stages it in pipelined chunks). Pageable buffers
  // are touched first, as a request's bytes and a response's are.
  for (size_t mib : {4, 64}) {
    const size_t bytes = mib << 20;
    std::vector<char> pageable_in(bytes, 1), pageable_out(bytes, 0);
    void *pinned, *device;
    Check(cudaHostAlloc(&pinned, bytes, cudaHostAllocDefault), "cudaHostAlloc");
    Check(cudaMalloc(&device, bytes), "cudaMalloc");
    const int reps = mib >= 64 ? 10 : 50;
    const double staged_h2d = HostUs(reps, [&] {
      std::memcpy(pinned, pageable_in.data(), bytes);
      Check(cudaMemcpyAsync(device, pinned, bytes, cudaMemcpyHostToDevice, stream), "h2d");
      Check(cudaStreamSynchronize(stream), "sync");
    });
    const double direct_h2d = HostUs(reps, [&] {
      Check(cudaMemcpyAsync(device, pageable_in.data(), bytes, cudaMemcpyHostToDevice, stream),
            "h2d");
      Check(cudaStreamSynchronize(stream), "sync");
    });
    const double staged_d2h = HostUs(reps, [&] {
      Check(cudaMemcpyAsync(pinned, device, bytes, cudaMemcpyDeviceToHost, stream), "d2h");
      Check(cudaStreamSynchronize(stream), "sync");
      std::memcpy(pageable_out.data(), pinned, bytes);
    });
    const double direct_d2h = HostUs(reps, [&] {
      Check(cudaMemcpyAsync(pageable_out.data(), device, bytes, cudaMemcpyDeviceToHost, stream),
            "d2h");
      Check(cudaStreamSynchronize(stream), "sync");
    });
    std::printf(
        "%3zu MiB h2d: staged %9.1f us, pageable %9.1f us; d2h: staged %9.1f, pageable %9.1f\n",
        mib, staged_h2d, direct_h2d, staged_d2h, direct_d2h);
    Check(cudaFreeHost(pinned), "cudaFreeHost");
    Check(cudaFree(device), "cudaFree");
  }

  // A graph of back-to-back launches: the kernel's own time, for scale.
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  constexpr int kInGraph = 100;
  Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
  for (int i = 0; i < kInGraph; ++i) rms_norm(d_in, d_out);
  Check(cudaStreamEndCapture(stream, &graph), "capture");
  Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  std::vector<double> per_kernel;
  for (int i = 0; i < 50; ++i) {
    Check(cudaEventRecord(begin, stream), "rec");
    Check(cudaGraphLaunch(exec, stream), "graph");
    Check(cudaEventRecord(end, stream), "rec");
    Check(cudaEventSynchronize(end), "sync");
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, begin, end), "elapsed");
    per_kernel.push_back(ms * 1e3 / kInGraph);
  }
  row("RmsNorm 1x4096 bf16 back to back in a graph (device, each)", Median(per_kernel));
  return 0;
}
