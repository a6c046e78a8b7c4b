#include "server/tensor_loader.h"

#include <cstring>
#include <memory>
#include <string_view>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "accel/kernels/buffer.h"
#include "accel/kernels/convert.h"
#include "accel/util/status_macros.h"
#include "server/safetensors.h"

namespace accel::server {
namespace {

// How one selected tensor becomes resident.
enum class Conversion { kCopy, kCast, kQuantize };

struct Plan {
  const SafetensorsEntry* entry;
  std::string name;      // prefix + file name
  kernels::DType dtype;  // dtype of the stored values
  Conversion conversion;
  int64_t values_bytes;
  int64_t scales_bytes;  // kQuantize only
};

// Debian's Abseil has its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), which std::string_view does not convert to.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string Quote(std::string_view text) {
  constexpr size_t kMaxQuoted = 128;
  std::string out = absl::StrCat("'", absl::CHexEscape(AsAbsl(text.substr(0, kMaxQuoted))), "'");
  if (text.size() > kMaxQuoted) absl::StrAppend(&out, "...");
  return out;
}

// Prepends `context` to a status message, keeping its code.
absl::Status WithContext(const absl::Status& status, std::string_view context) {
  return absl::Status(status.code(), absl::StrCat(AsAbsl(context), status.message()));
}

// Shell-style match of `*` (any run, also empty) and `?` (one character);
// every other character matches itself, '/' and '.' included (fnmatch without
// FNM_PATHNAME or FNM_PERIOD). Greedy with one backtrack point: on a mismatch
// the last `*` absorbs one more character, which is enough because a later
// `*` can absorb anything an earlier one could.
bool GlobMatch(std::string_view pattern, std::string_view text) {
  size_t p = 0, t = 0;
  size_t star = std::string_view::npos, star_text = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_text = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++star_text;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool Selected(const LoadOptions& options, std::string_view name) {
  if (options.include.empty()) return true;
  for (const std::string& glob : options.include) {
    if (GlobMatch(glob, name)) return true;
  }
  return false;
}

// The bytes of `data` at an address fit for elements of `itemsize`: the
// mapping itself when it already is, else an aligned copy in `storage`.
// Kernels may load floats with aligned vector instructions; a safetensors
// header of odd length leaves the data at any byte offset.
const void* Aligned(std::span<const std::byte> data, size_t itemsize,
                    std::unique_ptr<std::byte[]>& storage) {
  if (reinterpret_cast<uintptr_t>(data.data()) % itemsize == 0) return data.data();
  // operator new[] aligns to __STDCPP_DEFAULT_NEW_ALIGNMENT__ (16), enough for
  // every element type.
  storage = std::make_unique<std::byte[]>(data.size());
  std::memcpy(storage.get(), data.data(), data.size());
  return storage.get();
}

// Host memory to fill before the copy into a buffer of `backend`: the buffer
// itself on the CPU (no staging copy), else a temporary.
class HostStage {
 public:
  explicit HostStage(kernels::Buffer& buffer) : buffer_(buffer) {
    if (buffer.backend() != kernels::Backend::kCpu) {
      temp_ = std::make_unique<std::byte[]>(buffer.size());
    }
  }
  void* data() { return temp_ != nullptr ? temp_.get() : buffer_.data(); }
  absl::Status Commit() {
    if (temp_ == nullptr) return absl::OkStatus();
    return kernels::CopyToBuffer(temp_.get(), buffer_.size(), buffer_);
  }

 private:
  kernels::Buffer& buffer_;
  std::unique_ptr<std::byte[]> temp_;
};

absl::StatusOr<std::shared_ptr<ResidentTensor>> Materialize(const LoadOptions& options,
                                                            const SafetensorsFile& file,
                                                            const Plan& plan) {
  const SafetensorsEntry& entry = *plan.entry;
  const std::span<const std::byte> data = file.Data(entry);
  const int64_t n = kernels::NumElements(entry.shape);

  auto tensor = std::make_shared<ResidentTensor>();
  tensor->name = plan.name;
  tensor->dtype = plan.dtype;
  tensor->shape = entry.shape;
  ASSIGN_OR_RETURN(tensor->values, kernels::Buffer::Allocate(
                                       options.backend, static_cast<size_t>(plan.values_bytes)));

  switch (plan.conversion) {
    case Conversion::kCopy:
      // A copy straight from the mapping: no staging even for a device.
      RETURN_IF_ERROR(kernels::CopyToBuffer(data.data(), data.size(), tensor->values));
      break;
    case Conversion::kCast: {
      std::unique_ptr<std::byte[]> aligned_storage;
      const void* src = Aligned(data, kernels::ItemSize(*entry.dtype), aligned_storage);
      HostStage stage(tensor->values);
      kernels::ConvertFloats(*entry.dtype, src, plan.dtype, stage.data(), n);
      RETURN_IF_ERROR(stage.Commit());
      break;
    }
    case Conversion::kQuantize: {
      const int64_t rows = entry.shape[0];
      tensor->scales_shape = {rows};
      ASSIGN_OR_RETURN(
          tensor->scales,
          kernels::Buffer::Allocate(options.backend, static_cast<size_t>(plan.scales_bytes)));
      HostStage values_stage(tensor->values);
      HostStage scales_stage(*tensor->scales);
      if (n == 0) {
        // No elements to measure: every row's absmax is 0, whose scale is 1
        // (API.md), and there are no values to write.
        float* scales = static_cast<float*>(scales_stage.data());
        for (int64_t r = 0; r < rows; ++r) scales[r] = 1.0f;
      } else {
        std::unique_ptr<std::byte[]> aligned_storage;
        const void* src = Aligned(data, kernels::ItemSize(*entry.dtype), aligned_storage);
        kernels::QuantizeArgs args;
        args.input = kernels::ConstTensorView{*entry.dtype, entry.shape, src};
        args.granularity = kernels::Granularity::kPerRow;
        RETURN_IF_ERROR(kernels::CheckQuantize(args).status());
        const kernels::TensorView values{kernels::DType::kInt8, entry.shape, values_stage.data()};
        const kernels::TensorView scales{kernels::DType::kFloat32, tensor->scales_shape,
                                         scales_stage.data()};
        // Quantized on the host: the data is there already, and the CPU
        // kernel is the reference the CUDA one is tested against.
        RETURN_IF_ERROR(kernels::Quantize(kernels::ExecContext{}, args, values, scales));
      }
      RETURN_IF_ERROR(values_stage.Commit());
      RETURN_IF_ERROR(scales_stage.Commit());
      break;
    }
  }
  return tensor;
}

}  // namespace

absl::StatusOr<std::vector<ResidentTensorPtr>> LoadSafetensors(const LoadOptions& options,
                                                               TensorStore& store) {
  if (options.dtype != kernels::DType::kUnspecified && !kernels::IsFloat(options.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: expected FLOAT32, FLOAT16 or BFLOAT16 (or unspecified to keep the "
                     "file's dtypes), found ",
                     kernels::DTypeName(options.dtype)));
  }
  absl::StatusOr<std::filesystem::path> path = ResolveUnderDir(options.model_dir, options.path);
  if (!path.ok()) return WithContext(path.status(), "path: ");
  // Every later message names the file as the client gave it.
  const std::string context = absl::StrCat("path ", Quote(options.path), ": ");
  absl::StatusOr<SafetensorsFile> opened = SafetensorsFile::Open(*path);
  if (!opened.ok()) return WithContext(opened.status(), context);
  const SafetensorsFile& file = *opened;

  // Plan every selected tensor (and reject the file) before allocating
  // anything.
  std::vector<Plan> plans;
  int64_t total_bytes = 0;
  for (const SafetensorsEntry& entry : file.entries()) {
    if (!Selected(options, entry.name)) continue;
    const std::string where = absl::StrCat(context, "tensor ", Quote(entry.name), ": ");
    if (!entry.supported()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "dtype ", entry.dtype_name,
          " is not supported (expected F32, F16, BF16, I8, I32 or I64); use include to skip it"));
    }
    if (entry.shape.size() > static_cast<size_t>(kernels::kMaxRank)) {
      return absl::InvalidArgumentError(absl::StrCat(where, "expected at most ", kernels::kMaxRank,
                                                     " dimensions, found shape ",
                                                     kernels::ShapeToString(entry.shape)));
    }
    Plan plan{&entry,
              options.prefix + entry.name,
              *entry.dtype,
              Conversion::kCopy,
              static_cast<int64_t>(entry.nbytes),
              0};
    absl::Status name_status = ValidateTensorName(plan.name, "prefix + tensor name");
    if (!name_status.ok()) return WithContext(name_status, where);

    const int64_t n = kernels::NumElements(entry.shape);
    const bool is_float = kernels::IsFloat(*entry.dtype);
    // Only weight matrices are quantized; 1-D tensors (norms, biases) keep
    // their float dtype, as every int8 weight-only scheme does.
    if (options.quantize_int8 && is_float && entry.shape.size() == 2) {
      plan.conversion = Conversion::kQuantize;
      plan.dtype = kernels::DType::kInt8;
      plan.values_bytes = n;
      plan.scales_bytes = entry.shape[0] * static_cast<int64_t>(sizeof(float));
    } else if (options.dtype != kernels::DType::kUnspecified && is_float &&
               options.dtype != *entry.dtype) {
      // Integer tensors (position ids, token maps) keep their dtype: a cast
      // of a whole checkpoint to bf16 should not fail on them.
      plan.conversion = Conversion::kCast;
      plan.dtype = options.dtype;
      plan.values_bytes = n * static_cast<int64_t>(kernels::ItemSize(options.dtype));
    }
    total_bytes += plan.values_bytes + plan.scales_bytes;
    plans.push_back(std::move(plan));
  }
  if (plans.empty() && !options.include.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "include: no tensor in ", Quote(options.path), " matches any of [",
        absl::StrJoin(
            options.include, ", ",
            [](std::string* out, const std::string& glob) { absl::StrAppend(out, Quote(glob)); }),
        "]"));
  }

  // Fail early on taken names rather than after converting a whole model;
  // InsertAll checks again, atomically.
  if (!options.overwrite) {
    for (const Plan& plan : plans) {
      if (store.Get(plan.name).ok()) {
        return absl::AlreadyExistsError(absl::StrCat(context, "a resident tensor named ",
                                                     Quote(plan.name),
                                                     " exists; set overwrite to replace it"));
      }
    }
  }
  // The quota is held before any buffer exists, so a file too large for it
  // fails without touching memory.
  absl::StatusOr<Reservation> reservation = store.Reserve(total_bytes);
  if (!reservation.ok()) return WithContext(reservation.status(), context);

  std::vector<std::shared_ptr<ResidentTensor>> tensors;
  tensors.reserve(plans.size());
  for (const Plan& plan : plans) {
    absl::StatusOr<std::shared_ptr<ResidentTensor>> tensor = Materialize(options, file, plan);
    if (!tensor.ok()) {
      return WithContext(tensor.status(),
                         absl::StrCat(context, "tensor ", Quote(plan.entry->name), ": "));
    }
    tensors.push_back(*std::move(tensor));
  }
  std::vector<ResidentTensorPtr> loaded(tensors.begin(), tensors.end());
  absl::Status inserted = store.InsertAll(std::move(tensors), options.overwrite, *reservation);
  if (!inserted.ok()) return WithContext(inserted, context);
  return loaded;
}

}  // namespace accel::server
