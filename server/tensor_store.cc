#include "server/tensor_store.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "accel/util/logging.h"
#include "accel/util/status_macros.h"

namespace accel::server {
namespace {

constexpr size_t kMaxNameLength = 256;

// Debian's Abseil has its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), which std::string_view does not convert to.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '/' || c == '-';
}

// Names come from clients and files: quote them printable and short.
std::string QuoteName(std::string_view name) {
  constexpr size_t kMaxQuoted = 64;
  std::string out = absl::StrCat("'", absl::CHexEscape(AsAbsl(name.substr(0, kMaxQuoted))), "'");
  if (name.size() > kMaxQuoted) absl::StrAppend(&out, "...");
  return out;
}

absl::Status QuotaError(int64_t requested, int64_t resident, int64_t reserved, int64_t limit) {
  return absl::ResourceExhaustedError(
      absl::StrCat("resident memory quota exceeded: ", requested, " bytes requested, ", resident,
                   " resident, ", reserved, " reserved, limit ", limit, " (--max_resident_bytes)"));
}

// A tensor whose buffers do not match its dtype and shape would make every
// later reader overrun; the store is the last place to catch the caller's bug
// without taking the server down.
absl::Status CheckConsistent(const ResidentTensor& tensor) {
  const std::string where = absl::StrCat("tensor ", QuoteName(tensor.name));
  const size_t itemsize = kernels::ItemSize(tensor.dtype);
  if (itemsize == 0) return absl::InternalError(absl::StrCat(where, ": dtype unspecified"));
  const size_t expected = static_cast<size_t>(kernels::NumElements(tensor.shape)) * itemsize;
  if (tensor.values.size() != expected) {
    return absl::InternalError(absl::StrCat(where, ": values hold ", tensor.values.size(),
                                            " bytes, but ", kernels::DTypeName(tensor.dtype), " ",
                                            kernels::ShapeToString(tensor.shape), " needs ",
                                            expected));
  }
  if (tensor.scales.has_value()) {
    const size_t scales_expected =
        static_cast<size_t>(kernels::NumElements(tensor.scales_shape)) * sizeof(float);
    if (tensor.dtype != kernels::DType::kInt8 || tensor.scales->size() != scales_expected) {
      return absl::InternalError(absl::StrCat(
          where, ": a quantized tensor needs INT8 values and FLOAT32 scales of ",
          kernels::ShapeToString(tensor.scales_shape), ", found ", kernels::DTypeName(tensor.dtype),
          " values and ", tensor.scales->size(), " bytes of scales"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

// ------------------------------------------------------------ ResidentTensor

int64_t ResidentTensor::nbytes() const {
  return static_cast<int64_t>(values.size() + (scales.has_value() ? scales->size() : 0));
}

kernels::ConstTensorView ResidentTensor::view() const {
  return kernels::ConstTensorView{dtype, shape, values.data()};
}

kernels::ConstTensorView ResidentTensor::scales_view() const {
  CHECK(scales.has_value()) << "scales_view() of the unquantized tensor " << name;
  return kernels::ConstTensorView{kernels::DType::kFloat32, scales_shape, scales->data()};
}

absl::Status ValidateTensorName(std::string_view name, std::string_view field_name) {
  const absl::string_view field = AsAbsl(field_name);
  const char* kExpected =
      "expected 1-256 characters from [A-Za-z0-9._:/-], not starting with "
      "'/' and without '..'";
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", kExpected, ", found ''"));
  }
  if (name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", kExpected, ", found ", name.size(), " characters"));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", kExpected, ", found ", QuoteName(name), " with ",
                       QuoteName(name.substr(i, 1)), " at position ", i));
    }
  }
  if (name.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", kExpected, ", found ", QuoteName(name), " starting with '/'"));
  }
  if (name.find("..") != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", kExpected, ", found ", QuoteName(name), " holding '..'"));
  }
  return absl::OkStatus();
}

// --------------------------------------------------------------- Reservation

Reservation::Reservation(Reservation&& other) noexcept
    : store_(std::exchange(other.store_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    if (store_ != nullptr) store_->ReleaseReservation(bytes_);
    store_ = std::exchange(other.store_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

Reservation::~Reservation() {
  if (store_ != nullptr) store_->ReleaseReservation(bytes_);
}

// --------------------------------------------------------------- TensorStore

TensorStore::TensorStore(Options options) : options_(std::move(options)) {}

absl::StatusOr<Reservation> TensorStore::Reserve(int64_t bytes) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("reservation: expected a non-negative byte count, found ", bytes));
  }
  absl::MutexLock lock(&mu_);
  // Written as a subtraction so that a huge request cannot overflow.
  if (bytes > options_.limit_bytes - resident_bytes_ - reserved_bytes_) {
    return QuotaError(bytes, resident_bytes_, reserved_bytes_, options_.limit_bytes);
  }
  reserved_bytes_ += bytes;
  return Reservation(this, bytes);
}

void TensorStore::ReleaseReservation(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  reserved_bytes_ -= bytes;
  CHECK(reserved_bytes_ >= 0) << "reservation accounting went negative";
}

absl::Status TensorStore::Insert(std::shared_ptr<ResidentTensor> tensor, bool overwrite,
                                 Reservation& reservation) {
  std::vector<std::shared_ptr<ResidentTensor>> tensors;
  tensors.push_back(std::move(tensor));
  return InsertAll(std::move(tensors), overwrite, reservation);
}

absl::Status TensorStore::InsertAll(std::vector<std::shared_ptr<ResidentTensor>> tensors,
                                    bool overwrite, Reservation& reservation) {
  if (reservation.store_ != nullptr && reservation.store_ != this) {
    return absl::InternalError("insert with a reservation of another store");
  }
  // Everything that does not depend on the map is checked before the lock.
  int64_t needed = 0;
  absl::flat_hash_set<absl::string_view> names;
  for (const std::shared_ptr<ResidentTensor>& tensor : tensors) {
    if (tensor == nullptr) return absl::InternalError("insert of a null tensor");
    RETURN_IF_ERROR(ValidateTensorName(tensor->name, "name"));
    RETURN_IF_ERROR(CheckConsistent(*tensor));
    if (!names.insert(tensor->name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("name: ", QuoteName(tensor->name), " appears twice in one insert"));
    }
    needed += tensor->nbytes();
  }

  // Replaced tensors are dropped after the lock is released: freeing a large
  // buffer can take a while and must not stall every reader of the store.
  std::vector<ResidentTensorPtr> replaced;
  absl::MutexLock lock(&mu_);
  int64_t replaced_bytes = 0;
  for (const std::shared_ptr<ResidentTensor>& tensor : tensors) {
    auto it = tensors_.find(tensor->name);
    if (it == tensors_.end()) continue;
    if (!overwrite) {
      return absl::AlreadyExistsError(absl::StrCat("name: a resident tensor named ",
                                                   QuoteName(tensor->name),
                                                   " exists; set overwrite to replace it"));
    }
    replaced_bytes += it->second->nbytes();
  }
  // The reservation should cover the insert. If it falls short (a caller
  // that could not know the size up front), the rest must fit the free quota,
  // counted before the replaced tensors are freed: they coexist with the new
  // ones until this moment.
  const int64_t held = reservation.store_ == this ? reservation.bytes_ : 0;
  const int64_t consumed = std::min(held, needed);
  const int64_t shortfall = needed - consumed;
  if (shortfall > options_.limit_bytes - resident_bytes_ - reserved_bytes_) {
    return QuotaError(shortfall, resident_bytes_, reserved_bytes_, options_.limit_bytes);
  }

  for (std::shared_ptr<ResidentTensor>& tensor : tensors) {
    // Running ops may still hold a replaced tensor; its bytes leave the
    // accounting now and the memory when the last of them finishes.
    ResidentTensorPtr& slot = tensors_[tensor->name];
    if (slot != nullptr) replaced.push_back(std::move(slot));
    slot = std::move(tensor);
  }
  resident_bytes_ += needed - replaced_bytes;
  // A surplus stays reserved until the Reservation is destroyed.
  reserved_bytes_ -= consumed;
  reservation.bytes_ -= consumed;
  return absl::OkStatus();
}

absl::StatusOr<ResidentTensorPtr> TensorStore::Get(std::string_view name,
                                                   std::string_view field) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = tensors_.find(AsAbsl(name));
  if (it == tensors_.end()) {
    return absl::NotFoundError(
        absl::StrCat(AsAbsl(field), ": no resident tensor named ", QuoteName(name)));
  }
  return it->second;
}

absl::StatusOr<ResidentTensorPtr> TensorStore::Remove(std::string_view name) {
  ResidentTensorPtr removed;
  {
    absl::MutexLock lock(&mu_);
    auto it = tensors_.find(AsAbsl(name));
    if (it == tensors_.end()) {
      return absl::NotFoundError(absl::StrCat("name: no resident tensor named ", QuoteName(name)));
    }
    removed = std::move(it->second);
    tensors_.erase(it);
    resident_bytes_ -= removed->nbytes();
  }
  return removed;
}

std::vector<ResidentTensorPtr> TensorStore::List() const {
  std::vector<ResidentTensorPtr> list;
  {
    absl::ReaderMutexLock lock(&mu_);
    list.reserve(tensors_.size());
    for (const auto& [name, tensor] : tensors_) list.push_back(tensor);
  }
  std::sort(list.begin(), list.end(), [](const ResidentTensorPtr& a, const ResidentTensorPtr& b) {
    return a->name < b->name;
  });
  return list;
}

int64_t TensorStore::resident_bytes() const {
  absl::ReaderMutexLock lock(&mu_);
  return resident_bytes_;
}

int64_t TensorStore::reserved_bytes() const {
  absl::ReaderMutexLock lock(&mu_);
  return reserved_bytes_;
}

int64_t TensorStore::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int64_t>(tensors_.size());
}

}  // namespace accel::server
