// The resident tensor store: named tensors kept on the serving device
// (weights, quantized weights, RoPE caches, op outputs), with every byte
// accounted against a limit.
//
// Used by the service (PutTensor, LoadTensors, ops with output_name) and the
// executor (reading inputs by name). A tensor is immutable once inserted and
// handed out as a shared_ptr, so a running op keeps its inputs alive even if
// a concurrent call deletes or replaces the name. Every mutation is atomic:
// a failed call changes nothing. Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "accel/kernels/buffer.h"
#include "accel/kernels/tensor.h"

namespace accel::server {

// One resident tensor. A quantized tensor holds INT8 values and FLOAT32
// scales ([] per tensor, [rows] per row).
struct ResidentTensor {
  std::string name;
  kernels::DType dtype = kernels::DType::kUnspecified;
  kernels::Shape shape;
  kernels::Buffer values;
  std::optional<kernels::Buffer> scales;  // set iff quantized
  kernels::Shape scales_shape;

  bool quantized() const { return scales.has_value(); }
  // Bytes held: values plus scales.
  int64_t nbytes() const;
  kernels::ConstTensorView view() const;
  // FLOAT32 view of the scales; only for a quantized tensor.
  kernels::ConstTensorView scales_view() const;
};
using ResidentTensorPtr = std::shared_ptr<const ResidentTensor>;

// INVALID_ARGUMENT unless `name` is 1-256 characters from [A-Za-z0-9._:/-],
// does not start with '/' and holds no "..". `field` names the request field
// in the message ("name: expected ...").
absl::Status ValidateTensorName(std::string_view name, std::string_view field);

class TensorStore;

// Quota held for bytes about to become resident (an upload in progress, an
// op output being computed). Released on destruction unless committed by an
// insert. Move-only.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;
  ~Reservation();
  int64_t bytes() const { return bytes_; }

 private:
  friend class TensorStore;
  Reservation(TensorStore* store, int64_t bytes) : store_(store), bytes_(bytes) {}
  TensorStore* store_ = nullptr;
  int64_t bytes_ = 0;
};

class TensorStore {
 public:
  struct Options {
    // Most bytes resident at once, counting reservations. A new tensor
    // that replaces another coexists with it until the insert, so both count.
    int64_t limit_bytes = 0;
    // Reported in TensorInfo.device: "cpu" or "cuda:0".
    std::string device_name = "cpu";
  };
  explicit TensorStore(Options options);
  TensorStore(const TensorStore&) = delete;
  TensorStore& operator=(const TensorStore&) = delete;

  // Holds `bytes` of quota; RESOURCE_EXHAUSTED (naming the sizes) when
  // resident + reserved + bytes would pass the limit.
  absl::StatusOr<Reservation> Reserve(int64_t bytes);

  // Makes `tensor` resident under tensor->name, converting the reservation
  // (which must hold at least tensor->nbytes()) into resident bytes. An
  // existing tensor of that name is replaced when `overwrite`, else
  // ALREADY_EXISTS and nothing changes. Only the bytes inserted are taken
  // from the reservation: a surplus stays reserved until it is destroyed; a
  // shortfall (or an empty Reservation) is taken from the free quota, or
  // RESOURCE_EXHAUSTED. A failed call leaves the reservation as it was. A
  // malformed name is INVALID_ARGUMENT; buffers that disagree with the
  // tensor's dtype and shape are INTERNAL (a caller's bug).
  absl::Status Insert(std::shared_ptr<ResidentTensor> tensor, bool overwrite,
                      Reservation& reservation);
  // All or nothing: every name is checked before any is inserted. The same
  // name twice in `tensors` is INVALID_ARGUMENT.
  absl::Status InsertAll(std::vector<std::shared_ptr<ResidentTensor>> tensors, bool overwrite,
                         Reservation& reservation);

  // NOT_FOUND ("<field>: no resident tensor named 'x'") when absent.
  absl::StatusOr<ResidentTensorPtr> Get(std::string_view name,
                                        std::string_view field = "name") const;
  absl::StatusOr<ResidentTensorPtr> Remove(std::string_view name);
  // Every resident tensor, sorted by name.
  std::vector<ResidentTensorPtr> List() const;

  int64_t resident_bytes() const;
  int64_t reserved_bytes() const;
  int64_t limit_bytes() const { return options_.limit_bytes; }
  int64_t size() const;
  const std::string& device_name() const { return options_.device_name; }

 private:
  friend class Reservation;
  void ReleaseReservation(int64_t bytes);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, ResidentTensorPtr> tensors_ ABSL_GUARDED_BY(mu_);
  int64_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reserved_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace accel::server
