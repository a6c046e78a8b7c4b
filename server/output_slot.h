// Where an op writes one result: straight into the response's Tensor bytes,
// or into a new resident tensor when the request named an output.
//
// A resident result is computed into a fresh buffer whose bytes are reserved
// against the quota before the kernel runs, and it becomes visible only on
// Commit(), after the op succeeded: a failed op never replaces a tensor, and
// an op may name one of its own inputs as its output. Not thread-safe; one
// slot belongs to one call.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "accel/kernels/ops.h"
#include "accel/v1/tensor_ops.pb.h"
#include "server/serving_device.h"
#include "server/tensor_codec.h"
#include "server/tensor_store.h"

namespace accel::server {

// What the op runners need of the server.
struct OpEnv {
  TensorStore* store = nullptr;
  const ServingDevice* device = nullptr;
  // Results larger than this must stay resident (output_name).
  int64_t max_message_bytes = int64_t{512} << 20;
  // Receives each call's device phases on the GPU (may be null).
  ServerMetrics* metrics = nullptr;
};

class OutputSlot {
 public:
  // `name` is the request's output name (empty: return the data inline);
  // `name_field` its field, for messages. `proto` receives dtype and shape
  // (and the data when inline, copied back by scope.Finish() on a GPU).
  static absl::StatusOr<OutputSlot> Make(const OpEnv& env, CallScope& scope,
                                         const std::string& name, absl::string_view name_field,
                                         const kernels::OutputSpec& spec, v1::Tensor* proto);

  const kernels::TensorView& view() const { return view_; }
  bool resident() const { return tensor_ != nullptr; }

  // Makes a resident result visible under its name (replacing any tensor of
  // that name). A no-op for inline results. Call after scope.Finish(), so
  // that no reader sees the bytes before the kernel wrote them.
  absl::Status Commit();

 private:
  OutputSlot() = default;

  TensorStore* store_ = nullptr;
  std::shared_ptr<ResidentTensor> tensor_;
  Reservation reservation_;
  kernels::TensorView view_;
};

// The input's view where the kernels run: resident tensors already live on
// the device; inline ones are staged there (a no-op on the CPU). `reads`:
// how many times the kernels read it (CallScope::Stage).
absl::StatusOr<kernels::ConstTensorView> StageInput(CallScope& scope, const ResolvedInput& input,
                                                    int64_t reads = 1);

// A resident quantized result (values + scales), reserved before the kernel
// runs and inserted after it succeeded.
struct QuantizedOutput {
  std::shared_ptr<ResidentTensor> tensor;
  Reservation reservation;
  kernels::TensorView values;
  kernels::TensorView scales;
};
absl::StatusOr<QuantizedOutput> MakeQuantizedOutput(const OpEnv& env, const std::string& name,
                                                    const kernels::QuantizeSpec& spec);

// RESOURCE_EXHAUSTED unless `nbytes` fits in a response message.
absl::Status CheckFitsInMessage(const OpEnv& env, int64_t nbytes, absl::string_view field);

}  // namespace accel::server
