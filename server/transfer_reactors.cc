#include "server/transfer_reactors.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "accel/util/logging.h"
#include "accel/util/status_macros.h"
#include "server/call_metrics.h"
#include "server/status_util.h"
#include "server/tensor_codec.h"

namespace accel::server {
namespace {

constexpr int64_t kDefaultChunkBytes = int64_t{1} << 20;
constexpr int64_t kMinChunkBytes = int64_t{4} << 10;
// Room for the non-data fields of a GetTensorResponse (info, scales header).
constexpr int64_t kMessageOverheadBytes = int64_t{64} << 10;

}  // namespace

// ------------------------------------------------------------ PutTensor

PutTensorReactor::PutTensorReactor(ServiceContext* service, grpc::CallbackServerContext* call,
                                   v1::TensorInfo* response)
    : service_(service),
      call_(call),
      response_(response),
      start_(std::chrono::steady_clock::now()) {
  absl::Status admitted = Admit(*service_, *call_);
  if (!admitted.ok()) {
    FinishWith(admitted);
    return;
  }
  StartRead(&message_);
}

void PutTensorReactor::OnReadDone(bool ok) {
  // Runs on a gRPC thread: select the serving GPU before touching its memory.
  service_->env.device->MakeCurrent();
  absl::Status status;
  if (!ok) {
    // The client closed its side (or went away): complete the tensor.
    FinishWith(Complete());
    return;
  }
  service_->metrics->AddBytesReceived(static_cast<int64_t>(message_.data().size()));
  status = tensor_ == nullptr ? Begin(message_) : Append(message_.data());
  if (!status.ok()) {
    FinishWith(status);
    return;
  }
  StartRead(&message_);
}

absl::Status PutTensorReactor::Begin(const v1::PutTensorRequest& first) {
  RETURN_IF_ERROR(ValidateTensorName(first.name(), "name"));
  ASSIGN_OR_RETURN(kernels::DType dtype, DTypeFromProto(first.dtype(), "dtype"));
  ASSIGN_OR_RETURN(kernels::Shape shape, ShapeFromProto(first.shape(), "shape"));
  overwrite_ = first.overwrite();
  // Refuse a taken name before the client uploads gigabytes for nothing;
  // Insert checks again at the end.
  if (!overwrite_ && service_->store->Get(first.name()).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("name: a resident tensor named '", first.name(),
                                                 "' exists (set overwrite to replace it)"));
  }
  auto tensor = std::make_shared<ResidentTensor>();
  tensor->name = first.name();
  tensor->dtype = dtype;
  tensor->shape = std::move(shape);
  const int64_t nbytes = kernels::NumElements(tensor->shape) * kernels::ItemSize(dtype);
  ASSIGN_OR_RETURN(reservation_, service_->store->Reserve(nbytes));
  ASSIGN_OR_RETURN(tensor->values, kernels::Buffer::Allocate(service_->env.device->backend(),
                                                             static_cast<size_t>(nbytes)));
  tensor_ = std::move(tensor);
  return Append(first.data());
}

absl::Status PutTensorReactor::Append(const std::string& data) {
  const size_t declared = tensor_->values.size();
  if (data.size() > declared - received_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data: received more than the declared ", declared, " bytes (",
        kernels::ShapeToString(tensor_->shape), " ", kernels::DTypeName(tensor_->dtype), ")"));
  }
  RETURN_IF_ERROR(kernels::CopyToBuffer(data.data(), data.size(), tensor_->values, received_));
  received_ += data.size();
  return absl::OkStatus();
}

absl::Status PutTensorReactor::Complete() {
  if (call_->IsCancelled()) {
    return absl::CancelledError("the client cancelled the upload; nothing was stored");
  }
  if (tensor_ == nullptr) {
    return absl::InvalidArgumentError(
        "name: expected a first message with name, dtype and shape, found an empty stream");
  }
  if (received_ != tensor_->values.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data: expected ", tensor_->values.size(), " bytes in total (",
        kernels::ShapeToString(tensor_->shape), " ", kernels::DTypeName(tensor_->dtype),
        "), received ", received_, "; nothing was stored"));
  }
  FillTensorInfo(*tensor_, service_->store->device_name(), response_);
  return service_->store->Insert(std::move(tensor_), overwrite_, reservation_);
}

void PutTensorReactor::FinishWith(const absl::Status& status) {
  tensor_ = nullptr;
  reservation_ = Reservation();
  service_->metrics->RecordRequest(Method::kPutTensor, status.code(), SecondsSince(start_));
  if (service_->access_log) {
    // Request bytes: the tensor data accepted (the stream's payload).
    LogAccess(*call_, Method::kPutTensor, status.code(), static_cast<int64_t>(received_),
              status.ok() ? static_cast<int64_t>(response_->ByteSizeLong()) : 0, start_);
  }
  if (!status.ok() && status.code() != absl::StatusCode::kCancelled) {
    LOG_EVERY_N_SEC(WARNING, 1.0) << "PutTensor rejected: " << status;
  }
  Finish(ToGrpcStatus(status));
}

// ------------------------------------------------------------ GetTensor

GetTensorReactor::GetTensorReactor(ServiceContext* service, grpc::CallbackServerContext* call,
                                   const v1::GetTensorRequest* request)
    : service_(service), call_(call), request_(request), start_(std::chrono::steady_clock::now()) {
  absl::Status status = Admit(*service_, *call);
  if (status.ok()) status = Start(*request);
  if (!status.ok()) {
    FinishWith(status);
    return;
  }
  WriteNext();
}

absl::Status GetTensorReactor::Start(const v1::GetTensorRequest& request) {
  if (request.name().empty()) {
    return absl::InvalidArgumentError("name: required (the resident tensor to read)");
  }
  if (request.chunk_bytes() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_bytes: expected >= 0 (0 = 1 MiB), found ", request.chunk_bytes()));
  }
  ASSIGN_OR_RETURN(tensor_, service_->store->Get(request.name(), "name"));
  const int64_t max_chunk =
      std::max(kMinChunkBytes, service_->env.max_message_bytes - kMessageOverheadBytes);
  int64_t chunk = request.chunk_bytes() == 0 ? kDefaultChunkBytes : request.chunk_bytes();
  chunk_bytes_ = static_cast<size_t>(std::clamp(chunk, kMinChunkBytes, max_chunk));

  FillTensorInfo(*tensor_, service_->store->device_name(), message_.mutable_info());
  if (tensor_->quantized()) {
    v1::Tensor* scales = message_.mutable_scales();
    scales->set_dtype(v1::FLOAT32);
    scales->mutable_shape()->Assign(tensor_->scales_shape.begin(), tensor_->scales_shape.end());
    scales->mutable_data()->resize(tensor_->scales->size());
    RETURN_IF_ERROR(kernels::CopyFromBuffer(*tensor_->scales, 0, tensor_->scales->size(),
                                            scales->mutable_data()->data()));
  }
  return absl::OkStatus();
}

void GetTensorReactor::WriteNext() {
  service_->env.device->MakeCurrent();
  const size_t total = tensor_->values.size();
  if (!first_ && sent_ >= total) {
    FinishWith(absl::OkStatus());
    return;
  }
  if (!first_) {
    message_.clear_info();
    message_.clear_scales();
  }
  first_ = false;
  const size_t n = std::min(chunk_bytes_, total - sent_);
  std::string* data = message_.mutable_data();
  data->resize(n);
  absl::Status copied = kernels::CopyFromBuffer(tensor_->values, sent_, n, data->data());
  if (!copied.ok()) {
    FinishWith(absl::InternalError(absl::StrCat("reading the tensor failed: ", copied.message())));
    return;
  }
  sent_ += n;
  service_->metrics->AddBytesSent(static_cast<int64_t>(n));
  StartWrite(&message_);
}

void GetTensorReactor::OnWriteDone(bool ok) {
  if (!ok) {
    FinishWith(absl::CancelledError("the client went away during GetTensor"));
    return;
  }
  WriteNext();
}

void GetTensorReactor::FinishWith(const absl::Status& status) {
  service_->metrics->RecordRequest(Method::kGetTensor, status.code(), SecondsSince(start_));
  if (service_->access_log) {
    // Response bytes: the tensor data written (the stream's payload).
    LogAccess(*call_, Method::kGetTensor, status.code(),
              static_cast<int64_t>(request_->ByteSizeLong()), static_cast<int64_t>(sent_), start_);
  }
  if (!status.ok() && status.code() != absl::StatusCode::kCancelled) {
    LOG_EVERY_N_SEC(WARNING, 1.0) << "GetTensor rejected: " << status;
  }
  Finish(ToGrpcStatus(status));
}

}  // namespace accel::server
