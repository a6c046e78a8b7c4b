// The metrics as an operator sees them: a real Prometheus (Debian's
// `prometheus` package, run as a child process on loopback) scrapes an
// in-process accel-server every second; the test sends a known number of
// requests and checks, through Prometheus's HTTP API, that the counters and
// histogram counts match. Then it evaluates every PromQL expression of the
// shipped Grafana dashboard against that Prometheus and fails on any error
// or on an expression that finds no data (a misspelt metric name).
//
// Skips only where /usr/bin/prometheus (or $ACCEL_PROMETHEUS) is missing.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "server_fixture.h"

namespace accel::testing {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::DType;
using nlohmann::json;

constexpr auto kDeadline = std::chrono::seconds(60);

std::string PrometheusBinary() {
  const char* env = getenv("ACCEL_PROMETHEUS");
  return env != nullptr && *env != '\0' ? env : "/usr/bin/prometheus";
}

// A port that was free a moment ago (bind to 0, read it, close).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

struct HttpResponse {
  int status = 0;  // 0: no connection
  std::string body;
};

// GET over plain HTTP/1.0 on loopback (the server closes after the body).
HttpResponse HttpGet(int port, const std::string& target) {
  HttpResponse response;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return response;
  }
  const std::string request = "GET " + target + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return response;
  }
  std::string raw;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) raw.append(buf, static_cast<size_t>(n));
  close(fd);
  // "HTTP/1.x 200 OK\r\n...\r\n\r\nbody"
  if (raw.size() > 12 && raw.rfind("HTTP/", 0) == 0) response.status = std::atoi(raw.c_str() + 9);
  const size_t body = raw.find("\r\n\r\n");
  if (body != std::string::npos) response.body = raw.substr(body + 4);
  return response;
}

std::string UrlEncode(const std::string& text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// A Prometheus child process with its own config and TSDB in a scratch
// directory, scraping one target every second.
class PrometheusProcess {
 public:
  PrometheusProcess(const std::string& binary, int target_port) {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) / "accel_prom_XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) return;
    dir_ = pattern;
    {
      std::ofstream config(dir_ / "prometheus.yml");
      config << "global:\n"
             << "  scrape_interval: 1s\n"
             << "  scrape_timeout: 1s\n"
             << "  evaluation_interval: 1s\n"
             << "scrape_configs:\n"
             << "  - job_name: accel\n"
             << "    scrape_interval: 1s\n"
             << "    static_configs:\n"
             << "      - targets: ['127.0.0.1:" << target_port << "']\n";
    }
    port_ = FreePort();
    log_ = dir_ / "prometheus.log";
    pid_ = fork();
    if (pid_ == 0) {
      FILE* log = fopen(log_.c_str(), "w");
      if (log != nullptr) {
        dup2(fileno(log), STDOUT_FILENO);
        dup2(fileno(log), STDERR_FILENO);
      }
      std::vector<std::string> args = {
          binary, "--config.file=" + (dir_ / "prometheus.yml").string(),
          "--storage.tsdb.path=" + (dir_ / "data").string(),
          absl::StrCat("--web.listen-address=127.0.0.1:", port_), "--log.level=warn"};
      std::vector<char*> argv;
      for (auto& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~PrometheusProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      // Prometheus flushes its head block on SIGTERM; don't wait for long.
      for (int i = 0; i < 100 && waitpid(pid_, nullptr, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (waitpid(pid_, nullptr, WNOHANG) == 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
      }
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  PrometheusProcess(const PrometheusProcess&) = delete;
  PrometheusProcess& operator=(const PrometheusProcess&) = delete;

  // True once /-/ready answers 200; false if it exits or `deadline` passes.
  bool WaitReady(Clock::time_point deadline) {
    while (Clock::now() < deadline) {
      if (pid_ <= 0 || waitpid(pid_, nullptr, WNOHANG) != 0) return false;
      if (HttpGet(port_, "/-/ready").status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // /api/v1/query at the current time; the parsed JSON body (a
  // {"status": "error", ...} object when the call itself failed).
  json Query(const std::string& promql) {
    const HttpResponse response = HttpGet(port_, "/api/v1/query?query=" + UrlEncode(promql));
    json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || !body.is_object()) {
      return {{"status", "error"},
              {"error", absl::StrCat("HTTP ", response.status, ": '", response.body, "'")}};
    }
    return body;
  }

  // The value of an instant query that yields exactly one sample.
  std::optional<double> Scalar(const std::string& promql) {
    const json body = Query(promql);
    if (body.value("status", "") != "success") return std::nullopt;
    const json& result = body["data"]["result"];
    if (!result.is_array() || result.size() != 1) return std::nullopt;
    return std::stod(result[0]["value"][1].get<std::string>());
  }

  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  std::filesystem::path dir_;
  std::filesystem::path log_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// The expressions of every panel target, with Grafana's built-in interval
// variables replaced as Grafana does before it queries.
std::vector<std::string> DashboardExpressions(const std::string& path) {
  std::ifstream in(path);
  const json dashboard = json::parse(in);
  std::vector<std::string> exprs;
  std::vector<const json*> panels;
  for (const json& panel : dashboard.at("panels")) {
    panels.push_back(&panel);
    if (panel.contains("panels")) {  // collapsed rows nest their panels
      for (const json& inner : panel["panels"]) panels.push_back(&inner);
    }
  }
  for (const json* panel : panels) {
    if (!panel->contains("targets")) continue;
    for (const json& target : (*panel)["targets"]) {
      if (target.contains("expr")) {
        exprs.push_back(absl::StrReplaceAll(
            target["expr"].get<std::string>(),
            {{"$__rate_interval", "1m"}, {"$__interval", "15s"}, {"$__range", "1h"}}));
      }
    }
  }
  return exprs;
}

class PrometheusTest : public ServerTest {};

TEST_F(PrometheusTest, ScrapedCountersMatchRequestsAndDashboardQueriesEvaluate) {
  const std::string binary = PrometheusBinary();
  if (access(binary.c_str(), X_OK) != 0) {
    GTEST_SKIP() << binary << " not found: install Debian's `prometheus` package "
                 << "(deploy/install-deps.sh) or set ACCEL_PROMETHEUS to run this test";
  }
  const Clock::time_point deadline = Clock::now() + kDeadline;
  PrometheusProcess prometheus(binary, server().metrics_port());
  ASSERT_TRUE(prometheus.WaitReady(deadline)) << "prometheus did not start:\n" << prometheus.Log();

  // A resident tensor of known size, 7 good RmsNorm calls of 3 rows each,
  // 3 SwiGlu calls the server rejects (gate and up disagree in shape).
  const int64_t hidden = 64;
  ASSERT_TRUE(
      client()
          .Put("weight", MakeFloatTensor(DType::kFloat32, {hidden}, RandomFloats(hidden, 1)))
          .ok());
  const int64_t resident_bytes = hidden * 4;
  v1::RmsNormRequest rms_norm;
  *rms_norm.mutable_input() =
      InlineRef(MakeFloatTensor(DType::kFloat32, {3, hidden}, RandomFloats(3 * hidden, 2)));
  rms_norm.mutable_weight()->set_name("weight");
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(client().RmsNorm(rms_norm).ok());
  v1::SwiGluRequest swiglu;
  *swiglu.mutable_gate() = InlineRef(MakeFloatTensor(DType::kFloat32, {4}, RandomFloats(4, 3)));
  *swiglu.mutable_up() = InlineRef(MakeFloatTensor(DType::kFloat32, {5}, RandomFloats(5, 4)));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(client().SwiGlu(swiglu).status().code(), absl::StatusCode::kInvalidArgument);
  }

  // What Prometheus must report once a scrape after the last call landed.
  const std::vector<std::pair<std::string, double>> expected = {
      {R"(accel_requests_total{method="RmsNorm",code="OK"})", 7},
      {R"(accel_requests_total{method="SwiGlu",code="INVALID_ARGUMENT"})", 3},
      {R"(accel_requests_total{method="PutTensor",code="OK"})", 1},
      {R"(accel_request_duration_seconds_count{method="RmsNorm"})", 7},
      {R"(accel_request_duration_seconds_count{method="SwiGlu"})", 3},
      {R"(accel_request_duration_seconds_bucket{method="RmsNorm",le="+Inf"})", 7},
      {R"(accel_queue_duration_seconds_count{op="rms_norm"})", 7},
      // Rejected when validated, on the gRPC thread, before any queue.
      {R"(accel_queue_duration_seconds_count{op="swiglu"})", 0},
      {R"(accel_compute_duration_seconds_count{op="rms_norm",phase="kernel"})", 7},
      {R"(accel_compute_duration_seconds_count{op="swiglu",phase="kernel"})", 0},
      {R"(accel_batch_requests_count{op="rms_norm"})", 7},
      {R"(accel_batch_rows_sum{op="rms_norm"})", 21},
      {R"(accel_pending_requests{op="rms_norm"})", 0},
      {"accel_resident_tensors", 1},
      {"accel_resident_bytes", static_cast<double>(resident_bytes)},
      {"accel_resident_limit_bytes", static_cast<double>(LocalOptions().max_resident_bytes)},
      {R"(accel_build_info{backend="cpu"})", 1},
  };
  std::string mismatches;
  while (true) {
    mismatches.clear();
    for (const auto& [promql, want] : expected) {
      const std::optional<double> got = prometheus.Scalar(promql);
      if (!got.has_value() || *got != want) {
        absl::StrAppend(&mismatches, "  ", promql, ": want ", want, ", got ",
                        got.has_value() ? absl::StrCat(*got) : "no single sample", "\n");
      }
    }
    if (mismatches.empty() || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_EQ(mismatches, "") << "after " << kDeadline.count() << " s of scraping\n"
                            << prometheus.Log();
  const std::optional<double> used =
      prometheus.Scalar(R"(accel_device_memory_bytes{state="used"})");
  const std::optional<double> total =
      prometheus.Scalar(R"(accel_device_memory_bytes{state="total"})");
  ASSERT_TRUE(used.has_value() && total.has_value());
  EXPECT_GT(*used, 0);
  EXPECT_LE(*used, *total);

  // Every dashboard query evaluates, and finds data (rate() needs two
  // scrapes of a series, so give new series a few more seconds).
  const std::vector<std::string> exprs = DashboardExpressions(ACCEL_DASHBOARD_JSON);
  ASSERT_GE(exprs.size(), 10u) << ACCEL_DASHBOARD_JSON;
  for (const std::string& expr : exprs) {
    SCOPED_TRACE(expr);
    EXPECT_EQ(expr.find('$'), std::string::npos) << "an unknown Grafana variable";
    json body;
    while (true) {
      body = prometheus.Query(expr);
      if (body.value("status", "") != "success" || !body["data"]["result"].empty() ||
          Clock::now() >= deadline) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ASSERT_EQ(body.value("status", ""), "success") << body.dump();
    EXPECT_FALSE(body["data"]["result"].empty()) << "no data: " << body.dump();
  }
}

}  // namespace
}  // namespace accel::testing
