// The memory-bound ops on the CUDA backend (RmsNorm, SwiGlu, Rope, Quantize,
// Dequantize, QuantizationError) through the public ops API, against the
// fp64 reference and against the CPU backend: every float dtype, odd and
// boundary sizes, zero and many rows, rows kept in registers, in shared
// memory and read twice, both RoPE styles, positions in every form, GQA, a
// 100000-position cache, per-row and per-tensor quantization with NaN and
// infinities, aliasing, pointers offset by one element, and bit-identical
// reruns.
//
// GPU tests: label `gpu`; each skips when there is no CUDA device. Device
// memory comes straight from cudaMalloc (not Buffer), and the scratch
// allocator handed to the ops is a small cudaMalloc-backed one below.
// Not thread-safe (each test owns its tensors and stream).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

#include "accel/kernels/ops.h"
#include "reference.h"
#include "test_util.h"

namespace accel::kernels {
namespace {

using testing::AllClose;
using testing::Ctx;
using testing::HostTensor;
using testing::RandomTensor;

// --------------------------------------------------------------- helpers

bool HasCudaDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_CUDA()             \
  do {                                  \
    if (!HasCudaDevice()) {             \
      GTEST_SKIP() << "no CUDA device"; \
    }                                   \
  } while (0)

// A CUDA failure in test plumbing is fatal: nothing after it means anything.
void CudaOk(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(err));
    std::abort();
  }
}

// A dense tensor in device memory, optionally starting `offset` elements
// past a 256-byte aligned allocation (to exercise misaligned pointers).
// Fresh tensors are poisoned with 0xff bytes (NaN for floats), so an element
// a kernel forgot to write fails the comparison.
class DeviceTensor {
 public:
  DeviceTensor(DType dtype, Shape shape, int offset = 0) : dtype_(dtype), shape_(std::move(shape)) {
    const size_t bytes = NumElements(shape_) * ItemSize(dtype_) + 64;
    CudaOk(cudaMalloc(&base_, bytes), "cudaMalloc");
    CudaOk(cudaMemset(base_, 0xff, bytes), "cudaMemset");
    ptr_ = static_cast<char*>(base_) + offset * ItemSize(dtype_);
  }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  ~DeviceTensor() { cudaFree(base_); }

  static std::unique_ptr<DeviceTensor> Upload(const HostTensor& h, int offset = 0) {
    auto d = std::make_unique<DeviceTensor>(h.dtype, h.shape, offset);
    CudaOk(cudaMemcpy(d->ptr_, h.data(), d->nbytes(), cudaMemcpyHostToDevice), "upload");
    return d;
  }
  HostTensor Download() const {
    HostTensor h(dtype_, shape_);
    CudaOk(cudaDeviceSynchronize(), "sync before download");
    CudaOk(cudaMemcpy(h.data(), ptr_, nbytes(), cudaMemcpyDeviceToHost), "download");
    return h;
  }
  size_t nbytes() const { return NumElements(shape_) * ItemSize(dtype_); }
  ConstTensorView view() const { return {dtype_, shape_, ptr_}; }
  TensorView mut() { return {dtype_, shape_, ptr_}; }
  const Shape& shape() const { return shape_; }

 private:
  DType dtype_;
  Shape shape_;
  void* base_ = nullptr;
  void* ptr_ = nullptr;
};

// Per-call scratch backed by cudaMalloc; freed with the allocator.
class CudaScratch : public ScratchAllocator {
 public:
  ~CudaScratch() override {
    for (void* p : blocks_) cudaFree(p);
  }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes == 0 ? 1 : bytes) != cudaSuccess) {
      return absl::ResourceExhaustedError("cudaMalloc failed");
    }
    blocks_.push_back(p);  // cudaMalloc aligns to 256 bytes
    return p;
  }

 private:
  std::vector<void*> blocks_;
};

// A stream and scratch for one test, and the ExecContext over them.
class CudaEnv {
 public:
  CudaEnv() { CudaOk(cudaStreamCreate(&stream_), "cudaStreamCreate"); }
  ~CudaEnv() { cudaStreamDestroy(stream_); }
  ExecContext ctx() { return ExecContext{Backend::kCuda, stream_, &scratch_}; }
  void Sync() { CudaOk(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

 private:
  cudaStream_t stream_ = nullptr;
  CudaScratch scratch_;
};

bool SameBits(const HostTensor& a, const HostTensor& b) {
  return a.shape == b.shape && a.dtype == b.dtype &&
         std::memcmp(a.data(), b.data(), NumElements(a.shape) * ItemSize(a.dtype)) == 0;
}

// The CPU backend's output as a reference: both backends round once, so
// they agree within one ulp of the dtype (AllClose's ulp clause) or the
// dtype's tolerance.
::testing::AssertionResult MatchesCpu(const HostTensor& gpu, const HostTensor& cpu,
                                      const std::string& what) {
  return AllClose(gpu, cpu.values(), testing::DefaultTolerance(gpu.dtype), what + " vs CPU");
}

// ---------------------------------------------------------------- RmsNorm

enum class Residual { kNone, kSeparateOut, kAliasedOut, kNoOut };

struct RmsCase {
  int64_t rows;
  int64_t n;
};

class CudaRmsNormTest : public ::testing::TestWithParam<std::tuple<DType, RmsCase, Residual>> {};

TEST_P(CudaRmsNormTest, MatchesReferenceAndCpu) {
  SKIP_WITHOUT_CUDA();
  const auto [dtype, c, mode] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  // A weight dtype other than the input's half of the time.
  const DType wdtype = c.n % 2 ? testing::FloatDTypes()[static_cast<int>(dtype) % 3] : dtype;
  const Shape shape{c.rows, c.n};
  HostTensor x = RandomTensor(dtype, shape, rng);
  HostTensor w = RandomTensor(wdtype, {c.n}, rng, 0.5, 1.5);
  HostTensor r = RandomTensor(dtype, shape, rng);
  const bool has_res = mode != Residual::kNone;

  // Reference.
  const std::vector<double> rv = r.values();
  std::vector<double> s;
  const std::vector<double> want =
      testing::RmsNorm(dtype, x.values(), has_res ? &rv : nullptr, w.values(), c.n, 1e-5f, &s);
  // CPU backend.
  HostTensor cpu_out(dtype, shape), cpu_rout(dtype, shape);
  {
    RmsNormArgs args{x.view(), w.view(), std::nullopt, 1e-5f};
    if (has_res) args.residual = r.view();
    TensorView rv_out = cpu_rout.mut();
    ASSERT_TRUE(RmsNorm(ExecContext{}, args, cpu_out.mut(), &rv_out).ok());
  }

  CudaEnv env;
  HostTensor first_out;
  for (int run = 0; run < 2; ++run) {
    auto dx = DeviceTensor::Upload(x);
    auto dw = DeviceTensor::Upload(w);
    auto dr = DeviceTensor::Upload(r);
    DeviceTensor dout(dtype, shape), drout(dtype, shape);
    RmsNormArgs args{dx->view(), dw->view(), std::nullopt, 1e-5f};
    if (has_res) args.residual = dr->view();
    ASSERT_TRUE(CheckRmsNorm(args).ok());
    TensorView rout_view = mode == Residual::kAliasedOut ? dr->mut() : drout.mut();
    const TensorView* rout_ptr = mode == Residual::kNoOut ? nullptr : &rout_view;
    const absl::Status st = RmsNorm(env.ctx(), args, dout.mut(), rout_ptr);
    ASSERT_TRUE(st.ok()) << st;
    env.Sync();
    const HostTensor got = dout.Download();
    const std::string what =
        Ctx(seed, absl::StrCat("weight=", DTypeName(wdtype), " mode=", static_cast<int>(mode)));
    EXPECT_TRUE(AllClose(got, want, testing::DefaultTolerance(dtype), what));
    EXPECT_TRUE(MatchesCpu(got, cpu_out, what));
    if (mode == Residual::kSeparateOut || mode == Residual::kAliasedOut) {
      const HostTensor got_s = mode == Residual::kAliasedOut ? dr->Download() : drout.Download();
      EXPECT_TRUE(AllClose(got_s, s, {0, 0}, what + " residual_out"));
      EXPECT_TRUE(SameBits(got_s, cpu_rout)) << what << " residual_out differs from the CPU's";
    }
    if (mode == Residual::kNone) {
      EXPECT_TRUE(SameBits(drout.Download(), x)) << what << " residual_out copy";
    }
    // Deterministic: a second run gives the same bits.
    if (run == 0) {
      first_out = got;
    } else {
      EXPECT_TRUE(SameBits(got, first_out)) << what << " differs between two runs";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaRmsNormTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       // registers (<= 512 chunks), shared memory, and (262147) two passes
                       ::testing::Values(RmsCase{0, 7}, RmsCase{1, 1}, RmsCase{3, 3},
                                         RmsCase{5, 17}, RmsCase{2, 4095}, RmsCase{3, 4096},
                                         RmsCase{2, 8193}, RmsCase{300, 64}, RmsCase{70, 4096},
                                         RmsCase{3, 20001}, RmsCase{2, 65536}, RmsCase{1, 262147}),
                       ::testing::Values(Residual::kNone, Residual::kSeparateOut,
                                         Residual::kAliasedOut, Residual::kNoOut)),
    [](const auto& info) {
      const RmsCase c = std::get<1>(info.param);
      return absl::StrCat(DTypeName(std::get<0>(info.param)), "_", c.rows, "x", c.n, "_mode",
                          static_cast<int>(std::get<2>(info.param)));
    });

// Every pointer (and the weight) offset by one element: the element-wise
// fallback of each path, and the same bits as the aligned run.
TEST(CudaRmsNorm, MisalignedPointersGiveTheAlignedBits) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  CudaEnv env;
  for (DType dtype : testing::FloatDTypes()) {
    for (int64_t n : {int64_t{4096}, int64_t{8200}, int64_t{300000}}) {
      const Shape shape{3, n};
      HostTensor x = RandomTensor(dtype, shape, rng);
      HostTensor r = RandomTensor(dtype, shape, rng);
      HostTensor w = RandomTensor(DType::kFloat32, {n}, rng, 0.5, 1.5);
      HostTensor outs[2], routs[2];
      for (int off = 0; off < 2; ++off) {
        auto dx = DeviceTensor::Upload(x, off), dr = DeviceTensor::Upload(r, off);
        auto dw = DeviceTensor::Upload(w, off);
        DeviceTensor dout(dtype, shape, off), drout(dtype, shape, off);
        TensorView rout = drout.mut();
        ASSERT_TRUE(
            RmsNorm(env.ctx(), {dx->view(), dw->view(), dr->view(), 1e-6f}, dout.mut(), &rout)
                .ok());
        env.Sync();
        outs[off] = dout.Download();
        routs[off] = drout.Download();
      }
      const std::vector<double> rv = r.values();
      std::vector<double> s;
      const auto want = testing::RmsNorm(dtype, x.values(), &rv, w.values(), n, 1e-6f, &s);
      const std::string what = Ctx(seed, absl::StrCat(DTypeName(dtype), " n=", n));
      EXPECT_TRUE(AllClose(outs[1], want, testing::DefaultTolerance(dtype), what + " offset"));
      EXPECT_TRUE(AllClose(routs[1], s, {0, 0}, what + " offset residual_out"));
      EXPECT_TRUE(SameBits(outs[0], outs[1])) << what;
      EXPECT_TRUE(SameBits(routs[0], routs[1])) << what;
    }
  }
}

TEST(CudaRmsNorm, InPlaceOutputAndResidual) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  CudaEnv env;
  for (int64_t n : {int64_t{4099}, int64_t{30000}, int64_t{262147}}) {
    HostTensor x = RandomTensor(DType::kBFloat16, {4, n}, rng);
    HostTensor w = RandomTensor(DType::kFloat32, {n}, rng);
    HostTensor r = RandomTensor(DType::kBFloat16, {4, n}, rng);
    const std::vector<double> rv = r.values();
    std::vector<double> s;
    const auto want = testing::RmsNorm(DType::kBFloat16, x.values(), &rv, w.values(), n, 1e-6f, &s);
    auto dx = DeviceTensor::Upload(x), dw = DeviceTensor::Upload(w), dr = DeviceTensor::Upload(r);
    TensorView rout = dr->mut();
    ASSERT_TRUE(
        RmsNorm(env.ctx(), {dx->view(), dw->view(), dr->view(), 1e-6f}, dx->mut(), &rout).ok());
    env.Sync();
    const std::string what = Ctx(seed, absl::StrCat("in place n=", n));
    EXPECT_TRUE(AllClose(dx->Download(), want, testing::DefaultTolerance(DType::kBFloat16), what));
    EXPECT_TRUE(AllClose(dr->Download(), s, {0, 0}, what + " residual"));
  }
}

// Rows of a batch sit at every alignment (n odd); each must give the bits
// of the same row run alone from an aligned buffer.
TEST(CudaRmsNorm, BatchedRowsAreBitIdenticalToSingleRows) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  CudaEnv env;
  for (int64_t n : {int64_t{4101}, int64_t{20001}}) {
    const int64_t rows = 9;
    HostTensor x = RandomTensor(DType::kFloat16, {rows, n}, rng);
    HostTensor w = RandomTensor(DType::kBFloat16, {n}, rng);
    auto dx = DeviceTensor::Upload(x), dw = DeviceTensor::Upload(w);
    DeviceTensor dout(DType::kFloat16, {rows, n});
    ASSERT_TRUE(
        RmsNorm(env.ctx(), {dx->view(), dw->view(), std::nullopt, 1e-6f}, dout.mut(), nullptr)
            .ok());
    env.Sync();
    const HostTensor all = dout.Download();
    for (int64_t r = 0; r < rows; ++r) {
      HostTensor row(DType::kFloat16, {1, n});
      std::memcpy(row.data(), static_cast<const uint16_t*>(x.data()) + r * n, n * 2);
      auto drow = DeviceTensor::Upload(row);
      DeviceTensor one(DType::kFloat16, {1, n});
      ASSERT_TRUE(
          RmsNorm(env.ctx(), {drow->view(), dw->view(), std::nullopt, 1e-6f}, one.mut(), nullptr)
              .ok());
      env.Sync();
      const HostTensor got = one.Download();
      ASSERT_EQ(0, std::memcmp(got.data(), static_cast<const uint16_t*>(all.data()) + r * n, n * 2))
          << "seed=" << seed << " n=" << n << " row " << r;
    }
  }
}

// A call of many rows takes other block shapes than a call of few (one
// chunk per thread for few rows, several and a persistent grid for many,
// whose blocks prefetch their next row): each row of a 1200-row call, with
// and without a residual, aligned (n a multiple of the vector) or not, with
// the weight in the input's dtype or in fp32 (the two ways the fast rows
// hold weights), must match the reference and give the bits of the same row
// run alone.
TEST(CudaRmsNorm, ManyRowCallsAreBitIdenticalToSingleRows) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  CudaEnv env;
  const int64_t rows = 1200;
  for (DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    for (int64_t n : {int64_t{1000}, int64_t{4096}, int64_t{4101}, int64_t{8192}}) {
      for (bool res : {false, true}) {
        const size_t item = ItemSize(dtype);
        HostTensor x = RandomTensor(dtype, {rows, n}, rng);
        HostTensor r = RandomTensor(dtype, {rows, n}, rng);
        const DType wdtype = res ? DType::kFloat32 : dtype;
        HostTensor w = RandomTensor(wdtype, {n}, rng, 0.5, 1.5);
        auto dx = DeviceTensor::Upload(x), dr = DeviceTensor::Upload(r);
        auto dw = DeviceTensor::Upload(w);
        DeviceTensor dout(dtype, {rows, n}), drout(dtype, {rows, n});
        TensorView rout = drout.mut();
        RmsNormArgs args{dx->view(), dw->view(), std::nullopt, 1e-6f};
        if (res) args.residual = dr->view();
        ASSERT_TRUE(RmsNorm(env.ctx(), args, dout.mut(), res ? &rout : nullptr).ok());
        env.Sync();
        const HostTensor all = dout.Download();
        const HostTensor all_s = drout.Download();
        {
          const std::vector<double> rv = r.values();
          std::vector<double> want_s;
          const std::vector<double> want = testing::RmsNorm(dtype, x.values(), res ? &rv : nullptr,
                                                            w.values(), n, 1e-6f, &want_s);
          const std::string what =
              Ctx(seed, absl::StrCat(DTypeName(dtype), " n=", n, " residual=", res, " all rows"));
          EXPECT_TRUE(AllClose(all, want, testing::DefaultTolerance(dtype), what));
          if (res) {
            EXPECT_TRUE(AllClose(all_s, want_s, {0, 0}, what + " residual_out"));
          }
        }
        for (int64_t i = 0; i < rows; i += 97) {
          HostTensor xi(dtype, {1, n}), ri(dtype, {1, n});
          std::memcpy(xi.data(), static_cast<const char*>(x.data()) + i * n * item, n * item);
          std::memcpy(ri.data(), static_cast<const char*>(r.data()) + i * n * item, n * item);
          auto dxi = DeviceTensor::Upload(xi), dri = DeviceTensor::Upload(ri);
          DeviceTensor one(dtype, {1, n}), one_s(dtype, {1, n});
          TensorView one_rout = one_s.mut();
          RmsNormArgs a1{dxi->view(), dw->view(), std::nullopt, 1e-6f};
          if (res) a1.residual = dri->view();
          ASSERT_TRUE(RmsNorm(env.ctx(), a1, one.mut(), res ? &one_rout : nullptr).ok());
          env.Sync();
          const std::string what =
              Ctx(seed, absl::StrCat(DTypeName(dtype), " n=", n, " residual=", res, " row ", i));
          ASSERT_EQ(0, std::memcmp(one.Download().data(),
                                   static_cast<const char*>(all.data()) + i * n * item, n * item))
              << what;
          if (res) {
            ASSERT_EQ(0,
                      std::memcmp(one_s.Download().data(),
                                  static_cast<const char*>(all_s.data()) + i * n * item, n * item))
                << what << " residual_out";
          }
        }
      }
    }
  }
}

// ----------------------------------------------------------------- SwiGlu

class CudaSwiGluTest : public ::testing::TestWithParam<std::tuple<DType, Shape>> {};

TEST_P(CudaSwiGluTest, MatchesReferenceAndCpu) {
  SKIP_WITHOUT_CUDA();
  const auto [dtype, shape] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor g = RandomTensor(dtype, shape, rng, -12, 12);
  HostTensor u = RandomTensor(dtype, shape, rng);
  // Extremes, and gates on both sides of the GPU's branch-free division's
  // range (|g| >= 2^-60, 1 + exp(-g) <= 2^60, i.e. g >= -41.5).
  const double extremes[] = {-100, -30, -1e-3, 0, 1e-3, 30, 100, -87, 89, 1e-25, -2e-19, -41, -42};
  constexpr int kExtremes = sizeof(extremes) / sizeof(extremes[0]);
  for (int64_t i = 0; i < g.size(); i += 11) g.Set(i, extremes[(i / 11) % kExtremes]);
  const std::vector<double> want = testing::SwiGlu(g.values(), u.values());
  HostTensor cpu(dtype, shape);
  ASSERT_TRUE(SwiGlu(ExecContext{}, {g.view(), u.view()}, cpu.mut()).ok());

  CudaEnv env;
  // Offsets: all aligned; all shifted alike (scalar prefix + vectors); only
  // the output shifted (all scalar).
  const int offsets[][3] = {{0, 0, 0}, {1, 1, 1}, {0, 0, 1}, {1, 0, 0}};
  HostTensor first;
  for (const auto& off : offsets) {
    auto dg = DeviceTensor::Upload(g, off[0]), du = DeviceTensor::Upload(u, off[1]);
    DeviceTensor dout(dtype, shape, off[2]);
    const absl::Status st = SwiGlu(env.ctx(), {dg->view(), du->view()}, dout.mut());
    ASSERT_TRUE(st.ok()) << st;
    env.Sync();
    const HostTensor got = dout.Download();
    const std::string what = Ctx(seed, absl::StrCat("swiglu offsets ", off[0], off[1], off[2]));
    EXPECT_TRUE(AllClose(got, want, testing::DefaultTolerance(dtype), what));
    EXPECT_TRUE(MatchesCpu(got, cpu, what));
    if (&off == &offsets[0]) {
      first = got;
    } else {
      EXPECT_TRUE(SameBits(got, first)) << what << ": bits depend on alignment";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaSwiGluTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(Shape{0, 5}, Shape{}, Shape{1}, Shape{3}, Shape{17},
                                         Shape{3, 4095}, Shape{8193}, Shape{2, 3, 100003},
                                         Shape{64, 11008}, Shape{2, 1000}, Shape{16, 11008})));

// ------------------------------------------------------------------- Rope

enum class Pos { kOffset, kPerToken32, kPerToken64, kPerBatch64, kPerBatch32 };

struct RopeCase {
  int64_t b, s, hq, hk, d, p;
};

class CudaRopeTest : public ::testing::TestWithParam<std::tuple<DType, RopeCase, RopeStyle, Pos>> {
};

TEST_P(CudaRopeTest, MatchesReferenceAndCpu) {
  SKIP_WITHOUT_CUDA();
  const auto [dtype, c, style, pos_kind] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor q = RandomTensor(dtype, {c.b, c.s, c.hq, c.d}, rng);
  HostTensor k = RandomTensor(dtype, {c.b, c.s, c.hk, c.d}, rng);
  // Arbitrary tables: the kernel must use whatever it is given.
  HostTensor cos = RandomTensor(DType::kFloat32, {c.p, c.d / 2}, rng, -1, 1);
  HostTensor sin = RandomTensor(DType::kFloat32, {c.p, c.d / 2}, rng, -1, 1);

  std::vector<int64_t> pos(c.b * c.s);
  HostTensor positions;
  int64_t offset = 0;
  std::uniform_int_distribution<int64_t> any(0, c.p - 1);
  switch (pos_kind) {
    case Pos::kOffset:
      offset = c.p - c.s;  // the last positions of the cache
      for (int64_t t = 0; t < c.b * c.s; ++t) pos[t] = offset + t % c.s;
      break;
    case Pos::kPerToken32:
    case Pos::kPerToken64:
      positions = HostTensor(pos_kind == Pos::kPerToken32 ? DType::kInt32 : DType::kInt64, {c.s});
      for (int64_t s = 0; s < c.s; ++s) positions.Set(s, s == 0 ? c.p - 1 : any(rng));
      for (int64_t t = 0; t < c.b * c.s; ++t) pos[t] = positions.values()[t % c.s];
      break;
    case Pos::kPerBatch64:
    case Pos::kPerBatch32:
      positions =
          HostTensor(pos_kind == Pos::kPerBatch64 ? DType::kInt64 : DType::kInt32, {c.b, c.s});
      for (int64_t t = 0; t < c.b * c.s; ++t) {
        pos[t] = t == 0 ? c.p - 1 : any(rng);
        positions.Set(t, pos[t]);
      }
      break;
  }
  const bool inter = style == RopeStyle::kInterleaved;
  const auto cv = cos.values(), sv = sin.values();
  const auto want_q = testing::Rope(q.values(), c.b, c.s, c.hq, c.d, cv, sv, pos, inter);
  const auto want_k = testing::Rope(k.values(), c.b, c.s, c.hk, c.d, cv, sv, pos, inter);

  auto make_args = [&](const ConstTensorView& qv, const ConstTensorView& kv,
                       const ConstTensorView& cosv, const ConstTensorView& sinv,
                       const ConstTensorView& posv) {
    RopeArgs args;
    args.q = qv;
    if (c.hk > 0) args.k = kv;
    args.cos = cosv;
    args.sin = sinv;
    args.style = style;
    args.position_offset = offset;
    if (pos_kind != Pos::kOffset) args.positions = posv;
    return args;
  };
  HostTensor cpu_q(dtype, q.shape), cpu_k(dtype, k.shape);
  {
    const RopeArgs args = make_args(q.view(), k.view(), cos.view(), sin.view(), positions.view());
    ASSERT_TRUE(CheckRope(args).ok());
    TensorView kv = cpu_k.mut();
    ASSERT_TRUE(Rope(ExecContext{}, args, cpu_q.mut(), c.hk > 0 ? &kv : nullptr).ok());
  }

  CudaEnv env;
  HostTensor first_q;
  for (int off = 0; off < 2; ++off) {  // aligned, then every tensor one element off
    auto dq = DeviceTensor::Upload(q, off), dk = DeviceTensor::Upload(k, off);
    auto dcos = DeviceTensor::Upload(cos, off), dsin = DeviceTensor::Upload(sin, off);
    DeviceTensor dq_out(dtype, q.shape, off), dk_out(dtype, k.shape, off);
    // CheckRope reads positions on the host; the CUDA Rope takes them in
    // device memory (kernels/cuda/dispatch.h), as the server stages them.
    std::unique_ptr<DeviceTensor> dpos;
    if (pos_kind != Pos::kOffset) dpos = DeviceTensor::Upload(positions);
    ASSERT_TRUE(
        CheckRope(make_args(dq->view(), dk->view(), dcos->view(), dsin->view(), positions.view()))
            .ok());
    const RopeArgs args = make_args(dq->view(), dk->view(), dcos->view(), dsin->view(),
                                    dpos ? dpos->view() : ConstTensorView{});
    TensorView kv = dk_out.mut();
    const absl::Status st = Rope(env.ctx(), args, dq_out.mut(), c.hk > 0 ? &kv : nullptr);
    ASSERT_TRUE(st.ok()) << st;
    env.Sync();
    const auto tol = testing::DefaultTolerance(dtype);
    const std::string what =
        Ctx(seed, absl::StrCat("style=", static_cast<int>(style),
                               " pos=", static_cast<int>(pos_kind), " offset=", off));
    const HostTensor got_q = dq_out.Download();
    EXPECT_TRUE(AllClose(got_q, want_q, tol, what + " q"));
    EXPECT_TRUE(MatchesCpu(got_q, cpu_q, what + " q"));
    if (c.hk > 0) {
      const HostTensor got_k = dk_out.Download();
      EXPECT_TRUE(AllClose(got_k, want_k, tol, what + " k"));
      EXPECT_TRUE(MatchesCpu(got_k, cpu_k, what + " k"));
    }
    if (off == 0) {
      first_q = got_q;
    } else {
      EXPECT_TRUE(SameBits(got_q, first_q)) << what << ": bits depend on alignment";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaRopeTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(RopeCase{1, 1, 1, 1, 2, 1}, RopeCase{2, 3, 4, 2, 6, 16},
                                         RopeCase{1, 5, 3, 3, 18, 9},
                                         RopeCase{2, 7, 8, 2, 128, 100000},
                                         RopeCase{3, 4, 2, 0, 64, 50}, RopeCase{1, 2, 5, 1, 34, 8},
                                         RopeCase{2, 33, 32, 8, 128, 4096},
                                         RopeCase{1, 3, 2, 1, 512, 7}),
                       ::testing::Values(RopeStyle::kInterleaved, RopeStyle::kHalfSplit),
                       ::testing::Values(Pos::kOffset, Pos::kPerToken32, Pos::kPerToken64,
                                         Pos::kPerBatch64, Pos::kPerBatch32)));

TEST(CudaRope, InPlaceMatchesOutOfPlace) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  CudaEnv env;
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalfSplit}) {
    HostTensor q = RandomTensor(DType::kBFloat16, {2, 3, 4, 128}, rng);
    HostTensor k = RandomTensor(DType::kBFloat16, {2, 3, 2, 128}, rng);
    HostTensor cos = RandomTensor(DType::kFloat32, {10, 64}, rng, -1, 1);
    HostTensor sin = RandomTensor(DType::kFloat32, {10, 64}, rng, -1, 1);
    auto dq = DeviceTensor::Upload(q), dk = DeviceTensor::Upload(k);
    auto dcos = DeviceTensor::Upload(cos), dsin = DeviceTensor::Upload(sin);
    RopeArgs args;
    args.q = dq->view();
    args.k = dk->view();
    args.cos = dcos->view();
    args.sin = dsin->view();
    args.position_offset = 2;
    args.style = style;
    DeviceTensor q_out(DType::kBFloat16, q.shape), k_out(DType::kBFloat16, k.shape);
    TensorView kv = k_out.mut();
    ASSERT_TRUE(Rope(env.ctx(), args, q_out.mut(), &kv).ok());
    TensorView k_in_place = dk->mut();
    ASSERT_TRUE(Rope(env.ctx(), args, dq->mut(), &k_in_place).ok());
    env.Sync();
    EXPECT_TRUE(SameBits(dq->Download(), q_out.Download())) << "seed=" << seed;
    EXPECT_TRUE(SameBits(dk->Download(), k_out.Download())) << "seed=" << seed;
  }
}

// --------------------------------------------------------------- Quantize

struct DeviceQuantized {
  std::unique_ptr<DeviceTensor> values, scales;
};

absl::StatusOr<DeviceQuantized> RunQuantize(CudaEnv& env, const DeviceTensor& x, Granularity g) {
  QuantizeArgs args{x.view(), g};
  auto spec = CheckQuantize(args);
  if (!spec.ok()) return spec.status();
  DeviceQuantized q{std::make_unique<DeviceTensor>(spec->values.dtype, spec->values.shape),
                    std::make_unique<DeviceTensor>(spec->scales.dtype, spec->scales.shape)};
  absl::Status st = Quantize(env.ctx(), args, q.values->mut(), q.scales->mut());
  if (!st.ok()) return st;
  env.Sync();
  return q;
}

class CudaQuantizeTest : public ::testing::TestWithParam<std::tuple<DType, Shape, Granularity>> {};

TEST_P(CudaQuantizeTest, MatchesReferenceExactly) {
  SKIP_WITHOUT_CUDA();
  const auto [dtype, shape, gran] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor x = RandomTensor(dtype, shape, rng, -3, 3);
  if (x.size() > 40) x.Set(37, 0.0);
  const int64_t len = shape.empty() ? 1 : shape.back();
  const int64_t rows = RowsOf(shape);
  const bool per_row = gran == Granularity::kPerRow;
  std::vector<int8_t> want_q;
  std::vector<float> want_s;
  testing::Quantize(x.values(), rows, len, per_row, &want_q, &want_s);

  CudaEnv env;
  for (int off = 0; off < 2; ++off) {  // aligned, then the input one element off
    auto dx = DeviceTensor::Upload(x, off);
    auto q = RunQuantize(env, *dx, gran);
    ASSERT_TRUE(q.ok()) << q.status();
    const HostTensor got_s = q->scales->Download();
    const HostTensor got_q = q->values->Download();
    const auto gs = got_s.values();
    ASSERT_EQ(gs.size(), want_s.size());
    for (size_t i = 0; i < want_s.size(); ++i) {
      ASSERT_EQ(gs[i], want_s[i]) << "seed=" << seed << " offset=" << off << " scale " << i;
    }
    const auto gq = got_q.values();
    bool any_nonzero = false;
    for (size_t i = 0; i < want_q.size(); ++i) {
      ASSERT_EQ(gq[i], want_q[i]) << "seed=" << seed << " shape=" << ShapeToString(shape)
                                  << " offset=" << off << " first bad index " << i;
      any_nonzero |= gq[i] != 0;
    }
    if (x.size() > 0) {
      EXPECT_TRUE(any_nonzero);
    }
    if (off == 1) continue;

    // Dequantize to every float dtype (and with the output one element off).
    for (DType out_dtype : testing::FloatDTypes()) {
      for (int out_off = 0; out_off < 2; ++out_off) {
        DequantizeArgs dargs{q->values->view(), q->scales->view(), out_dtype};
        auto dspec = CheckDequantize(dargs);
        ASSERT_TRUE(dspec.ok()) << dspec.status();
        DeviceTensor deq(out_dtype, dspec->shape, out_off);
        ASSERT_TRUE(Dequantize(env.ctx(), dargs, deq.mut()).ok());
        env.Sync();
        std::vector<double> want(want_q.size());
        for (size_t i = 0; i < want.size(); ++i) {
          want[i] = static_cast<double>(want_q[i]) * want_s[want_s.size() == 1 ? 0 : i / len];
        }
        EXPECT_TRUE(AllClose(deq.Download(), want, {0, 0}, Ctx(seed, "dequantize")));
      }
    }

    // QuantizationError of the pair, against the reference and the CPU.
    QuantizationErrorArgs eargs{dx->view(), q->values->view(), q->scales->view()};
    ASSERT_TRUE(CheckQuantizationError(eargs).ok());
    auto stats = QuantizationError(env.ctx(), eargs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    const testing::ErrorStats ref = testing::QuantizationError(x.values(), want_q, want_s, len);
    HostTensor hq(DType::kInt8, shape), hs(DType::kFloat32, got_s.shape);
    std::memcpy(hq.data(), got_q.data(), got_q.size());
    std::memcpy(hs.data(), got_s.data(), got_s.size() * 4);
    auto cpu = QuantizationError(ExecContext{}, {x.view(), hq.view(), hs.view()});
    ASSERT_TRUE(cpu.ok());
    EXPECT_EQ(stats->max_abs_error, ref.max_abs_error) << "seed=" << seed;
    EXPECT_EQ(stats->max_abs_error, cpu->max_abs_error) << "seed=" << seed;
    EXPECT_NEAR(stats->mean_abs_error, ref.mean_abs_error, 1e-12 + 1e-9 * ref.mean_abs_error);
    EXPECT_NEAR(stats->relative_error_pct, ref.relative_error_pct, 1e-9 * ref.relative_error_pct);
    EXPECT_NEAR(stats->relative_error_pct, cpu->relative_error_pct, 1e-9 * ref.relative_error_pct);
    if (x.size() > 0) {
      EXPECT_NEAR(stats->snr_db, ref.snr_db, 1e-6) << "seed=" << seed;
      EXPECT_NEAR(stats->snr_db, cpu->snr_db, 1e-6) << "seed=" << seed;
      EXPECT_GT(stats->snr_db, 20.0);
    } else {
      EXPECT_EQ(stats->snr_db, 0.0);
      EXPECT_EQ(stats->mean_abs_error, 0.0);
      EXPECT_EQ(stats->max_abs_error, 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaQuantizeTest,
                         // registers, shared memory (2 x 70000) and two passes (1 x 300001)
                         ::testing::ValuesIn(testing::QuantizeCases(
                             {Shape{}, Shape{1}, Shape{3}, Shape{17, 5}, Shape{4095},
                              Shape{3, 8193}, Shape{0, 7}, Shape{2, 3, 17}, Shape{300001},
                              Shape{64, 4096}, Shape{2, 70000}, Shape{1, 300001}, Shape{80, 1000},
                              Shape{130, 4095}})));

TEST(CudaQuantize, RoundsHalfToEvenAndClamps) {
  SKIP_WITHOUT_CUDA();
  HostTensor x(DType::kFloat32, {12});
  const double in[] = {0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 125.5, 127, -127, 3.49999, 0};
  for (int i = 0; i < 12; ++i) x.Set(i, in[i]);
  CudaEnv env;
  auto dx = DeviceTensor::Upload(x);
  auto q = RunQuantize(env, *dx, Granularity::kPerTensor);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->scales->Download().values()[0], 1.0);
  EXPECT_EQ(q->values->Download().values(),
            (std::vector<double>{0, 2, 2, 0, -2, -2, 126, 126, 127, -127, 3, 0}));
}

TEST(CudaQuantize, ZeroScaleBecomesOne) {
  SKIP_WITHOUT_CUDA();
  CudaEnv env;
  HostTensor x(DType::kBFloat16, {2, 4});  // zeros
  x.Set(4, 2.0);
  auto dx = DeviceTensor::Upload(x);
  auto q = RunQuantize(env, *dx, Granularity::kPerRow);
  ASSERT_TRUE(q.ok());
  const auto s = q->scales->Download().values();
  EXPECT_EQ(s[0], 1.0);
  EXPECT_EQ(s[1], static_cast<double>(2.0f / 127.0f));
  HostTensor z(DType::kFloat16, {5});
  auto dz = DeviceTensor::Upload(z);
  auto qz = RunQuantize(env, *dz, Granularity::kPerTensor);
  ASSERT_TRUE(qz.ok());
  EXPECT_EQ(qz->scales->Download().values()[0], 1.0);
  EXPECT_EQ(qz->values->Download().values(), std::vector<double>(5, 0.0));
}

TEST(CudaQuantize, RejectsNaNAndInfinity) {
  SKIP_WITHOUT_CUDA();
  CudaEnv env;
  std::mt19937_64 rng(testing::NewSeed());
  for (DType dtype : testing::FloatDTypes()) {
    for (Granularity g : {Granularity::kPerTensor, Granularity::kPerRow}) {
      for (double bad :
           {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
            -std::numeric_limits<double>::infinity()}) {
        for (int64_t n : {int64_t{9}, int64_t{5000}, int64_t{70001}}) {
          HostTensor x(dtype, {4, n});
          for (int64_t i = 0; i < x.size(); ++i) x.Set(i, 0.25 * (i % 50));
          x.Set(n + 8, bad);  // in row 1
          auto dx = DeviceTensor::Upload(x);
          auto q = RunQuantize(env, *dx, g);
          ASSERT_FALSE(q.ok()) << DTypeName(dtype) << " n=" << n << " value " << bad;
          EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << q.status();
          EXPECT_EQ(q.status().message().rfind("input:", 0), 0u) << q.status();
          // The error is not sticky: the next call on the stream succeeds.
          HostTensor ok = RandomTensor(dtype, {2, 8}, rng);
          auto dok = DeviceTensor::Upload(ok);
          EXPECT_TRUE(RunQuantize(env, *dok, g).ok());
        }
      }
    }
  }
}

TEST(CudaQuantizationError, KnownSmallCase) {
  SKIP_WITHOUT_CUDA();
  HostTensor x(DType::kFloat32, {3});
  x.Set(0, 1.0);
  x.Set(1, 2.0);
  x.Set(2, 0.01);
  HostTensor v(DType::kInt8, {3});
  v.Set(0, 1);
  v.Set(1, 2);
  v.Set(2, 0);
  HostTensor s(DType::kFloat32, {});
  s.Set(0, 1.25);
  CudaEnv env;
  auto dx = DeviceTensor::Upload(x), dv = DeviceTensor::Upload(v), ds = DeviceTensor::Upload(s);
  auto st = QuantizationError(env.ctx(), {dx->view(), dv->view(), ds->view()});
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_DOUBLE_EQ(st->max_abs_error, 0.5);
  EXPECT_NEAR(st->mean_abs_error, (0.25 + 0.5 + 0.01) / 3, 1e-7);
  EXPECT_DOUBLE_EQ(st->relative_error_pct, 25.0);  // 0.01 is below 10% of max |orig|
  const double snr = 10 * std::log10(((1 + 4 + 1e-4) / 3) / ((0.0625 + 0.25 + 1e-4) / 3 + 1e-10));
  EXPECT_NEAR(st->snr_db, snr, 1e-5);
}

}  // namespace
}  // namespace accel::kernels
