// Tests of accel::Client against the fake service in fake_tensor_ops.h:
// chunking, progress, status conversion, token, deadline and message limits,
// the Stream helper, and the tensor helpers. (The real server is exercised
// in tests/integration.)
#include "client/client.h"

#include <cstring>
#include <string>
#include <vector>

#include "accel/kernels/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/fake_tensor_ops.h"

namespace accel {
namespace {

using kernels::DType;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) & 0xff);
  return s;
}

TEST(Client, PutSendsChunksAndGetReassemblesThem) {
  fake::FakeServer server;
  Client client(server.address());
  const std::string data = Pattern((3 << 20) + 6);  // 3 MiB + 6 bytes of float16
  std::vector<std::pair<int64_t, int64_t>> put_progress;
  auto info =
      client.Put("w", DType::kFloat16, {3, (1 << 19) + 1}, data, false, 1 << 20,
                 [&](int64_t done, int64_t total) { put_progress.emplace_back(done, total); });
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name(), "w");
  EXPECT_EQ(info->dtype(), v1::FLOAT16);
  EXPECT_THAT(info->shape(), ElementsAre(3, (1 << 19) + 1));

  // Four messages: three full chunks and the 6-byte tail.
  const std::vector<std::vector<size_t>> calls = server.service().put_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_THAT(calls[0], ElementsAre(1 << 20, 1 << 20, 1 << 20, 6));
  ASSERT_EQ(put_progress.size(), 4u);
  const auto total = static_cast<int64_t>(data.size());
  EXPECT_EQ(put_progress.back(), std::make_pair(total, total));

  std::vector<int64_t> get_progress;
  auto fetched = client.Get(
      "w",
      [&](int64_t done, int64_t total) {
        EXPECT_EQ(total, static_cast<int64_t>(data.size()));
        get_progress.push_back(done);
      },
      1 << 20);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->dtype(), DType::kFloat16);
  EXPECT_EQ(fetched->shape(), kernels::Shape({3, (1 << 19) + 1}));
  EXPECT_EQ(fetched->data, data);
  EXPECT_EQ(get_progress.back(), static_cast<int64_t>(data.size()));
  EXPECT_EQ(get_progress.size(), 4u);
}

TEST(Client, PutOfAnEmptyOrZeroDimTensorSendsOneMessage) {
  fake::FakeServer server;
  Client client(server.address());
  ASSERT_TRUE(client.Put("empty", DType::kInt8, {0, 4}, "").ok());
  ASSERT_TRUE(client.Put("scalar", DType::kFloat32, {}, Pattern(4)).ok());
  EXPECT_THAT(server.service().put_calls(), ElementsAre(ElementsAre(0), ElementsAre(4)));
  auto fetched = client.Get("empty");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->shape(), kernels::Shape({0, 4}));
  EXPECT_TRUE(fetched->data.empty());
}

TEST(Client, PutChecksTheSizeBeforeSendingAnything) {
  fake::FakeServer server;
  Client client(server.address());
  auto info = client.Put("w", DType::kFloat32, {2, 3}, Pattern(23));
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(info.status().message()),
              HasSubstr("FLOAT32 tensor of shape [2, 3] needs 24 bytes, but 23 were given"));
  EXPECT_EQ(client.Put("w", DType::kUnspecified, {1}, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Put("w", DType::kInt8, {-1}, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(server.service().put_calls().empty());
}

TEST(Client, ServerErrorsKeepTheirCodeAndMessage) {
  fake::FakeServer server;
  Client client(server.address());
  ASSERT_TRUE(client.Put("w", DType::kInt8, {4}, "abcd").ok());
  // The server answers after the first chunk; the rest are never sent.
  auto again = client.Put("w", DType::kInt8, {8 << 20}, std::string(8 << 20, 'x'), false, 1 << 20);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(again.status().message(), "name: 'w' already exists");
  EXPECT_LT(server.service().put_calls().back().size(), 8u);
  EXPECT_TRUE(client.Put("w", DType::kInt8, {2}, "ab", /*overwrite=*/true).ok());

  EXPECT_EQ(client.Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client.Delete("nope").status().code(), absl::StatusCode::kNotFound);

  v1::RmsNormRequest request;
  *request.mutable_input() = InlineRef(DType::kFloat32, {1}, Pattern(4));
  request.set_eps(-1);
  auto response = client.RmsNorm(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("eps: expected"));
  // Not implemented by the fake: UNIMPLEMENTED comes through as well.
  EXPECT_EQ(client.ServerInfo().status().code(), absl::StatusCode::kUnimplemented);
}

TEST(Client, ListAndDelete) {
  fake::FakeServer server;
  Client client(server.address());
  ASSERT_TRUE(client.Put("a", DType::kInt32, {1}, "abcd").ok());
  ASSERT_TRUE(client.Put("b", DType::kInt8, {1}, "a").ok());
  auto list = client.List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name(), "a");
  auto deleted = client.Delete("a");
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->name(), "a");
  EXPECT_EQ(client.List()->size(), 1u);
}

TEST(Client, GetReturnsTheScalesOfAQuantizedTensor) {
  fake::FakeServer server;
  fake::FakeTensorOps::Stored stored;
  stored.info.set_name("q");
  stored.info.set_dtype(v1::INT8);
  stored.info.add_shape(2);
  stored.info.add_shape(3);
  stored.info.set_quantized(true);
  stored.info.add_scales_shape(2);
  stored.data = "abcdef";
  const float scales[] = {0.5f, 0.25f};
  stored.scales = MakeFloatTensor(DType::kFloat32, {2}, scales);
  server.service().Store("q", stored);

  Client client(server.address());
  auto fetched = client.Get("q");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(fetched->info.quantized());
  EXPECT_EQ(fetched->data, "abcdef");
  EXPECT_THAT(*TensorToFloats(fetched->scales), ElementsAre(0.5f, 0.25f));
}

// A download whose bytes do not match its info is DATA_LOSS, not a tensor.
TEST(Client, GetRefusesATruncatedDownload) {
  fake::FakeServer server;
  fake::FakeTensorOps::Stored stored;
  stored.info.set_name("t");
  stored.info.set_dtype(v1::FLOAT32);
  stored.info.add_shape(4);  // 16 bytes
  stored.data = std::string(12, 'x');
  server.service().Store("t", stored);
  Client client(server.address());
  auto fetched = client.Get("t");
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kDataLoss) << fetched.status();
  EXPECT_THAT(std::string(fetched.status().message()), HasSubstr("sent 12 bytes"));
  // And a stream that ends without any message.
  server.service().get_sends_nothing = true;
  fetched = client.Get("t");
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kDataLoss) << fetched.status();
  EXPECT_THAT(std::string(fetched.status().message()), HasSubstr("returned no message"));
}

TEST(Client, SendsTheTokenAsBearerMetadata) {
  fake::FakeServer server;
  server.service().required_token = "s3cret";
  Client anonymous(server.address());
  EXPECT_EQ(anonymous.List().status().code(), absl::StatusCode::kUnauthenticated);
  ClientOptions options;
  options.auth_token = "s3cret";
  Client client(server.address(), options);
  EXPECT_TRUE(client.List().ok());
  EXPECT_TRUE(client.Put("w", DType::kInt8, {1}, "a").ok());
  EXPECT_TRUE(client.Get("w").ok());
}

TEST(Client, DefaultTimeoutBecomesADeadline) {
  fake::FakeServer server;
  server.service().list_delay = std::chrono::milliseconds(500);
  ClientOptions options;
  options.default_timeout = std::chrono::milliseconds(50);
  Client client(server.address(), options);
  EXPECT_EQ(client.List().status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(Client, ChunksFitASmallMessageLimit) {
  fake::FakeServer server(/*max_message_bytes=*/1 << 20);
  ClientOptions options;
  options.max_message_bytes = 1 << 20;
  Client client(server.address(), options);
  // The default 4 MiB chunks are capped below the 1 MiB limit.
  const std::string data = Pattern(3 << 20);
  ASSERT_TRUE(client.Put("w", DType::kInt8, {3 << 20}, data).ok());
  const std::vector<std::vector<size_t>> calls = server.service().put_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].size(), 4u);  // 1 MiB - 64 KiB chunks
  for (size_t size : calls[0]) EXPECT_LT(size, 1u << 20);
  // A reply larger than the client's limit is RESOURCE_EXHAUSTED.
  auto fetched = client.Get("w", nullptr, /*chunk_bytes=*/2 << 20);
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(client.Get("w", nullptr, 512 << 10)->data, data);
}

TEST(Client, UnreachableServerIsUnavailable) {
  ClientOptions options;
  options.default_timeout = std::chrono::seconds(5);
  Client client("127.0.0.1:1", options);
  EXPECT_EQ(client.List().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client.WaitForConnected(std::chrono::milliseconds(100)).code(),
            absl::StatusCode::kUnavailable);
}

TEST(Client, OpStreamCarriesRequestsAndPerRequestErrors) {
  fake::FakeServer server;
  Client client(server.address());
  std::unique_ptr<OpStream> stream = client.OpenStream();
  for (uint64_t id : {7, 8}) {
    v1::StreamRequest request;
    request.set_id(id);
    if (id == 7) {
      *request.mutable_rms_norm()->mutable_input() = InlineRef(DType::kInt8, {2}, "hi");
    } else {
      request.mutable_swiglu();
    }
    ASSERT_TRUE(stream->Write(request));
  }
  v1::StreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.id(), 7u);
  EXPECT_EQ(response.code(), 0);
  EXPECT_EQ(response.rms_norm().output().data(), "hi");
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.id(), 8u);
  EXPECT_EQ(response.code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(stream->Finish().code(), absl::StatusCode::kFailedPrecondition);

  // A stream dropped without Finish is cancelled, not leaked.
  std::unique_ptr<OpStream> abandoned = client.OpenStream();
  v1::StreamRequest request;
  request.set_id(1);
  abandoned->Write(request);
  abandoned.reset();
}

TEST(TensorHelpers, ViewTensorChecksDtypeShapeAndLength) {
  v1::Tensor good = MakeTensor(DType::kFloat16, {2, 2}, Pattern(8));
  auto view = ViewTensor(good);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->dtype, DType::kFloat16);
  EXPECT_EQ(view->shape, kernels::Shape({2, 2}));
  EXPECT_EQ(view->data, good.data().data());

  EXPECT_THAT(
      std::string(ViewTensor(MakeTensor(DType::kFloat16, {2, 2}, Pattern(7))).status().message()),
      HasSubstr("needs 8 data bytes, found 7"));
  EXPECT_THAT(std::string(ViewTensor(MakeTensor(DType::kFloat16, {2, 2}, "")).status().message()),
              HasSubstr("output_name"));
  EXPECT_FALSE(ViewTensor(MakeTensor(DType::kUnspecified, {}, "")).ok());
  v1::Tensor bad_dtype;
  bad_dtype.set_dtype(static_cast<v1::DType>(42));
  EXPECT_FALSE(ViewTensor(bad_dtype).ok());
  EXPECT_FALSE(ViewTensor(MakeTensor(DType::kInt8, {-2}, "")).ok());
  // 0-d: one element.
  EXPECT_TRUE(ViewTensor(MakeTensor(DType::kInt64, {}, Pattern(8))).ok());
}

TEST(TensorHelpers, FloatTensorsRoundTripThroughEveryFloatDtype) {
  const std::vector<float> values = {1.0f, -2.5f, 0.1f, 65504.0f};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    v1::Tensor tensor = MakeFloatTensor(dtype, {2, 2}, values);
    EXPECT_EQ(tensor.data().size(), 4 * kernels::ItemSize(dtype));
    auto back = TensorToFloats(tensor);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ((*back)[0], 1.0f);
    EXPECT_EQ((*back)[1], -2.5f);
    EXPECT_NEAR((*back)[2], 0.1f, 1e-3);
  }
  // bfloat16 of 0.1f rounds to nearest even: 0x3dcd.
  v1::Tensor bf16 = MakeFloatTensor(DType::kBFloat16, {1}, std::vector<float>{0.1f});
  uint16_t bits;
  std::memcpy(&bits, bf16.data().data(), 2);
  EXPECT_EQ(bits, 0x3dcd);

  v1::Tensor ints = MakeTensor(DType::kInt8, {2}, std::string("\x05\xfb", 2));
  EXPECT_THAT(*TensorToFloats(ints), ElementsAre(5.0f, -5.0f));
}

TEST(TensorHelpers, RefsAndStatusConversion) {
  EXPECT_EQ(NamedRef("w").name(), "w");
  v1::TensorRef ref = InlineRef(DType::kInt8, {1}, "a");
  EXPECT_EQ(ref.value().data(), "a");
  absl::Status status =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "weight: quantized"));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(status.message(), "weight: quantized");
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

}  // namespace
}  // namespace accel
