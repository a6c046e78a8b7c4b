// Readiness and logs: --preload loads weights before health reports
// SERVING (and a bad file stops the start-up with an error naming it), the
// binary logs one start-up summary, and --access_log writes one line per
// finished call (and nothing when off).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "server_fixture.h"
#include "tests/server/safetensors_writer.h"
#include "wire_util.h"

namespace accel::testing {
namespace {

using kernels::DType;
using server::testing::BuildSafetensors;
using server::testing::BytesOf;
using server::testing::ScratchDir;
using server::testing::WriteFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kServing = 1;

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Two small safetensors files under a model dir: a.safetensors {w: F32 [4]}
// and sub/b.safetensors {x: F32 [2]}.
void WriteModel(const std::filesystem::path& dir) {
  WriteFile(dir / "a.safetensors",
            BuildSafetensors({{"w", "F32", {4}, BytesOf(std::vector<float>{1, 2, 3, 4})}}));
  WriteFile(dir / "sub" / "b.safetensors",
            BuildSafetensors({{"x", "F32", {2}, BytesOf(std::vector<float>{5, 6})}}));
}

std::vector<std::string> ResidentNames(Client& client) {
  std::vector<std::string> names;
  auto list = client.List();
  EXPECT_TRUE(list.ok()) << list.status();
  if (list.ok()) {
    for (const v1::TensorInfo& info : *list) names.push_back(info.name());
  }
  return names;
}

TEST(Preload, TensorsAreResidentBeforeHealthReportsServing) {
  logging::SetMinSeverity(logging::Severity::kError);
  ScratchDir model;
  WriteModel(model.path());
  server::ServerOptions options = LocalOptions();
  options.model_dir = model.path().string();
  options.preload = {"a.safetensors", "sub/b.safetensors:layer0."};
  auto server = server::Server::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  // Start returns only after preloading, and the port opened after it: the
  // first health answer a client can get is already SERVING, with weights.
  Client client((*server)->grpc_target());
  ASSERT_TRUE(client.WaitForConnected(std::chrono::seconds(10)).ok());
  EXPECT_EQ(HealthStatus(client.channel(), ""), kServing);
  EXPECT_EQ(HealthStatus(client.channel(), "accel.v1.TensorOps"), kServing);
  EXPECT_THAT(ResidentNames(client), ElementsAre("layer0.x", "w"));
  (*server)->Shutdown(std::chrono::milliseconds(0));
}

TEST(Preload, AFileThatFailsToLoadFailsStartUpNamingTheFlag) {
  logging::SetMinSeverity(logging::Severity::kError);
  ScratchDir model;
  WriteModel(model.path());
  server::ServerOptions options = LocalOptions();
  options.model_dir = model.path().string();
  options.preload = {"a.safetensors", "missing.safetensors"};
  auto server = server::Server::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(server.status().message(), HasSubstr("--preload=missing.safetensors"));

  options.preload = {"../a.safetensors"};
  EXPECT_EQ(server::Server::Start(options).status().code(), absl::StatusCode::kInvalidArgument);

  options.model_dir.clear();
  options.preload = {"a.safetensors"};
  auto no_dir = server::Server::Start(options);
  EXPECT_EQ(no_dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_dir.status().message(), HasSubstr("--model_dir"));
}

// Runs the calls of the access-log tests and returns what the server wrote
// to stderr meanwhile.
std::string CaptureServerLog(bool access_log) {
  const std::filesystem::path log_path = std::filesystem::path(::testing::TempDir()) /
                                         ("accel_access_" + std::to_string(getpid()) + ".log");
  fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  const int log_fd = open(log_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  dup2(log_fd, STDERR_FILENO);
  logging::SetMinSeverity(logging::Severity::kInfo);
  {
    server::ServerOptions options = LocalOptions();
    options.access_log = access_log;
    auto server = server::Server::Start(options);
    if (server.ok()) {
      Client client((*server)->grpc_target());
      if (client.WaitForConnected(std::chrono::seconds(10)).ok()) {
        v1::RmsNormRequest rms_norm;
        *rms_norm.mutable_input() =
            InlineRef(MakeFloatTensor(DType::kFloat32, {2, 8}, RandomFloats(16, 1)));
        *rms_norm.mutable_weight() =
            InlineRef(MakeFloatTensor(DType::kFloat32, {8}, RandomFloats(8, 2)));
        EXPECT_TRUE(client.RmsNorm(rms_norm).ok());
        v1::SwiGluRequest swiglu;  // gate and up disagree: INVALID_ARGUMENT
        *swiglu.mutable_gate() = InlineRef(MakeFloatTensor(DType::kFloat32, {4}, {1, 2, 3, 4}));
        *swiglu.mutable_up() = InlineRef(MakeFloatTensor(DType::kFloat32, {2}, {1, 2}));
        EXPECT_FALSE(client.SwiGlu(swiglu).ok());
        EXPECT_TRUE(client.Put("t", MakeFloatTensor(DType::kFloat32, {4}, {1, 2, 3, 4})).ok());
        EXPECT_TRUE(client.Get("t").ok());
        EXPECT_TRUE(client.List().ok());
      }
      (*server)->Shutdown(std::chrono::milliseconds(1000));
    }
    EXPECT_TRUE(server.ok()) << server.status();
  }
  logging::SetMinSeverity(logging::Severity::kError);
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(log_fd);
  std::string text = ReadFile(log_path);
  std::filesystem::remove(log_path);
  return text;
}

TEST(AccessLog, WritesOneLinePerFinishedCall) {
  const std::string log = CaptureServerLog(/*access_log=*/true);
  const std::string peer = R"( peer=ipv[46]:\S+)";
  EXPECT_TRUE(std::regex_search(
      log, std::regex(R"(access method=RmsNorm code=OK request_bytes=\d+ response_bytes=[1-9]\d* )"
                      R"(latency_us=\d+)" +
                      peer)))
      << log;
  EXPECT_TRUE(std::regex_search(log, std::regex(R"(access method=SwiGlu code=INVALID_ARGUMENT )"
                                                R"(request_bytes=[1-9]\d* response_bytes=0 )")))
      << log;
  EXPECT_TRUE(
      std::regex_search(log, std::regex(R"(access method=PutTensor code=OK request_bytes=16 )")))
      << log;
  EXPECT_TRUE(std::regex_search(
      log, std::regex(R"(access method=GetTensor code=OK request_bytes=\d+ response_bytes=16 )")))
      << log;
  EXPECT_THAT(log, HasSubstr("access method=ListTensors code=OK"));
  // And the start-up summary.
  EXPECT_THAT(log, HasSubstr("ready: backend="));
  EXPECT_THAT(log, HasSubstr("access_log=on"));
}

TEST(AccessLog, IsSilentWhenOff) {
  const std::string log = CaptureServerLog(/*access_log=*/false);
  EXPECT_THAT(log, HasSubstr("ready: backend="));  // the capture works
  EXPECT_THAT(log, Not(HasSubstr("access method=")));
}

// The binary's flag handling: --preload is repeatable and comma-separated.
TEST(PreloadFlag, IsRepeatableAndCommaSeparated) {
  ScratchDir model;
  WriteModel(model.path());
  WriteFile(model.path() / "c.safetensors",
            BuildSafetensors({{"y", "F32", {1}, BytesOf(std::vector<float>{7})}}));
  const std::filesystem::path err = model.path() / "stderr.log";
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    const int fd = open(err.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
    dup2(fd, STDERR_FILENO);
    close(out[0]);
    std::vector<std::string> args = {ServerBinary(),
                                     "--grpc_address=127.0.0.1:0",
                                     "--metrics_address=127.0.0.1:0",
                                     "--max_resident_bytes=1048576",
                                     "--model_dir=" + model.path().string(),
                                     "--preload=a.safetensors,sub/b.safetensors:b.",
                                     "--preload",
                                     "c.safetensors:c."};
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  FILE* child_stdout = fdopen(out[0], "r");
  char line[512] = {0};
  const bool got_line = fgets(line, sizeof line, child_stdout) != nullptr;
  std::smatch match;
  const std::string text = got_line ? line : "";
  const bool listening =
      std::regex_search(text, match, std::regex(R"(listening grpc=(\S+) metrics=)"));
  if (listening) {
    Client client(match[1].str());
    ASSERT_TRUE(client.WaitForConnected(std::chrono::seconds(10)).ok());
    EXPECT_THAT(ResidentNames(client), ElementsAre("b.x", "c.y", "w"));
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  fclose(child_stdout);
  ASSERT_TRUE(listening) << "start-up line: '" << text << "'\n" << ReadFile(err);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const std::string log = ReadFile(err);
  EXPECT_THAT(log, HasSubstr("preloaded 1 tensors"));
  EXPECT_THAT(log, HasSubstr("accel-server 0."));
}

TEST(PreloadFlag, ABadFileExitsWithAClearError) {
  ScratchDir model;
  const std::filesystem::path err = model.path() / "stderr.log";
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(err.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
    dup2(fd, STDERR_FILENO);
    dup2(fd, STDOUT_FILENO);
    std::vector<std::string> args = {
        ServerBinary(), "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
        "--model_dir=" + model.path().string(), "--preload=nope.safetensors"};
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  const std::string log = ReadFile(err);
  EXPECT_THAT(log, HasSubstr("--preload=nope.safetensors"));
  EXPECT_THAT(log, Not(HasSubstr("listening ")));
}

}  // namespace
}  // namespace accel::testing
