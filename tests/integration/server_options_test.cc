// Server::Start checks every option before it opens a port: a bad value
// fails the start-up with INVALID_ARGUMENT (FAILED_PRECONDITION for a device
// this build or machine lacks) naming the flag and what it expected; legal
// non-default values start a server that answers.
#include <functional>
#include <string>
#include <vector>

#include "tests/integration/server_fixture.h"

namespace accel::testing {
namespace {

using ::testing::HasSubstr;

struct BadOption {
  std::string flag;
  std::function<void(server::ServerOptions&)> set;
};

TEST(ServerOptions, EveryBadValueFailsTheStartUpNamingItsFlag) {
  logging::SetMinSeverity(logging::Severity::kFatal);
  const std::vector<BadOption> bad = {
      {"--max_message_bytes", [](auto& o) { o.max_message_bytes = 1000; }},
      {"--max_message_bytes", [](auto& o) { o.max_message_bytes = int64_t{1} << 31; }},
      {"--max_resident_bytes", [](auto& o) { o.max_resident_bytes = -1; }},
      {"--max_batch_rows", [](auto& o) { o.max_batch_rows = 0; }},
      {"--max_queue_delay_us", [](auto& o) { o.max_queue_delay_us = -5; }},
      {"--max_inflight_batches", [](auto& o) { o.max_inflight_batches = 0; }},
      {"--inline_request_bytes", [](auto& o) { o.inline_request_bytes = -1; }},
      {"--device", [](auto& o) { o.device = "tpu"; }},
      {"--grpc_address", [](auto& o) { o.grpc_address = "no-port"; }},
  };
  for (const BadOption& option : bad) {
    server::ServerOptions options = LocalOptions();
    option.set(options);
    auto server = server::Server::Start(options);
    ASSERT_FALSE(server.ok()) << option.flag;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << server.status();
    EXPECT_THAT(server.status().message(), HasSubstr(option.flag)) << server.status();
    EXPECT_THAT(server.status().message(), HasSubstr("expected")) << server.status();
  }
}

TEST(ServerOptions, NonDefaultBatchingSettingsServe) {
  logging::SetMinSeverity(logging::Severity::kError);
  server::ServerOptions options = LocalOptions();
  options.max_inflight_batches = 3;
  options.inline_request_bytes = 0;  // every batchable request goes to a worker
  options.max_batch_rows = 1;
  auto server = server::Server::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->grpc_target());
  ASSERT_TRUE(client.WaitForConnected(std::chrono::seconds(10)).ok());
  ASSERT_TRUE(
      client.Put("w", MakeFloatTensor(kernels::DType::kFloat32, {8}, RandomFloats(8, 1))).ok());
  v1::RmsNormRequest request;
  *request.mutable_input() =
      InlineRef(MakeFloatTensor(kernels::DType::kFloat32, {2, 8}, RandomFloats(16, 2)));
  request.mutable_weight()->set_name("w");
  auto response = client.RmsNorm(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->output().data().size(), 2u * 8 * 4);
  (*server)->Shutdown(std::chrono::milliseconds(0));
}

}  // namespace
}  // namespace accel::testing
