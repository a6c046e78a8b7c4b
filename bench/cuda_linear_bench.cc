// cuda_linear_bench: W8A16 Linear against cuBLAS fp16/bf16 GEMMs on the same
// shapes, in one harness (issue 3's Linear goals).
//
// For M in {1, 16, 128, 4096}, (N, K) in {(4096, 4096), (11008, 4096)} and
// fp16/bf16 activations it times:
//   cublas      cuBLASLt GEMM with a weight of the activation dtype (what the
//               kCublas path of LaunchLinear runs: blas::Run),
//   w8a16       LaunchLinear with an int8 per-row weight (the path it picks),
//   w8a16:PATH  each W8A16 path forced, where it applies (to place the
//               skinny/dequant threshold).
// Each sample replays a CUDA graph of L back-to-back launches that rotate
// over R weight copies (R copies are >= 4x the L2, so weights come from
// DRAM as in a model with many layers); time per launch = sample / L,
// reported as the median of --iters samples (default 100) after warm-up.
// Prints time, TFLOP/s, weight GB/s and the ratio to cuBLAS, plus a large
// device-to-device copy as the bandwidth ceiling; --json FILE writes every
// row.
//
// Usage: cuda_linear_bench [--iters N] [--json FILE] [--m LIST] [--quick]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "accel/kernels/convert.h"
#include "cuda/blas.h"
#include "cuda/launch.h"
#include "cuda/linear.h"

namespace {

using accel::kernels::cuda::ElemType;
using accel::kernels::cuda::LinearParams;
using accel::kernels::cuda::LinearPath;
namespace cuda = accel::kernels::cuda;
namespace blas = accel::kernels::cuda::blas;

#define CHECK_CUDA(call)                                                      \
  do {                                                                        \
    const cudaError_t err_ = (call);                                          \
    if (err_ != cudaSuccess) {                                                \
      std::fprintf(stderr, "%s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call, \
                   cudaGetErrorString(err_), blas::LastError());              \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

struct Options {
  int iters = 100;
  std::string json;
  std::vector<int64_t> ms = {1, 16, 128, 4096};
  bool quick = false;  // fewer shapes: fp16 only
};

struct Row {
  std::string dtype, variant, path;
  int64_t m, n, k;
  double us, tflops, weight_gbs, speedup;  // speedup: cuBLAS time / this time
  bool staged;
};

// Device buffer filled with pseudo-random bytes shaped for its type: small
// floats for activations and float weights, int8 in [-127, 127].
void* Upload(const std::vector<uint8_t>& host) {
  void* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(host.size(), 256)));
  CHECK_CUDA(cudaMemcpy(d, host.data(), host.size(), cudaMemcpyHostToDevice));
  return d;
}

uint64_t Next(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

std::vector<uint8_t> RandomFloats(ElemType t, int64_t n, double scale, uint64_t seed) {
  const size_t item = t == ElemType::kF32 ? 4 : 2;
  std::vector<uint8_t> out(static_cast<size_t>(n) * item);
  uint64_t s = seed | 1;
  for (int64_t i = 0; i < n; ++i) {
    const float f = static_cast<float>(((Next(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0) * scale);
    if (t == ElemType::kF32) {
      std::memcpy(&out[i * 4], &f, 4);
    } else {
      const uint16_t h =
          t == ElemType::kF16 ? accel::kernels::FloatToHalf(f) : accel::kernels::FloatToBFloat16(f);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

std::vector<uint8_t> RandomInt8(int64_t n, uint64_t seed) {
  std::vector<uint8_t> out(static_cast<size_t>(n));
  uint64_t s = seed | 1;
  for (auto& b : out) b = static_cast<uint8_t>(static_cast<int8_t>(Next(s) % 255) - 127);
  return out;
}

// Median time per launch, in microseconds, of `launch(i)` (i = index of the
// launch in the graph, for weight rotation).
template <typename Launch>
double TimeLaunches(cudaStream_t stream, int per_graph, int iters, Launch launch) {
  for (int i = 0; i < per_graph; ++i) launch(i);  // warm-up: plans, handles, modules
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < per_graph; ++i) launch(i);
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) CHECK_CUDA(cudaGraphLaunch(exec, stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> samples;
  for (int it = 0; it < iters; ++it) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    samples.push_back(1000.0 * ms / per_graph);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

double CopyBandwidthGBs(cudaStream_t stream, int iters) {
  const size_t bytes = size_t{512} << 20;
  void *a = nullptr, *b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double us = TimeLaunches(stream, 2, std::max(10, iters / 10), [&](int) {
    CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  return 2.0 * bytes / (us * 1e3);  // read + write
}

std::vector<int64_t> ParseList(const char* s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) {
      opt.iters = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--json" && i + 1 < argc) {
      opt.json = argv[++i];
    } else if (a == "--m" && i + 1 < argc) {
      opt.ms = ParseList(argv[++i]);
    } else if (a == "--quick") {
      opt.quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--iters N] [--json FILE] [--m 1,16,...] [--quick]\n",
                   argv[0]);
      return 2;
    }
  }
  int device = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const double copy_gbs = CopyBandwidthGBs(stream, opt.iters);
  std::printf("device %s, %d SMs, L2 %d MB; device-to-device copy %.0f GB/s (read + write)\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_gbs);

  const std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {11008, 4096}};
  std::vector<ElemType> dtypes = {ElemType::kF16, ElemType::kBF16};
  if (opt.quick) dtypes = {ElemType::kF16};
  const double rotate_bytes = 4.0 * std::max(prop.l2CacheSize, 1 << 20);
  std::vector<Row> rows;

  std::printf("%-5s %5s %6s %5s  %-20s %10s %8s %9s %8s\n", "dtype", "M", "N", "K", "variant", "us",
              "TFLOP/s", "W GB/s", "vs cuBLAS");
  for (ElemType dt : dtypes) {
    const char* dname = dt == ElemType::kF16 ? "fp16" : "bf16";
    for (auto [n, k] : shapes) {
      // Weight copies: int8 and dtype, enough of each to defeat the L2.
      const int r8 = std::clamp(static_cast<int>(std::ceil(rotate_bytes / (n * k))), 2, 16);
      const int r16 = std::clamp(static_cast<int>(std::ceil(rotate_bytes / (2.0 * n * k))), 2, 16);
      std::vector<void*> w8, w16;
      {
        const std::vector<uint8_t> q = RandomInt8(n * k, 17);
        for (int i = 0; i < r8; ++i) w8.push_back(Upload(q));
        const std::vector<uint8_t> f = RandomFloats(dt, n * k, 1.0 / std::sqrt(double(k)), 23);
        for (int i = 0; i < r16; ++i) w16.push_back(Upload(f));
      }
      void* scales = Upload(RandomFloats(ElemType::kF32, n, 1e-3, 29));
      for (int64_t m : opt.ms) {
        void* x = Upload(RandomFloats(dt, m * k, 1.0, 31 + m));
        void* y = nullptr;
        CHECK_CUDA(cudaMalloc(&y, static_cast<size_t>(m * n) * 2));
        const double flops = 2.0 * m * n * k;
        const int per_graph = std::max(std::max(r8, r16), m >= 1024 ? 4 : 20);
        auto add_row = [&](const std::string& variant, const std::string& path, double us,
                           double weight_bytes, double base_us, bool staged) {
          Row r{dname,
                variant,
                path,
                m,
                n,
                k,
                us,
                flops / (us * 1e6),
                weight_bytes / (us * 1e3),
                base_us / us,
                staged};
          rows.push_back(r);
          std::printf("%-5s %5lld %6lld %5lld  %-20s %10.2f %8.1f %9.0f %8.2fx%s\n", dname,
                      static_cast<long long>(m), static_cast<long long>(n),
                      static_cast<long long>(k), variant.c_str(), us, r.tflops, r.weight_gbs,
                      r.speedup, staged ? "  (staged epilogue)" : "");
          std::fflush(stdout);
        };

        // cuBLAS baseline: the same cuBLASLt call the kCublas path makes.
        blas::Gemm g;
        g.ab_type = g.d_type = dt == ElemType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
        g.m = m;
        g.n = n;
        g.k = k;
        g.ldx = g.ldw = k;
        g.ldd = n;
        g.x = x;
        g.d = y;
        g.workspace_bytes = blas::WorkspaceBytes(m, n, k);
        CHECK_CUDA(cudaMalloc(&g.workspace, g.workspace_bytes));
        const double base_us = TimeLaunches(stream, per_graph, opt.iters, [&](int i) {
          blas::Gemm gi = g;
          gi.w = w16[i % r16];
          CHECK_CUDA(blas::Run(gi, stream));
        });
        add_row("cublas", "cublas", base_us, 2.0 * n * k, base_us, false);
        CHECK_CUDA(cudaFree(g.workspace));

        // W8A16: the path LaunchLinear picks, then each applicable path.
        LinearParams p;
        p.input = x;
        p.dtype = dt;
        p.m = m;
        p.k = k;
        p.n = n;
        p.weight = w8[0];
        p.weight_dtype = ElemType::kI8;
        p.scales = static_cast<const float*>(scales);
        p.per_row_scales = true;
        p.output = y;
        const LinearPath chosen = cuda::ChooseLinearPath(p);
        for (LinearPath path : {LinearPath::kAuto, LinearPath::kW8A16Skinny, LinearPath::kW8A16Gemm,
                                LinearPath::kW8A16Dequant}) {
          if (!cuda::LinearPathSupports(path, p)) continue;
          if (path == chosen) continue;  // already timed as "w8a16"
          const LinearPath actual = path == LinearPath::kAuto ? chosen : path;
          LinearParams q = p;
          q.workspace_bytes = cuda::LinearWorkspaceBytesFor(q, actual);
          void* ws = nullptr;
          if (q.workspace_bytes > 0) CHECK_CUDA(cudaMalloc(&ws, q.workspace_bytes));
          q.workspace = ws;
          const bool staged = cuda::LinearPathStaged(q, actual);
          const double us = TimeLaunches(stream, per_graph, opt.iters, [&](int i) {
            LinearParams qi = q;
            qi.weight = w8[i % r8];
            CHECK_CUDA(cuda::LaunchLinearWith(qi, actual, stream));
          });
          const std::string variant = path == LinearPath::kAuto
                                          ? "w8a16"
                                          : std::string("w8a16:") + cuda::LinearPathName(actual);
          add_row(variant, cuda::LinearPathName(actual), us, 1.0 * n * k, base_us, staged);
          if (ws != nullptr) CHECK_CUDA(cudaFree(ws));
        }
        CHECK_CUDA(cudaFree(x));
        CHECK_CUDA(cudaFree(y));
      }
      for (void* w : w8) CHECK_CUDA(cudaFree(w));
      for (void* w : w16) CHECK_CUDA(cudaFree(w));
      CHECK_CUDA(cudaFree(scales));
    }
  }

  if (!opt.json.empty()) {
    std::ofstream out(opt.json);
    out << "{\n  \"device\": \"" << prop.name << "\",\n  \"copy_gbs\": " << copy_gbs
        << ",\n  \"iters\": " << opt.iters << ",\n  \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      out << "    {\"dtype\": \"" << r.dtype << "\", \"variant\": \"" << r.variant
          << "\", \"path\": \"" << r.path << "\", \"m\": " << r.m << ", \"n\": " << r.n
          << ", \"k\": " << r.k << ", \"us\": " << r.us << ", \"tflops\": " << r.tflops
          << ", \"weight_gbs\": " << r.weight_gbs << ", \"speedup_vs_cublas\": " << r.speedup
          << ", \"staged\": " << (r.staged ? "true" : "false") << "}"
          << (i + 1 < rows.size() ? ",\n" : "\n");
    }
    out << "  ]\n}\n";
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
