// CPU kernel benchmark: times every op of accel/kernels/ops.h at a few
// shapes (large ones of >= 64 MB per tensor, and small ones) and compares the
// memory-bound ops with a plain memcpy of the same traffic on the same
// machine, in the same run.
//
// Usage: cpu_kernels_bench [--filter=SUBSTRING] [--min_time=SECONDS]
//
// Environment: ACCEL_CPU_THREADS (threads, default all cores),
// ACCEL_CPU_ISA=avx2 (force the AVX2 kernels on an AVX-512 machine),
// OPENBLAS_CORETYPE (when unset on an AVX-512 CPU, the bench re-executes
// itself with SkylakeX, as accel-server does: see server/blas_env.h).
//
// Traffic ("bytes") is what an op must read plus what it must write, each
// tensor counted once. The memcpy reference moves the same traffic: it copies
// bytes/2 from one buffer to another (reads bytes/2, writes bytes/2), split
// across the same thread pool as the kernels (all cores), so ratio =
// op GB/s / memcpy GB/s is the fraction of the machine's copy bandwidth the
// op reaches. Linear and Ffn are compute-bound and report GFLOP/s.
// Each number is the median of repeated runs after a warm-up.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include "accel/kernels/buffer.h"
#include "accel/kernels/convert.h"
#include "accel/kernels/ops.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace accel::kernels {
namespace {

double g_min_time = 0.3;
std::string g_filter;

// Owning host tensor filled with smooth pseudo-random data.
struct Tensor {
  Buffer buf;
  DType dtype;
  Shape shape;
  Tensor(DType d, Shape s, uint64_t seed = 1, float lo = -2.f, float hi = 2.f)
      : dtype(d), shape(std::move(s)) {
    const int64_t n = NumElements(shape);
    buf = std::move(Buffer::Allocate(Backend::kCpu, n * ItemSize(d))).value();
    // Fill through the pool (first touch on both cores, and fast).
    cpu::ParallelFor(n, 1 << 16, [&](int64_t b, int64_t e) {
      uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(b) * 0xBF58476D1CE4E5B9ull;
      for (int64_t i = b; i < e; ++i) {
        x ^= x >> 31;
        x *= 0x94D049BB133111EBull;
        x ^= x >> 29;
        const float u = lo + (hi - lo) * static_cast<float>(x >> 40) * 0x1p-24f;
        void* p = static_cast<char*>(buf.data()) + i * ItemSize(d);
        switch (d) {
          case DType::kFloat32:
            *static_cast<float*>(p) = u;
            break;
          case DType::kFloat16:
            *static_cast<uint16_t*>(p) = FloatToHalf(u);
            break;
          case DType::kBFloat16:
            *static_cast<uint16_t*>(p) = FloatToBFloat16(u);
            break;
          case DType::kInt8:
            *static_cast<int8_t*>(p) = static_cast<int8_t>(std::clamp(u * 60.f, -127.f, 127.f));
            break;
          default:
            break;
        }
      }
    });
  }
  ConstTensorView view() const { return {dtype, shape, buf.data()}; }
  TensorView mut() { return {dtype, shape, buf.data()}; }
  size_t bytes() const { return static_cast<size_t>(NumElements(shape)) * ItemSize(dtype); }
};

// Median seconds per call of fn.
double TimeIt(const std::function<void()>& fn) {
  fn();  // warm-up (also pages in outputs)
  fn();
  std::vector<double> t;
  const auto start = std::chrono::steady_clock::now();
  while (t.size() < 5 ||
         (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
              g_min_time &&
          t.size() < 1000)) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

// Seconds per memcpy moving `traffic` bytes (copying traffic / 2) on all cores.
double MemcpySeconds(size_t traffic) {
  const size_t n = std::max<size_t>(traffic / 2, 64);
  Buffer src = std::move(Buffer::Allocate(Backend::kCpu, n)).value();
  Buffer dst = std::move(Buffer::Allocate(Backend::kCpu, n)).value();
  std::memset(src.data(), 1, n);
  std::memset(dst.data(), 2, n);
  auto* s = static_cast<const char*>(src.data());
  auto* d = static_cast<char*>(dst.data());
  return TimeIt([&] {
    // Split in as many pieces as there are threads (2 on the reference box).
    const int64_t parts = cpu::NumThreads();
    const int64_t chunk = static_cast<int64_t>((n + parts - 1) / parts);
    cpu::ParallelFor(parts, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const size_t off = static_cast<size_t>(p * chunk);
        if (off < n) std::memcpy(d + off, s + off, std::min<size_t>(chunk, n - off));
      }
    });
  });
}

void Header() {
  std::printf("| %-34s | %-22s | %9s | %8s | %8s | %8s | %6s | %9s |\n", "op", "shape", "MB moved",
              "time ms", "GB/s", "memcpy", "ratio", "GFLOP/s");
  std::printf(
      "|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(36, '-').c_str(), std::string(24, '-').c_str(),
      std::string(11, '-').c_str(), std::string(10, '-').c_str(), std::string(10, '-').c_str(),
      std::string(10, '-').c_str(), std::string(8, '-').c_str(), std::string(11, '-').c_str());
}

void Report(const std::string& op, const Shape& shape, size_t traffic, double flops,
            const std::function<void()>& fn) {
  if (!g_filter.empty() && op.find(g_filter) == std::string::npos) return;
  double t = TimeIt(fn);
  if (flops > 0) {
    const double gbs = traffic / t / 1e9;
    std::printf("| %-34s | %-22s | %9.1f | %8.3f | %8.1f | %8s | %6s | %9.1f |\n", op.c_str(),
                ShapeToString(shape).c_str(), traffic / 1e6, t * 1e3, gbs, "", "", flops / t / 1e9);
  } else {
    // The machine is a shared VM whose bandwidth drifts: alternate the op
    // and the memcpy three times and keep the best median of each.
    double mt = MemcpySeconds(traffic);
    for (int round = 1; round < 3; ++round) {
      t = std::min(t, TimeIt(fn));
      mt = std::min(mt, MemcpySeconds(traffic));
    }
    const double gbs = traffic / t / 1e9;
    const double mgbs = traffic / mt / 1e9;
    std::printf("| %-34s | %-22s | %9.1f | %8.3f | %8.1f | %8.1f | %6.2f | %9s |\n", op.c_str(),
                ShapeToString(shape).c_str(), traffic / 1e6, t * 1e3, gbs, mgbs, gbs / mgbs, "");
  }
  std::fflush(stdout);
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
}

const char* Name(DType d) {
  switch (d) {
    case DType::kFloat32:
      return "fp32";
    case DType::kFloat16:
      return "fp16";
    case DType::kBFloat16:
      return "bf16";
    default:
      return "?";
  }
}

void BenchRmsNorm(DType d, Shape shape, bool residual) {
  Tensor x(d, shape, 1), r(d, shape, 2), out(d, shape, 3);
  Tensor w(DType::kFloat32, {shape.back()}, 4, 0.5f, 1.5f);
  RmsNormArgs args{x.view(), w.view(), std::nullopt, 1e-6f};
  if (residual) args.residual = r.view();
  TensorView rout = r.mut();  // in place, as vLLM's fused add + norm
  const size_t traffic = x.bytes() + out.bytes() + w.bytes() + (residual ? 2 * r.bytes() : 0);
  Check(CheckRmsNorm(args).status());
  Report(std::string("RmsNorm ") + Name(d) + (residual ? " +residual" : ""), shape, traffic, 0,
         [&] { Check(RmsNorm(ExecContext{}, args, out.mut(), residual ? &rout : nullptr)); });
}

void BenchSwiGlu(DType d, Shape shape) {
  Tensor g(d, shape, 1, -6, 6), u(d, shape, 2), out(d, shape, 3);
  SwiGluArgs args{g.view(), u.view()};
  Report(std::string("SwiGlu ") + Name(d), shape, 3 * g.bytes(), 0,
         [&] { Check(SwiGlu(ExecContext{}, args, out.mut())); });
}

void BenchRope(DType d, int64_t b, int64_t s, int64_t hq, int64_t hk, int64_t dim,
               RopeStyle style) {
  Tensor q(d, {b, s, hq, dim}, 1), k(d, {b, s, hk, dim}, 2);
  Tensor qo(d, {b, s, hq, dim}, 3), ko(d, {b, s, hk, dim}, 4);
  const int64_t p = s;
  std::vector<float> cos(p * dim / 2), sin(p * dim / 2);
  BuildRopeCache(p, dim, 10000.0, cos.data(), sin.data());
  RopeArgs args;
  args.q = q.view();
  args.k = k.view();
  args.cos = {DType::kFloat32, {p, dim / 2}, cos.data()};
  args.sin = {DType::kFloat32, {p, dim / 2}, sin.data()};
  args.style = style;
  Check(CheckRope(args).status());
  TensorView kv = ko.mut();
  const size_t traffic = 2 * (q.bytes() + k.bytes()) + 2 * cos.size() * sizeof(float);
  Report(std::string("Rope ") + Name(d) +
             (style == RopeStyle::kInterleaved ? " interleaved" : " half_split") + " q+k(" +
             std::to_string(hk) + " kv heads)",
         q.shape, traffic, 0, [&] { Check(Rope(ExecContext{}, args, qo.mut(), &kv)); });
}

void BenchQuantize(DType d, Shape shape, Granularity g) {
  Tensor x(d, shape, 1);
  Tensor v(DType::kInt8, shape, 2);
  const int64_t rows = RowsOf(shape);
  Tensor s(DType::kFloat32, g == Granularity::kPerRow ? Shape{rows} : Shape{}, 3);
  QuantizeArgs args{x.view(), g};
  const size_t traffic = x.bytes() + v.bytes() + s.bytes();
  Report(
      std::string("Quantize ") + Name(d) + (g == Granularity::kPerRow ? " per_row" : " per_tensor"),
      shape, traffic, 0, [&] { Check(Quantize(ExecContext{}, args, v.mut(), s.mut())); });
}

void BenchDequantize(DType d, Shape shape) {
  Tensor v(DType::kInt8, shape, 1);
  Tensor s(DType::kFloat32, {RowsOf(shape)}, 2, 0.001f, 0.01f);
  Tensor out(d, shape, 3);
  DequantizeArgs args{v.view(), s.view(), d};
  Report(std::string("Dequantize per_row -> ") + Name(d), shape,
         v.bytes() + s.bytes() + out.bytes(), 0,
         [&] { Check(Dequantize(ExecContext{}, args, out.mut())); });
}

void BenchQuantError(DType d, Shape shape) {
  Tensor x(d, shape, 1);
  Tensor v(DType::kInt8, shape, 2);
  Tensor s(DType::kFloat32, {RowsOf(shape)}, 3, 0.001f, 0.01f);
  QuantizationErrorArgs args{x.view(), v.view(), s.view()};
  Report(std::string("QuantizationError ") + Name(d), shape, x.bytes() + v.bytes() + s.bytes(), 0,
         [&] { Check(QuantizationError(ExecContext{}, args).status()); });
}

void BenchConvert(DType from, DType to, int64_t n) {
  Tensor x(from, {n}, 1), y(to, {n}, 2);
  Report(std::string("ConvertFloats ") + Name(from) + " -> " + Name(to), {n}, x.bytes() + y.bytes(),
         0, [&] { ConvertFloats(from, x.buf.data(), to, y.buf.data(), n); });
}

void BenchLinear(DType d, int64_t m, int64_t k, int64_t n, bool int8) {
  Tensor x(d, {m, k}, 1);
  Tensor w(int8 ? DType::kInt8 : d, {n, k}, 2, -0.05f, 0.05f);
  Tensor s(DType::kFloat32, {n}, 3, 0.001f, 0.002f);
  Tensor out(d, {m, n}, 4);
  LinearArgs args{x.view(), {w.view(), std::nullopt}, std::nullopt};
  if (int8) args.weight.scales = s.view();
  Report(std::string("Linear ") + Name(d) +
             (int8 ? " W8A16 per_row" : " weight " + std::string(Name(d))),
         {m, k, n}, x.bytes() + w.bytes() + out.bytes(), 2.0 * m * k * n,
         [&] { Check(Linear(ExecContext{}, args, out.mut())); });
}

void BenchFfn(DType d, int64_t m, int64_t h, int64_t i, bool int8) {
  Tensor x(d, {m, h}, 1);
  const DType wd = int8 ? DType::kInt8 : d;
  Tensor wg(wd, {i, h}, 2, -0.05f, 0.05f), wu(wd, {i, h}, 3, -0.05f, 0.05f);
  Tensor wdn(wd, {h, i}, 4, -0.05f, 0.05f);
  Tensor si(DType::kFloat32, {i}, 5, 0.001f, 0.002f), sh(DType::kFloat32, {h}, 6, 0.001f, 0.002f);
  Tensor out(d, {m, h}, 7);
  FfnArgs args{x.view(),
               {wg.view(), std::nullopt},
               {wu.view(), std::nullopt},
               {wdn.view(), std::nullopt},
               std::nullopt,
               std::nullopt,
               std::nullopt};
  if (int8) {
    args.w_gate.scales = si.view();
    args.w_up.scales = si.view();
    args.w_down.scales = sh.view();
  }
  Report(std::string("Ffn ") + Name(d) +
             (int8 ? " int8 weights" : " weights " + std::string(Name(d))) +
             " I=" + std::to_string(i),
         {m, h}, x.bytes() + 3 * wg.bytes() + out.bytes(), 6.0 * m * h * i,
         [&] { Check(Ffn(ExecContext{}, args, out.mut())); });
}

// server/blas_env.cc's EnsureOpenBlasCoreType (the bench does not link the
// server): OpenBLAS 0.3.21 reads OPENBLAS_CORETYPE in a library constructor
// and does not recognise Sapphire Rapids, so set it and re-exec, once.
void EnsureOpenBlasCoreType(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv("ACCEL_OPENBLAS_REEXEC")) return;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) return;
  if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0) return;
  if (setenv("ACCEL_OPENBLAS_REEXEC", "1", 1) != 0) return;
  execv("/proc/self/exe", argv);  // returns only on failure: carry on
}

}  // namespace
}  // namespace accel::kernels

int main(int argc, char** argv) {
  using namespace accel::kernels;
  EnsureOpenBlasCoreType(argv);
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg.rfind("--filter=", 0) == 0) g_filter = arg.substr(9);
    if (arg.rfind("--min_time=", 0) == 0) g_min_time = std::atof(arg.c_str() + 11);
  }
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  std::printf("threads: %d (ACCEL_CPU_THREADS overrides), kernels: %s, OPENBLAS_CORETYPE=%s\n\n",
              cpu::NumThreads(), cpu::UsesAvx512() ? "AVX-512" : "AVX2", core ? core : "(unset)");
  Header();
  const DType bf16 = DType::kBFloat16, f16 = DType::kFloat16, f32 = DType::kFloat32;
  // Large: every input tensor >= 64 MB.
  BenchRmsNorm(bf16, {8192, 4096}, false);
  BenchRmsNorm(bf16, {8192, 4096}, true);
  BenchRmsNorm(f16, {8192, 4096}, true);
  BenchRmsNorm(f32, {4096, 4096}, false);
  BenchSwiGlu(bf16, {4096, 8192});
  BenchSwiGlu(f32, {2048, 8192});
  BenchRope(bf16, 1, 8192, 32, 8, 128, RopeStyle::kHalfSplit);
  BenchRope(bf16, 1, 8192, 32, 8, 128, RopeStyle::kInterleaved);
  BenchQuantize(bf16, {8192, 4096}, Granularity::kPerRow);
  BenchQuantize(bf16, {8192, 4096}, Granularity::kPerTensor);
  BenchDequantize(bf16, {8192, 8192});
  BenchQuantError(bf16, {8192, 4096});
  BenchConvert(bf16, f32, 32 << 20);
  BenchConvert(f32, f16, 16 << 20);
  // DRAM-sized: the same ops with a footprint well above this machine's L3.
  BenchRmsNorm(bf16, {32768, 4096}, false);
  BenchRmsNorm(bf16, {32768, 4096}, true);
  BenchSwiGlu(bf16, {16384, 8192});
  BenchRope(bf16, 4, 8192, 32, 8, 128, RopeStyle::kHalfSplit);
  BenchQuantize(bf16, {32768, 4096}, Granularity::kPerRow);
  BenchDequantize(bf16, {32768, 8192});
  // Small: decode-sized.
  BenchRmsNorm(bf16, {1, 4096}, true);
  BenchRmsNorm(bf16, {16, 4096}, true);
  BenchSwiGlu(bf16, {16, 11008});
  BenchRope(bf16, 1, 16, 32, 8, 128, RopeStyle::kHalfSplit);
  BenchQuantize(bf16, {16, 4096}, Granularity::kPerRow);
  // GEMMs.
  BenchLinear(bf16, 1, 4096, 4096, false);
  BenchLinear(bf16, 1, 4096, 4096, true);
  BenchLinear(f32, 1, 4096, 4096, false);
  BenchLinear(bf16, 512, 4096, 4096, false);
  BenchLinear(bf16, 512, 4096, 4096, true);
  BenchFfn(bf16, 16, 2048, 5632, false);
  BenchFfn(bf16, 256, 2048, 5632, true);
  return 0;
}
