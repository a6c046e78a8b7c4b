// Batching never changes a result: the same random requests (RmsNorm with
// and without a residual, SwiGlu, Rope with offsets and positions, per-row
// Quantize and Dequantize, every float dtype) sent concurrently to a server
// that batches them, unary and over the Stream RPC, return byte-for-byte
// the responses of a server with --batching=false. The batching server
// waits up to 20 ms for batches to fill, so the concurrent requests really
// do share launches; the test checks that from its metrics.
#include <atomic>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/stream_reactor.h"
#include "tests/integration/metrics_scrape.h"
#include "tests/integration/server_fixture.h"

namespace accel::testing {
namespace {

using kernels::DType;

// accel_batch_requests_{sum,count}{op="<op>"}.
std::pair<double, double> BatchRequests(const std::string& metrics, const std::string& op) {
  double sum = 0, count = 0;
  const std::string label = "{op=\"" + op + "\"} ";
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    for (auto [prefix, out] : {std::pair{"accel_batch_requests_sum", &sum},
                               std::pair{"accel_batch_requests_count", &count}}) {
      const std::string head = std::string(prefix) + label;
      if (absl::StartsWith(line, head)) {
        EXPECT_TRUE(absl::SimpleAtod(line.substr(head.size()), out)) << line;
      }
    }
  }
  return {sum, count};
}

// One request of any batchable op, as a stream message (the unary request
// is its op field).
std::vector<v1::StreamRequest> RandomRequests(uint32_t seed) {
  std::mt19937 rng(seed);
  auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto floats = [&rng](DType dtype, const kernels::Shape& shape, float scale) {
    return MakeFloatTensor(dtype, shape,
                           RandomFloats(static_cast<size_t>(kernels::NumElements(shape)),
                                        static_cast<uint32_t>(rng()), scale));
  };
  std::vector<v1::StreamRequest> requests;
  uint64_t id = 0;
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (int i = 0; i < 6; ++i) {
      {  // RmsNorm, with a residual (returned) on odd i
        v1::StreamRequest r;
        r.set_id(id++);
        v1::RmsNormRequest& op = *r.mutable_rms_norm();
        const kernels::Shape shape{uniform(1, 5), 320};
        *op.mutable_input() = InlineRef(floats(dtype, shape, 3.0f));
        op.mutable_weight()->set_name("norm.weight");
        if (i % 2 == 1) {
          *op.mutable_residual() = InlineRef(floats(dtype, shape, 3.0f));
          op.set_return_residual(true);
        }
        requests.push_back(r);
      }
      {  // SwiGlu
        v1::StreamRequest r;
        r.set_id(id++);
        const kernels::Shape shape{uniform(1, 4), 200};
        *r.mutable_swiglu()->mutable_gate() = InlineRef(floats(dtype, shape, 4.0f));
        *r.mutable_swiglu()->mutable_up() = InlineRef(floats(dtype, shape, 4.0f));
        requests.push_back(r);
      }
      {  // Rope: GQA, offsets or positions of either rank and dtype
        v1::StreamRequest r;
        r.set_id(id++);
        v1::RopeRequest& op = *r.mutable_rope();
        const int64_t b = uniform(1, 2), s = uniform(1, 4);
        *op.mutable_q() = InlineRef(floats(dtype, {b, s, 4, 64}, 2.0f));
        *op.mutable_k() = InlineRef(floats(dtype, {b, s, 2, 64}, 2.0f));
        op.set_cache("rope");
        op.set_style(i % 3 == 0 ? v1::HALF_SPLIT : v1::INTERLEAVED);
        if (i % 2 == 0) {
          op.set_position_offset(uniform(0, 100));
        } else {
          const bool per_batch = uniform(0, 1) == 1;
          const int64_t n = per_batch ? b * s : s;
          std::vector<int32_t> positions(static_cast<size_t>(n));
          for (int32_t& p : positions) p = uniform(0, 127);
          std::string bytes(reinterpret_cast<const char*>(positions.data()), n * 4);
          *op.mutable_positions() =
              InlineRef(DType::kInt32, per_batch ? kernels::Shape{b, s} : kernels::Shape{s},
                        std::move(bytes));
        }
        requests.push_back(r);
      }
      {  // Quantize per row
        v1::StreamRequest r;
        r.set_id(id++);
        *r.mutable_quantize()->mutable_input() =
            InlineRef(floats(dtype, {uniform(1, 4), 96}, 5.0f));
        r.mutable_quantize()->set_granularity(v1::PER_ROW);
        requests.push_back(r);
      }
    }
    // Linear on the int8 weight, with and without a bias (batched on a GPU
    // only: kernels::LinearBatchInvariantRows).
    for (int i = 0; i < 6; ++i) {
      v1::StreamRequest r;
      r.set_id(id++);
      v1::LinearRequest& op = *r.mutable_linear();
      *op.mutable_input() = InlineRef(floats(dtype, {uniform(1, 5), 64}, 2.0f));
      op.set_weight("linear.w");
      if (i % 2 == 1) op.set_bias("linear.b");
      requests.push_back(r);
    }
    // Ffn on int8 weights (batched on a GPU only, like Linear).
    for (int i = 0; i < 4; ++i) {
      v1::StreamRequest r;
      r.set_id(id++);
      v1::FfnRequest& op = *r.mutable_ffn();
      *op.mutable_input() = InlineRef(floats(dtype, {uniform(1, 4), 64}, 2.0f));
      op.set_w_gate("ffn.gate");
      op.set_w_up("ffn.up");
      op.set_w_down("ffn.down");
      requests.push_back(r);
    }
    // Dequantize per row (int8 values, fp32 scales) to this dtype.
    for (int i = 0; i < 6; ++i) {
      v1::StreamRequest r;
      r.set_id(id++);
      const int64_t rows = uniform(1, 4);
      std::string values(static_cast<size_t>(rows * 80), '\0');
      for (char& v : values) v = static_cast<char>(uniform(-127, 127));
      std::vector<float> scales(static_cast<size_t>(rows));
      for (float& s : scales) s = 0.001f * static_cast<float>(uniform(1, 1000));
      *r.mutable_dequantize()->mutable_values() = InlineRef(DType::kInt8, {rows, 80}, values);
      *r.mutable_dequantize()->mutable_scales() =
          InlineRef(MakeFloatTensor(DType::kFloat32, {rows}, scales));
      r.mutable_dequantize()->set_dtype(static_cast<v1::DType>(dtype));
      requests.push_back(r);
    }
  }
  return requests;
}

// Runs one request as a unary call; the response as a StreamResponse.
v1::StreamResponse CallUnary(Client& client, const v1::StreamRequest& r) {
  v1::StreamResponse out;
  out.set_id(r.id());
  absl::Status status;
  auto take = [&](auto result, auto* field) {
    status = result.status();
    if (result.ok()) *field = *std::move(result);
  };
  switch (r.op_case()) {
    case v1::StreamRequest::kRmsNorm:
      take(client.RmsNorm(r.rms_norm()), out.mutable_rms_norm());
      break;
    case v1::StreamRequest::kSwiglu:
      take(client.SwiGlu(r.swiglu()), out.mutable_swiglu());
      break;
    case v1::StreamRequest::kRope:
      take(client.Rope(r.rope()), out.mutable_rope());
      break;
    case v1::StreamRequest::kQuantize:
      take(client.Quantize(r.quantize()), out.mutable_quantize());
      break;
    case v1::StreamRequest::kDequantize:
      take(client.Dequantize(r.dequantize()), out.mutable_dequantize());
      break;
    case v1::StreamRequest::kLinear:
      take(client.Linear(r.linear()), out.mutable_linear());
      break;
    case v1::StreamRequest::kFfn:
      take(client.Ffn(r.ffn()), out.mutable_ffn());
      break;
    default:
      ADD_FAILURE() << "unexpected op";
  }
  out.set_code(static_cast<int>(status.code()));
  out.set_message(std::string(status.message()));
  return out;
}

class BatchingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    logging::SetMinSeverity(logging::Severity::kError);
    server::ServerOptions batched = LocalOptions();
    batched.max_queue_delay_us = 20000;
    server::ServerOptions unbatched = LocalOptions();
    unbatched.batching = false;
    for (auto* options : {&batched, &unbatched}) {
      auto started = server::Server::Start(*options);
      ASSERT_TRUE(started.ok()) << started.status();
      servers_.push_back(std::move(*started));
      clients_.push_back(std::make_unique<Client>(servers_.back()->grpc_target()));
      Client& client = *clients_.back();
      ASSERT_TRUE(client.WaitForConnected(std::chrono::seconds(10)).ok());
      ASSERT_TRUE(client
                      .Put("norm.weight",
                           MakeFloatTensor(DType::kBFloat16, {320}, RandomFloats(320, 7, 2.0f)))
                      .ok());
      v1::BuildRopeCacheRequest cache;
      cache.set_name("rope");
      cache.set_max_seq_len(256);
      cache.set_head_dim(64);
      ASSERT_TRUE(client.BuildRopeCache(cache).ok());
      ASSERT_TRUE(
          client
              .Put("linear.w", MakeFloatTensor(DType::kFloat32, {48, 64}, RandomFloats(48 * 64, 5)))
              .ok());
      for (auto [name, rows, cols] : {std::tuple{"ffn.gate", 96, 64}, std::tuple{"ffn.up", 96, 64},
                                      std::tuple{"ffn.down", 64, 96}}) {
        ASSERT_TRUE(client
                        .Put(name, MakeFloatTensor(DType::kFloat32, {rows, cols},
                                                   RandomFloats(rows * cols, rows + cols, 0.2f)))
                        .ok());
      }
      for (const char* name : {"linear.w", "ffn.gate", "ffn.up", "ffn.down"}) {
        v1::QuantizeWeightRequest quantize;
        quantize.set_source(name);
        ASSERT_TRUE(client.QuantizeWeight(quantize).ok()) << name;
      }
      ASSERT_TRUE(
          client.Put("linear.b", MakeFloatTensor(DType::kBFloat16, {48}, RandomFloats(48, 6)))
              .ok());
    }
    auto info = clients_[0]->ServerInfo();
    ASSERT_TRUE(info.ok()) << info.status();
    cuda_ = info->backend() == "cuda";
  }
  void TearDown() override {
    clients_.clear();
    for (auto& server : servers_) server->Shutdown(std::chrono::milliseconds(1000));
  }

  Client& batched() { return *clients_[0]; }
  Client& unbatched() { return *clients_[1]; }

  // The batched server's device phases of one RmsNorm call: `request` runs
  // on both servers (their answers must be the same bytes) and the batched
  // one's accel_compute_duration_seconds counts are read back.
  struct RmsNormPhases {
    bool cuda = false;
    std::optional<double> kernel, h2d, d2h;
  };
  void RunRmsNormOnBoth(const v1::RmsNormRequest& request, RmsNormPhases* phases) {
    auto batched_response = batched().RmsNorm(request);
    ASSERT_TRUE(batched_response.ok()) << batched_response.status();
    auto reference = unbatched().RmsNorm(request);
    ASSERT_TRUE(reference.ok()) << reference.status();
    EXPECT_TRUE(batched_response->SerializeAsString() == reference->SerializeAsString());
    auto info = batched().ServerInfo();
    ASSERT_TRUE(info.ok()) << info.status();
    const std::string metrics = ScrapeMetrics(servers_[0]->metrics_port());
    auto phase = [&](const std::string& name) {
      return Sample(metrics,
                    "accel_compute_duration_seconds_count{op=\"rms_norm\",phase=\"" + name + "\"}");
    };
    *phases = {info->backend() == "cuda", phase("kernel"), phase("h2d"), phase("d2h")};
  }

  // The unbatched server's answers, one call at a time.
  std::map<uint64_t, std::string> Reference(const std::vector<v1::StreamRequest>& requests) {
    std::map<uint64_t, std::string> want;
    for (const v1::StreamRequest& r : requests) {
      const v1::StreamResponse response = CallUnary(unbatched(), r);
      EXPECT_EQ(response.code(), 0) << "request " << r.id() << ": " << response.message();
      want[r.id()] = response.SerializeAsString();
    }
    return want;
  }

  // Every op of kOps shared some launch; Linear and Ffn did on a GPU only
  // (on the CPU their results may depend on the row count).
  void ExpectBatched() {
    const std::string metrics = ScrapeMetrics(servers_[0]->metrics_port());
    for (const std::string& op : kOps) {
      const auto [requests, launches] = BatchRequests(metrics, op);
      EXPECT_GT(requests, launches) << op << ": no launch held more than one request";
    }
    for (const std::string op : {"linear", "ffn"}) {
      const auto [requests, launches] = BatchRequests(metrics, op);
      EXPECT_GT(launches, 0) << op;
      if (cuda_) {
        EXPECT_GT(requests, launches) << op << ": no launch held more than one request";
      } else {
        EXPECT_EQ(requests, launches) << op << ": batched on the CPU";
      }
    }
  }

  static inline const std::vector<std::string> kOps = {"rms_norm", "swiglu", "rope", "quantize",
                                                       "dequantize"};
  bool cuda_ = false;
  std::vector<std::unique_ptr<server::Server>> servers_;
  std::vector<std::unique_ptr<Client>> clients_;
};

TEST_F(BatchingTest, ConcurrentUnaryRequestsGiveTheUnbatchedBytes) {
  const std::vector<v1::StreamRequest> requests = RandomRequests(/*seed=*/1234);
  const std::map<uint64_t, std::string> want = Reference(requests);

  // All at once, one thread per request, so they meet in the queues.
  std::vector<v1::StreamResponse> got(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { got[i] = CallUnary(batched(), requests[i]); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(got[i].code(), 0) << "seed 1234, request " << i << ": " << got[i].message();
    EXPECT_TRUE(got[i].SerializeAsString() == want.at(requests[i].id()))
        << "seed 1234, request " << i << " (" << requests[i].ShortDebugString().substr(0, 80)
        << "...) differs from the unbatched bytes";
  }
  ExpectBatched();
}

TEST_F(BatchingTest, StreamedRequestsGiveTheUnbatchedBytes) {
  const std::vector<v1::StreamRequest> requests = RandomRequests(/*seed=*/99);
  const std::map<uint64_t, std::string> want = Reference(requests);

  auto stream = batched().OpenStream();
  for (const v1::StreamRequest& r : requests) ASSERT_TRUE(stream->Write(r));
  std::map<uint64_t, std::string> got;
  v1::StreamResponse response;
  while (got.size() < requests.size() && stream->Read(&response)) {
    EXPECT_EQ(response.code(), 0) << "request " << response.id() << ": " << response.message();
    got[response.id()] = response.SerializeAsString();
  }
  ASSERT_TRUE(stream->Finish().ok());
  ASSERT_EQ(got.size(), requests.size());
  for (const auto& [id, bytes] : want) {
    EXPECT_TRUE(got[id] == bytes) << "seed 99, request " << id
                                  << " differs from the unbatched bytes";
  }
  ExpectBatched();
}

TEST_F(BatchingTest, EveryLaunchRecordsTheComputePhasesOfItsBackend) {
  const std::vector<v1::StreamRequest> requests = RandomRequests(/*seed=*/7);
  std::vector<std::thread> threads;
  for (const v1::StreamRequest& r : requests) {
    threads.emplace_back([&, r] { EXPECT_EQ(CallUnary(batched(), r).code(), 0); });
  }
  for (std::thread& t : threads) t.join();
  auto info = batched().ServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  const bool cuda = info->backend() == "cuda";
  const std::string metrics = ScrapeMetrics(servers_[0]->metrics_port());
  // Ops whose launches cannot fail after the kernel ran (Quantize can: NaN).
  for (const std::string op : {"rms_norm", "swiglu", "rope", "dequantize"}) {
    const auto [requests_sum, launches] = BatchRequests(metrics, op);
    ASSERT_GT(launches, 0) << op;
    auto phase = [&](const std::string& name) {
      return Sample(metrics, "accel_compute_duration_seconds_count{op=\"" + op + "\",phase=\"" +
                                 name + "\"}");
    };
    // One kernel sample per launch: from CUDA events on a GPU, from the
    // host clock on the CPU.
    EXPECT_EQ(phase("kernel"), launches) << op;
    if (cuda) {
      // Launches whose tensors are all small go zero-copy (no copy phase).
      EXPECT_LE(phase("h2d").value_or(0), launches) << op;
      EXPECT_LE(phase("d2h").value_or(0), launches) << op;
    } else {
      EXPECT_EQ(phase("h2d"), std::nullopt) << op << ": no copies on the CPU";
      EXPECT_EQ(phase("d2h"), std::nullopt) << op;
    }
  }
}

TEST_F(BatchingTest, ALargeRequestRecordsItsCopiesOnAGpu) {
  // 512 x 320 fp32: 640 KiB each way, past the zero-copy limit (512 KiB).
  v1::RmsNormRequest request;
  *request.mutable_input() =
      InlineRef(MakeFloatTensor(DType::kFloat32, {512, 320}, RandomFloats(512 * 320, 3, 2.0f)));
  request.mutable_weight()->set_name("norm.weight");
  RmsNormPhases phases;
  ASSERT_NO_FATAL_FAILURE(RunRmsNormOnBoth(request, &phases));
  EXPECT_EQ(phases.kernel, 1);
  if (phases.cuda) {
    EXPECT_EQ(phases.h2d, 1);
    EXPECT_EQ(phases.d2h, 1);
  } else {
    EXPECT_EQ(phases.h2d, std::nullopt);
  }
}

// A weight read once per row counts once per row against the zero-copy
// limit: 60 rows of 4096 bf16 (480 KiB) stay in pinned memory, but their
// inline fp32 weight (16 KiB, read 60 times: 960 KiB over PCIe) is copied.
TEST_F(BatchingTest, AnInlineWeightReadByEveryRowIsCopiedOnAGpu) {
  v1::RmsNormRequest request;
  *request.mutable_input() =
      InlineRef(MakeFloatTensor(DType::kBFloat16, {60, 4096}, RandomFloats(60 * 4096, 11, 2.0f)));
  *request.mutable_weight() =
      InlineRef(MakeFloatTensor(DType::kFloat32, {4096}, RandomFloats(4096, 12, 2.0f)));
  RmsNormPhases phases;
  ASSERT_NO_FATAL_FAILURE(RunRmsNormOnBoth(request, &phases));
  EXPECT_EQ(phases.kernel, 1);
  if (phases.cuda) {
    EXPECT_EQ(phases.h2d, 1) << "the weight is copied";
    EXPECT_EQ(phases.d2h.value_or(0), 0) << "the 480 KiB output stays zero-copy";
  } else {
    EXPECT_EQ(phases.h2d, std::nullopt);
  }
}

// Back-pressure: a client that writes and never reads gets at most
// StreamReactor::kMaxInFlight of its messages read past the ones whose
// answers the transport took (250 KB answers: a few); the rest wait in the
// client and the flow-control window, not in the server. Reading then
// releases every message, none lost.
TEST_F(BatchingTest, AStreamThatIsNotReadStopsBeingRead) {
  constexpr int kMessages = 300;
  v1::StreamRequest request;
  *request.mutable_rms_norm()->mutable_input() =
      InlineRef(MakeFloatTensor(DType::kFloat32, {200, 320}, RandomFloats(200 * 320, 11, 2.0f)));
  request.mutable_rms_norm()->mutable_weight()->set_name("norm.weight");
  auto stream = batched().OpenStream();
  std::atomic<int> written{0};
  std::thread writer([&] {
    v1::StreamRequest r = request;
    for (int i = 0; i < kMessages; ++i) {
      r.set_id(static_cast<uint64_t>(i));
      if (!stream->Write(r)) return;
      written.fetch_add(1);
    }
  });
  // Wait until the writer is blocked by flow control (no progress for 300 ms).
  int seen = -1;
  for (int i = 0; i < 100 && written.load() != seen; ++i) {
    seen = written.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  const std::string metrics = ScrapeMetrics(servers_[0]->metrics_port());
  const double answered =
      Sample(metrics, "accel_request_duration_seconds_count{method=\"Stream\"}").value_or(0);
  EXPECT_LT(written.load(), kMessages) << "the writer never blocked";
  EXPECT_GE(answered, 1);
  EXPECT_LE(answered, server::StreamReactor::kMaxInFlight + 32)
      << "the server read past its bound: " << answered << " of " << written.load();
  std::set<uint64_t> ids;
  v1::StreamResponse response;
  while (static_cast<int>(ids.size()) < kMessages && stream->Read(&response)) {
    EXPECT_EQ(response.code(), 0) << response.message();
    ids.insert(response.id());
  }
  writer.join();
  EXPECT_EQ(static_cast<int>(ids.size()), kMessages);
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(BatchingTest, ABadRequestFailsAloneInsideABatch) {
  // Quantize rejects a NaN: the batch falls back to running each request
  // alone, so only the bad one fails.
  std::vector<v1::QuantizeRequest> requests(4);
  for (size_t i = 0; i < requests.size(); ++i) {
    std::vector<float> values = RandomFloats(2 * 64, static_cast<uint32_t>(i));
    if (i == 2) values[5] = std::nanf("");
    *requests[i].mutable_input() = InlineRef(MakeFloatTensor(DType::kFloat32, {2, 64}, values));
    requests[i].set_granularity(v1::PER_ROW);
  }
  std::vector<absl::Status> status(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { status[i] = batched().Quantize(requests[i]).status(); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    if (i == 2) {
      EXPECT_EQ(status[i].code(), absl::StatusCode::kInvalidArgument) << status[i];
    } else {
      EXPECT_TRUE(status[i].ok()) << i << ": " << status[i];
    }
  }
}

TEST_F(BatchingTest, AnExpiredRequestIsDroppedBeforeItsLaunch) {
  // The batcher waits 20 ms for a batch to fill; a 1 ms deadline passes
  // while the request is queued.
  ClientOptions options;
  options.default_timeout = std::chrono::milliseconds(1);
  Client hurried(servers_[0]->grpc_target(), options);
  v1::SwiGluRequest request;
  *request.mutable_gate() = InlineRef(MakeFloatTensor(DType::kFloat32, {1, 8}, RandomFloats(8, 1)));
  *request.mutable_up() = InlineRef(MakeFloatTensor(DType::kFloat32, {1, 8}, RandomFloats(8, 2)));
  EXPECT_EQ(hurried.SwiGlu(request).status().code(), absl::StatusCode::kDeadlineExceeded);
  // The server stays healthy and answers the next caller.
  EXPECT_TRUE(batched().SwiGlu(request).ok());
}

}  // namespace
}  // namespace accel::testing
