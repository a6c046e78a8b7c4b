// Linear and Ffn on the CUDA backend, through the public ops API, against
// the fp64 reference and the CPU backend: every float dtype, float weights
// of the input's and of another dtype, int8 weights with per-row and
// per-tensor scales (both W8A16 paths), biases of another dtype, zero and
// odd sizes, unaligned views, and the W8A16 kernel's batch invariance.
// Skips without a CUDA device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "accel/kernels/ops.h"
#include "cuda/launch.h"
#include "cuda/linear.h"
#include "cuda_test_util.h"
#include "reference.h"
#include "test_util.h"
#include "weight_util.h"

namespace accel::kernels {
namespace {

using testing::AllClose;
using testing::DeviceScratch;
using testing::DeviceTensor;
using testing::HostTensor;

using testing::KindName;
using testing::OtherFloat;
using testing::RefFfn;
using testing::TestWeight;
using testing::WeightKind;

// A weight on the host (testing::TestWeight) and a copy on the device.
struct CudaTestWeight : testing::TestWeight {
  std::unique_ptr<DeviceTensor> d_values, d_scales;

  WeightView host_view() const { return view(); }
  WeightView device_view() const {
    WeightView w{d_values->view(), std::nullopt};
    if (quantized) w.scales = d_scales->view();
    return w;
  }
};

CudaTestWeight MakeDeviceWeight(WeightKind kind, DType input_dtype, int64_t rows, int64_t cols,
                                std::mt19937_64& rng) {
  CudaTestWeight w;
  static_cast<testing::TestWeight&>(w) = testing::MakeWeight(kind, input_dtype, rows, cols, rng);
  w.d_values = std::make_unique<DeviceTensor>(w.values);
  if (w.quantized) w.d_scales = std::make_unique<DeviceTensor>(w.scales);
  return w;
}

// Row ranges of a 32-row call run alone by the batch-invariance tests: every
// kernel of the small-M path (m <= 8, <= 16, <= 32), at the start, in the
// middle and at the end of the batch.
struct RowSlice {
  int64_t first, rows;
};
constexpr RowSlice kRowSlices[] = {{0, 1},  {5, 3},   {3, 8},  {31, 1}, {16, 9},
                                   {8, 16}, {15, 17}, {0, 31}, {1, 31}};

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ACCEL_SKIP_WITHOUT_CUDA();
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  ExecContext Ctx(ScratchAllocator* scratch) const {
    return ExecContext{Backend::kCuda, stream_, scratch};
  }
  ::testing::AssertionResult Sync() const {
    const cudaError_t err = cudaStreamSynchronize(stream_);
    if (err != cudaSuccess) return ::testing::AssertionFailure() << cudaGetErrorString(err);
    return ::testing::AssertionSuccess();
  }
  // Runs each row range of the device input `dx` ([32, in_width]) alone
  // through `run(input view, output)` and expects the bytes of the same rows
  // of `all`, the whole call's host result ([32, out_width]). `context` names
  // the case in failures.
  template <typename Run>
  void ExpectRowRangesMatchTheWholeCall(const DeviceTensor& dx, int64_t in_width,
                                        const HostTensor& all, int64_t out_width, DType dtype,
                                        Run run, const std::string& context) {
    const size_t item = ItemSize(dtype);
    for (const RowSlice& slice : kRowSlices) {
      // Rows [first, first + rows) alone: a request anywhere in a batch.
      const ConstTensorView xv{dtype,
                               {slice.rows, in_width},
                               static_cast<const char*>(dx.data()) + slice.first * in_width * item};
      DeviceTensor out(dtype, {slice.rows, out_width});
      ASSERT_TRUE(run(xv, out).ok()) << context;
      ASSERT_TRUE(Sync());
      const HostTensor part = out.ToHost();
      EXPECT_EQ(std::memcmp(part.data(),
                            static_cast<const char*>(all.data()) + slice.first * out_width * item,
                            slice.rows * out_width * item),
                0)
          << context << " rows=" << slice.first << ".." << slice.first + slice.rows;
    }
  }
  cudaStream_t stream_ = nullptr;
};

// ------------------------------------------------------------------ Linear

struct LinearCase {
  int64_t m, k, n;
};

class CudaLinearTest
    : public CudaTest,
      public ::testing::WithParamInterface<std::tuple<DType, LinearCase, WeightKind, bool>> {};

TEST_P(CudaLinearTest, MatchesReferenceAndCpu) {
  const auto [dtype, c, kind, with_bias] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  const Shape in_shape = {c.m, c.k};
  HostTensor x = testing::RandomTensor(dtype, in_shape, rng);
  CudaTestWeight w = MakeDeviceWeight(kind, dtype, c.n, c.k, rng);
  HostTensor bias = testing::RandomTensor(OtherFloat(dtype), {c.n}, rng);
  DeviceTensor dx(x), dbias(bias);
  ASSERT_TRUE(dx.ok() && dbias.ok() && w.d_values->ok());

  LinearArgs args{dx.view(), w.device_view(), std::nullopt};
  if (with_bias) args.bias = dbias.view();
  auto spec = CheckLinear(args);
  ASSERT_TRUE(spec.ok()) << spec.status();
  const Shape out_shape = {c.m, c.n};
  ASSERT_EQ(spec->shape, out_shape);
  DeviceTensor dout(dtype, out_shape);
  dout.Poison();
  DeviceScratch scratch;
  const absl::Status st = Linear(Ctx(&scratch), args, dout.mut());
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_TRUE(Sync());
  const HostTensor got = dout.ToHost();

  const std::vector<double> bv = bias.values();
  std::vector<double> mag;
  const auto want = testing::Linear(x.values(), w.values.values(), w.ref_scales(),
                                    with_bias ? &bv : nullptr, c.m, c.k, c.n, &mag);
  for (double& v : mag) v *= dtype == DType::kFloat32 ? 1e-5 : 1e-4;
  const std::string what = absl::StrCat("cuda linear m=", c.m, " k=", c.k, " n=", c.n,
                                        " kind=", KindName(kind), " bias=", with_bias);
  EXPECT_TRUE(
      AllClose(got, want, testing::DefaultTolerance(dtype), testing::Ctx(seed, what), &mag));

  // And against the CPU backend on the same inputs.
  LinearArgs host_args{x.view(), w.host_view(), std::nullopt};
  if (with_bias) host_args.bias = bias.view();
  HostTensor cpu(dtype, out_shape);
  ASSERT_TRUE(Linear(ExecContext{}, host_args, cpu.mut()).ok());
  EXPECT_TRUE(AllClose(got, cpu.values(), testing::DefaultTolerance(dtype),
                       testing::Ctx(seed, what + " vs cpu"), &mag));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaLinearTest,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(
                           // Empty, odd K and N (the dequant path for int8: k % 16 != 0),
                           // the W8A16 kernel's 1/2/4-tile variants with partial chunks
                           // (k = 48) and a K tail (4112 = 16 chunks + 16 bytes), the
                           // dequant path past 32 rows, and the decode shape itself.
                           LinearCase{0, 64, 32}, LinearCase{1, 17, 33}, LinearCase{3, 48, 80},
                           LinearCase{16, 4112, 40}, LinearCase{17, 64, 33}, LinearCase{32, 48, 24},
                           LinearCase{33, 48, 80}, LinearCase{128, 272, 130},
                           LinearCase{1000, 96, 72}, LinearCase{1, 4096, 4096},
                           LinearCase{16, 4096, 1024}),
                       ::testing::Values(WeightKind::kSameFloat, WeightKind::kOtherFloat,
                                         WeightKind::kInt8PerRow, WeightKind::kInt8PerTensor),
                       ::testing::Bool()));

// Every path LaunchLinear can take, forced through the internal API, on the
// same int8 problem: skinny and dequant agree with the reference.
TEST_F(CudaTest, EveryW8A16PathMatchesReference) {
  using cuda::LinearPath;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    for (int64_t m : {1, 5, 16, 32}) {
      const uint64_t seed = testing::NewSeed();
      std::mt19937_64 rng(seed);
      const int64_t k = 1024, n = 272;
      HostTensor x = testing::RandomTensor(dtype, {m, k}, rng);
      CudaTestWeight w = MakeDeviceWeight(WeightKind::kInt8PerRow, dtype, n, k, rng);
      HostTensor bias = testing::RandomTensor(DType::kFloat32, {n}, rng);
      DeviceTensor dx(x), dbias(bias);
      std::vector<double> mag;
      const std::vector<double> bv = bias.values();
      const auto want =
          testing::Linear(x.values(), w.values.values(), w.ref_scales(), &bv, m, k, n, &mag);
      for (double& v : mag) v *= 1e-4;
      for (LinearPath path : {LinearPath::kW8A16Skinny, LinearPath::kW8A16Dequant}) {
        cuda::LinearParams p;
        p.input = dx.data();
        p.dtype = static_cast<cuda::ElemType>(dtype);
        p.m = m;
        p.k = k;
        p.n = n;
        p.weight = w.d_values->data();
        p.weight_dtype = cuda::ElemType::kI8;
        p.scales = static_cast<const float*>(w.d_scales->data());
        p.per_row_scales = true;
        p.bias = dbias.data();
        p.bias_dtype = cuda::ElemType::kF32;
        DeviceTensor out(dtype, {m, n});
        out.Poison();
        p.output = out.data();
        ASSERT_TRUE(cuda::LinearPathSupports(path, p)) << cuda::LinearPathName(path);
        p.workspace_bytes = cuda::LinearWorkspaceBytesFor(p, path);
        DeviceScratch scratch;
        auto ws = scratch.Allocate(p.workspace_bytes);
        ASSERT_TRUE(ws.ok());
        p.workspace = *ws;
        ASSERT_EQ(cuda::LaunchLinearWith(p, path, stream_), cudaSuccess);
        ASSERT_TRUE(Sync());
        EXPECT_TRUE(AllClose(
            out.ToHost(), want, testing::DefaultTolerance(dtype),
            testing::Ctx(seed, absl::StrCat("path=", cuda::LinearPathName(path), " m=", m)), &mag));
      }
    }
  }
}

// The Hopper W8A16 GEMM (w8a16_gemm.cu), forced on shapes that cross every
// tile edge (m past 256, n past 128, k tails of 16 that the copy engine
// zero-fills), both scale modes, every bias dtype and none, both launch
// variants (a CTA per tile, and persistent CTAs looping over more tiles
// than SMs). Skips where it does not run (no sm_90 device or no sm_90a
// build).
TEST_F(CudaTest, W8A16GemmMatchesReference) {
  using cuda::W8A16GemmVariant;
  struct Shape {
    int64_t m, n, k;
  };
  int tested = 0;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    for (Shape s : {Shape{1, 8, 16}, Shape{3, 136, 64}, Shape{17, 100, 208}, Shape{300, 520, 1040},
                    Shape{1100, 17 * 128 + 3, 64}}) {
      for (WeightKind kind : {WeightKind::kInt8PerRow, WeightKind::kInt8PerTensor}) {
        for (int bias_kind = 0; bias_kind < 4; ++bias_kind) {  // none, f32, f16, bf16
          const uint64_t seed = testing::NewSeed();
          std::mt19937_64 rng(seed);
          HostTensor x = testing::RandomTensor(dtype, {s.m, s.k}, rng);
          CudaTestWeight w = MakeDeviceWeight(kind, dtype, s.n, s.k, rng);
          const DType bias_dtype = bias_kind == 1   ? DType::kFloat32
                                   : bias_kind == 2 ? DType::kFloat16
                                                    : DType::kBFloat16;
          HostTensor bias = testing::RandomTensor(bias_dtype, {s.n}, rng);
          DeviceTensor dx(x), dbias(bias);
          std::vector<double> mag;
          const std::vector<double> bv = bias.values();
          const auto want = testing::Linear(x.values(), w.values.values(), w.ref_scales(),
                                            bias_kind > 0 ? &bv : nullptr, s.m, s.k, s.n, &mag);
          for (double& v : mag) v *= 1e-4;
          cuda::LinearParams p;
          p.input = dx.data();
          p.dtype = static_cast<cuda::ElemType>(dtype);
          p.m = s.m;
          p.k = s.k;
          p.n = s.n;
          p.weight = w.d_values->data();
          p.weight_dtype = cuda::ElemType::kI8;
          p.scales = static_cast<const float*>(w.d_scales->data());
          p.per_row_scales = kind == WeightKind::kInt8PerRow;
          p.bias = bias_kind > 0 ? dbias.data() : nullptr;
          p.bias_dtype = static_cast<cuda::ElemType>(bias_dtype);
          if (!cuda::W8A16GemmSupports(p)) GTEST_SKIP() << "no sm_90 device or no sm_90a build";
          for (W8A16GemmVariant variant :
               {W8A16GemmVariant::kTilePerBlock, W8A16GemmVariant::kPersistent}) {
            DeviceTensor out(dtype, {s.m, s.n});
            out.Poison();
            p.output = out.data();
            ASSERT_EQ(cuda::LaunchW8A16Gemm(p, stream_, variant), cudaSuccess);
            ASSERT_TRUE(Sync());
            EXPECT_TRUE(AllClose(
                out.ToHost(), want, testing::DefaultTolerance(dtype),
                testing::Ctx(seed, absl::StrCat("w8a16_gemm m=", s.m, " n=", s.n, " k=", s.k, " ",
                                                KindName(kind), " bias=", bias_kind,
                                                " variant=", static_cast<int>(variant))),
                &mag));
            ++tested;
          }
        }
      }
    }
  }
  EXPECT_EQ(tested, 2 * 5 * 2 * 4 * 2);
}

// Where the GEMM runs, LaunchLinear takes it for calls with the tiles to
// fill the GPU (no workspace) and keeps the small-M kernel for few rows.
TEST_F(CudaTest, LinearPicksTheW8A16GemmForManyRows) {
  cuda::LinearParams p;
  p.dtype = cuda::ElemType::kBF16;
  p.weight_dtype = cuda::ElemType::kI8;
  p.m = 4096;
  p.n = 4096;
  p.k = 4096;
  const float scale = 1.0f;
  p.scales = &scale;  // only looked at for presence
  p.per_row_scales = false;
  if (!cuda::W8A16GemmSupports(p)) GTEST_SKIP() << "no sm_90 device or no sm_90a build";
  EXPECT_EQ(cuda::ChooseLinearPath(p), cuda::LinearPath::kW8A16Gemm);
  EXPECT_EQ(cuda::LinearWorkspaceBytes(p), 0u);
  p.m = 8;
  EXPECT_EQ(cuda::ChooseLinearPath(p), cuda::LinearPath::kW8A16Skinny);
  p.m = 128;
  p.n = 256;  // 2 tiles: dequantize + cuBLASLt
  EXPECT_EQ(cuda::ChooseLinearPath(p), cuda::LinearPath::kW8A16Dequant);
  p.n = 4096;
  p.k = 40;  // not a multiple of 16: the copy engine cannot stride it
  EXPECT_FALSE(cuda::W8A16GemmSupports(p));
}

// Batching never changes a result: on the W8A16 kernels (decode m <= 8,
// 16-row m <= 16, 32-row m <= 32) a row's output has the same bits whether
// it runs alone or with up to 31 others, for k with a partial chunk, n with
// a partial tile, both scale kinds and with a bias.
TEST_F(CudaTest, W8A16RowsAreBatchInvariant) {
  struct Shape {
    int64_t k, n;
  };
  for (Shape shape : {Shape{4096, 512}, Shape{208, 100}, Shape{1040, 100}}) {
    for (WeightKind kind : {WeightKind::kInt8PerRow, WeightKind::kInt8PerTensor}) {
      for (bool with_bias : {false, true}) {
        for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
          const uint64_t seed = testing::NewSeed();
          std::mt19937_64 rng(seed);
          const int64_t m = 32, k = shape.k, n = shape.n;
          HostTensor x = testing::RandomTensor(dtype, {m, k}, rng);
          CudaTestWeight w = MakeDeviceWeight(kind, dtype, n, k, rng);
          HostTensor bias = testing::RandomTensor(dtype, {n}, rng);
          DeviceTensor dx(x), dbias(bias);
          std::optional<ConstTensorView> b;
          if (with_bias) b = dbias.view();
          DeviceScratch scratch;
          DeviceTensor full(dtype, {m, n});
          ASSERT_TRUE(Linear(Ctx(&scratch), {dx.view(), w.device_view(), b}, full.mut()).ok());
          ASSERT_TRUE(Sync());
          ExpectRowRangesMatchTheWholeCall(
              dx, k, full.ToHost(), n, dtype,
              [&](const ConstTensorView& xv, DeviceTensor& out) {
                return Linear(Ctx(&scratch), {xv, w.device_view(), b}, out.mut());
              },
              absl::StrCat("seed=", seed, " dtype=", DTypeName(dtype), " k=", k, " n=", n,
                           " kind=", KindName(kind), " bias=", with_bias));
        }
      }
    }
  }
}

// Views that start off the 16-byte grid (inside a batch, say) take the
// vector-free paths and give the same numbers.
TEST_F(CudaTest, LinearWithUnalignedViews) {
  for (WeightKind kind : {WeightKind::kSameFloat, WeightKind::kInt8PerRow}) {
    for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
      const uint64_t seed = testing::NewSeed();
      std::mt19937_64 rng(seed);
      const int64_t m = 5, k = 64, n = 40;
      HostTensor x = testing::RandomTensor(dtype, {m, k}, rng);
      CudaTestWeight w = MakeDeviceWeight(kind, dtype, n, k, rng);
      HostTensor bias = testing::RandomTensor(dtype, {n}, rng);
      const size_t item = ItemSize(dtype);
      DeviceTensor dx(x, item), dbias(bias, item), dout(dtype, {m, n}, item);
      dout.Poison();
      DeviceScratch scratch;
      const absl::Status st =
          Linear(Ctx(&scratch), {dx.view(), w.device_view(), dbias.view()}, dout.mut());
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_TRUE(Sync());
      const std::vector<double> bv = bias.values();
      std::vector<double> mag;
      const auto want =
          testing::Linear(x.values(), w.values.values(), w.ref_scales(), &bv, m, k, n, &mag);
      for (double& v : mag) v *= dtype == DType::kFloat32 ? 1e-5 : 1e-4;
      EXPECT_TRUE(AllClose(dout.ToHost(), want, testing::DefaultTolerance(dtype),
                           testing::Ctx(seed, absl::StrCat("unaligned ", KindName(kind))), &mag));
    }
  }
}

TEST_F(CudaTest, LinearWithKZeroGivesBias) {
  DeviceTensor x(DType::kFloat16, {2, 0}), w(DType::kFloat16, {3, 0});
  HostTensor b(DType::kFloat32, {3});
  for (int i = 0; i < 3; ++i) b.Set(i, i + 1);
  DeviceTensor db(b), out(DType::kFloat16, {2, 3});
  out.Poison();
  DeviceScratch scratch;
  ASSERT_TRUE(
      Linear(Ctx(&scratch), {x.view(), {w.view(), std::nullopt}, db.view()}, out.mut()).ok());
  ASSERT_TRUE(Sync());
  EXPECT_EQ(out.ToHost().values(), (std::vector<double>{1, 2, 3, 1, 2, 3}));
}

// --------------------------------------------------------------------- Ffn

// What lets the server batch one-row Ffn calls on a GPU
// (FfnBatchInvariantRows): with int8 weights every row of a 32-row call has
// the bits of the same rows run alone (three W8A16 small-M GEMMs and the
// elementwise SwiGLU, each row computed from itself).
TEST_F(CudaTest, FfnRowsAreBatchInvariantWithInt8Weights) {
  for (WeightKind kind : {WeightKind::kInt8PerRow, WeightKind::kInt8PerTensor}) {
    for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
      for (bool with_bias : {false, true}) {
        const uint64_t seed = testing::NewSeed();
        std::mt19937_64 rng(seed);
        const int64_t m = 32, h = 208, inter = 1040;
        HostTensor x = testing::RandomTensor(dtype, {m, h}, rng);
        CudaTestWeight wg = MakeDeviceWeight(kind, dtype, inter, h, rng);
        CudaTestWeight wu = MakeDeviceWeight(kind, dtype, inter, h, rng);
        CudaTestWeight wd = MakeDeviceWeight(kind, dtype, h, inter, rng);
        HostTensor bg = testing::RandomTensor(DType::kFloat32, {inter}, rng);
        HostTensor bu = testing::RandomTensor(dtype, {inter}, rng);
        HostTensor bd = testing::RandomTensor(DType::kBFloat16, {h}, rng);
        DeviceTensor dx(x), dbg(bg), dbu(bu), dbd(bd);
        FfnArgs args{dx.view(),    wg.device_view(), wu.device_view(), wd.device_view(),
                     std::nullopt, std::nullopt,     std::nullopt};
        if (with_bias) {
          args.b_gate = dbg.view();
          args.b_up = dbu.view();
          args.b_down = dbd.view();
        }
        ASSERT_EQ(FfnBatchInvariantRows(Backend::kCuda, args), 32);
        DeviceScratch scratch;
        DeviceTensor full(dtype, {m, h});
        ASSERT_TRUE(Ffn(Ctx(&scratch), args, full.mut()).ok());
        ASSERT_TRUE(Sync());
        ExpectRowRangesMatchTheWholeCall(
            dx, h, full.ToHost(), h, dtype,
            [&](const ConstTensorView& xv, DeviceTensor& out) {
              FfnArgs alone = args;
              alone.input = xv;
              return Ffn(Ctx(&scratch), alone, out.mut());
            },
            absl::StrCat("seed=", seed, " dtype=", DTypeName(dtype), " kind=", KindName(kind),
                         " bias=", with_bias));
      }
    }
  }
}

struct FfnCase {
  int64_t m, h, i;
};

class CudaFfnTest
    : public CudaTest,
      public ::testing::WithParamInterface<std::tuple<DType, FfnCase, WeightKind, bool>> {};

TEST_P(CudaFfnTest, MatchesReferenceAndCpu) {
  const auto [dtype, c, kind, with_bias] = GetParam();
  const uint64_t seed = testing::NewSeed();
  std::mt19937_64 rng(seed);
  HostTensor x = testing::RandomTensor(dtype, {c.m, c.h}, rng);
  CudaTestWeight wg = MakeDeviceWeight(kind, dtype, c.i, c.h, rng);
  CudaTestWeight wu = MakeDeviceWeight(
      kind == WeightKind::kInt8PerRow ? WeightKind::kInt8PerTensor : kind, dtype, c.i, c.h, rng);
  CudaTestWeight wd = MakeDeviceWeight(
      kind == WeightKind::kSameFloat ? WeightKind::kOtherFloat : kind, dtype, c.h, c.i, rng);
  HostTensor bg = testing::RandomTensor(DType::kFloat32, {c.i}, rng);
  HostTensor bu = testing::RandomTensor(DType::kFloat16, {c.i}, rng);
  HostTensor bd = testing::RandomTensor(DType::kBFloat16, {c.h}, rng);
  DeviceTensor dx(x), dbg(bg), dbu(bu), dbd(bd);
  FfnArgs args{dx.view(),    wg.device_view(), wu.device_view(), wd.device_view(),
               std::nullopt, std::nullopt,     std::nullopt};
  if (with_bias) {
    args.b_gate = dbg.view();
    args.b_up = dbu.view();
    args.b_down = dbd.view();
  }
  auto spec = CheckFfn(args);
  ASSERT_TRUE(spec.ok()) << spec.status();
  DeviceTensor dout(dtype, {c.m, c.h});
  dout.Poison();
  DeviceScratch scratch;
  const absl::Status st = Ffn(Ctx(&scratch), args, dout.mut());
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_TRUE(Sync());
  const HostTensor got = dout.ToHost();

  const auto bgv = bg.values(), buv = bu.values(), bdv = bd.values();
  std::vector<double> mag;
  const auto want =
      RefFfn(x.values(), wg, wu, wd, with_bias ? &bgv : nullptr, with_bias ? &buv : nullptr,
             with_bias ? &bdv : nullptr, c.m, c.h, c.i, &mag);
  // The intermediates are rounded to the activation dtype (gate, up and
  // silu(gate) * up: three roundings of half an ulp at most), so the error
  // scales with sum |act * w_down| at 1.5 ulps of the dtype.
  const double ulps =
      dtype == DType::kFloat32 ? 3e-5 : (dtype == DType::kFloat16 ? 1.5e-3 : 1.2e-2);
  for (double& v : mag) v *= ulps;
  const std::string what = absl::StrCat("cuda ffn m=", c.m, " h=", c.h, " i=", c.i,
                                        " kind=", KindName(kind), " bias=", with_bias);
  EXPECT_TRUE(
      AllClose(got, want, testing::DefaultTolerance(dtype), testing::Ctx(seed, what), &mag));

  FfnArgs host_args{x.view(),     wg.host_view(), wu.host_view(), wd.host_view(),
                    std::nullopt, std::nullopt,   std::nullopt};
  if (with_bias) {
    host_args.b_gate = bg.view();
    host_args.b_up = bu.view();
    host_args.b_down = bd.view();
  }
  HostTensor cpu(dtype, {c.m, c.h});
  ASSERT_TRUE(Ffn(ExecContext{}, host_args, cpu.mut()).ok());
  EXPECT_TRUE(AllClose(got, cpu.values(), testing::DefaultTolerance(dtype),
                       testing::Ctx(seed, what + " vs cpu"), &mag));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaFfnTest,
    ::testing::Combine(
        ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
        ::testing::Values(FfnCase{0, 8, 16}, FfnCase{1, 17, 33}, FfnCase{3, 64, 176},
                          FfnCase{16, 256, 688}, FfnCase{33, 48, 80}, FfnCase{300, 64, 96}),
        ::testing::Values(WeightKind::kSameFloat, WeightKind::kOtherFloat, WeightKind::kInt8PerRow),
        ::testing::Bool()));

}  // namespace
}  // namespace accel::kernels
