// Every RPC of API.md end to end on the CPU backend: a real server on port 0
// and the real client, results checked against fp64 math computed here.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <unistd.h>

#include "server_fixture.h"

namespace accel::testing {
namespace {

using kernels::DType;

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::vector<float> Floats(const v1::Tensor& t) {
  auto values = TensorToFloats(t);
  EXPECT_TRUE(values.ok()) << values.status();
  return values.ok() ? *values : std::vector<float>();
}

double RmsOf(const std::vector<float>& x, size_t row, size_t n, double eps) {
  double ss = 0;
  for (size_t j = 0; j < n; ++j) ss += double(x[row * n + j]) * x[row * n + j];
  return 1.0 / std::sqrt(ss / n + eps);
}

class OpsTest : public ServerTest, public ::testing::WithParamInterface<DType> {};

TEST_P(OpsTest, RmsNormMatchesFp64WithAndWithoutResidual) {
  const DType dtype = GetParam();
  const size_t rows = 3, n = 17;
  auto x = RoundTo(dtype, RandomFloats(rows * n, 1));
  auto r = RoundTo(dtype, RandomFloats(rows * n, 2));
  auto w = RandomFloats(n, 3);
  v1::RmsNormRequest req;
  *req.mutable_input() = InlineRef(MakeFloatTensor(dtype, {int64_t(rows), int64_t(n)}, x));
  *req.mutable_weight() = InlineRef(MakeFloatTensor(DType::kFloat32, {int64_t(n)}, w));
  auto plain = client().RmsNorm(req);
  ASSERT_TRUE(plain.ok()) << plain.status();
  std::vector<double> want(rows * n);
  for (size_t i = 0; i < rows; ++i) {
    const double inv = RmsOf(x, i, n, 1e-6);
    for (size_t j = 0; j < n; ++j) want[i * n + j] = x[i * n + j] * inv * w[j];
  }
  ExpectClose(Floats(plain->output()), want, Tolerance(dtype), "rmsnorm");
  EXPECT_EQ(plain->output().dtype(), static_cast<v1::DType>(dtype));

  *req.mutable_residual() = InlineRef(MakeFloatTensor(dtype, {int64_t(rows), int64_t(n)}, r));
  req.set_return_residual(true);
  req.set_eps(1e-5f);
  auto fused = client().RmsNorm(req);
  ASSERT_TRUE(fused.ok()) << fused.status();
  std::vector<float> s(rows * n);
  for (size_t i = 0; i < s.size(); ++i) s[i] = x[i] + r[i];
  s = RoundTo(dtype, s);
  for (size_t i = 0; i < rows; ++i) {
    const double inv = RmsOf(s, i, n, 1e-5);
    for (size_t j = 0; j < n; ++j) want[i * n + j] = s[i * n + j] * inv * w[j];
  }
  ExpectClose(Floats(fused->output()), want, Tolerance(dtype), "rmsnorm+residual");
  EXPECT_EQ(Floats(fused->residual()), s) << "the residual is input + residual rounded once";
}

TEST_P(OpsTest, SwiGluMatchesFp64) {
  const DType dtype = GetParam();
  auto g = RoundTo(dtype, RandomFloats(4 * 33, 4, 4.0f));
  auto u = RoundTo(dtype, RandomFloats(4 * 33, 5));
  v1::SwiGluRequest req;
  *req.mutable_gate() = InlineRef(MakeFloatTensor(dtype, {4, 33}, g));
  *req.mutable_up() = InlineRef(MakeFloatTensor(dtype, {4, 33}, u));
  auto resp = client().SwiGlu(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  std::vector<double> want(g.size());
  for (size_t i = 0; i < g.size(); ++i) want[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
  ExpectClose(Floats(resp->output()), want, Tolerance(dtype), "swiglu");
}

TEST_P(OpsTest, LinearFloatAndInt8WeightsMatchFp64) {
  const DType dtype = GetParam();
  const int64_t m = 5, k = 64, n = 24;
  auto x = RoundTo(dtype, RandomFloats(m * k, 6));
  auto w = RoundTo(dtype, RandomFloats(n * k, 7, 0.2f));
  auto b = RandomFloats(n, 8);
  ASSERT_TRUE(client().Put("w", MakeFloatTensor(dtype, {n, k}, w)).ok());
  ASSERT_TRUE(client().Put("b", MakeFloatTensor(DType::kFloat32, {n}, b)).ok());
  v1::LinearRequest req;
  *req.mutable_input() = InlineRef(MakeFloatTensor(dtype, {m, k}, x));
  req.set_weight("w");
  req.set_bias("b");
  auto resp = client().Linear(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  std::vector<double> want(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = b[j];
      for (int64_t l = 0; l < k; ++l) acc += double(x[i * k + l]) * w[j * k + l];
      want[i * n + j] = acc;
    }
  }
  ExpectClose(Floats(resp->output()), want, 4 * Tolerance(dtype), "linear");

  // W8A16: quantize the weight per row on the server, then run Linear on it.
  v1::QuantizeWeightRequest qreq;
  qreq.set_source("w");
  qreq.set_target("wq");
  auto qinfo = client().QuantizeWeight(qreq);
  ASSERT_TRUE(qinfo.ok()) << qinfo.status();
  EXPECT_TRUE(qinfo->quantized());
  auto fetched = client().Get("wq");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  auto scales = Floats(fetched->scales);
  ASSERT_EQ(scales.size(), size_t(n));
  req.set_weight("wq");
  resp = client().Linear(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  const auto* q = reinterpret_cast<const int8_t*>(fetched->data.data());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t l = 0; l < k; ++l) acc += double(x[i * k + l]) * q[j * k + l];
      want[i * n + j] = acc * scales[j] + b[j];
    }
  }
  ExpectClose(Floats(resp->output()), want, 4 * Tolerance(dtype), "linear w8a16");
}

TEST_P(OpsTest, FfnMatchesFp64) {
  const DType dtype = GetParam();
  const int64_t m = 3, h = 32, inter = 48;
  auto x = RoundTo(dtype, RandomFloats(m * h, 9));
  auto wg = RoundTo(dtype, RandomFloats(inter * h, 10, 0.3f));
  auto wu = RoundTo(dtype, RandomFloats(inter * h, 11, 0.3f));
  auto wd = RoundTo(dtype, RandomFloats(h * inter, 12, 0.3f));
  ASSERT_TRUE(client().Put("wg", MakeFloatTensor(dtype, {inter, h}, wg)).ok());
  ASSERT_TRUE(client().Put("wu", MakeFloatTensor(dtype, {inter, h}, wu)).ok());
  ASSERT_TRUE(client().Put("wd", MakeFloatTensor(dtype, {h, inter}, wd)).ok());
  v1::FfnRequest req;
  *req.mutable_input() = InlineRef(MakeFloatTensor(dtype, {m, h}, x));
  req.set_w_gate("wg");
  req.set_w_up("wu");
  req.set_w_down("wd");
  auto resp = client().Ffn(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  std::vector<double> want(m * h);
  for (int64_t i = 0; i < m; ++i) {
    std::vector<double> act(inter);
    for (int64_t j = 0; j < inter; ++j) {
      double g = 0, u = 0;
      for (int64_t l = 0; l < h; ++l) {
        g += double(x[i * h + l]) * wg[j * h + l];
        u += double(x[i * h + l]) * wu[j * h + l];
      }
      act[j] = g / (1 + std::exp(-g)) * u;
    }
    for (int64_t j = 0; j < h; ++j) {
      double acc = 0;
      for (int64_t l = 0; l < inter; ++l) acc += act[l] * wd[j * inter + l];
      want[i * h + j] = acc;
    }
  }
  ExpectClose(Floats(resp->output()), want, 4 * Tolerance(dtype), "ffn");
}

TEST_P(OpsTest, RopeWithCacheAndPositionsMatchesFp64) {
  const DType dtype = GetParam();
  const int64_t b = 2, s = 3, hq = 4, hk = 2, d = 6, max_len = 64;
  v1::BuildRopeCacheRequest creq;
  creq.set_name("rope");
  creq.set_max_seq_len(max_len);
  creq.set_head_dim(d);
  auto cache = client().BuildRopeCache(creq);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(std::vector<int64_t>(cache->shape().begin(), cache->shape().end()),
            (std::vector<int64_t>{2, max_len, d / 2}));

  auto q = RoundTo(dtype, RandomFloats(b * s * hq * d, 13));
  auto k = RoundTo(dtype, RandomFloats(b * s * hk * d, 14));
  const std::vector<int64_t> positions = {5, 0, 63, 7, 8, 9};  // [B, S]
  for (auto style : {v1::INTERLEAVED, v1::HALF_SPLIT}) {
    v1::RopeRequest req;
    *req.mutable_q() = InlineRef(MakeFloatTensor(dtype, {b, s, hq, d}, q));
    *req.mutable_k() = InlineRef(MakeFloatTensor(dtype, {b, s, hk, d}, k));
    req.set_cache("rope");
    std::string pos_bytes(reinterpret_cast<const char*>(positions.data()), positions.size() * 8);
    *req.mutable_positions() = InlineRef(DType::kInt64, {b, s}, pos_bytes);
    req.set_style(style);
    auto resp = client().Rope(req);
    ASSERT_TRUE(resp.ok()) << resp.status();
    auto rotate = [&](const std::vector<float>& x, int64_t heads) {
      std::vector<double> out(x.size());
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t si = 0; si < s; ++si) {
          const double p = positions[bi * s + si];
          for (int64_t hi = 0; hi < heads; ++hi) {
            const size_t base = ((bi * s + si) * heads + hi) * d;
            for (int64_t i = 0; i < d / 2; ++i) {
              const double angle = p * std::pow(10000.0, -2.0 * i / d);
              const size_t a = style == v1::INTERLEAVED ? base + 2 * i : base + i;
              const size_t c = style == v1::INTERLEAVED ? base + 2 * i + 1 : base + i + d / 2;
              out[a] = x[a] * std::cos(angle) - x[c] * std::sin(angle);
              out[c] = x[a] * std::sin(angle) + x[c] * std::cos(angle);
            }
          }
        }
      return out;
    };
    ExpectClose(Floats(resp->q()), rotate(q, hq), Tolerance(dtype), "rope q");
    ExpectClose(Floats(resp->k()), rotate(k, hk), Tolerance(dtype), "rope k");
  }
}

TEST_P(OpsTest, QuantizeDequantizeAndErrorAgree) {
  const DType dtype = GetParam();
  auto x = RoundTo(dtype, RandomFloats(4 * 40, 15, 3.0f));
  v1::QuantizeRequest req;
  *req.mutable_input() = InlineRef(MakeFloatTensor(dtype, {4, 40}, x));
  req.set_granularity(v1::PER_ROW);
  auto q = client().Quantize(req);
  ASSERT_TRUE(q.ok()) << q.status();
  auto scales = Floats(q->scales());
  ASSERT_EQ(scales.size(), 4u);
  const auto* codes = reinterpret_cast<const int8_t*>(q->values().data().data());
  for (int r = 0; r < 4; ++r) {
    float absmax = 0;
    for (int j = 0; j < 40; ++j) absmax = std::max(absmax, std::fabs(x[r * 40 + j]));
    EXPECT_FLOAT_EQ(scales[r], absmax / 127.0f);
    for (int j = 0; j < 40; ++j) {
      EXPECT_EQ(codes[r * 40 + j], static_cast<int8_t>(std::nearbyint(x[r * 40 + j] / scales[r])));
    }
  }
  v1::DequantizeRequest dreq;
  *dreq.mutable_values() = InlineRef(q->values());
  *dreq.mutable_scales() = InlineRef(q->scales());
  dreq.set_dtype(v1::FLOAT32);
  auto dq = client().Dequantize(dreq);
  ASSERT_TRUE(dq.ok()) << dq.status();
  auto restored = Floats(dq->output());
  std::vector<double> want(x.size());
  double max_err = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    want[i] = double(codes[i]) * scales[i / 40];
    max_err = std::max(max_err, std::fabs(double(x[i]) - double(float(codes[i] * scales[i / 40]))));
  }
  ExpectClose(restored, want, 1e-6, "dequantize");

  v1::QuantizationErrorRequest ereq;
  *ereq.mutable_original() = InlineRef(MakeFloatTensor(dtype, {4, 40}, x));
  *ereq.mutable_values() = InlineRef(q->values());
  *ereq.mutable_scales() = InlineRef(q->scales());
  auto err = client().QuantizationError(ereq);
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_NEAR(err->max_abs_error(), max_err, 1e-6);
  EXPECT_GT(err->snr_db(), 30.0);
  EXPECT_GE(err->relative_error_pct(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(AllFloatDTypes, OpsTest,
                         ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                         [](const auto& info) {
                           return std::string(kernels::DTypeName(info.param));
                         });

TEST_F(ServerTest, ServerInfoDescribesTheServingDevice) {
  auto info = client().ServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  // --device=auto: the GPU where there is one (the GPU machine), else the CPU.
  ASSERT_TRUE(info->backend() == "cpu" || info->backend() == "cuda") << info->backend();
  EXPECT_FALSE(info->version().empty());
  EXPECT_FALSE(info->device().name().empty());
  EXPECT_GT(info->device().total_memory(), 0);
  EXPECT_GT(info->device().free_memory(), 0);
  EXPECT_LE(info->device().free_memory(), info->device().total_memory());
  EXPECT_GT(info->device().multi_processor_count(), 0);
  EXPECT_TRUE(info->device().supports_bf16());
  if (info->backend() == "cpu") {
    EXPECT_TRUE(info->device().compute_capability().empty());
    EXPECT_FALSE(info->device().supports_fp8());
  } else {
    // "9.0" on an H100/H200: fp8 (>= 8.9) and int8 tensor cores.
    const std::string& cc = info->device().compute_capability();
    ASSERT_FALSE(cc.empty());
    EXPECT_EQ(info->device().supports_fp8(), std::stod(cc) >= 8.9);
    EXPECT_TRUE(info->device().supports_int8_tensor_cores());
  }
  EXPECT_EQ(info->resident_limit_bytes(), int64_t{1} << 30);
  EXPECT_EQ(info->resident_bytes(), 0);
}

TEST_F(ServerTest, PutGetListDeleteRoundTripInChunks) {
  // 3 MiB + 5 bytes of int8 in 64 KiB chunks both ways.
  const int64_t n = (3 << 20) + 5;
  std::string data(n, '\0');
  for (int64_t i = 0; i < n; ++i) data[i] = static_cast<char>((i * 131) % 251);
  int64_t progress_calls = 0;
  auto info = client().Put("big", DType::kInt8, {n}, data, false, 64 << 10,
                           [&](int64_t, int64_t) { ++progress_calls; });
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->nbytes(), n);
  EXPECT_GT(progress_calls, 40);
  auto fetched = client().Get("big", nullptr, 64 << 10);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(fetched->data == data);

  // A 0-d tensor and an empty tensor.
  float scalar = 2.5f;
  ASSERT_TRUE(client().Put("scalar", DType::kFloat32, {}, std::string((char*)&scalar, 4)).ok());
  ASSERT_TRUE(client().Put("empty", DType::kBFloat16, {0, 7}, "").ok());
  auto empty = client().Get("empty");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->data.size(), 0u);

  auto listed = client().List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 3u);
  EXPECT_EQ((*listed)[0].name(), "big");
  auto server_info = client().ServerInfo();
  EXPECT_EQ(server_info->resident_bytes(), n + 4);
  EXPECT_EQ(server_info->resident_tensors(), 3);

  ASSERT_TRUE(client().Delete("big").ok());
  EXPECT_EQ(client().Delete("big").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client().ServerInfo()->resident_bytes(), 4);
}

TEST_F(ServerTest, OutputNamesChainOpsWithoutRoundTrips) {
  const std::vector<float> x = RandomFloats(2 * 8, 21);
  const std::vector<float> w(8, 1.0f);
  ASSERT_TRUE(client().Put("x", MakeFloatTensor(DType::kFloat32, {2, 8}, x)).ok());
  ASSERT_TRUE(client().Put("w", MakeFloatTensor(DType::kFloat32, {8}, w)).ok());
  v1::RmsNormRequest req;
  *req.mutable_input() = NamedRef("x");
  *req.mutable_weight() = NamedRef("w");
  req.set_output_name("x");  // in place: replaces x once the op succeeded
  auto resp = client().RmsNorm(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_TRUE(resp->output().data().empty());
  EXPECT_EQ(resp->output().shape_size(), 2);
  // Normalising twice is a no-op up to rounding: x now has rms 1.
  auto again = client().RmsNorm(req);
  ASSERT_TRUE(again.ok());
  auto fetched = client().Get("x");
  ASSERT_TRUE(fetched.ok());
  auto values = Floats(fetched->ToTensor());
  for (int r = 0; r < 2; ++r) {
    double ss = 0;
    for (int j = 0; j < 8; ++j) ss += values[r * 8 + j] * values[r * 8 + j];
    EXPECT_NEAR(ss / 8, 1.0, 1e-4);
  }

  v1::QuantizeRequest qreq;
  *qreq.mutable_input() = NamedRef("x");
  qreq.set_output_name("xq");
  ASSERT_TRUE(client().Quantize(qreq).ok());
  v1::DequantizeRequest dreq;
  dreq.set_name("xq");
  auto dq = client().Dequantize(dreq);
  ASSERT_TRUE(dq.ok()) << dq.status();
  EXPECT_EQ(dq->output().dtype(), v1::FLOAT16);
}

TEST_F(ServerTest, RopeAcceptsInlineTablesAndOffsets) {
  const int64_t s = 4, d = 4;
  std::vector<float> cos(16 * 2), sin(16 * 2);
  for (int p = 0; p < 16; ++p)
    for (int i = 0; i < 2; ++i) {
      cos[p * 2 + i] = std::cos(p * 0.1 * (i + 1));
      sin[p * 2 + i] = std::sin(p * 0.1 * (i + 1));
    }
  auto q = RandomFloats(s * d, 30);
  v1::RopeRequest req;
  *req.mutable_q() = InlineRef(MakeFloatTensor(DType::kFloat32, {1, s, 1, d}, q));
  *req.mutable_cos() = InlineRef(MakeFloatTensor(DType::kFloat32, {16, 2}, cos));
  *req.mutable_sin() = InlineRef(MakeFloatTensor(DType::kFloat32, {16, 2}, sin));
  req.set_position_offset(12);
  auto resp = client().Rope(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  std::vector<double> want(q.size());
  for (int si = 0; si < s; ++si)
    for (int i = 0; i < 2; ++i) {
      const int p = 12 + si;
      const double c = cos[p * 2 + i], sn = sin[p * 2 + i];
      want[si * d + 2 * i] = q[si * d + 2 * i] * c - q[si * d + 2 * i + 1] * sn;
      want[si * d + 2 * i + 1] = q[si * d + 2 * i] * sn + q[si * d + 2 * i + 1] * c;
    }
  ExpectClose(Floats(resp->q()), want, 1e-5, "rope offset");
  EXPECT_FALSE(resp->has_k());
  req.set_position_offset(13);  // 13 + 3 = 16 is outside the 16-entry table
  EXPECT_EQ(client().Rope(req).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerTest, StreamAnswersEveryRequestAndSurvivesErrors) {
  auto stream = client().OpenStream();
  const std::vector<float> g = RandomFloats(8, 40);
  for (uint64_t id = 1; id <= 20; ++id) {
    v1::StreamRequest req;
    req.set_id(id);
    auto* op = req.mutable_swiglu();
    *op->mutable_gate() = InlineRef(MakeFloatTensor(DType::kFloat32, {8}, g));
    // Every fifth request is malformed: up has the wrong shape.
    *op->mutable_up() = InlineRef(MakeFloatTensor(DType::kFloat32, {id % 5 == 0 ? 7 : 8},
                                                  std::vector<float>(id % 5 == 0 ? 7 : 8, 1.0f)));
    ASSERT_TRUE(stream->Write(req));
  }
  std::set<uint64_t> ok_ids, failed_ids;
  v1::StreamResponse resp;
  for (int i = 0; i < 20 && stream->Read(&resp); ++i) {
    if (resp.code() == 0) {
      ok_ids.insert(resp.id());
      EXPECT_EQ(resp.swiglu().output().shape(0), 8);
    } else {
      failed_ids.insert(resp.id());
      EXPECT_EQ(resp.code(), int(grpc::StatusCode::INVALID_ARGUMENT));
      EXPECT_NE(resp.message().find("up"), std::string::npos) << resp.message();
    }
  }
  EXPECT_EQ(ok_ids.size(), 16u);
  EXPECT_EQ(failed_ids, (std::set<uint64_t>{5, 10, 15, 20}));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerTest, LoadTensorsReadsSafetensorsUnderModelDir) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("accel_load_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  // A two-tensor file: w [2, 3] F32 and norm [3] F32.
  const std::string header = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                             R"("norm":{"dtype":"F32","shape":[3],"data_offsets":[24,36]}})";
  std::vector<float> payload = {1, -2, 3, -4, 5, -6, 0.5f, 0.25f, 0.125f};
  {
    std::ofstream out(dir / "model.safetensors", std::ios::binary);
    uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header;
    out.write(reinterpret_cast<const char*>(payload.data()), payload.size() * 4);
  }
  auto options = LocalOptions();
  options.model_dir = dir.string();
  StartServer(options);
  auto loaded = client().Load("model.safetensors", "m.", {}, DType::kBFloat16, true);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  auto w = client().Get("m.w");
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(w->info.quantized()) << "2-D weights are stored as int8";
  auto norm = client().Get("m.norm");
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->dtype(), DType::kBFloat16);
  EXPECT_EQ(Floats(norm->ToTensor()), (std::vector<float>{0.5f, 0.25f, 0.125f}));
  EXPECT_EQ(client().Load("../etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Load("missing.safetensors").status().code(), absl::StatusCode::kNotFound);
  // A cast to an integer dtype is refused naming dtype; nothing is loaded.
  const absl::Status cast = client().Load("model.safetensors", "i.", {}, DType::kInt8).status();
  EXPECT_EQ(cast.code(), absl::StatusCode::kInvalidArgument) << cast;
  EXPECT_NE(cast.message().find("dtype"), std::string::npos) << cast;
  EXPECT_EQ(client().List()->size(), 2u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace accel::testing
