// accel::Client: the C++ client of the accel.v1.TensorOps service.
//
// Used by accelctl, the integration tests and the benchmarks. It wraps one
// gRPC channel and stub with typed helpers that return absl::StatusOr (a gRPC
// status becomes an absl::Status with the same code and message), and adds the
// two things every caller would otherwise repeat: chunked transfers of large
// tensors (Put/Get over the PutTensor/GetTensor streams) and per-call setup
// (deadline, "authorization: Bearer <token>" metadata).
//
//   accel::Client client("localhost:50051");
//   ASSIGN_OR_RETURN(auto info, client.Put("w", DType::kFloat16, {4096}, bytes));
//   accel::v1::RmsNormRequest request;
//   *request.mutable_input() = accel::InlineRef(DType::kFloat16, {2, 4096}, x_bytes);
//   request.mutable_weight()->set_name("w");
//   ASSIGN_OR_RETURN(auto response, client.RmsNorm(request));
//   ASSIGN_OR_RETURN(auto view, accel::ViewTensor(response.output()));
//
// Thread-safety: a Client is safe to use from many threads at once (its
// options are fixed at construction, and the gRPC stub and channel are
// thread-safe). An OpStream allows one concurrent writer and one concurrent
// reader, as gRPC's ClientReaderWriter does.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>
#include <grpcpp/support/sync_stream.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/tensor.h"
#include "accel/v1/tensor_ops.grpc.pb.h"
#include "accel/v1/tensor_ops.pb.h"

namespace accel {

struct ClientOptions {
  // Largest message sent or received, in bytes. Default 512 MiB, the server's
  // default --max_message_bytes. -1 means no limit. Tensors larger than this
  // still travel through Put and Get, which send them in chunks.
  int64_t max_message_bytes = int64_t{512} << 20;
  // When non-empty, every call carries "authorization: Bearer <auth_token>"
  // (the server's --auth_token).
  std::string auth_token;
  // Deadline of every call, from its start; 0 (the default) means none. For
  // the streaming calls (Put, Get, OpenStream) it bounds the whole stream.
  std::chrono::milliseconds default_timeout{0};
};

// Called after each chunk of a transfer with the bytes done so far and the
// total (done == total on the last call). Runs on the calling thread.
using ProgressCallback = std::function<void(int64_t done_bytes, int64_t total_bytes)>;

// grpc::Status -> absl::Status, keeping the code (the numbers are the same)
// and the message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// ------------------------------------------------------------ Tensor helpers

// An accel.v1.Tensor holding `data` (row-major, little-endian bytes). Does
// not validate: tests use it to build malformed tensors on purpose.
v1::Tensor MakeTensor(kernels::DType dtype, const kernels::Shape& shape, std::string data);
// The same for float values, converted to `dtype` (FLOAT32, FLOAT16 or
// BFLOAT16; round to nearest even). CHECK-fails on a non-float dtype.
v1::Tensor MakeFloatTensor(kernels::DType dtype, const kernels::Shape& shape,
                           std::span<const float> values);
// For literals: MakeFloatTensor(DType::kFloat16, {2}, {1.0f, 2.0f}) (a braced
// list does not convert to std::span in C++20).
inline v1::Tensor MakeFloatTensor(kernels::DType dtype, const kernels::Shape& shape,
                                  std::initializer_list<float> values) {
  return MakeFloatTensor(dtype, shape, std::span<const float>(values.begin(), values.size()));
}

// Op inputs: a tensor sent inline, or a resident tensor by name.
v1::TensorRef InlineRef(v1::Tensor tensor);
v1::TensorRef InlineRef(kernels::DType dtype, const kernels::Shape& shape, std::string data);
v1::TensorRef NamedRef(std::string name);

// A view of a response tensor's bytes, after checking that its dtype is
// specified, its shape is valid and len(data) == prod(shape) * itemsize.
// The view points into `tensor`, which must outlive it. INVALID_ARGUMENT
// otherwise (e.g. for a result kept resident, whose data is empty).
absl::StatusOr<kernels::ConstTensorView> ViewTensor(const v1::Tensor& tensor);
// The tensor's values as float32 (any float or integer dtype), for tests and
// printing.
absl::StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& tensor);

// A resident tensor fetched with Client::Get.
struct FetchedTensor {
  v1::TensorInfo info;
  // The values: prod(info.shape) * itemsize(info.dtype) bytes (INT8 for a
  // quantized tensor).
  std::string data;
  // For a quantized tensor (info.quantized()), its FLOAT32 scales ([] or
  // [rows]); otherwise empty.
  v1::Tensor scales;

  kernels::DType dtype() const { return static_cast<kernels::DType>(info.dtype()); }
  kernels::Shape shape() const { return {info.shape().begin(), info.shape().end()}; }
  // The values as a Tensor message (copies the data).
  v1::Tensor ToTensor() const { return MakeTensor(dtype(), shape(), data); }
};

// One call of the bidirectional Stream RPC. Write requests and Read responses
// (matched by id; they may come out of order), then Finish.
class OpStream {
 public:
  ~OpStream();  // cancels the call if Finish was not called
  OpStream(const OpStream&) = delete;
  OpStream& operator=(const OpStream&) = delete;

  // False when the stream is broken; Finish then tells why.
  bool Write(const v1::StreamRequest& request);
  // False when no more responses will come.
  bool Read(v1::StreamResponse* response);
  // Half-closes the stream, discards responses not yet read, and returns the
  // call's final status.
  absl::Status Finish();
  // For TryCancel() and metadata.
  grpc::ClientContext& context() { return *context_; }

 private:
  friend class Client;
  OpStream() = default;

  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>> stream_;
  bool finished_ = false;
};

// ----------------------------------------------------------------- Client

class Client {
 public:
  static constexpr int64_t kDefaultChunkBytes = int64_t{4} << 20;

  // Connects (lazily, on the first call) to `target`, e.g. "localhost:50051",
  // over an insecure channel with options.max_message_bytes as the send and
  // receive limits.
  explicit Client(const std::string& target, ClientOptions options = {});
  // Uses an existing channel (e.g. a server's InProcessChannel in tests); its
  // message limits are the channel's own.
  explicit Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

  // Waits until the channel is connected, or `timeout` passes (UNAVAILABLE).
  absl::Status WaitForConnected(std::chrono::milliseconds timeout);

  // --------------------------------------------------- Resident tensors

  // Stores `data` (prod(shape) * itemsize bytes, checked here before anything
  // is sent) under `name` with PutTensor, in chunks of `chunk_bytes` (capped
  // to fit a message).
  absl::StatusOr<v1::TensorInfo> Put(const std::string& name, kernels::DType dtype,
                                     const kernels::Shape& shape, std::string_view data,
                                     bool overwrite = false,
                                     int64_t chunk_bytes = kDefaultChunkBytes,
                                     const ProgressCallback& progress = nullptr);
  absl::StatusOr<v1::TensorInfo> Put(const std::string& name, const v1::Tensor& tensor,
                                     bool overwrite = false);

  // Fetches a resident tensor with GetTensor. `chunk_bytes` 0 lets the
  // server choose. DATA_LOSS if the server sends another size than its info
  // declares.
  absl::StatusOr<FetchedTensor> Get(const std::string& name,
                                    const ProgressCallback& progress = nullptr,
                                    int64_t chunk_bytes = 0);

  // LoadTensors: `path` is relative to the server's --model_dir.
  absl::StatusOr<std::vector<v1::TensorInfo>> Load(
      const std::string& path, const std::string& prefix = "",
      const std::vector<std::string>& include = {},
      kernels::DType dtype = kernels::DType::kUnspecified, bool quantize_int8 = false,
      bool overwrite = false);

  absl::StatusOr<std::vector<v1::TensorInfo>> List();
  // Returns the deleted tensor's info.
  absl::StatusOr<v1::TensorInfo> Delete(const std::string& name);
  absl::StatusOr<v1::GetServerInfoResponse> ServerInfo();

  // ---------------------------------------------------------------- Ops

  absl::StatusOr<v1::RmsNormResponse> RmsNorm(const v1::RmsNormRequest& request);
  absl::StatusOr<v1::SwiGluResponse> SwiGlu(const v1::SwiGluRequest& request);
  absl::StatusOr<v1::LinearResponse> Linear(const v1::LinearRequest& request);
  absl::StatusOr<v1::FfnResponse> Ffn(const v1::FfnRequest& request);
  absl::StatusOr<v1::RopeResponse> Rope(const v1::RopeRequest& request);
  absl::StatusOr<v1::TensorInfo> BuildRopeCache(const v1::BuildRopeCacheRequest& request);
  absl::StatusOr<v1::QuantizeResponse> Quantize(const v1::QuantizeRequest& request);
  absl::StatusOr<v1::DequantizeResponse> Dequantize(const v1::DequantizeRequest& request);
  absl::StatusOr<v1::QuantizationErrorResponse> QuantizationError(
      const v1::QuantizationErrorRequest& request);
  absl::StatusOr<v1::TensorInfo> QuantizeWeight(const v1::QuantizeWeightRequest& request);

  // Opens a Stream call (with this client's deadline and token).
  std::unique_ptr<OpStream> OpenStream();

  // ------------------------------------------------------------ Raw access

  // For requests the typed helpers would refuse to build. Prepare each
  // context with ConfigureContext to get the token and the deadline.
  v1::TensorOps::Stub& stub() { return *stub_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // Sets the deadline (options.default_timeout) and the authorization
  // metadata on a fresh context.
  void ConfigureContext(grpc::ClientContext& context) const;
  const ClientOptions& options() const { return options_; }

 private:
  template <typename Request, typename Response>
  absl::StatusOr<Response> Unary(grpc::Status (v1::TensorOps::Stub::*method)(grpc::ClientContext*,
                                                                             const Request&,
                                                                             Response*),
                                 const Request& request);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::TensorOps::Stub> stub_;
};

}  // namespace accel
