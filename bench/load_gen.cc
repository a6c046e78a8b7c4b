// load_gen: a closed-loop load generator for accel-server (issue 4).
//
// N callers (--concurrency) spread over M channels (--channels, one TCP
// connection each) keep exactly one request each in flight for --duration_s
// (after --warmup_s, which is not measured), unary or over the Stream RPC
// (--stream: one stream per channel, carrying its callers' requests). It
// prints QPS, p50/p90/p99/max latency, errors by code and, when --metrics
// names the server's Prometheus endpoint, the server's mean rows per launch
// (accel_batch_rows_sum / _count, scraped before and after the run) and its
// mean time per request from receipt to reply, in the queue and in each
// compute phase (h2d, kernel, d2h on a GPU), to show where time goes.
//
// --echo runs the same load against an echo service (bench/echo.proto) with
// the same request and response payload sizes: the floor that no gRPC
// service can beat. By default the echo server runs in this process; in a
// process of its own (load_gen --serve_echo, then --echo_target) it pays the
// same cross-process costs as accel-server (in one process, gRPC's pollers
// serve client and server alike, which saves thread hand-offs no separate
// server gets), so bench/run_load.sh uses that.
//
//   load_gen --target=localhost:50051 --metrics=localhost:9464 --op=rms_norm
//            --rows=1 --width=4096 --dtype=bf16 --concurrency=64 --duration_s=5
//   load_gen --echo --op=rms_norm --rows=1 --width=4096 --concurrency=64
//
// All calls use gRPC's callback API: a caller issues its next request from
// the completion of the previous one, so no thread blocks per caller.
// Latencies are recorded per caller (a caller's completions are serialised)
// and merged after the run.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "accel/v1/tensor_ops.grpc.pb.h"
#include "bench/echo.grpc.pb.h"
#include "client/client.h"

ABSL_FLAG(std::string, target, "localhost:50051", "accel-server gRPC address");
ABSL_FLAG(std::string, metrics, "",
          "accel-server metrics HOST:PORT, to report mean rows per launch (empty: skip)");
ABSL_FLAG(bool, echo, false, "Run against the built-in echo service (same payload sizes)");
ABSL_FLAG(std::string, echo_target, "",
          "With --echo: an echo server started with --serve_echo (another process, like "
          "accel-server); empty: start one in this process");
ABSL_FLAG(bool, serve_echo, false,
          "Only serve the echo service on 127.0.0.1:0: print 'listening grpc=HOST:PORT' and run "
          "until SIGTERM or SIGINT");
ABSL_FLAG(std::string, op, "rms_norm",
          "rms_norm, swiglu, linear, ffn or echo (echo implies --echo)");
ABSL_FLAG(int64_t, out_features, 4096,
          "linear: output features N of the resident int8 weight [N, --width]; ffn: the "
          "intermediate size I of its int8 weights (gate and up [I, --width], down [--width, I]); "
          "per-row scales");
ABSL_FLAG(int64_t, rows, 1, "Rows of each request's input");
ABSL_FLAG(int64_t, width, 4096, "Last dimension of each request's input");
ABSL_FLAG(std::string, dtype, "bf16", "bf16, fp16 or fp32");
ABSL_FLAG(bool, residual, false, "rms_norm: add an inline residual input");
ABSL_FLAG(int, concurrency, 1, "Callers, each with one request in flight");
ABSL_FLAG(int, channels, 1, "gRPC channels (TCP connections); callers spread over them");
ABSL_FLAG(bool, stream, false, "Use the Stream RPC: one stream per channel");
ABSL_FLAG(double, duration_s, 5.0, "Measured seconds");
ABSL_FLAG(double, warmup_s, 1.0, "Unmeasured seconds before the measurement");
ABSL_FLAG(std::string, json, "", "Write the results as JSON to this file");
ABSL_FLAG(std::string, label, "", "Free-form label stored in the JSON");

namespace accel::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kMaxMessage = int64_t{1} << 30;

// ------------------------------------------------------------------ stats

// What one caller (or one stream) saw; merged after the run.
struct Tally {
  std::vector<double> latencies_us;  // measured window only
  std::map<int, int64_t> errors;     // by gRPC code
  int64_t ok = 0;
};

// The run's clock: calls are measured when they complete inside
// [measure_start, measure_end); callers stop issuing at measure_end.
struct Window {
  Clock::time_point measure_start;
  Clock::time_point measure_end;
  bool Measured(Clock::time_point t) const { return t >= measure_start && t < measure_end; }
  bool Stopped(Clock::time_point t) const { return t >= measure_end; }
};

// Counts callers still running; Wait() returns once all have stopped.
class Latch {
 public:
  explicit Latch(int count) : count_(count) {}
  void CountDown() {
    absl::MutexLock lock(&mu_);
    --count_;
  }
  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* count) { return *count <= 0; }, &count_));
  }

 private:
  absl::Mutex mu_;
  int count_ ABSL_GUARDED_BY(mu_);
};

void Record(Tally& tally, const Window& window, Clock::time_point sent, Clock::time_point done,
            int code) {
  if (!window.Measured(done)) return;
  if (code == 0) {
    ++tally.ok;
    tally.latencies_us.push_back(std::chrono::duration<double, std::micro>(done - sent).count());
  } else {
    ++tally.errors[code];
  }
}

// ---------------------------------------------------------- unary callers

// Issues one call: starts it on `context` and arranges `done(status)`.
using IssueFn = std::function<void(grpc::ClientContext*, std::function<void(grpc::Status)>)>;

class UnaryCaller {
 public:
  UnaryCaller(IssueFn issue, const Window* window, Latch* latch)
      : issue_(std::move(issue)), window_(window), latch_(latch) {}

  void Start() {
    context_ = std::make_unique<grpc::ClientContext>();
    sent_ = Clock::now();
    issue_(context_.get(), [this](grpc::Status status) { OnDone(status); });
  }
  Tally& tally() { return tally_; }

 private:
  void OnDone(const grpc::Status& status) {
    const Clock::time_point now = Clock::now();
    Record(tally_, *window_, sent_, now, status.error_code());
    if (window_->Stopped(now)) {
      latch_->CountDown();
      return;
    }
    Start();
  }

  IssueFn issue_;
  const Window* window_;
  Latch* latch_;
  std::unique_ptr<grpc::ClientContext> context_;
  Clock::time_point sent_;
  Tally tally_;
};

// --------------------------------------------------------- stream callers

inline int CodeOf(const v1::StreamResponse& response) { return response.code(); }
inline int CodeOf(const EchoMessage&) { return 0; }

// One bidirectional stream carrying `requests.size()` callers: each slot
// has one request in flight; its answer (matched by id = slot) sends the
// slot's next. gRPC allows one outstanding write, so writes queue.
template <typename Request, typename Response>
class StreamCaller final : public grpc::ClientBidiReactor<Request, Response> {
 public:
  StreamCaller(std::vector<Request> requests, const Window* window, Latch* latch)
      : requests_(std::move(requests)), sent_(requests_.size()), window_(window), latch_(latch) {}

  // `start_call` binds this reactor to a new call (stub->async()->Stream).
  template <typename StartCall>
  void Start(StartCall start_call) {
    start_call(&context_, this);
    this->StartRead(&response_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t slot = 0; slot < requests_.size(); ++slot) QueueWrite(slot);
      outstanding_ = static_cast<int>(requests_.size());
    }
    this->StartCall();
  }
  Tally& tally() { return tally_; }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) return;  // the stream broke; OnDone follows
    if (!to_write_.empty()) {
      const size_t slot = to_write_.front();
      to_write_.pop_front();
      WriteLocked(slot);
    } else if (outstanding_ == 0 && !writes_done_) {
      writes_done_ = true;
      this->StartWritesDone();
    }
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the server closed its side; OnDone follows
    const Clock::time_point now = Clock::now();
    const size_t slot = response_.id() % requests_.size();
    Record(tally_, *window_, sent_[slot], now, CodeOf(response_));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (window_->Stopped(now)) {
        if (--outstanding_ == 0 && !writing_ && !writes_done_) {
          writes_done_ = true;
          this->StartWritesDone();
        }
      } else {
        QueueWrite(slot);
      }
    }
    this->StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    if (!status.ok()) ++tally_.errors[status.error_code()];
    latch_->CountDown();
  }

 private:
  void QueueWrite(size_t slot) {
    sent_[slot] = Clock::now();
    if (writing_) {
      to_write_.push_back(slot);
    } else {
      WriteLocked(slot);
    }
  }
  void WriteLocked(size_t slot) {
    writing_ = true;
    this->StartWrite(&requests_[slot]);
  }

  const std::vector<Request> requests_;
  std::vector<Clock::time_point> sent_;
  const Window* window_;
  Latch* latch_;
  grpc::ClientContext context_;
  Response response_;
  Tally tally_;  // touched only by OnReadDone/OnDone, which gRPC serialises
  std::mutex mu_;
  std::deque<size_t> to_write_;
  bool writing_ = false;
  bool writes_done_ = false;
  int outstanding_ = 0;
};

// -------------------------------------------------------------- echo server

class EchoStreamReactor final : public grpc::ServerBidiReactor<EchoMessage, EchoMessage> {
 public:
  EchoStreamReactor() { StartRead(&incoming_); }
  void OnReadDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!ok) {
      reads_done_ = true;
      FinishIfDone(lock);
      return;
    }
    EchoMessage out;
    out.set_id(incoming_.id());
    const size_t n =
        incoming_.response_bytes() > 0 ? incoming_.response_bytes() : incoming_.payload().size();
    out.set_payload(incoming_.payload().substr(0, n));
    queue_.push_back(std::move(out));
    if (!writing_) StartNextWrite();
    StartRead(&incoming_);
  }
  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    queue_.pop_front();
    if (!ok) broken_ = true;
    if (ok && !queue_.empty()) StartNextWrite();
    FinishIfDone(lock);
  }
  void OnDone() override { delete this; }

 private:
  void StartNextWrite() {
    writing_ = true;
    StartWrite(&queue_.front());
  }
  // Finishes once the client half-closed and every echo was written. Finish
  // is called unlocked: OnDone (which deletes this) may run at once.
  void FinishIfDone(std::unique_lock<std::mutex>& lock) {
    if (finished_ || writing_ || !(reads_done_ || broken_)) return;
    if (!broken_ && !queue_.empty()) return;
    finished_ = true;
    lock.unlock();
    Finish(grpc::Status::OK);
  }

  std::mutex mu_;
  EchoMessage incoming_;
  std::deque<EchoMessage> queue_;  // front is being written
  bool writing_ = false;
  bool reads_done_ = false;
  bool broken_ = false;
  bool finished_ = false;
};

// Answers on the gRPC thread with a copy of the payload: no queue, no hop.
class EchoService final : public Echo::CallbackService {
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* context, const EchoMessage* request,
                                 EchoMessage* response) override {
    response->set_id(request->id());
    const size_t n =
        request->response_bytes() > 0 ? request->response_bytes() : request->payload().size();
    response->set_payload(request->payload().substr(0, n));
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerBidiReactor<EchoMessage, EchoMessage>* EchoStream(
      grpc::CallbackServerContext*) override {
    return new EchoStreamReactor();
  }
};

// ----------------------------------------------------------------- metrics

// GET http://host:port/metrics; empty on any failure.
std::string HttpGetMetrics(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return "";
  std::string host = host_port.substr(0, colon);
  if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
  const std::string port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return "";
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return "";
  const std::string request =
      absl::StrCat("GET /metrics HTTP/1.0\r\nHost: ", host_port, "\r\nConnection: close\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "";
  }
  std::string body;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) body.append(buf, static_cast<size_t>(n));
  close(fd);
  return body;
}

// Sums over every label of the server's counters that explain a run: rows
// per launch (accel_batch_rows), and where a request's time goes on the
// server (receipt to reply, queue, compute phases).
struct ServerCounters {
  // Series -> {sum, count}; series is the histogram name without _sum or
  // _count, plus "/phase" for accel_compute_duration_seconds.
  std::map<std::string, std::pair<double, double>> histograms;
  bool found = false;
};
ServerCounters ScrapeServerCounters(const std::string& host_port) {
  static const char* const kNames[] = {"accel_batch_rows", "accel_request_duration_seconds",
                                       "accel_queue_duration_seconds",
                                       "accel_compute_duration_seconds"};
  ServerCounters counters;
  if (host_port.empty()) return counters;
  for (absl::string_view line : absl::StrSplit(HttpGetMetrics(host_port), '\n')) {
    for (const char* name : kNames) {
      if (!absl::StartsWith(line, name)) continue;
      const absl::string_view rest = line.substr(std::strlen(name));
      const bool sum = absl::StartsWith(rest, "_sum");
      if (!sum && !absl::StartsWith(rest, "_count")) continue;
      double value = 0;
      if (!absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) continue;
      std::string series = name;
      if (const size_t phase = line.find("phase=\""); phase != absl::string_view::npos) {
        const size_t begin = phase + 7;
        series += "/" + std::string(line.substr(begin, line.find('"', begin) - begin));
      }
      auto& [total, count] = counters.histograms[series];
      (sum ? total : count) += value;
      counters.found = true;
    }
  }
  return counters;
}

// ------------------------------------------------------------------- main

kernels::DType ParseDType(const std::string& name) {
  if (name == "bf16" || name == "bfloat16") return kernels::DType::kBFloat16;
  if (name == "fp16" || name == "float16") return kernels::DType::kFloat16;
  if (name == "fp32" || name == "float32") return kernels::DType::kFloat32;
  std::cerr << "--dtype: expected bf16, fp16 or fp32, found " << name << "\n";
  std::exit(2);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessage));
  args.SetMaxSendMessageSize(static_cast<int>(kMaxMessage));
  // A distinct argument per channel keeps gRPC from sharing one connection.
  args.SetInt("accel.bench.channel_index", index);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(p * (sorted.size() - 1) + 0.5));
  return sorted[i];
}

// --serve_echo: the echo service alone, until SIGTERM/SIGINT.
int ServeEcho() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // gRPC's threads inherit the mask
  EchoService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessage));
  builder.SetMaxSendMessageSize(static_cast<int>(kMaxMessage));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "cannot start the echo server\n";
    return 1;
  }
  std::cout << "listening grpc=127.0.0.1:" << port << std::endl;
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  server->Shutdown(std::chrono::system_clock::now());
  return 0;
}

int Run() {
  if (absl::GetFlag(FLAGS_serve_echo)) return ServeEcho();
  const std::string op =
      absl::GetFlag(FLAGS_op) == "echo" ? std::string("rms_norm") : absl::GetFlag(FLAGS_op);
  const bool echo = absl::GetFlag(FLAGS_echo) || absl::GetFlag(FLAGS_op) == "echo";
  if (op != "rms_norm" && op != "swiglu" && op != "linear" && op != "ffn") {
    std::cerr << "--op: expected rms_norm, swiglu, linear, ffn or echo\n";
    return 2;
  }
  const kernels::DType dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  const int64_t rows = absl::GetFlag(FLAGS_rows), width = absl::GetFlag(FLAGS_width);
  const int concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  const int channels = std::clamp(absl::GetFlag(FLAGS_channels), 1, concurrency);
  const bool stream = absl::GetFlag(FLAGS_stream);
  const bool residual = absl::GetFlag(FLAGS_residual);

  // The request: random finite values, built once and shared by all calls.
  const kernels::Shape shape{rows, width};
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  auto random_tensor = [&] {
    std::vector<float> values(static_cast<size_t>(rows * width));
    for (float& v : values) v = dist(rng);
    return MakeFloatTensor(dtype, shape, values);
  };
  v1::RmsNormRequest rms_norm;
  v1::SwiGluRequest swiglu;
  v1::LinearRequest linear;
  v1::FfnRequest ffn;
  const int64_t out_features = absl::GetFlag(FLAGS_out_features);
  int64_t request_bytes = 0, response_bytes = 0;
  if (op == "ffn") {
    *ffn.mutable_input()->mutable_value() = random_tensor();
    ffn.set_w_gate("bench.ffn.gate");
    ffn.set_w_up("bench.ffn.up");
    ffn.set_w_down("bench.ffn.down");
    request_bytes = response_bytes = ffn.input().value().data().size();
  } else if (op == "linear") {
    *linear.mutable_input()->mutable_value() = random_tensor();
    linear.set_weight("bench.linear.weight");
    request_bytes = linear.input().value().data().size();
    response_bytes = rows * out_features * static_cast<int64_t>(kernels::ItemSize(dtype));
  } else if (op == "rms_norm") {
    *rms_norm.mutable_input()->mutable_value() = random_tensor();
    if (residual) *rms_norm.mutable_residual()->mutable_value() = random_tensor();
    rms_norm.mutable_weight()->set_name("bench.rms_norm.weight");
    request_bytes = rms_norm.input().value().data().size() * (residual ? 2 : 1);
    response_bytes = rms_norm.input().value().data().size();
  } else {
    *swiglu.mutable_gate()->mutable_value() = random_tensor();
    *swiglu.mutable_up()->mutable_value() = random_tensor();
    request_bytes = 2 * swiglu.gate().value().data().size();
    response_bytes = swiglu.gate().value().data().size();
  }
  EchoMessage echo_request;
  {
    std::string payload(static_cast<size_t>(request_bytes), '\0');
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(rng());
    echo_request.set_payload(std::move(payload));
    echo_request.set_response_bytes(response_bytes);
  }

  // The echo server, in this process unless --echo_target names one.
  std::unique_ptr<grpc::Server> echo_server;
  EchoService echo_service;
  std::string target = absl::GetFlag(FLAGS_target);
  if (echo && !absl::GetFlag(FLAGS_echo_target).empty()) {
    target = absl::GetFlag(FLAGS_echo_target);
  } else if (echo) {
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessage));
    builder.SetMaxSendMessageSize(static_cast<int>(kMaxMessage));
    builder.RegisterService(&echo_service);
    echo_server = builder.BuildAndStart();
    if (echo_server == nullptr || port == 0) {
      std::cerr << "cannot start the echo server\n";
      return 1;
    }
    target = absl::StrCat("127.0.0.1:", port);
  } else if (op != "swiglu") {
    // The weight stays resident, as a model's weights do.
    Client client(target);
    if (absl::Status s = client.WaitForConnected(std::chrono::seconds(10)); !s.ok()) {
      std::cerr << "cannot reach " << target << ": " << s << "\n";
      return 1;
    }
    absl::Status loaded;
    if (op == "rms_norm") {
      std::vector<float> ones(static_cast<size_t>(width));
      for (float& v : ones) v = 1.0f + 0.01f * dist(rng);
      loaded = client
                   .Put("bench.rms_norm.weight", MakeFloatTensor(dtype, {width}, ones),
                        /*overwrite=*/true)
                   .status();
    } else {
      // Float weights, quantized to int8 in place (per-row scales).
      std::vector<std::tuple<std::string, int64_t, int64_t>> weights;
      if (op == "linear") {
        weights = {{"bench.linear.weight", out_features, width}};
      } else {
        weights = {{"bench.ffn.gate", out_features, width},
                   {"bench.ffn.up", out_features, width},
                   {"bench.ffn.down", width, out_features}};
      }
      for (const auto& [name, n, k] : weights) {
        std::vector<float> w(static_cast<size_t>(n * k));
        for (float& v : w) v = 0.05f * dist(rng);
        loaded = client.Put(name, MakeFloatTensor(dtype, {n, k}, w), /*overwrite=*/true).status();
        if (!loaded.ok()) break;
        v1::QuantizeWeightRequest quantize;
        quantize.set_source(name);
        loaded = client.QuantizeWeight(quantize).status();
        if (!loaded.ok()) break;
      }
    }
    if (!loaded.ok()) {
      std::cerr << "loading the weight failed: " << loaded << "\n";
      return 1;
    }
  }

  std::vector<std::shared_ptr<grpc::Channel>> chans;
  std::vector<std::unique_ptr<v1::TensorOps::Stub>> ops_stubs;
  std::vector<std::unique_ptr<Echo::Stub>> echo_stubs;
  for (int c = 0; c < channels; ++c) {
    chans.push_back(MakeChannel(target, c));
    if (!chans.back()->WaitForConnected(std::chrono::system_clock::now() +
                                        std::chrono::seconds(10))) {
      std::cerr << "cannot connect to " << target << "\n";
      return 1;
    }
    ops_stubs.push_back(v1::TensorOps::NewStub(chans.back()));
    echo_stubs.push_back(Echo::NewStub(chans.back()));
  }

  const ServerCounters before = ScrapeServerCounters(absl::GetFlag(FLAGS_metrics));
  Window window;
  const Clock::time_point start = Clock::now();
  window.measure_start = start + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(absl::GetFlag(FLAGS_warmup_s)));
  window.measure_end =
      window.measure_start + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(absl::GetFlag(FLAGS_duration_s)));

  std::vector<std::unique_ptr<UnaryCaller>> unary;
  std::vector<std::unique_ptr<StreamCaller<v1::StreamRequest, v1::StreamResponse>>> op_streams;
  std::vector<std::unique_ptr<StreamCaller<EchoMessage, EchoMessage>>> echo_streams;
  Latch latch(stream ? channels : concurrency);
  if (!stream) {
    for (int i = 0; i < concurrency; ++i) {
      const int c = i % channels;
      IssueFn issue;
      if (echo) {
        auto response = std::make_shared<EchoMessage>();
        issue = [stub = echo_stubs[c].get(), &echo_request, response](auto* ctx, auto done) {
          stub->async()->Echo(ctx, &echo_request, response.get(), std::move(done));
        };
      } else if (op == "ffn") {
        auto response = std::make_shared<v1::FfnResponse>();
        issue = [stub = ops_stubs[c].get(), &ffn, response](auto* ctx, auto done) {
          stub->async()->Ffn(ctx, &ffn, response.get(), std::move(done));
        };
      } else if (op == "linear") {
        auto response = std::make_shared<v1::LinearResponse>();
        issue = [stub = ops_stubs[c].get(), &linear, response](auto* ctx, auto done) {
          stub->async()->Linear(ctx, &linear, response.get(), std::move(done));
        };
      } else if (op == "rms_norm") {
        auto response = std::make_shared<v1::RmsNormResponse>();
        issue = [stub = ops_stubs[c].get(), &rms_norm, response](auto* ctx, auto done) {
          stub->async()->RmsNorm(ctx, &rms_norm, response.get(), std::move(done));
        };
      } else {
        auto response = std::make_shared<v1::SwiGluResponse>();
        issue = [stub = ops_stubs[c].get(), &swiglu, response](auto* ctx, auto done) {
          stub->async()->SwiGlu(ctx, &swiglu, response.get(), std::move(done));
        };
      }
      unary.push_back(std::make_unique<UnaryCaller>(std::move(issue), &window, &latch));
    }
    for (auto& caller : unary) caller->Start();
  } else {
    for (int c = 0; c < channels; ++c) {
      // Callers c, c + channels, ... share channel c's stream.
      const int slots = concurrency / channels + (c < concurrency % channels ? 1 : 0);
      if (echo) {
        std::vector<EchoMessage> requests(slots, echo_request);
        for (int s = 0; s < slots; ++s) requests[s].set_id(s);
        echo_streams.push_back(std::make_unique<StreamCaller<EchoMessage, EchoMessage>>(
            std::move(requests), &window, &latch));
      } else {
        std::vector<v1::StreamRequest> requests(slots);
        for (int s = 0; s < slots; ++s) {
          requests[s].set_id(s);
          if (op == "ffn") {
            *requests[s].mutable_ffn() = ffn;
          } else if (op == "linear") {
            *requests[s].mutable_linear() = linear;
          } else if (op == "rms_norm") {
            *requests[s].mutable_rms_norm() = rms_norm;
          } else {
            *requests[s].mutable_swiglu() = swiglu;
          }
        }
        op_streams.push_back(std::make_unique<StreamCaller<v1::StreamRequest, v1::StreamResponse>>(
            std::move(requests), &window, &latch));
      }
    }
    for (int c = 0; c < channels; ++c) {
      if (echo) {
        echo_streams[c]->Start([stub = echo_stubs[c].get()](auto* ctx, auto* reactor) {
          stub->async()->EchoStream(ctx, reactor);
        });
      } else {
        op_streams[c]->Start([stub = ops_stubs[c].get()](auto* ctx, auto* reactor) {
          stub->async()->Stream(ctx, reactor);
        });
      }
    }
  }
  latch.Wait();
  const ServerCounters after = ScrapeServerCounters(absl::GetFlag(FLAGS_metrics));

  Tally all;
  auto merge = [&all](Tally& t) {
    all.ok += t.ok;
    all.latencies_us.insert(all.latencies_us.end(), t.latencies_us.begin(), t.latencies_us.end());
    for (const auto& [code, n] : t.errors) all.errors[code] += n;
  };
  for (auto& c : unary) merge(c->tally());
  for (auto& c : op_streams) merge(c->tally());
  for (auto& c : echo_streams) merge(c->tally());
  std::sort(all.latencies_us.begin(), all.latencies_us.end());
  const double seconds = absl::GetFlag(FLAGS_duration_s);
  const double qps = static_cast<double>(all.ok) / seconds;
  double mean = 0;
  for (double v : all.latencies_us) mean += v;
  if (!all.latencies_us.empty()) mean /= static_cast<double>(all.latencies_us.size());
  // Differences over the run: {sum, count} of a series.
  auto delta = [&](const std::string& series) {
    auto get = [&series](const ServerCounters& c) {
      auto it = c.histograms.find(series);
      return it == c.histograms.end() ? std::pair<double, double>{0, 0} : it->second;
    };
    const auto [sum1, count1] = get(after);
    const auto [sum0, count0] = get(before);
    return std::pair<double, double>{sum1 - sum0, count1 - count0};
  };
  const auto [rows_sum, launches] = delta("accel_batch_rows");
  const double rows_per_launch = after.found && launches > 0 ? rows_sum / launches : 0.0;
  // Mean server-side microseconds per sample of each timing histogram.
  nlohmann::json server_us = nlohmann::json::object();
  for (const auto& [series, unused] : after.histograms) {
    if (series == "accel_batch_rows") continue;
    const auto [sum, count] = delta(series);
    if (count <= 0) continue;
    std::string key = series.substr(std::strlen("accel_"));
    key = key.substr(0, key.find("_duration_seconds")) +
          key.substr(key.find("_duration_seconds") + std::strlen("_duration_seconds"));
    server_us[key] = sum / count * 1e6;
  }

  nlohmann::json out;
  out["label"] = absl::GetFlag(FLAGS_label);
  out["mode"] = echo ? "echo" : "server";
  out["op"] = op;
  out["rows"] = rows;
  out["width"] = width;
  out["dtype"] = kernels::DTypeName(dtype);
  out["residual"] = residual;
  out["concurrency"] = concurrency;
  out["channels"] = channels;
  out["stream"] = stream;
  out["duration_s"] = seconds;
  out["request_bytes"] = request_bytes;
  out["response_bytes"] = response_bytes;
  out["ok"] = all.ok;
  out["qps"] = qps;
  out["mb_per_s"] = qps * static_cast<double>(request_bytes) / 1e6;
  out["mean_us"] = mean;
  out["p50_us"] = Percentile(all.latencies_us, 0.50);
  out["p90_us"] = Percentile(all.latencies_us, 0.90);
  out["p99_us"] = Percentile(all.latencies_us, 0.99);
  out["max_us"] = all.latencies_us.empty() ? 0.0 : all.latencies_us.back();
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [code, n] : all.errors) errors[std::to_string(code)] = n;
  out["errors"] = errors;
  if (after.found && launches > 0) {
    out["rows_per_launch"] = rows_per_launch;
    out["launches"] = launches;
    out["server_mean_us"] = server_us;
  } else {
    out["rows_per_launch"] = nullptr;
  }

  std::printf(
      "%s %s %s [%lld, %lld] %s c=%d ch=%d: %.0f QPS (%.1f MB/s), latency us p50 %.0f p90 %.0f "
      "p99 %.0f max %.0f; ok %lld",
      echo ? "echo" : "server", stream ? "stream" : "unary", op.c_str(),
      static_cast<long long>(rows), static_cast<long long>(width), kernels::DTypeName(dtype),
      concurrency, channels, qps, out["mb_per_s"].get<double>(), out["p50_us"].get<double>(),
      out["p90_us"].get<double>(), out["p99_us"].get<double>(), out["max_us"].get<double>(),
      static_cast<long long>(all.ok));
  for (const auto& [code, n] : all.errors) std::printf(", code %d: %lld", code, (long long)n);
  if (after.found && launches > 0) {
    std::printf("; server rows/launch %.2f, mean us", rows_per_launch);
    for (const auto& [key, us] : server_us.items())
      std::printf(" %s %.1f", key.c_str(), us.get<double>());
  }
  std::printf("\n");

  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (!json_path.empty()) {
    std::ofstream(json_path) << out.dump(2) << "\n";
  }
  if (echo_server != nullptr) echo_server->Shutdown(std::chrono::system_clock::now());
  return all.ok > 0 ? 0 : 1;
}

}  // namespace
}  // namespace accel::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("load_gen: closed-loop load against accel-server or an echo floor");
  absl::ParseCommandLine(argc, argv);
  return accel::bench::Run();
}
