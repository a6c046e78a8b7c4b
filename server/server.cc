#include "server/server.h"

#include <exception>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "accel/util/logging.h"
#include "prometheus/registry.h"
#include "server/batcher.h"
#include "server/device_info.h"
#include "server/executor.h"
#include "server/metrics.h"
#include "server/metrics_endpoint.h"
#include "server/resident_collector.h"
#include "server/service_context.h"
#include "server/serving_device.h"
#include "server/tensor_loader.h"
#include "server/tensor_ops_service.h"
#include "server/tensor_store.h"
#include "server/version.h"

namespace accel::server {
namespace {

constexpr const char* kServiceName = "accel.v1.TensorOps";

// Splits "host:port" (host may be "[::1]"); INVALID_ARGUMENT when malformed.
absl::Status SplitHostPort(const std::string& address, absl::string_view flag, std::string* host,
                           int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), port) || *port < 0 ||
      *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": expected HOST:PORT (port 0 picks a free one), found '", address, "'"));
  }
  *host = address.substr(0, colon);
  return absl::OkStatus();
}

// Loads each "path[:prefix]" of --preload into the store. The error names
// the flag and the file, since it stops the start-up.
absl::Status Preload(const ServerOptions& options, kernels::Backend backend, TensorStore& store) {
  for (const std::string& spec : options.preload) {
    const std::string flag = absl::StrCat("--preload=", spec);
    if (options.model_dir.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": preloading needs --model_dir (paths are relative to it)"));
    }
    LoadOptions load;
    load.model_dir = options.model_dir;
    load.backend = backend;
    // Split at the first ':': a prefix may hold ':' (a valid name character).
    const size_t colon = spec.find(':');
    load.path = spec.substr(0, colon);
    if (colon != std::string::npos) load.prefix = spec.substr(colon + 1);
    if (load.path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": expected PATH or PATH:PREFIX, found an empty path"));
    }
    auto loaded = LoadSafetensors(load, store);
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(),
                          absl::StrCat(flag, ": ", loaded.status().message()));
    }
    int64_t bytes = 0;
    for (const ResidentTensorPtr& tensor : *loaded) bytes += tensor->nbytes();
    LOG(INFO) << "preloaded " << loaded->size() << " tensors (" << bytes << " bytes) from "
              << load.path << (load.prefix.empty() ? "" : " with prefix ") << load.prefix;
  }
  return absl::OkStatus();
}

}  // namespace

struct Server::State {
  ServerOptions options;
  std::unique_ptr<ServingDevice> device;
  std::unique_ptr<TensorStore> store;
  std::unique_ptr<Executor> executor;
  // Threads that send a batch's answers (GPU backend with batching only);
  // declared before the batcher, which uses it, so that it outlives it.
  std::unique_ptr<Executor> answerer;
  std::unique_ptr<Batcher> batcher;  // null with --batching=false
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<ServerMetrics> metrics;
  std::shared_ptr<ResidentCollector> resident_collector;  // the endpoint holds a weak_ptr
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;
  ServiceContext context;
  std::unique_ptr<TensorOpsService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  std::string grpc_host, metrics_host;
  int grpc_port = 0;
  int metrics_port = 0;
};

Server::Server(std::unique_ptr<State> state) : state_(std::move(state)) {}

Server::~Server() { Shutdown(std::chrono::milliseconds(0)); }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto state = std::make_unique<State>();
  state->options = options;
  int requested_grpc_port = 0;
  absl::Status status = SplitHostPort(options.grpc_address, "--grpc_address", &state->grpc_host,
                                      &requested_grpc_port);
  if (!status.ok()) return status;
  status = SplitHostPort(options.metrics_address, "--metrics_address", &state->metrics_host,
                         &state->metrics_port);
  if (!status.ok()) return status;
  if (options.max_message_bytes < (int64_t{1} << 20) || options.max_message_bytes > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_message_bytes: expected 1 MiB to 2 GiB - 1, found ", options.max_message_bytes));
  }
  if (options.max_resident_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_resident_bytes: expected >= 0 (0 = 90% of free memory), found ",
                     options.max_resident_bytes));
  }
  if (options.max_batch_rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_batch_rows: expected >= 1, found ", options.max_batch_rows));
  }
  if (options.max_queue_delay_us < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_queue_delay_us: expected >= 0 (0 = no wait), found ", options.max_queue_delay_us));
  }
  if (options.inline_request_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--inline_request_bytes: expected >= 0 (0 = never), found ", options.inline_request_bytes));
  }
  if (options.max_inflight_batches < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--max_inflight_batches: expected >= 1, found ",
                                                   options.max_inflight_batches));
  }
  auto opened = ServingDevice::Open(options.device);
  if (!opened.ok()) return opened.status();
  state->device = std::move(*opened);
  const ServingDevice& serving = *state->device;
  const kernels::Backend backend = serving.backend();

  // Resident tensors live in device memory (RAM on the CPU backend).
  const int64_t limit = options.max_resident_bytes > 0 ? options.max_resident_bytes
                                                       : serving.FreeMemoryBytes() / 10 * 9;
  state->store = std::make_unique<TensorStore>(TensorStore::Options{limit, serving.name()});
  // On a GPU each worker owns a stream, so a few workers overlap copies and
  // kernels of consecutive requests; on the CPU the kernels use every core.
  const int threads = options.executor_threads > 0
                          ? options.executor_threads
                          : static_cast<int>(std::max(serving.is_cuda() ? 4u : 2u,
                                                      std::thread::hardware_concurrency()));
  Executor::Options executor_options{threads, options.max_queue_size, nullptr};
  executor_options.thread_init = [&serving] { serving.InitThread(); };
  state->executor = std::make_unique<Executor>(executor_options);

  // Metrics first: a metrics port that cannot bind fails the start-up.
  state->registry = std::make_shared<prometheus::Registry>();
  const v1::DeviceProperties device = serving.Describe();
  state->metrics = std::make_unique<ServerMetrics>(
      *state->registry, ServerMetrics::BuildInfo{kVersion, serving.backend_name(), device.name()});
  state->resident_collector = std::make_shared<ResidentCollector>(state->store.get(), [&serving] {
    const int64_t total = serving.TotalMemoryBytes();
    return DeviceMemory{total - serving.FreeMemoryBytes(), total};
  });
  auto endpoint =
      MetricsEndpoint::Start(options.metrics_address, {state->registry, state->resident_collector});
  if (!endpoint.ok()) return endpoint.status();
  state->metrics_endpoint = std::move(*endpoint);
  state->metrics_port = state->metrics_endpoint->port();

  if (options.batching) {
    Batcher::Options batcher_options;
    batcher_options.max_batch_rows = options.max_batch_rows;
    batcher_options.max_queue_delay = std::chrono::microseconds(options.max_queue_delay_us);
    batcher_options.max_queue_size = options.max_queue_size;
    // On a GPU a key keeps a few launches in flight, each on its worker's
    // stream, so consecutive batches overlap their copies and kernels; on
    // the CPU one launch already uses every core.
    batcher_options.max_inflight_per_key = options.max_inflight_batches;
    batcher_options.threads = threads;
    batcher_options.thread_init = [&serving] { serving.InitThread(); };
    batcher_options.metrics = state->metrics.get();
    if (serving.is_cuda()) {
      // On a GPU a batch's answers go to a few threads of their own (not
      // the executor, whose queue may hold long Linear/Ffn work): the
      // worker goes on to the next batch instead of sending every response
      // itself. On the CPU the worker answers (its cores run the kernels).
      state->answerer = std::make_unique<Executor>(
          Executor::Options{std::max(2, threads / 4), options.max_queue_size, nullptr});
      batcher_options.offload =
          [answerer = state->answerer.get()](absl::AnyInvocable<void() &&>* closure) {
            return answerer->TrySchedule(closure);
          };
    }
    state->batcher = std::make_unique<Batcher>(std::move(batcher_options));
  }

  ServiceContext& context = state->context;
  context.store = state->store.get();
  context.executor = state->executor.get();
  context.batcher = state->batcher.get();
  context.metrics = state->metrics.get();
  context.env.store = state->store.get();
  context.env.device = state->device.get();
  context.env.max_message_bytes = options.max_message_bytes;
  context.env.metrics = state->metrics.get();
  context.version = kVersion;
  context.backend = serving.backend_name();
  context.model_dir = options.model_dir;
  context.auth_token = options.auth_token;
  context.access_log = options.access_log;
  context.inline_request_bytes = options.inline_request_bytes;
  context.batching.set_enabled(options.batching);
  context.batching.set_max_batch_rows(options.max_batch_rows);
  context.batching.set_max_queue_delay_us(options.max_queue_delay_us);
  context.batching.set_max_queue_size(options.max_queue_size);
  state->service = std::make_unique<TensorOpsService>(&context);

  // Before the gRPC port opens: gRPC's default health service answers
  // SERVING for "" from the moment it starts, so a server that preloaded
  // after listening would look ready while half-loaded.
  status = Preload(options, backend, *state->store);
  if (!status.ok()) return status;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.grpc_address, grpc::InsecureServerCredentials(),
                           &state->grpc_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(state->service.get());
  state->grpc_server = builder.BuildAndStart();
  if (state->grpc_server == nullptr || state->grpc_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("--grpc_address: cannot listen on ", options.grpc_address));
  }
  grpc::HealthCheckServiceInterface* health = state->grpc_server->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);

  auto server = std::unique_ptr<Server>(new Server(std::move(state)));
  const State& s = *server->state_;
  LOG(INFO) << "accel-server " << kVersion << " ready: backend=" << s.context.backend
            << " device=\"" << device.name() << "\" resident_limit_bytes=" << s.store->limit_bytes()
            << " resident_tensors=" << s.store->size()
            << " resident_bytes=" << s.store->resident_bytes()
            << " max_message_bytes=" << options.max_message_bytes << " executor_threads=" << threads
            << " max_queue_size=" << options.max_queue_size
            << " batching=" << (options.batching ? "on" : "off")
            << " max_batch_rows=" << options.max_batch_rows
            << " max_queue_delay_us=" << options.max_queue_delay_us
            << " max_inflight_batches=" << options.max_inflight_batches
            << " inline_request_bytes=" << options.inline_request_bytes
            << " model_dir=" << (options.model_dir.empty() ? "(none)" : options.model_dir)
            << " auth=" << (options.auth_token.empty() ? "off" : "token")
            << " access_log=" << (options.access_log ? "on" : "off") << " grpc=" << s.grpc_host
            << ":" << s.grpc_port << " metrics=" << s.metrics_host << ":" << s.metrics_port;
  return server;
}

int Server::grpc_port() const { return state_->grpc_port; }
int Server::metrics_port() const { return state_->metrics_port; }

std::string Server::grpc_target() const {
  const std::string& host = state_->grpc_host;
  const bool wildcard = host == "0.0.0.0" || host == "[::]" || host.empty();
  return absl::StrCat(wildcard ? "localhost" : host, ":", state_->grpc_port);
}

std::string Server::ListeningLine() const {
  return absl::StrCat("listening grpc=", state_->grpc_host, ":", state_->grpc_port,
                      " metrics=", state_->metrics_host, ":", state_->metrics_port);
}

void Server::Shutdown(std::chrono::milliseconds grace) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shutdown_started_) {
      shutdown_mu_.Await(absl::Condition(&shutdown_done_));
      return;
    }
    shutdown_started_ = true;
  }
  state_->context.draining.store(true, std::memory_order_release);
  grpc::HealthCheckServiceInterface* health = state_->grpc_server->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
  // gRPC waits for in-flight calls (whose reactors the executor finishes)
  // until the deadline, then cancels the rest; only then may the executor
  // stop.
  state_->grpc_server->Shutdown(std::chrono::system_clock::now() + grace);
  if (state_->batcher != nullptr) state_->batcher->Shutdown();
  if (state_->answerer != nullptr) state_->answerer->Shutdown();  // after the batcher's last
  state_->executor->Shutdown();
  state_->grpc_server->Wait();
  absl::MutexLock lock(&shutdown_mu_);
  shutdown_done_ = true;
}

void Server::Wait() {
  absl::MutexLock lock(&shutdown_mu_);
  shutdown_mu_.Await(absl::Condition(&shutdown_done_));
}

}  // namespace accel::server
