#include "server/tensor_loader.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/safetensors_writer.h"

namespace accel::server {
namespace {

using ::accel::server::testing::BuildRawSafetensors;
using ::accel::server::testing::BuildSafetensors;
using ::accel::server::testing::BytesOf;
using ::accel::server::testing::ScratchDir;
using ::accel::server::testing::StTensor;
using ::accel::server::testing::WriteFile;
using kernels::DType;
using ::testing::HasSubstr;
using ::testing::StartsWith;

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename T>
std::vector<T> ValuesOf(const ResidentTensor& tensor) {
  std::vector<T> out(tensor.values.size() / sizeof(T));
  std::memcpy(out.data(), tensor.values.data(), tensor.values.size());
  return out;
}

std::vector<float> ScalesOf(const ResidentTensor& tensor) {
  std::vector<float> out(tensor.scales->size() / sizeof(float));
  std::memcpy(out.data(), tensor.scales->data(), tensor.scales->size());
  return out;
}

std::string BytesOfTensor(const ResidentTensor& tensor) {
  return std::string(static_cast<const char*>(tensor.values.data()), tensor.values.size());
}

class TensorLoaderTest : public ::testing::Test {
 protected:
  TensorLoaderTest() : store_(TensorStore::Options{1 << 20, "cpu"}) {}

  // Writes `tensors` to `file` under the model directory.
  void Write(const std::string& file, const std::vector<StTensor>& tensors, size_t align = 8) {
    WriteFile(dir_.path() / file, BuildSafetensors(tensors, {}, align));
  }

  LoadOptions Options(const std::string& path) {
    LoadOptions options;
    options.model_dir = dir_.path();
    options.path = path;
    return options;
  }

  std::vector<std::string> Names(const std::vector<ResidentTensorPtr>& tensors) {
    std::vector<std::string> names;
    for (const ResidentTensorPtr& t : tensors) names.push_back(t->name);
    return names;
  }

  ScratchDir dir_;
  TensorStore store_;
};

// A small LLaMA-like checkpoint.
std::vector<StTensor> Checkpoint() {
  return {
      {"model.layers.0.mlp.weight", "F32", {2, 2}, BytesOf<float>({1, 2, 3, 4})},
      {"model.layers.0.norm.weight", "F32", {2}, BytesOf<float>({1, 1})},
      {"model.layers.1.mlp.weight", "F32", {2, 2}, BytesOf<float>({5, 6, 7, 8})},
      {"model.layers.10.mlp.weight", "F32", {2, 2}, BytesOf<float>({9, 10, 11, 12})},
      {"lm_head.weight", "F32", {1, 2}, BytesOf<float>({-1, -2})},
  };
}

TEST_F(TensorLoaderTest, LoadsEveryServedDTypeUnchangedInFileOrder) {
  const std::vector<StTensor> tensors = {
      {"f32", "F32", {2, 3}, BytesOf<float>({1, 2, 3, 4, 5, 6})},
      {"f16", "F16", {4}, BytesOf<uint16_t>({0x3c00, 0x4000, 0xc000, 0x0001})},
      {"bf16", "BF16", {2, 2}, BytesOf<uint16_t>({0x3f80, 0x4000, 0x4040, 0xff80})},
      {"i8", "I8", {5}, BytesOf<int8_t>({-128, -1, 0, 1, 127})},
      {"i32", "I32", {3}, BytesOf<int32_t>({-7, 0, 7})},
      {"i64", "I64", {1, 2}, BytesOf<int64_t>({int64_t{1} << 40, -1})},
      {"scalar", "F32", {}, BytesOf<float>({0.5f})},
      {"empty", "F16", {0, 3}, ""},
  };
  Write("m.safetensors", tensors);
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("m.safetensors"), store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), tensors.size());
  const DType dtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt8,
                          DType::kInt32,   DType::kInt64,   DType::kFloat32,  DType::kFloat16};
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ResidentTensor& t = *(*loaded)[i];
    SCOPED_TRACE(tensors[i].name);
    EXPECT_EQ(t.name, tensors[i].name);
    EXPECT_EQ(t.dtype, dtypes[i]);
    EXPECT_EQ(t.shape, tensors[i].shape);
    EXPECT_FALSE(t.quantized());
    EXPECT_EQ(BytesOfTensor(t), tensors[i].bytes);
    EXPECT_EQ(store_.Get(t.name)->get(), &t);
    total += t.nbytes();
  }
  EXPECT_EQ(store_.resident_bytes(), total);
  EXPECT_EQ(store_.reserved_bytes(), 0);
}

TEST_F(TensorLoaderTest, PrependsThePrefix) {
  Write("m.safetensors", Checkpoint());
  LoadOptions options = Options("m.safetensors");
  options.prefix = "llama/";
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(Names(*loaded),
            (std::vector<std::string>{"llama/model.layers.0.mlp.weight",
                                      "llama/model.layers.0.norm.weight",
                                      "llama/model.layers.1.mlp.weight",
                                      "llama/model.layers.10.mlp.weight", "llama/lm_head.weight"}));
  EXPECT_FALSE(store_.Get("lm_head.weight").ok());
  EXPECT_TRUE(store_.Get("llama/lm_head.weight").ok());
}

TEST_F(TensorLoaderTest, IncludeGlobsSelectByNameInTheFile) {
  Write("m.safetensors", Checkpoint());
  struct Case {
    std::vector<std::string> include;
    std::vector<std::string> names;
  };
  const std::vector<Case> cases = {
      {{"model.layers.?.mlp.*"}, {"model.layers.0.mlp.weight", "model.layers.1.mlp.weight"}},
      {{"model.layers.1*"}, {"model.layers.1.mlp.weight", "model.layers.10.mlp.weight"}},
      {{"*norm*", "lm_head.weight"}, {"model.layers.0.norm.weight", "lm_head.weight"}},
      {{"lm_head.weight", "lm_*"}, {"lm_head.weight"}},
      {{"*.*.*.*.weight"},
       {"model.layers.0.mlp.weight", "model.layers.0.norm.weight", "model.layers.1.mlp.weight",
        "model.layers.10.mlp.weight"}},
      {{"*"}, {}},
      {{"?m_head.weigh?"}, {"lm_head.weight"}},
      {{"**lm**"}, {"lm_head.weight"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.include.front());
    TensorStore store(TensorStore::Options{1 << 20, "cpu"});
    LoadOptions options = Options("m.safetensors");
    options.include = c.include;
    absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    if (c.names.empty()) {
      EXPECT_EQ(loaded->size(), Checkpoint().size());
    } else {
      EXPECT_EQ(Names(*loaded), c.names);
    }
    EXPECT_EQ(store.size(), static_cast<int64_t>(loaded->size()));
  }
}

TEST_F(TensorLoaderTest, IncludeThatMatchesNothingIsNotFound) {
  Write("m.safetensors", Checkpoint());
  LoadOptions options = Options("m.safetensors");
  options.include = {"model.layer.*", "lm_head"};
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("include: no tensor in 'm.safetensors' matches any of ['model.layer.*', "
                        "'lm_head']"));
}

TEST_F(TensorLoaderTest, AnEmptyFileLoadsNothing) {
  WriteFile(dir_.path() / "e.safetensors", BuildRawSafetensors("{}", ""));
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("e.safetensors"), store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->empty());
}

TEST_F(TensorLoaderTest, UnsupportedDTypeFailsOnlyWhenIncluded) {
  Write("m.safetensors",
        {{"w", "F32", {2}, BytesOf<float>({1, 2})}, {"d", "F64", {1}, BytesOf<double>({1.0})}});
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("m.safetensors"), store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("path 'm.safetensors': tensor 'd': dtype F64 is not supported"));
  EXPECT_EQ(store_.size(), 0);

  LoadOptions options = Options("m.safetensors");
  options.include = {"w"};
  loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(Names(*loaded), std::vector<std::string>{"w"});
}

// -------------------------------------------------------------------- Casts

TEST_F(TensorLoaderTest, CastsToBFloat16RoundingToNearestEven) {
  const std::vector<uint32_t> bits = {
      0x3f800000,  // 1.0
      0x3f808000,  // tie, even below: 1.0
      0x3f818000,  // tie, odd below: up
      0x3f808001,  // just above the tie: up
      0x3f807fff,  // just below the tie: down
      0xc0000000,  // -2
      0x7f800000,  // inf
      0x7f7fffff,  // FLT_MAX rounds to inf
      0x00000001,  // smallest denormal rounds to +0
      0x80000000,  // -0
  };
  const std::vector<uint16_t> expected = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x3f80,
                                          0xc000, 0x7f80, 0x7f80, 0x0000, 0x8000};
  std::vector<uint32_t> with_nan = bits;
  with_nan.push_back(0x7fc00001);
  Write("m.safetensors",
        {{"x", "F32", {static_cast<int64_t>(with_nan.size())}, BytesOf<uint32_t>(with_nan)}});
  LoadOptions options = Options("m.safetensors");
  options.dtype = DType::kBFloat16;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const ResidentTensor& x = *(*loaded)[0];
  EXPECT_EQ(x.dtype, DType::kBFloat16);
  EXPECT_EQ(x.nbytes(), static_cast<int64_t>(with_nan.size() * 2));
  std::vector<uint16_t> got = ValuesOf<uint16_t>(x);
  const uint16_t nan = got.back();
  got.pop_back();
  EXPECT_EQ(got, expected);
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x007f, 0);
  EXPECT_EQ(store_.resident_bytes(), x.nbytes());
}

TEST_F(TensorLoaderTest, CastsToFloat16RoundingToNearestEven) {
  const std::vector<float> values = {
      1.0f,
      FromBits(0x3f801000),   // 1 + 2^-11: tie, even below: 1.0
      FromBits(0x3f803000),   // 1 + 3 * 2^-11: tie, odd below: up
      FromBits(0x3f801001),   // just above the tie: up
      65504.0f,               // largest half
      65519.0f,               // below the midpoint to 65536: 65504
      65520.0f,               // the midpoint: rounds to even, which is inf
      std::ldexp(1.0f, -24),  // smallest subnormal
      std::ldexp(1.0f, -25),  // tie between 0 and the smallest subnormal: 0
      std::ldexp(3.0f, -26),  // 0.75 of the smallest subnormal: up
      std::ldexp(1.0f, -14),  // smallest normal
      -0.0f,
      -std::numeric_limits<float>::infinity(),
  };
  const std::vector<uint16_t> expected = {0x3c00, 0x3c00, 0x3c02, 0x3c01, 0x7bff, 0x7bff, 0x7c00,
                                          0x0001, 0x0000, 0x0001, 0x0400, 0x8000, 0xfc00};
  Write("m.safetensors",
        {{"x", "F32", {static_cast<int64_t>(values.size())}, BytesOf<float>(values)}});
  LoadOptions options = Options("m.safetensors");
  options.dtype = DType::kFloat16;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)[0]->dtype, DType::kFloat16);
  EXPECT_EQ(ValuesOf<uint16_t>(*(*loaded)[0]), expected);
}

TEST_F(TensorLoaderTest, CastsHalfTypesUpAndAcross) {
  Write("m.safetensors", {{"h", "F16", {4}, BytesOf<uint16_t>({0x3c00, 0x0001, 0xfc00, 0x7bff})},
                          {"b", "BF16", {3}, BytesOf<uint16_t>({0x3f80, 0x3f81, 0xc040})}});
  LoadOptions options = Options("m.safetensors");
  options.dtype = DType::kFloat32;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(ValuesOf<float>(*(*loaded)[0]),
            (std::vector<float>{1.0f, std::ldexp(1.0f, -24),
                                -std::numeric_limits<float>::infinity(), 65504.0f}));
  EXPECT_EQ(ValuesOf<float>(*(*loaded)[1]), (std::vector<float>{1.0f, 1.0078125f, -3.0f}));

  TensorStore other(TensorStore::Options{1 << 20, "cpu"});
  options.dtype = DType::kFloat16;
  options.include = {"b"};
  loaded = LoadSafetensors(options, other);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(ValuesOf<uint16_t>(*(*loaded)[0]), (std::vector<uint16_t>{0x3c00, 0x3c08, 0xc200}));
}

TEST_F(TensorLoaderTest, CastKeepsIntegerTensorsAndSameDTypeTensors) {
  Write("m.safetensors", {{"ids", "I32", {2}, BytesOf<int32_t>({3, 4})},
                          {"q", "I8", {2}, BytesOf<int8_t>({-1, 1})},
                          {"b", "BF16", {1}, BytesOf<uint16_t>({0x3f81})}});
  LoadOptions options = Options("m.safetensors");
  options.dtype = DType::kBFloat16;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)[0]->dtype, DType::kInt32);
  EXPECT_EQ(ValuesOf<int32_t>(*(*loaded)[0]), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ((*loaded)[1]->dtype, DType::kInt8);
  EXPECT_EQ((*loaded)[2]->dtype, DType::kBFloat16);
  EXPECT_EQ(ValuesOf<uint16_t>(*(*loaded)[2]), std::vector<uint16_t>{0x3f81});
}

TEST_F(TensorLoaderTest, RejectsAnIntegerTargetDType) {
  Write("m.safetensors", Checkpoint());
  LoadOptions options = Options("m.safetensors");
  options.dtype = DType::kInt8;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), StartsWith("dtype: expected FLOAT32"));
}

TEST_F(TensorLoaderTest, CastsAndQuantizesDataAtAnOddOffset) {
  // The header is left unpadded and grown by metadata until the data
  // starts at an odd byte, where no float load is aligned.
  const std::vector<StTensor> tensors = {
      {"w", "F32", {2, 2}, BytesOf<float>({254, 127, -254, 1})},
      {"n", "F32", {3}, BytesOf<float>({1.0f, FromBits(0x3f818000), -2.0f})}};
  std::string file;
  for (int pad = 0;; ++pad) {
    file = BuildSafetensors(tensors, {{"pad", std::string(pad, 'x')}}, 1);
    uint64_t header_length = 0;
    std::memcpy(&header_length, file.data(), 8);
    if ((8 + header_length) % 4 == 1) break;
  }
  WriteFile(dir_.path() / "m.safetensors", file);
  LoadOptions options = Options("m.safetensors");
  options.dtype = DType::kBFloat16;
  options.quantize_int8 = true;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(ValuesOf<int8_t>(*(*loaded)[0]), (std::vector<int8_t>{127, 64, -127, 0}));
  EXPECT_EQ(ValuesOf<uint16_t>(*(*loaded)[1]), (std::vector<uint16_t>{0x3f80, 0x3f82, 0xc000}));
}

// --------------------------------------------------------------- Quantization

TEST_F(TensorLoaderTest, QuantizesOnlyTwoDimensionalFloatTensors) {
  Write("m.safetensors",
        {
            // Power-of-two scales keep x / scale exact, so ties show RNE.
            {"w",
             "F32",
             {3, 4},
             BytesOf<float>({254, 127, -254, 1,  // scale 2: 63.5 -> 64, 0.5 -> 0
                             127, -63.5, 0, 1,   // scale 1: -63.5 -> -64
                             0, 0, 0, 0})},      // absmax 0: scale 1
            {"h", "F16", {2, 2}, BytesOf<uint16_t>({0x4000, 0xc000, 0x5bf0, 0x0000})},
            {"norm", "F32", {4}, BytesOf<float>({1, 2, 3, 4})},
            {"conv", "F32", {1, 2, 2}, BytesOf<float>({1, 2, 3, 4})},
            {"ids", "I32", {2, 2}, BytesOf<int32_t>({1, 2, 3, 4})},
        });
  LoadOptions options = Options("m.safetensors");
  options.quantize_int8 = true;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 5u);

  const ResidentTensor& w = *(*loaded)[0];
  ASSERT_TRUE(w.quantized());
  EXPECT_EQ(w.dtype, DType::kInt8);
  EXPECT_EQ(w.shape, (kernels::Shape{3, 4}));
  EXPECT_EQ(w.scales_shape, (kernels::Shape{3}));
  EXPECT_EQ(ValuesOf<int8_t>(w),
            (std::vector<int8_t>{127, 64, -127, 0, 127, -64, 0, 1, 0, 0, 0, 0}));
  EXPECT_EQ(ScalesOf(w), (std::vector<float>{2.0f, 1.0f, 1.0f}));
  EXPECT_EQ(w.nbytes(), 12 + 12);

  // F16 [[2, -2], [254, 0]]: scales 2/127 and 2.
  const ResidentTensor& h = *(*loaded)[1];
  ASSERT_TRUE(h.quantized());
  EXPECT_EQ(ValuesOf<int8_t>(h), (std::vector<int8_t>{127, -127, 127, 0}));
  const std::vector<float> h_scales = ScalesOf(h);
  ASSERT_EQ(h_scales.size(), 2u);
  EXPECT_FLOAT_EQ(h_scales[0], 2.0f / 127.0f);
  EXPECT_EQ(h_scales[1], 2.0f);

  EXPECT_FALSE((*loaded)[2]->quantized());
  EXPECT_EQ((*loaded)[2]->dtype, DType::kFloat32);
  EXPECT_FALSE((*loaded)[3]->quantized());
  EXPECT_EQ((*loaded)[3]->dtype, DType::kFloat32);
  EXPECT_FALSE((*loaded)[4]->quantized());
  EXPECT_EQ((*loaded)[4]->dtype, DType::kInt32);

  int64_t total = 0;
  for (const ResidentTensorPtr& t : *loaded) total += t->nbytes();
  EXPECT_EQ(store_.resident_bytes(), total);
}

TEST_F(TensorLoaderTest, QuantizesEmptyMatrices) {
  Write("m.safetensors", {{"rows0", "F32", {0, 4}, ""}, {"cols0", "BF16", {3, 0}, ""}});
  LoadOptions options = Options("m.safetensors");
  options.quantize_int8 = true;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE((*loaded)[0]->quantized());
  EXPECT_EQ((*loaded)[0]->nbytes(), 0);
  EXPECT_TRUE((*loaded)[1]->quantized());
  EXPECT_EQ(ScalesOf(*(*loaded)[1]), (std::vector<float>{1, 1, 1}));
}

TEST_F(TensorLoaderTest, QuantizeRejectsNonFiniteWeightsAndLoadsNothing) {
  Write("m.safetensors", {{"a", "F32", {2}, BytesOf<float>({1, 2})},
                          {"w", "F32", {2, 2}, BytesOf<float>({1, NAN, 3, 4})}});
  LoadOptions options = Options("m.safetensors");
  options.quantize_int8 = true;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()),
              StartsWith("path 'm.safetensors': tensor 'w': "));
  EXPECT_EQ(store_.size(), 0);
  EXPECT_EQ(store_.resident_bytes(), 0);
  EXPECT_EQ(store_.reserved_bytes(), 0);
}

// ------------------------------------------------------------ Store contract

TEST_F(TensorLoaderTest, QuotaFailureChangesNothing) {
  TensorStore small(TensorStore::Options{40, "cpu"});
  auto keep = std::make_shared<ResidentTensor>();
  keep->name = "keep";
  keep->dtype = DType::kInt8;
  keep->shape = {10};
  keep->values = *kernels::Buffer::Allocate(kernels::Backend::kCpu, 10);
  Reservation none;
  ASSERT_TRUE(small.Insert(keep, false, none).ok());

  Write("m.safetensors", Checkpoint());  // 64 bytes
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("m.safetensors"), small);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("resident memory quota exceeded: 64 bytes requested, 10 resident, 0 "
                        "reserved, limit 40 (--max_resident_bytes)"));
  EXPECT_EQ(small.size(), 1);
  EXPECT_EQ(small.resident_bytes(), 10);
  EXPECT_EQ(small.reserved_bytes(), 0);

  // The quota counts what is stored, after quantization: three [2, 2]
  // weights of 4 + 8 bytes, a [1, 2] one of 2 + 4, the fp32 norm of 8.
  LoadOptions options = Options("m.safetensors");
  options.quantize_int8 = true;
  TensorStore tight(TensorStore::Options{49, "cpu"});
  EXPECT_EQ(LoadSafetensors(options, tight).status().code(), absl::StatusCode::kResourceExhausted);
  TensorStore fits(TensorStore::Options{50, "cpu"});
  loaded = LoadSafetensors(options, fits);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(fits.resident_bytes(), 50);
}

TEST_F(TensorLoaderTest, AlreadyExistsWithoutOverwriteLeavesOldTensorsIntact) {
  Write("m.safetensors", Checkpoint());
  LoadOptions options = Options("m.safetensors");
  options.include = {"lm_head.weight"};
  ASSERT_TRUE(LoadSafetensors(options, store_).ok());
  ResidentTensorPtr old_head = *store_.Get("lm_head.weight");
  const int64_t resident = store_.resident_bytes();

  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("m.safetensors"), store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("'lm_head.weight'"));
  EXPECT_EQ(store_.size(), 1);
  EXPECT_EQ(store_.Get("lm_head.weight")->get(), old_head.get());
  EXPECT_EQ(store_.resident_bytes(), resident);
  EXPECT_EQ(store_.reserved_bytes(), 0);
}

TEST_F(TensorLoaderTest, OverwriteReplacesAndAccountsOnlyTheNewBytes) {
  Write("m.safetensors", Checkpoint());
  ASSERT_TRUE(LoadSafetensors(Options("m.safetensors"), store_).ok());
  ResidentTensorPtr old_w = *store_.Get("model.layers.0.mlp.weight");
  EXPECT_EQ(store_.resident_bytes(), 64);

  LoadOptions options = Options("m.safetensors");
  options.overwrite = true;
  options.dtype = DType::kBFloat16;
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(options, store_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(store_.size(), 5);
  EXPECT_EQ(store_.resident_bytes(), 32);
  ResidentTensorPtr new_w = *store_.Get("model.layers.0.mlp.weight");
  EXPECT_NE(new_w.get(), old_w.get());
  EXPECT_EQ(new_w->dtype, DType::kBFloat16);
  EXPECT_EQ(ValuesOf<uint16_t>(*new_w), (std::vector<uint16_t>{0x3f80, 0x4000, 0x4040, 0x4080}));
  // The replaced tensor is intact for whoever still holds it.
  EXPECT_EQ(ValuesOf<float>(*old_w), (std::vector<float>{1, 2, 3, 4}));
}

// --------------------------------------------------------------- Bad requests

TEST_F(TensorLoaderTest, RejectsEscapingAndMissingPaths) {
  WriteFile(dir_.path() / "m.safetensors", BuildSafetensors(Checkpoint()));
  for (const char* path : {"../m.safetensors", "/etc/passwd", "a/../../x", ""}) {
    absl::StatusOr<std::vector<ResidentTensorPtr>> loaded = LoadSafetensors(Options(path), store_);
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(std::string(loaded.status().message()), StartsWith("path: ")) << path;
  }
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("missing.safetensors"), store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_.size(), 0);
}

TEST_F(TensorLoaderTest, RejectsMalformedFilesNamingThePathAndTensor) {
  WriteFile(dir_.path() / "bad.safetensors",
            BuildRawSafetensors(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                BytesOf<float>({1, 2})));
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("bad.safetensors"), store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(loaded.status().message(),
            "path 'bad.safetensors': tensor 'w': data_offsets [0, 8] hold 8 bytes, but F32 [3] "
            "needs 12");
}

TEST_F(TensorLoaderTest, RejectsNamesThatAreNotValidTensorNames) {
  Write("m.safetensors", {{"a b", "F32", {1}, BytesOf<float>({1})}});
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("m.safetensors"), store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("tensor 'a b'"));

  Write("n.safetensors", {{".w", "F32", {1}, BytesOf<float>({1})}});
  for (const char* prefix : {"/abs", "x.", "bad prefix "}) {
    LoadOptions options = Options("n.safetensors");
    options.prefix = prefix;
    loaded = LoadSafetensors(options, store_);
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << prefix;
  }
  EXPECT_EQ(store_.size(), 0);
  LoadOptions options = Options("n.safetensors");
  options.prefix = "ok";
  ASSERT_TRUE(LoadSafetensors(options, store_).ok());
  EXPECT_TRUE(store_.Get("ok.w").ok());
}

TEST_F(TensorLoaderTest, RejectsTensorsOfTooHighRank) {
  Write("m.safetensors", {{"r9", "F32", {1, 1, 1, 1, 1, 1, 1, 1, 1}, BytesOf<float>({1})}});
  absl::StatusOr<std::vector<ResidentTensorPtr>> loaded =
      LoadSafetensors(Options("m.safetensors"), store_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("at most 8 dimensions"));
}

}  // namespace
}  // namespace accel::server
