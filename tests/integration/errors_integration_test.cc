// Every error code of API.md's table, returned where it says, with a message
// that names the field; and no failed call changes a resident tensor.
#include <future>
#include <map>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "metrics_scrape.h"
#include "server_fixture.h"

namespace accel::testing {
namespace {

using kernels::DType;
using ::testing::HasSubstr;

class ErrorsTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    ASSERT_TRUE(client().Put("w", MakeFloatTensor(DType::kFloat32, {4}, {1, 2, 3, 4})).ok());
    v1::QuantizeRequest q;
    *q.mutable_input() =
        InlineRef(MakeFloatTensor(DType::kFloat32, {2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}));
    q.set_output_name("wq");
    ASSERT_TRUE(client().Quantize(q).ok());
  }

  v1::RmsNormRequest GoodRmsNorm() {
    v1::RmsNormRequest req;
    *req.mutable_input() =
        InlineRef(MakeFloatTensor(DType::kFloat32, {2, 4}, std::vector<float>(8, 1)));
    *req.mutable_weight() = NamedRef("w");
    return req;
  }

  // Stores fp32 weights g, u [inter, h] and d [h, inter] and returns an Ffn
  // of m rows over them: slow enough on the CPU to keep a worker busy.
  v1::FfnRequest SlowFfn(int64_t h, int64_t inter, int64_t m) {
    EXPECT_TRUE(
        client()
            .Put("g", MakeFloatTensor(DType::kFloat32, {inter, h}, RandomFloats(inter * h, 1)))
            .ok());
    EXPECT_TRUE(
        client()
            .Put("u", MakeFloatTensor(DType::kFloat32, {inter, h}, RandomFloats(inter * h, 2)))
            .ok());
    EXPECT_TRUE(
        client()
            .Put("d", MakeFloatTensor(DType::kFloat32, {h, inter}, RandomFloats(inter * h, 3)))
            .ok());
    v1::FfnRequest req;
    *req.mutable_input() =
        InlineRef(MakeFloatTensor(DType::kFloat32, {m, h}, RandomFloats(m * h, 4)));
    req.set_w_gate("g");
    req.set_w_up("u");
    req.set_w_down("d");
    return req;
  }

  // The store is exactly as SetUp left it.
  void ExpectStoreIntact() {
    auto w = client().Get("w");
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(*TensorToFloats(w->ToTensor()), (std::vector<float>{1, 2, 3, 4}));
    auto listed = client().List();
    ASSERT_TRUE(listed.ok());
    EXPECT_EQ(listed->size(), 2u);
  }
};

void ExpectError(const absl::Status& status, absl::StatusCode code, const std::string& field) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(field)) << status;
}

TEST_F(ErrorsTest, InvalidArgumentNamesTheField) {
  auto req = GoodRmsNorm();
  req.mutable_input()->mutable_value()->set_dtype(v1::DTYPE_UNSPECIFIED);
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "input.dtype");

  req = GoodRmsNorm();
  req.mutable_input()->mutable_value()->set_dtype(static_cast<v1::DType>(99));
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "input.dtype");

  req = GoodRmsNorm();
  req.mutable_input()->mutable_value()->mutable_data()->append("xy");
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "input.data");

  req = GoodRmsNorm();
  req.mutable_input()->mutable_value()->set_shape(1, -4);
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "input.shape");

  req = GoodRmsNorm();
  *req.mutable_weight() = InlineRef(MakeFloatTensor(DType::kFloat32, {3}, {1, 2, 3}));
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "weight");

  req = GoodRmsNorm();
  req.set_eps(-1.0f);
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "eps");
  req.set_eps(std::nanf(""));
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "eps");

  req = GoodRmsNorm();
  req.clear_input();
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kInvalidArgument, "input");

  v1::BuildRopeCacheRequest cache;
  cache.set_name("c");
  cache.set_max_seq_len(16);
  cache.set_head_dim(7);
  ExpectError(client().BuildRopeCache(cache).status(), absl::StatusCode::kInvalidArgument,
              "head_dim");

  cache.set_head_dim(4);
  ASSERT_TRUE(client().BuildRopeCache(cache).ok());
  v1::RopeRequest rope;
  *rope.mutable_q() =
      InlineRef(MakeFloatTensor(DType::kFloat32, {1, 2, 1, 4}, std::vector<float>(8, 1)));
  rope.set_cache("c");
  rope.set_position_offset(15);  // positions 15, 16: 16 is outside
  ExpectError(client().Rope(rope).status(), absl::StatusCode::kInvalidArgument, "position");
  ASSERT_TRUE(client().Delete("c").ok());

  ExpectError(client().Put("../escape", MakeFloatTensor(DType::kFloat32, {1}, {1})).status(),
              absl::StatusCode::kInvalidArgument, "name");
  ExpectError(client().Put("", MakeFloatTensor(DType::kFloat32, {1}, {1})).status(),
              absl::StatusCode::kInvalidArgument, "name");
  ExpectError(client().Put("has space", MakeFloatTensor(DType::kFloat32, {1}, {1})).status(),
              absl::StatusCode::kInvalidArgument, "name");

  v1::QuantizeRequest q;
  *q.mutable_input() = InlineRef(MakeFloatTensor(DType::kFloat32, {2}, {1, INFINITY}));
  ExpectError(client().Quantize(q).status(), absl::StatusCode::kInvalidArgument, "input");
  ExpectStoreIntact();
}

// The checks each op makes before it batches or runs, one request each:
// every refusal is INVALID_ARGUMENT and names its field.
TEST_F(ErrorsTest, EveryRequestCheckNamesItsField) {
  const auto code = absl::StatusCode::kInvalidArgument;
  {  // RmsNorm: a residual output without a residual; one name for two outputs
    auto req = GoodRmsNorm();
    req.set_return_residual(true);
    ExpectError(client().RmsNorm(req).status(), code, "return_residual");
    req = GoodRmsNorm();
    req.set_residual_output_name("r");
    ExpectError(client().RmsNorm(req).status(), code, "residual_output_name");
    req = GoodRmsNorm();
    *req.mutable_residual() =
        InlineRef(MakeFloatTensor(DType::kFloat32, {2, 4}, std::vector<float>(8, 1)));
    req.set_output_name("same");
    req.set_residual_output_name("same");
    ExpectError(client().RmsNorm(req).status(), code, "residual_output_name");
  }
  {  // Linear: no weight name
    v1::LinearRequest lin;
    *lin.mutable_input() = InlineRef(MakeFloatTensor(DType::kFloat32, {1, 4}, {1, 2, 3, 4}));
    ExpectError(client().Linear(lin).status(), code, "weight");
  }
  {  // Rope: k_output_name without k, a bad style, cache and tables both,
     // one table without the other, positions with an offset
    v1::BuildRopeCacheRequest cache;
    cache.set_name("rc");
    cache.set_max_seq_len(8);
    cache.set_head_dim(4);
    ASSERT_TRUE(client().BuildRopeCache(cache).ok());
    auto good = [] {
      v1::RopeRequest r;
      *r.mutable_q() =
          InlineRef(MakeFloatTensor(DType::kFloat32, {1, 2, 1, 4}, std::vector<float>(8, 1)));
      r.set_cache("rc");
      return r;
    };
    ASSERT_TRUE(client().Rope(good()).ok());
    auto r = good();
    r.set_k_output_name("k_out");
    ExpectError(client().Rope(r).status(), code, "k_output_name");
    r = good();
    r.set_style(static_cast<v1::RopeStyle>(7));
    ExpectError(client().Rope(r).status(), code, "style");
    r = good();
    *r.mutable_cos() = InlineRef(MakeFloatTensor(DType::kFloat32, {8, 2}, std::vector<float>(16)));
    ExpectError(client().Rope(r).status(), code, "cache");
    r = good();
    r.clear_cache();
    *r.mutable_cos() = InlineRef(MakeFloatTensor(DType::kFloat32, {8, 2}, std::vector<float>(16)));
    ExpectError(client().Rope(r).status(), code, "sin");
    r = good();
    const int64_t positions[2] = {0, 1};
    *r.mutable_positions() =
        InlineRef(DType::kInt64, {2},
                  std::string(reinterpret_cast<const char*>(positions), sizeof(positions)));
    r.set_position_offset(3);
    ExpectError(client().Rope(r).status(), code, "position_offset");
  }
  {  // Quantize: an unknown granularity; Dequantize: a name and values both
    v1::QuantizeRequest q;
    *q.mutable_input() = InlineRef(MakeFloatTensor(DType::kFloat32, {2, 2}, {1, 2, 3, 4}));
    q.set_granularity(static_cast<v1::Granularity>(5));
    ExpectError(client().Quantize(q).status(), code, "granularity");
    v1::DequantizeRequest dq;
    dq.set_name("wq");
    *dq.mutable_values() = InlineRef(DType::kInt8, {2, 4}, std::string(8, '\0'));
    ExpectError(client().Dequantize(dq).status(), code, "name");
  }
  {  // QuantizeWeight: no source; a source that is not 2-D
    v1::QuantizeWeightRequest qw;
    ExpectError(client().QuantizeWeight(qw).status(), code, "source");
    qw.set_source("w");  // [4]
    ExpectError(client().QuantizeWeight(qw).status(), code, "source");
  }
  {  // GetTensor and DeleteTensor without a name; a negative chunk size
    grpc::ClientContext get_context;
    v1::GetTensorRequest get;
    auto reader = client().stub().GetTensor(&get_context, get);
    v1::GetTensorResponse chunk;
    while (reader->Read(&chunk)) {
    }
    grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("name"));
    grpc::ClientContext negative_context;
    get.set_name("w");
    get.set_chunk_bytes(-1);
    reader = client().stub().GetTensor(&negative_context, get);
    while (reader->Read(&chunk)) {
    }
    status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("chunk_bytes"));
    ExpectError(client().Delete("").status(), code, "name");
  }
  ASSERT_TRUE(client().Delete("rc").ok());
  ExpectStoreIntact();
}

// The server's own checks of an upload, which Client::Put never lets
// through: more bytes than declared, fewer, and an empty stream. Nothing is
// stored and no quota is left reserved.
TEST_F(ErrorsTest, PutTensorRefusesAWrongUpload) {
  auto upload = [&](std::vector<v1::PutTensorRequest> messages) {
    grpc::ClientContext context;
    v1::TensorInfo info;
    auto writer = client().stub().PutTensor(&context, &info);
    for (const auto& m : messages) writer->Write(m);
    writer->WritesDone();
    return writer->Finish();
  };
  v1::PutTensorRequest first;
  first.set_name("up");
  first.set_dtype(v1::FLOAT32);
  first.add_shape(2);
  first.set_data(std::string(4, 'x'));  // 4 of the 8 bytes
  v1::PutTensorRequest rest;
  rest.set_data(std::string(8, 'y'));  // 12 in all
  grpc::Status status = upload({first, rest});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("more than the declared 8 bytes"));
  status = upload({first});  // 4 of 8
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("received 4"));
  status = upload({});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("empty stream"));
  ExpectStoreIntact();
  // The refused uploads left no reservation behind: the full 8 bytes go in.
  rest.set_data(std::string(4, 'y'));
  EXPECT_TRUE(upload({first, rest}).ok());
  EXPECT_EQ(client().Get("up")->data, "xxxxyyyy");
}

// A stream message with no op is answered with INVALID_ARGUMENT naming
// "op", and the stream goes on.
TEST_F(ErrorsTest, AStreamMessageWithoutAnOpIsAnsweredAndTheStreamGoesOn) {
  auto stream = client().OpenStream();
  v1::StreamRequest empty;
  empty.set_id(1);
  ASSERT_TRUE(stream->Write(empty));
  v1::StreamRequest good;
  good.set_id(2);
  *good.mutable_rms_norm() = GoodRmsNorm();
  ASSERT_TRUE(stream->Write(good));
  std::map<uint64_t, v1::StreamResponse> answers;
  v1::StreamResponse resp;
  for (int i = 0; i < 2 && stream->Read(&resp); ++i) answers[resp.id()] = resp;
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[1].code(), int(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(answers[1].message(), HasSubstr("op"));
  EXPECT_EQ(answers[2].code(), 0) << answers[2].message();
  EXPECT_TRUE(answers[2].has_rms_norm());
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ErrorsTest, NotFoundForMissingNames) {
  auto req = GoodRmsNorm();
  *req.mutable_weight() = NamedRef("nope");
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kNotFound, "weight");
  v1::RopeRequest rope;
  *rope.mutable_q() = InlineRef(MakeFloatTensor(DType::kFloat32, {1, 1, 1, 2}, {1, 2}));
  rope.set_cache("no-cache");
  ExpectError(client().Rope(rope).status(), absl::StatusCode::kNotFound, "cache");
  ExpectError(client().Delete("nope").status(), absl::StatusCode::kNotFound, "nope");
  ExpectError(client().Get("nope").status(), absl::StatusCode::kNotFound, "nope");
  v1::LinearRequest lin;
  *lin.mutable_input() = InlineRef(MakeFloatTensor(DType::kFloat32, {1, 4}, {1, 2, 3, 4}));
  lin.set_weight("nope");
  ExpectError(client().Linear(lin).status(), absl::StatusCode::kNotFound, "weight");
  ExpectStoreIntact();
}

TEST_F(ErrorsTest, AlreadyExistsWithoutOverwrite) {
  ExpectError(client().Put("w", MakeFloatTensor(DType::kFloat32, {4}, {9, 9, 9, 9})).status(),
              absl::StatusCode::kAlreadyExists, "w");
  v1::BuildRopeCacheRequest cache;
  cache.set_name("w");
  cache.set_max_seq_len(4);
  cache.set_head_dim(2);
  ExpectError(client().BuildRopeCache(cache).status(), absl::StatusCode::kAlreadyExists, "w");
  ExpectStoreIntact();
  ASSERT_TRUE(client().Put("w", MakeFloatTensor(DType::kFloat32, {4}, {1, 2, 3, 4}), true).ok());
}

TEST_F(ErrorsTest, FailedPreconditionForTheWrongKindOfTensor) {
  auto req = GoodRmsNorm();
  *req.mutable_weight() = NamedRef("wq");
  ExpectError(client().RmsNorm(req).status(), absl::StatusCode::kFailedPrecondition, "weight");
  v1::RopeRequest rope;
  *rope.mutable_q() = InlineRef(MakeFloatTensor(DType::kFloat32, {1, 1, 1, 2}, {1, 2}));
  rope.set_cache("w");
  ExpectError(client().Rope(rope).status(), absl::StatusCode::kFailedPrecondition, "cache");
  v1::DequantizeRequest dq;
  dq.set_name("w");
  ExpectError(client().Dequantize(dq).status(), absl::StatusCode::kFailedPrecondition, "name");
  v1::QuantizeWeightRequest qw;
  qw.set_source("wq");
  ExpectError(client().QuantizeWeight(qw).status(), absl::StatusCode::kFailedPrecondition,
              "source");
  ExpectStoreIntact();
}

TEST_F(ErrorsTest, ResourceExhaustedForQuotaAndMessageSize) {
  auto options = LocalOptions();
  options.max_resident_bytes = 1 << 20;
  options.max_message_bytes = 1 << 20;
  ClientOptions client_options;
  client_options.max_message_bytes = 8 << 20;
  StartServer(options, client_options);
  ASSERT_TRUE(client().Put("a", DType::kInt8, {600 << 10}, std::string(600 << 10, 'a')).ok());
  // 600 KiB more would pass the 1 MiB quota: refused, and "a" is intact.
  ExpectError(client().Put("b", DType::kInt8, {600 << 10}, std::string(600 << 10, 'b')).status(),
              absl::StatusCode::kResourceExhausted, "quota");
  auto a = client().Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->data, std::string(600 << 10, 'a'));
  EXPECT_EQ(client().List()->size(), 1u);

  // A 2 MiB inline request is over --max_message_bytes.
  v1::SwiGluRequest big;
  std::vector<float> ones(512 << 10, 1.0f);
  *big.mutable_gate() = InlineRef(MakeFloatTensor(DType::kFloat32, {int64_t(ones.size())}, ones));
  *big.mutable_up() = InlineRef(MakeFloatTensor(DType::kFloat32, {int64_t(ones.size())}, ones));
  EXPECT_EQ(client().SwiGlu(big).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(ErrorsTest, AResultTooBigForOneAnswerIsRefusedNamingTheOutput) {
  auto options = LocalOptions();
  options.max_message_bytes = 1 << 20;
  StartServer(options);
  // A small request whose result would not fit in one answer: RmsNorm of a
  // resident 1.5 MiB input, answered inline, is refused naming the output
  // (with the way out: an output name and GetTensor); stored, it runs.
  // 1.5 MiB, uploaded in 256 KiB chunks (each message under the limit).
  const v1::Tensor x = MakeFloatTensor(DType::kFloat32, {384, 1024}, RandomFloats(384 * 1024, 5));
  ASSERT_TRUE(client().Put("x", DType::kFloat32, {384, 1024}, x.data(), false, 256 << 10).ok());
  ASSERT_TRUE(
      client().Put("nw", MakeFloatTensor(DType::kFloat32, {1024}, RandomFloats(1024, 6))).ok());
  v1::RmsNormRequest wide;
  *wide.mutable_input() = NamedRef("x");
  *wide.mutable_weight() = NamedRef("nw");
  const absl::Status too_big = client().RmsNorm(wide).status();
  ExpectError(too_big, absl::StatusCode::kResourceExhausted, "output");
  EXPECT_THAT(std::string(too_big.message()), HasSubstr("--max_message_bytes"));
  wide.set_output_name("y");
  EXPECT_TRUE(client().RmsNorm(wide).ok());
  auto y = client().Get("y");
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->data.size(), size_t{384} * 1024 * 4);
}

TEST_F(ErrorsTest, ResourceExhaustedWhenTheQueueIsFull) {
  auto options = LocalOptions();
  options.executor_threads = 1;
  options.max_queue_size = 1;
  StartServer(options);
  // A slow op: Ffn over 512 rows keeps the single worker busy while more
  // requests arrive than the queue holds.
  v1::FfnRequest req;
  ASSERT_NO_FATAL_FAILURE(req = SlowFfn(/*h=*/256, /*inter=*/1024, /*m=*/512));
  std::vector<std::future<absl::Status>> calls;
  for (int i = 0; i < 12; ++i) {
    calls.push_back(std::async(std::launch::async, [&] { return client().Ffn(req).status(); }));
  }
  int exhausted = 0, ok = 0;
  for (auto& call : calls) {
    absl::Status status = call.get();
    if (status.ok()) ++ok;
    if (status.code() == absl::StatusCode::kResourceExhausted) {
      ++exhausted;
      EXPECT_THAT(std::string(status.message()), HasSubstr("queue"));
    }
  }
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(ok, 0);
}

// The batcher's own queue: with a queue delay of a second the first
// RmsNorm to arrive waits in it, so the others, sent at the same time, find
// it full (--max_queue_size=1) and are refused at once; the first is served.
TEST_F(ErrorsTest, ResourceExhaustedWhenTheBatchQueueIsFull) {
  auto options = LocalOptions();
  options.max_queue_size = 1;
  options.max_queue_delay_us = 1'000'000;
  StartServer(options);
  ASSERT_TRUE(client().Put("w", MakeFloatTensor(DType::kFloat32, {4}, {1, 2, 3, 4})).ok());
  std::vector<std::future<absl::Status>> calls;
  for (int i = 0; i < 8; ++i) {
    calls.push_back(
        std::async(std::launch::async, [&] { return client().RmsNorm(GoodRmsNorm()).status(); }));
  }
  int ok = 0, exhausted = 0;
  for (auto& call : calls) {
    const absl::Status status = call.get();
    if (status.ok()) ++ok;
    if (status.code() == absl::StatusCode::kResourceExhausted) {
      ++exhausted;
      EXPECT_THAT(std::string(status.message()), HasSubstr("batch queue is full")) << status;
      EXPECT_THAT(std::string(status.message()), HasSubstr("--max_queue_size=1")) << status;
    }
  }
  EXPECT_EQ(ok, 1);
  EXPECT_EQ(exhausted, 7);
}

// Without batching, a row op runs alone on the executor; a full executor
// queue refuses it at once (the task handed back, answered, not leaked).
TEST_F(ErrorsTest, ResourceExhaustedWhenTheExecutorQueueIsFullWithoutBatching) {
  auto options = LocalOptions();
  options.batching = false;
  options.executor_threads = 1;
  options.max_queue_size = 1;
  StartServer(options);
  ASSERT_TRUE(client().Put("w", MakeFloatTensor(DType::kFloat32, {4}, {1, 2, 3, 4})).ok());
  v1::FfnRequest slow;
  ASSERT_NO_FATAL_FAILURE(slow = SlowFfn(/*h=*/256, /*inter=*/1024, /*m=*/4096));
  auto busy = std::async(std::launch::async, [&] { return client().Ffn(slow).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the worker takes the Ffn
  std::vector<std::future<absl::Status>> calls;
  for (int i = 0; i < 8; ++i) {
    calls.push_back(
        std::async(std::launch::async, [&] { return client().RmsNorm(GoodRmsNorm()).status(); }));
  }
  int exhausted = 0;
  for (auto& call : calls) {
    const absl::Status status = call.get();
    if (status.code() == absl::StatusCode::kResourceExhausted) {
      ++exhausted;
      EXPECT_THAT(std::string(status.message()), HasSubstr("queue")) << status;
    } else {
      EXPECT_TRUE(status.ok()) << status;
    }
  }
  EXPECT_GT(exhausted, 0);
  EXPECT_TRUE(busy.get().ok());
}

TEST_F(ErrorsTest, DeadlineExceededAndCancelled) {
  grpc::ClientContext expired;
  expired.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
  v1::RmsNormResponse resp;
  auto status = client().stub().RmsNorm(&expired, GoodRmsNorm(), &resp);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);

  grpc::ClientContext cancelled;
  cancelled.TryCancel();
  status = client().stub().RmsNorm(&cancelled, GoodRmsNorm(), &resp);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  ExpectStoreIntact();
}

TEST_F(ErrorsTest, UnauthenticatedWithoutTheToken) {
  auto options = LocalOptions();
  options.auth_token = "s3cret";
  StartServer(options);
  EXPECT_EQ(client().List().status().code(), absl::StatusCode::kUnauthenticated);
  Client wrong(server().grpc_target(), ClientOptions{.auth_token = "guess"});
  ExpectError(wrong.List().status(), absl::StatusCode::kUnauthenticated, "authorization");
  Client right(server().grpc_target(), ClientOptions{.auth_token = "s3cret"});
  EXPECT_TRUE(right.List().ok());
  EXPECT_TRUE(right.Put("t", MakeFloatTensor(DType::kFloat32, {1}, {1})).ok());
  EXPECT_EQ(client().Put("t2", MakeFloatTensor(DType::kFloat32, {1}, {1})).status().code(),
            absl::StatusCode::kUnauthenticated);
  // The Stream RPC is refused as a whole, before any message is read.
  auto stream = wrong.OpenStream();
  v1::StreamRequest request;
  request.set_id(1);
  *request.mutable_rms_norm() = GoodRmsNorm();
  stream->Write(request);
  ExpectError(stream->Finish(), absl::StatusCode::kUnauthenticated, "authorization");
}

TEST_F(ErrorsTest, UnavailableWhileDrainingButInFlightCallsFinish) {
  // An in-flight slow call, then a drain: the call completes, new calls fail.
  v1::FfnRequest req;
  ASSERT_NO_FATAL_FAILURE(req = SlowFfn(/*h=*/256, /*inter=*/2048, /*m=*/1024));
  auto in_flight = std::async(std::launch::async, [&] { return client().Ffn(req).status(); });
  // Drain only once the server holds the call (a fixed sleep lost the race
  // on a loaded CI machine: the call arrived after the drain and was refused).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Sample(ScrapeMetrics(server().metrics_port()), "accel_pending_requests{op=\"ffn\"}")
                 .value_or(0) < 1 &&
         in_flight.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the Ffn never reached the server";
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto drain =
      std::async(std::launch::async, [&] { server().Shutdown(std::chrono::milliseconds(20000)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(client().List().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(in_flight.get().ok());
  drain.get();
}

}  // namespace
}  // namespace accel::testing
