#include "client/client.h"

#include <algorithm>
#include <climits>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "accel/kernels/convert.h"
#include "accel/util/logging.h"

namespace accel {
namespace {

using kernels::DType;

// Room for a PutTensorRequest's name, dtype and shape next to its data, so
// that a chunk as large as the message limit allows still fits.
constexpr int64_t kPutEnvelopeBytes = 64 << 10;

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target,
                                           const ClientOptions& options) {
  grpc::ChannelArguments args;
  const int limit = options.max_message_bytes < 0
                        ? -1
                        : static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT_MAX));
  args.SetMaxReceiveMessageSize(limit);
  args.SetMaxSendMessageSize(limit);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

bool IsValidDType(v1::DType dtype) {
  return dtype > v1::DTYPE_UNSPECIFIED && dtype <= kernels::kMaxDTypeValue;
}

// Number of bytes of a tensor of this dtype and shape, or an error naming
// what is wrong with them.
absl::StatusOr<int64_t> TensorBytes(DType dtype, std::span<const int64_t> shape) {
  if (kernels::ItemSize(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype ", kernels::DTypeName(dtype), " is not a tensor element type"));
  }
  int64_t n = 1;
  for (int64_t extent : shape) {
    if (extent < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", kernels::ShapeToString(shape), " has a negative extent"));
    }
  }
  for (int64_t extent : shape) {
    if (extent == 0) return 0;
    if (__builtin_mul_overflow(n, extent, &n) || n > kernels::kMaxElements) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", kernels::ShapeToString(shape), " has too many elements"));
    }
  }
  return n * static_cast<int64_t>(kernels::ItemSize(dtype));
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// ----------------------------------------------------------- Tensor helpers

v1::Tensor MakeTensor(DType dtype, const kernels::Shape& shape, std::string data) {
  v1::Tensor tensor;
  tensor.set_dtype(static_cast<v1::DType>(dtype));
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  tensor.set_data(std::move(data));
  return tensor;
}

v1::Tensor MakeFloatTensor(DType dtype, const kernels::Shape& shape,
                           std::span<const float> values) {
  CHECK(kernels::IsFloat(dtype)) << "MakeFloatTensor needs a float dtype, got "
                                 << kernels::DTypeName(dtype);
  CHECK_EQ(static_cast<int64_t>(values.size()), kernels::NumElements(shape));
  std::string data(values.size() * kernels::ItemSize(dtype), '\0');
  kernels::ConvertFloats(DType::kFloat32, values.data(), dtype, data.data(),
                         static_cast<int64_t>(values.size()));
  return MakeTensor(dtype, shape, std::move(data));
}

v1::TensorRef InlineRef(v1::Tensor tensor) {
  v1::TensorRef ref;
  *ref.mutable_value() = std::move(tensor);
  return ref;
}

v1::TensorRef InlineRef(DType dtype, const kernels::Shape& shape, std::string data) {
  return InlineRef(MakeTensor(dtype, shape, std::move(data)));
}

v1::TensorRef NamedRef(std::string name) {
  v1::TensorRef ref;
  ref.set_name(std::move(name));
  return ref;
}

absl::StatusOr<kernels::ConstTensorView> ViewTensor(const v1::Tensor& tensor) {
  if (!IsValidDType(tensor.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor has no valid dtype (", static_cast<int>(tensor.dtype()), ")"));
  }
  kernels::ConstTensorView view;
  view.dtype = static_cast<DType>(tensor.dtype());
  view.shape.assign(tensor.shape().begin(), tensor.shape().end());
  auto nbytes = TensorBytes(view.dtype, view.shape);
  if (!nbytes.ok()) return nbytes.status();
  if (static_cast<int64_t>(tensor.data().size()) != *nbytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a %s tensor of shape %s needs %d data bytes, found %d%s", kernels::DTypeName(view.dtype),
        kernels::ShapeToString(view.shape), *nbytes, tensor.data().size(),
        tensor.data().empty() ? " (a result kept resident with output_name has no data)" : ""));
  }
  view.data = tensor.data().data();
  return view;
}

absl::StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& tensor) {
  auto view = ViewTensor(tensor);
  if (!view.ok()) return view.status();
  const int64_t n = view->num_elements();
  std::vector<float> out(static_cast<size_t>(n));
  if (kernels::IsFloat(view->dtype)) {
    kernels::ConvertFloats(view->dtype, view->data, DType::kFloat32, out.data(), n);
    return out;
  }
  auto widen = [&](auto* typed) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(typed[i]);
  };
  switch (view->dtype) {
    case DType::kInt8:
      widen(view->as<int8_t>());
      break;
    case DType::kInt32:
      widen(view->as<int32_t>());
      break;
    case DType::kInt64:
      widen(view->as<int64_t>());
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read ", kernels::DTypeName(view->dtype), " as floats"));
  }
  return out;
}

// ------------------------------------------------------------------ OpStream

OpStream::~OpStream() {
  if (!finished_ && stream_ != nullptr) {
    // Tell the server we are gone rather than leave the call open; Finish
    // then returns at once with CANCELLED.
    context_->TryCancel();
    Finish().IgnoreError();
  }
}

bool OpStream::Write(const v1::StreamRequest& request) { return stream_->Write(request); }

bool OpStream::Read(v1::StreamResponse* response) { return stream_->Read(response); }

absl::Status OpStream::Finish() {
  if (finished_) return absl::FailedPreconditionError("OpStream::Finish called twice");
  finished_ = true;
  stream_->WritesDone();
  // gRPC's Finish expects every message to have been read.
  v1::StreamResponse ignored;
  while (stream_->Read(&ignored)) {
  }
  return FromGrpcStatus(stream_->Finish());
}

// -------------------------------------------------------------------- Client

Client::Client(const std::string& target, ClientOptions options)
    : Client(MakeChannel(target, options), std::move(options)) {}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::TensorOps::NewStub(channel_)) {}

void Client::ConfigureContext(grpc::ClientContext& context) const {
  if (options_.default_timeout.count() > 0) {
    context.set_deadline(std::chrono::system_clock::now() + options_.default_timeout);
  }
  if (!options_.auth_token.empty()) {
    context.AddMetadata("authorization", "Bearer " + options_.auth_token);
  }
}

absl::Status Client::WaitForConnected(std::chrono::milliseconds timeout) {
  if (channel_->WaitForConnected(std::chrono::system_clock::now() + timeout)) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(
      absl::StrCat("not connected to the server after ", timeout.count(), " ms"));
}

template <typename Request, typename Response>
absl::StatusOr<Response> Client::Unary(
    grpc::Status (v1::TensorOps::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request) {
  grpc::ClientContext context;
  ConfigureContext(context);
  Response response;
  grpc::Status status = (stub_.get()->*method)(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::TensorInfo> Client::Put(const std::string& name, DType dtype,
                                           const kernels::Shape& shape, std::string_view data,
                                           bool overwrite, int64_t chunk_bytes,
                                           const ProgressCallback& progress) {
  auto nbytes = TensorBytes(dtype, shape);
  if (!nbytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Put '", name, "': ", nbytes.status().message()));
  }
  const int64_t total = static_cast<int64_t>(data.size());
  if (total != *nbytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Put '%s': a %s tensor of shape %s needs %d bytes, but %d were given", name,
                        kernels::DTypeName(dtype), kernels::ShapeToString(shape), *nbytes, total));
  }
  if (chunk_bytes <= 0) chunk_bytes = kDefaultChunkBytes;
  if (options_.max_message_bytes > 0) {
    chunk_bytes =
        std::min(chunk_bytes, std::max<int64_t>(options_.max_message_bytes - kPutEnvelopeBytes, 1));
  }

  grpc::ClientContext context;
  ConfigureContext(context);
  v1::TensorInfo info;
  std::unique_ptr<grpc::ClientWriter<v1::PutTensorRequest>> writer =
      stub_->PutTensor(&context, &info);

  v1::PutTensorRequest message;
  message.set_name(name);
  message.set_dtype(static_cast<v1::DType>(dtype));
  message.mutable_shape()->Add(shape.begin(), shape.end());
  message.set_overwrite(overwrite);
  int64_t sent = 0;
  // The first message carries the header even for an empty tensor.
  do {
    const int64_t n = std::min(chunk_bytes, total - sent);
    message.set_data(data.data() + sent, static_cast<size_t>(n));
    // A failed Write means the server has already answered (say
    // ALREADY_EXISTS); Finish below returns its status.
    if (!writer->Write(message)) break;
    sent += n;
    if (progress) progress(sent, total);
    message.Clear();
  } while (sent < total);
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return info;
}

absl::StatusOr<v1::TensorInfo> Client::Put(const std::string& name, const v1::Tensor& tensor,
                                           bool overwrite) {
  return Put(name, static_cast<DType>(tensor.dtype()),
             kernels::Shape(tensor.shape().begin(), tensor.shape().end()), tensor.data(),
             overwrite);
}

absl::StatusOr<FetchedTensor> Client::Get(const std::string& name, const ProgressCallback& progress,
                                          int64_t chunk_bytes) {
  grpc::ClientContext context;
  ConfigureContext(context);
  v1::GetTensorRequest request;
  request.set_name(name);
  request.set_chunk_bytes(chunk_bytes);
  std::unique_ptr<grpc::ClientReader<v1::GetTensorResponse>> reader =
      stub_->GetTensor(&context, request);

  FetchedTensor result;
  int64_t expected = -1;
  v1::GetTensorResponse message;
  bool first = true;
  while (reader->Read(&message)) {
    if (first) {
      first = false;
      result.info = std::move(*message.mutable_info());
      result.scales = std::move(*message.mutable_scales());
      auto nbytes = TensorBytes(result.dtype(), result.shape());
      if (nbytes.ok()) {
        expected = *nbytes;
        result.data.reserve(static_cast<size_t>(expected));
      }
    }
    result.data.append(message.data());
    if (progress)
      progress(static_cast<int64_t>(result.data.size()), std::max<int64_t>(expected, 0));
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (first) {
    return absl::DataLossError(absl::StrCat("GetTensor '", name, "' returned no message"));
  }
  if (expected < 0 || static_cast<int64_t>(result.data.size()) != expected) {
    return absl::DataLossError(
        absl::StrFormat("GetTensor '%s': the server sent %d bytes for a %s tensor of shape %s",
                        name, result.data.size(), kernels::DTypeName(result.dtype()),
                        kernels::ShapeToString(result.shape())));
  }
  if (progress && expected == 0) progress(0, 0);
  return result;
}

absl::StatusOr<std::vector<v1::TensorInfo>> Client::Load(const std::string& path,
                                                         const std::string& prefix,
                                                         const std::vector<std::string>& include,
                                                         DType dtype, bool quantize_int8,
                                                         bool overwrite) {
  v1::LoadTensorsRequest request;
  request.set_path(path);
  request.set_prefix(prefix);
  request.mutable_include()->Add(include.begin(), include.end());
  request.set_dtype(static_cast<v1::DType>(dtype));
  request.set_quantize_int8(quantize_int8);
  request.set_overwrite(overwrite);
  auto response = Unary(&v1::TensorOps::Stub::LoadTensors, request);
  if (!response.ok()) return response.status();
  return std::vector<v1::TensorInfo>(response->tensors().begin(), response->tensors().end());
}

absl::StatusOr<std::vector<v1::TensorInfo>> Client::List() {
  auto response = Unary(&v1::TensorOps::Stub::ListTensors, v1::ListTensorsRequest());
  if (!response.ok()) return response.status();
  return std::vector<v1::TensorInfo>(response->tensors().begin(), response->tensors().end());
}

absl::StatusOr<v1::TensorInfo> Client::Delete(const std::string& name) {
  v1::DeleteTensorRequest request;
  request.set_name(name);
  auto response = Unary(&v1::TensorOps::Stub::DeleteTensor, request);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_deleted());
}

absl::StatusOr<v1::GetServerInfoResponse> Client::ServerInfo() {
  return Unary(&v1::TensorOps::Stub::GetServerInfo, v1::GetServerInfoRequest());
}

absl::StatusOr<v1::RmsNormResponse> Client::RmsNorm(const v1::RmsNormRequest& request) {
  return Unary(&v1::TensorOps::Stub::RmsNorm, request);
}

absl::StatusOr<v1::SwiGluResponse> Client::SwiGlu(const v1::SwiGluRequest& request) {
  return Unary(&v1::TensorOps::Stub::SwiGlu, request);
}

absl::StatusOr<v1::LinearResponse> Client::Linear(const v1::LinearRequest& request) {
  return Unary(&v1::TensorOps::Stub::Linear, request);
}

absl::StatusOr<v1::FfnResponse> Client::Ffn(const v1::FfnRequest& request) {
  return Unary(&v1::TensorOps::Stub::Ffn, request);
}

absl::StatusOr<v1::RopeResponse> Client::Rope(const v1::RopeRequest& request) {
  return Unary(&v1::TensorOps::Stub::Rope, request);
}

absl::StatusOr<v1::TensorInfo> Client::BuildRopeCache(const v1::BuildRopeCacheRequest& request) {
  return Unary(&v1::TensorOps::Stub::BuildRopeCache, request);
}

absl::StatusOr<v1::QuantizeResponse> Client::Quantize(const v1::QuantizeRequest& request) {
  return Unary(&v1::TensorOps::Stub::Quantize, request);
}

absl::StatusOr<v1::DequantizeResponse> Client::Dequantize(const v1::DequantizeRequest& request) {
  return Unary(&v1::TensorOps::Stub::Dequantize, request);
}

absl::StatusOr<v1::QuantizationErrorResponse> Client::QuantizationError(
    const v1::QuantizationErrorRequest& request) {
  return Unary(&v1::TensorOps::Stub::QuantizationError, request);
}

absl::StatusOr<v1::TensorInfo> Client::QuantizeWeight(const v1::QuantizeWeightRequest& request) {
  return Unary(&v1::TensorOps::Stub::QuantizeWeight, request);
}

std::unique_ptr<OpStream> Client::OpenStream() {
  std::unique_ptr<OpStream> stream(new OpStream());
  stream->context_ = std::make_unique<grpc::ClientContext>();
  ConfigureContext(*stream->context_);
  stream->stream_ = stub_->Stream(stream->context_.get());
  return stream;
}

}  // namespace accel
