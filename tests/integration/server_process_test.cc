// The accel-server binary as a user runs it: the start-up line, health,
// /metrics, and a graceful SIGTERM (in-flight calls finish, exit 0).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <regex>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "client/client.h"
#include "wire_util.h"

namespace accel::testing {
namespace {

using kernels::DType;

// A child accel-server whose stdout we read for the start-up line.
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> extra_args = {}) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      std::vector<std::string> args = {ServerBinary(), "--grpc_address=127.0.0.1:0",
                                       "--metrics_address=127.0.0.1:0"};
      args.insert(args.end(), extra_args.begin(), extra_args.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    stdout_ = fdopen(out[0], "r");
  }
  ~ServerProcess() {
    if (pid_ > 0 && !waited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_ != nullptr) fclose(stdout_);
  }

  // Blocks until the start-up line; returns it.
  std::string ReadListeningLine() {
    char line[512];
    while (stdout_ != nullptr && fgets(line, sizeof line, stdout_) != nullptr) {
      std::string s(line);
      if (s.rfind("listening ", 0) == 0) return s;
    }
    return "";
  }
  void Signal(int sig) { kill(pid_, sig); }
  pid_t pid() const { return pid_; }
  int WaitExit() {
    int status = 0;
    waitpid(pid_, &status, 0);
    waited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  bool waited_ = false;
};

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, request.data(), request.size()) < 0) return "";
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) response.append(buf, n);
  close(fd);
  return response;
}

TEST(ServerProcess, StartsServesAndDrainsOnSigterm) {
  ServerProcess process;
  const std::string line = process.ReadListeningLine();
  std::smatch match;
  ASSERT_TRUE(std::regex_search(
      line, match, std::regex(R"(listening grpc=127\.0\.0\.1:(\d+) metrics=127\.0\.0\.1:(\d+))")))
      << "start-up line: '" << line << "'";
  const std::string target = "127.0.0.1:" + match[1].str();
  const int metrics_port = std::stoi(match[2].str());

  Client client(target);
  ASSERT_TRUE(client.WaitForConnected(std::chrono::seconds(10)).ok());
  EXPECT_EQ(HealthStatus(client.channel(), ""), 1);
  EXPECT_EQ(HealthStatus(client.channel(), "accel.v1.TensorOps"), 1);
  EXPECT_THAT(HttpGet(metrics_port, "/metrics"), ::testing::HasSubstr("accel_build_info"));

  // A slow call in flight when SIGTERM arrives still completes.
  const int64_t h = 256, inter = 2048, m = 2048;
  std::vector<float> w(inter * h, 0.01f), x(m * h, 0.5f);
  ASSERT_TRUE(client.Put("g", MakeFloatTensor(DType::kFloat32, {inter, h}, w)).ok());
  ASSERT_TRUE(client.Put("d", MakeFloatTensor(DType::kFloat32, {h, inter}, w)).ok());
  v1::FfnRequest req;
  *req.mutable_input() = InlineRef(MakeFloatTensor(DType::kFloat32, {m, h}, x));
  req.set_w_gate("g");
  req.set_w_up("g");
  req.set_w_down("d");
  auto in_flight = std::async(std::launch::async, [&] { return client.Ffn(req).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let it reach the server
  process.Signal(SIGTERM);
  EXPECT_TRUE(in_flight.get().ok());
  EXPECT_EQ(process.WaitExit(), 0);
  EXPECT_EQ(client.List().status().code(), absl::StatusCode::kUnavailable);
}

// The allocator is linked without any call into it, so a linker that drops
// unused libraries (--as-needed) would silently leave glibc's malloc: the
// running process must have mapped the one the build chose.
TEST(ServerProcess, RunsOnTheAllocatorItWasBuiltWith) {
  ServerProcess process;
  ASSERT_NE(process.ReadListeningLine(), "");
  std::ifstream maps("/proc/" + std::to_string(process.pid()) + "/maps");
  const std::string mapped((std::istreambuf_iterator<char>(maps)),
                           std::istreambuf_iterator<char>());
  ASSERT_THAT(mapped, ::testing::HasSubstr("accel-server"));
  if (std::string(ACCEL_SERVER_MALLOC) == "tcmalloc") {
    EXPECT_THAT(mapped, ::testing::HasSubstr("libtcmalloc_minimal"));
  } else {
    EXPECT_THAT(mapped, ::testing::Not(::testing::HasSubstr("libtcmalloc")));
  }
  process.Signal(SIGTERM);
  EXPECT_EQ(process.WaitExit(), 0);
}

TEST(ServerProcess, RefusesABadFlagWithAClearError) {
  ServerProcess process({"--device=tpu:0"});
  EXPECT_EQ(process.ReadListeningLine(), "");
  EXPECT_EQ(process.WaitExit(), 1);
}

}  // namespace
}  // namespace accel::testing
