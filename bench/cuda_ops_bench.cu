// cuda_ops_bench: the memory-bound CUDA kernels (RmsNorm, RmsNorm+residual,
// SwiGlu, Rope, per-row Quantize, Dequantize) timed through their launchers
// (kernels/cuda/launch.h), against a device-to-device copy measured in the
// same run (issue 3's benchmark; bench/run_gpu.sh merges it with PyTorch's
// figures from bench/torch_peer.py).
//
// Method (see /work/.library/device/METHOD.md): inputs are random (never
// zeros), rotated among enough buffer sets that the sets together exceed 3x
// the L2 (so no run reads what the previous one left in L2); 10 warm-up
// launches; each of >= 100 timed launches gets its own pair of events and the
// median is reported. GB/s counts the bytes that must move (each input read
// once, each output written once). The copy ceiling is cudaMemcpyAsync D2D
// of 256 MiB buffers (2 * bytes / time); `copy_frac` = ours / that; for
// large shapes also ours / a D2D copy moving the op's own byte count (the
// ceiling at that footprint: smaller transfers lose more to ramp-up). Small
// calls (1 and 16 rows) are timed as a CUDA graph of 100 launches, so the
// figure is per-kernel time without launch gaps.
//
// Usage: cuda_ops_bench [--json FILE] [--iters N] [--quick] [--ops LIST]
//                       [--dtypes LIST] [--sizes all|large|small]
// --ops: comma-separated op names (rmsnorm, rmsnorm_residual, swiglu,
// rope, quantize_row, dequantize_row) to run, default all; --dtypes: bf16,
// fp16; --sizes: only the large shapes or only the small (graph) calls. The
// copy ceiling and the graph floor (an empty kernel: the per-launch cost
// every small call pays) always run.
// Single-threaded; uses the current device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cuda/launch.h"

namespace cu = accel::kernels::cuda;

namespace {

#define CHECK_CUDA(x)                                                                            \
  do {                                                                                           \
    cudaError_t err_ = (x);                                                                      \
    if (err_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(err_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

int g_iters = 100;
size_t g_l2_bytes = 50u << 20;
double g_copy_gbps = 0;
cudaStream_t g_stream;

// Random values in [lo, hi) from a hash of the index (no host transfer).
__device__ uint32_t Hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

template <typename T>
__global__ void FillRandom(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float u = (Hash(seed * 0x9e3779b97f4a7c15ull + i) >> 8) * (1.0f / 16777216.0f);
    const float v = lo + (hi - lo) * u;
    if constexpr (std::is_same_v<T, int8_t>) {
      p[i] = static_cast<int8_t>(static_cast<int>(v));
    } else if constexpr (std::is_same_v<T, __half>) {
      p[i] = __float2half_rn(v);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      p[i] = __float2bfloat16_rn(v);
    } else {
      p[i] = v;
    }
  }
}

void Fill(void* p, cu::ElemType t, int64_t n, uint64_t seed, float lo = -2, float hi = 2) {
  const unsigned blocks = 1024;
  switch (t) {
    case cu::ElemType::kF32:
      FillRandom<<<blocks, 256>>>(static_cast<float*>(p), n, seed, lo, hi);
      break;
    case cu::ElemType::kF16:
      FillRandom<<<blocks, 256>>>(static_cast<__half*>(p), n, seed, lo, hi);
      break;
    case cu::ElemType::kBF16:
      FillRandom<<<blocks, 256>>>(static_cast<__nv_bfloat16*>(p), n, seed, lo, hi);
      break;
    case cu::ElemType::kI8:
      FillRandom<<<blocks, 256>>>(static_cast<int8_t*>(p), n, seed, -127, 128);
      break;
    default:
      std::abort();
  }
  CHECK_CUDA(cudaGetLastError());
}

size_t SizeOf(cu::ElemType t) {
  switch (t) {
    case cu::ElemType::kF32:
    case cu::ElemType::kI32:
      return 4;
    case cu::ElemType::kF16:
    case cu::ElemType::kBF16:
      return 2;
    case cu::ElemType::kI8:
      return 1;
    default:
      return 8;
  }
}

const char* Name(cu::ElemType t) {
  return t == cu::ElemType::kBF16 ? "bf16" : t == cu::ElemType::kF16 ? "fp16" : "fp32";
}

// Device allocations freed at scope exit.
struct DeviceArena {
  std::vector<void*> ptrs;
  void* Alloc(size_t bytes) {
    void* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, bytes == 0 ? 256 : bytes));
    ptrs.push_back(p);
    return p;
  }
  ~DeviceArena() {
    for (void* p : ptrs) cudaFree(p);
  }
};

// Number of buffer sets of `footprint` bytes that together exceed 3x L2.
int SetsFor(size_t footprint) {
  const size_t want = 3 * g_l2_bytes;
  int sets = static_cast<int>((want + footprint - 1) / footprint);
  return std::max(2, std::min(sets, 64));
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Median time (us) of launch(set) over g_iters runs, rotating sets.
double TimeRotated(int sets, const std::function<void(int)>& launch) {
  for (int i = 0; i < 10; ++i) launch(i % sets);
  CHECK_CUDA(cudaStreamSynchronize(g_stream));
  std::vector<cudaEvent_t> ev(2 * g_iters);
  for (auto& e : ev) CHECK_CUDA(cudaEventCreate(&e));
  for (int i = 0; i < g_iters; ++i) {
    CHECK_CUDA(cudaEventRecord(ev[2 * i], g_stream));
    launch(i % sets);
    CHECK_CUDA(cudaEventRecord(ev[2 * i + 1], g_stream));
  }
  CHECK_CUDA(cudaStreamSynchronize(g_stream));
  CHECK_CUDA(cudaGetLastError());
  std::vector<double> us(g_iters);
  for (int i = 0; i < g_iters; ++i) {
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
    us[i] = ms * 1e3;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return Median(us);
}

// Per-launch time (us) from a graph of 100 launches (no launch gaps), median
// of 20 replays. Small inputs live in L2 anyway; sets are still rotated.
double TimeGraph(int sets, const std::function<void(int)>& launch) {
  constexpr int kLaunches = 100;
  for (int i = 0; i < 10; ++i) launch(i % sets);
  CHECK_CUDA(cudaStreamSynchronize(g_stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kLaunches; ++i) launch(i % sets);
  CHECK_CUDA(cudaStreamEndCapture(g_stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, g_stream));  // warm-up
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> us;
  for (int r = 0; r < 20; ++r) {
    CHECK_CUDA(cudaEventRecord(a, g_stream));
    CHECK_CUDA(cudaGraphLaunch(exec, g_stream));
    CHECK_CUDA(cudaEventRecord(b, g_stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1e3 / kLaunches);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return Median(us);
}

// GB/s (2 * bytes / time) of a D2D copy that moves `moved` bytes in all
// (reads + writes, as an op's byte count), rotated like the ops: the
// ceiling at the op's own footprint, where a launch's ramp-up and tail are
// a larger share than in the 256 MiB copy. Cached per size.
double SameBytesCopyGbps(double moved) {
  static std::map<size_t, double> cache;
  const size_t bytes = static_cast<size_t>(moved / 2) / 256 * 256;
  if (bytes == 0) return 0;
  auto it = cache.find(bytes);
  if (it != cache.end()) return it->second;
  DeviceArena arena;
  const int sets = SetsFor(2 * bytes);
  std::vector<void*> src(sets), dst(sets);
  for (int s = 0; s < sets; ++s) {
    src[s] = arena.Alloc(bytes);
    dst[s] = arena.Alloc(bytes);
    CHECK_CUDA(cudaMemsetAsync(src[s], s + 1, bytes, g_stream));
  }
  const double us = TimeRotated(sets, [&](int s) {
    CHECK_CUDA(cudaMemcpyAsync(dst[s], src[s], bytes, cudaMemcpyDeviceToDevice, g_stream));
  });
  return cache[bytes] = 2.0 * bytes / (us * 1e3);
}

struct Result {
  std::string op, dtype, shape;
  double us, bytes, gbps, frac;
  double same_frac;  // ours / a copy of the same bytes (large shapes; 0 for small calls)
  bool small;
};
std::vector<Result> g_results;

void Report(const std::string& op, cu::ElemType t, const std::string& shape, double us,
            double bytes, bool small = false) {
  Result r{op, Name(t), shape, us, bytes, bytes / (us * 1e3), 0, 0, small};
  r.frac = r.gbps / g_copy_gbps;
  std::printf("%-18s %-5s %-22s %10.2f us %8.1f GB/s %6.3f of copy%s\n", op.c_str(),
              r.dtype.c_str(), shape.c_str(), us, r.gbps, r.frac, small ? "  (graph)" : "");
  std::fflush(stdout);
  g_results.push_back(r);
}

// After every op ran (their extra copies would change the card's state under
// the ops measured later): each large shape against a copy of its own bytes.
void ReportSameBytesCopies() {
  for (Result& r : g_results) {
    if (r.small) continue;
    const double copy = SameBytesCopyGbps(r.bytes);
    r.same_frac = r.gbps / copy;
    std::printf("%-18s %-5s %-22s copy of the same bytes %8.1f GB/s: ours %6.3f of it\n",
                r.op.c_str(), r.dtype.c_str(), r.shape.c_str(), copy, r.same_frac);
  }
}

// ----------------------------------------------------------------- copy

void BenchCopy() {
  const size_t bytes = 256u << 20;
  DeviceArena arena;
  const int sets = 4;
  std::vector<void*> src(sets), dst(sets);
  for (int s = 0; s < sets; ++s) {
    src[s] = arena.Alloc(bytes);
    dst[s] = arena.Alloc(bytes);
    Fill(src[s], cu::ElemType::kBF16, bytes / 2, s);
  }
  const double us = TimeRotated(sets, [&](int s) {
    CHECK_CUDA(cudaMemcpyAsync(dst[s], src[s], bytes, cudaMemcpyDeviceToDevice, g_stream));
  });
  g_copy_gbps = 2.0 * bytes / (us * 1e3);
  std::printf("%-18s %-5s %-22s %10.2f us %8.1f GB/s (the ceiling: 2 * bytes / time)\n", "copy_d2d",
              "-", "256MiB", us, g_copy_gbps);
}

// The floor of a small call: an empty kernel of one warp, timed as the
// small calls are (graph of 100 launches).
__global__ void EmptyKernel() {}

void BenchFloor() {
  const double us = TimeGraph(1, [&](int) {
    EmptyKernel<<<1, 32, 0, g_stream>>>();
    CHECK_CUDA(cudaGetLastError());
  });
  std::printf("%-18s %-5s %-22s %10.2f us (graph; the per-launch floor)\n", "empty_kernel", "-",
              "1x32", us);
}

// --------------------------------------------------------------- RmsNorm

void BenchRmsNorm(cu::ElemType t, int64_t rows, int64_t cols, bool residual, bool small) {
  const size_t sz = SizeOf(t);
  const size_t n = static_cast<size_t>(rows * cols);
  const size_t footprint = n * sz * (residual ? 3 : 2);
  const int sets = SetsFor(footprint);
  DeviceArena arena;
  std::vector<cu::RmsNormParams> ps(sets);
  void* weight = arena.Alloc(cols * sz);
  Fill(weight, t, cols, 99, 0.5f, 1.5f);
  for (int s = 0; s < sets; ++s) {
    cu::RmsNormParams& p = ps[s];
    void* in = arena.Alloc(n * sz);
    Fill(in, t, n, 10 + s);
    p.input = in;
    p.output = arena.Alloc(n * sz);
    p.weight = weight;
    p.dtype = p.weight_dtype = t;
    p.rows = rows;
    p.cols = cols;
    if (residual) {
      void* r = arena.Alloc(n * sz);
      Fill(r, t, n, 1000 + s);
      p.residual = r;
      p.residual_out = r;  // in place, as vLLM's fused add + norm
    }
  }
  auto launch = [&](int s) { CHECK_CUDA(cu::LaunchRmsNorm(ps[s], g_stream)); };
  // Each run rewrites the residual in place; repeated runs keep it finite
  // enough (s grows by at most the input each time over ~110 runs).
  const double us = small ? TimeGraph(sets, launch) : TimeRotated(sets, launch);
  const double bytes = static_cast<double>(n * sz * (residual ? 4 : 2) + cols * sz);
  Report(residual ? "rmsnorm_residual" : "rmsnorm", t,
         std::to_string(rows) + "x" + std::to_string(cols), us, bytes, small);
}

// ----------------------------------------------------------------- SwiGlu

void BenchSwiGlu(cu::ElemType t, int64_t rows, int64_t cols, bool small) {
  const size_t sz = SizeOf(t);
  const size_t n = static_cast<size_t>(rows * cols);
  const int sets = SetsFor(3 * n * sz);
  DeviceArena arena;
  std::vector<cu::SwiGluParams> ps(sets);
  for (int s = 0; s < sets; ++s) {
    void* g = arena.Alloc(n * sz);
    void* u = arena.Alloc(n * sz);
    Fill(g, t, n, 20 + s, -6, 6);
    Fill(u, t, n, 40 + s);
    ps[s] = cu::SwiGluParams{g, u, arena.Alloc(n * sz), t, static_cast<int64_t>(n)};
  }
  auto launch = [&](int s) { CHECK_CUDA(cu::LaunchSwiGlu(ps[s], g_stream)); };
  const double us = small ? TimeGraph(sets, launch) : TimeRotated(sets, launch);
  Report("swiglu", t, std::to_string(rows) + "x" + std::to_string(cols), us, 3.0 * n * sz, small);
}

// ------------------------------------------------------------------- Rope

void BenchRope(cu::ElemType t, int64_t b, int64_t s_len, int64_t hq, int64_t hk, int64_t d,
               bool half_split, bool small) {
  const size_t sz = SizeOf(t);
  const size_t nq = static_cast<size_t>(b * s_len * hq * d),
               nk = static_cast<size_t>(b * s_len * hk * d);
  const int sets = SetsFor(2 * (nq + nk) * sz);
  DeviceArena arena;
  const int64_t half = d / 2;
  float* cos = static_cast<float*>(arena.Alloc(s_len * half * 4));
  float* sin = static_cast<float*>(arena.Alloc(s_len * half * 4));
  Fill(cos, cu::ElemType::kF32, s_len * half, 7, -1, 1);
  Fill(sin, cu::ElemType::kF32, s_len * half, 8, -1, 1);
  std::vector<cu::RopeParams> ps(sets);
  for (int i = 0; i < sets; ++i) {
    cu::RopeParams& p = ps[i];
    void* q = arena.Alloc(nq * sz);
    void* k = arena.Alloc(nk * sz);
    Fill(q, t, nq, 60 + i);
    Fill(k, t, nk, 80 + i);
    p.q = q;
    p.k = k;
    p.q_out = arena.Alloc(nq * sz);
    p.k_out = arena.Alloc(nk * sz);
    p.dtype = t;
    p.batch = b;
    p.seq = s_len;
    p.q_heads = hq;
    p.k_heads = hk;
    p.head_dim = d;
    p.cos = cos;
    p.sin = sin;
    p.table_len = s_len;
    p.position_offset = 0;
    p.half_split = half_split;
  }
  auto launch = [&](int i) { CHECK_CUDA(cu::LaunchRope(ps[i], g_stream)); };
  const double us = small ? TimeGraph(sets, launch) : TimeRotated(sets, launch);
  const double bytes = 2.0 * (nq + nk) * sz + 2.0 * s_len * half * 4;
  Report(half_split ? "rope_half" : "rope_interleaved", t,
         std::to_string(b) + "x" + std::to_string(s_len) + "x" + std::to_string(hq) + "|" +
             std::to_string(hk) + "x" + std::to_string(d),
         us, bytes, small);
}

// --------------------------------------------------- Quantize, Dequantize

void BenchQuantize(cu::ElemType t, int64_t rows, int64_t cols, bool small) {
  const size_t sz = SizeOf(t);
  const size_t n = static_cast<size_t>(rows * cols);
  const int sets = SetsFor(n * (sz + 1));
  DeviceArena arena;
  int* nonfinite = static_cast<int*>(arena.Alloc(sizeof(int)));
  CHECK_CUDA(cudaMemset(nonfinite, 0, sizeof(int)));
  std::vector<cu::QuantizeParams> ps(sets);
  for (int s = 0; s < sets; ++s) {
    cu::QuantizeParams& p = ps[s];
    void* in = arena.Alloc(n * sz);
    Fill(in, t, n, 120 + s);
    p.input = in;
    p.dtype = t;
    p.rows = rows;
    p.cols = cols;
    p.per_row = true;
    p.values = static_cast<int8_t*>(arena.Alloc(n));
    p.scales = static_cast<float*>(arena.Alloc(rows * 4));
    p.nonfinite = nonfinite;
  }
  auto launch = [&](int s) { CHECK_CUDA(cu::LaunchQuantize(ps[s], g_stream)); };
  const double us = small ? TimeGraph(sets, launch) : TimeRotated(sets, launch);
  Report("quantize_row", t, std::to_string(rows) + "x" + std::to_string(cols), us,
         static_cast<double>(n * (sz + 1) + rows * 4), small);
}

void BenchDequantize(cu::ElemType t, int64_t rows, int64_t cols, bool small) {
  const size_t sz = SizeOf(t);
  const size_t n = static_cast<size_t>(rows * cols);
  const int sets = SetsFor(n * (sz + 1));
  DeviceArena arena;
  std::vector<cu::DequantizeParams> ps(sets);
  for (int s = 0; s < sets; ++s) {
    cu::DequantizeParams& p = ps[s];
    int8_t* v = static_cast<int8_t*>(arena.Alloc(n));
    Fill(v, cu::ElemType::kI8, n, 140 + s);
    float* sc = static_cast<float*>(arena.Alloc(rows * 4));
    Fill(sc, cu::ElemType::kF32, rows, 160 + s, 0.001f, 0.02f);
    p.values = v;
    p.scales = sc;
    p.per_row = true;
    p.rows = rows;
    p.cols = cols;
    p.output = arena.Alloc(n * sz);
    p.out_dtype = t;
  }
  auto launch = [&](int s) { CHECK_CUDA(cu::LaunchDequantize(ps[s], g_stream)); };
  const double us = small ? TimeGraph(sets, launch) : TimeRotated(sets, launch);
  Report("dequantize_row", t, std::to_string(rows) + "x" + std::to_string(cols), us,
         static_cast<double>(n * (sz + 1) + rows * 4), small);
}

void WriteJson(const char* path, const cudaDeviceProp& prop) {
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) {
    std::perror(path);
    std::exit(1);
  }
  std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"copy_gbps\": %.3f,\n  \"iters\": %d,\n", prop.name,
               g_copy_gbps, g_iters);
  std::fprintf(f, "  \"results\": [\n");
  for (size_t i = 0; i < g_results.size(); ++i) {
    const Result& r = g_results[i];
    std::fprintf(f,
                 "    {\"op\": \"%s\", \"dtype\": \"%s\", \"shape\": \"%s\", \"us\": %.4f, "
                 "\"bytes\": %.0f, \"gbps\": %.3f, \"copy_frac\": %.4f, "
                 "\"same_bytes_copy_frac\": %.4f, \"small\": %s}%s\n",
                 r.op.c_str(), r.dtype.c_str(), r.shape.c_str(), r.us, r.bytes, r.gbps, r.frac,
                 r.same_frac, r.small ? "true" : "false", i + 1 < g_results.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  std::fclose(f);
}

bool InList(const std::string& list, const std::string& name) {
  if (list.empty()) return true;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t end = std::min(list.find(',', start), list.size());
    if (list.compare(start, end - start, name) == 0) return true;
    start = end + 1;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  const char* json = nullptr;
  bool quick = false;
  std::string ops, dtypes, sizes = "all";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
      json = argv[++i];
    } else if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
      g_iters = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--ops") && i + 1 < argc) {
      ops = argv[++i];
    } else if (!std::strcmp(argv[i], "--dtypes") && i + 1 < argc) {
      dtypes = argv[++i];
    } else if (!std::strcmp(argv[i], "--sizes") && i + 1 < argc) {
      sizes = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--json FILE] [--iters N] [--quick] [--ops LIST] [--dtypes LIST] "
                   "[--sizes all|large|small]\n",
                   argv[0]);
      return 2;
    }
  }
  const bool large = sizes != "small", small = sizes != "large";
  auto want = [&](const char* op) { return InList(ops, op); };
  int device = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  g_l2_bytes = prop.l2CacheSize > 0 ? prop.l2CacheSize : g_l2_bytes;
  CHECK_CUDA(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  std::printf("device %s, %d SMs, L2 %zu MiB, %d timed runs per row (median)\n", prop.name,
              prop.multiProcessorCount, g_l2_bytes >> 20, g_iters);

  BenchCopy();
  BenchFloor();
  for (cu::ElemType t : {cu::ElemType::kBF16, cu::ElemType::kF16}) {
    if (!InList(dtypes, Name(t))) continue;
    if (large) {
      for (bool residual : {false, true}) {
        if (!want(residual ? "rmsnorm_residual" : "rmsnorm")) continue;
        BenchRmsNorm(t, 4096, 4096, residual, false);
        if (!quick) {
          BenchRmsNorm(t, 65536, 4096, residual, false);
          BenchRmsNorm(t, 16384, 8192, residual, false);
        }
      }
      if (want("swiglu")) {
        BenchSwiGlu(t, 4096, 11008, false);
        if (!quick) BenchSwiGlu(t, 32768, 14336, false);
      }
      if (want("rope")) {
        for (bool half_split : {true, false}) {
          BenchRope(t, 1, 8192, 32, 8, 128, half_split, false);
          if (!quick) BenchRope(t, 16, 2048, 32, 8, 128, half_split, false);
        }
      }
      if (want("quantize_row")) {
        BenchQuantize(t, 4096, 4096, false);
        if (!quick) BenchQuantize(t, 65536, 4096, false);
      }
      if (want("dequantize_row")) {
        BenchDequantize(t, 4096, 4096, false);
        if (!quick) BenchDequantize(t, 65536, 4096, false);
      }
    }
    // Small calls: per-kernel time (graph of 100 launches).
    if (small) {
      for (int64_t rows : {1, 16}) {
        if (want("rmsnorm")) BenchRmsNorm(t, rows, 4096, false, true);
        if (want("rmsnorm_residual")) BenchRmsNorm(t, rows, 4096, true, true);
        if (want("swiglu")) BenchSwiGlu(t, rows, 11008, true);
        if (want("rope")) BenchRope(t, 1, rows, 32, 8, 128, true, true);
        if (want("quantize_row")) BenchQuantize(t, rows, 4096, true);
        if (want("dequantize_row")) BenchDequantize(t, rows, 4096, true);
      }
    }
  }
  ReportSameBytesCopies();
  if (json != nullptr) WriteJson(json, prop);
  cudaStreamDestroy(g_stream);
  return 0;
}
