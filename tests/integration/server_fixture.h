// Test fixture: a real accel-server (the same Server class main.cc runs) on
// 127.0.0.1 port 0, in-process, with a real accel::Client connected over
// TCP. Tests adjust options in SetUp via StartServer(options).
#pragma once

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "accel/kernels/convert.h"
#include "accel/util/logging.h"
#include "client/client.h"
#include "server/server.h"

namespace accel::testing {

inline server::ServerOptions LocalOptions() {
  server::ServerOptions options;
  options.grpc_address = "127.0.0.1:0";
  options.metrics_address = "127.0.0.1:0";
  options.max_resident_bytes = int64_t{1} << 30;
  options.executor_threads = 2;
  return options;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    logging::SetMinSeverity(logging::Severity::kError);
    StartServer(LocalOptions());
  }
  void TearDown() override {
    client_.reset();
    if (server_ != nullptr) server_->Shutdown(std::chrono::milliseconds(1000));
  }

  void StartServer(const server::ServerOptions& options, ClientOptions client_options = {}) {
    client_.reset();
    if (server_ != nullptr) server_->Shutdown(std::chrono::milliseconds(0));
    auto started = server::Server::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = std::move(*started);
    client_ = std::make_unique<Client>(server_->grpc_target(), client_options);
    ASSERT_TRUE(client_->WaitForConnected(std::chrono::seconds(10)).ok());
  }

  Client& client() { return *client_; }
  server::Server& server() { return *server_; }

  std::unique_ptr<server::Server> server_;
  std::unique_ptr<Client> client_;
};

// Fresh random floats in [-scale, scale] from a seed the test prints.
inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> values(n);
  for (float& v : values) v = dist(rng);
  return values;
}

// Values as the server will see them after rounding to `dtype`.
inline std::vector<float> RoundTo(kernels::DType dtype, std::vector<float> values) {
  for (float& v : values) {
    if (dtype == kernels::DType::kBFloat16)
      v = kernels::BFloat16ToFloat(kernels::FloatToBFloat16(v));
    if (dtype == kernels::DType::kFloat16) v = kernels::HalfToFloat(kernels::FloatToHalf(v));
  }
  return values;
}

inline double Tolerance(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::kBFloat16:
      return 1e-2;
    case kernels::DType::kFloat16:
      return 1e-3;
    default:
      return 1e-5;
  }
}

// Element-wise |got - want| <= tol * (1 + |want|) with a readable failure.
inline void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double tol,
                        const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  bool any_nonzero = false;
  for (size_t i = 0; i < got.size(); ++i) {
    any_nonzero |= got[i] != 0.0f;
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::fabs(want[i])))
        << what << ": first mismatch at element " << i;
  }
  if (!got.empty()) EXPECT_TRUE(any_nonzero) << what << ": output is all zeros";
}

}  // namespace accel::testing
