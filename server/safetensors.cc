#include "server/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace accel::server {
namespace {

// ordered_json keeps the header's key order, so that entries with equal
// offsets (empty tensors) come out in the order the file lists them.
using Json = nlohmann::ordered_json;

struct DTypeInfo {
  const char* name;
  uint64_t itemsize;
  std::optional<kernels::DType> dtype;  // nullopt: known to the format, not served
};

// Every byte-sized dtype of the safetensors format. Sub-byte types (F4,
// F6_*) are reported as unknown: their sizes are not prod(shape) * itemsize.
constexpr DTypeInfo kDTypes[] = {
    {"F32", 4, kernels::DType::kFloat32},
    {"F16", 2, kernels::DType::kFloat16},
    {"BF16", 2, kernels::DType::kBFloat16},
    {"I8", 1, kernels::DType::kInt8},
    {"I32", 4, kernels::DType::kInt32},
    {"I64", 8, kernels::DType::kInt64},
    {"F64", 8, std::nullopt},
    {"BOOL", 1, std::nullopt},
    {"U8", 1, std::nullopt},
    {"I16", 2, std::nullopt},
    {"U16", 2, std::nullopt},
    {"U32", 4, std::nullopt},
    {"U64", 8, std::nullopt},
    {"F8_E4M3", 1, std::nullopt},
    {"F8_E5M2", 1, std::nullopt},
    {"F8_E8M0", 1, std::nullopt},
    {"C64", 8, std::nullopt},
};

const DTypeInfo* FindDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return &info;
  }
  return nullptr;
}

// A name or value from the file, quoted and made printable: the file is
// untrusted, and its text ends up in logs and client messages.
// Debian's Abseil has its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), which std::string_view does not convert to.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string Quote(std::string_view text) {
  constexpr size_t kMaxQuoted = 128;
  std::string out = absl::StrCat("'", absl::CHexEscape(AsAbsl(text.substr(0, kMaxQuoted))), "'");
  if (text.size() > kMaxQuoted) absl::StrAppend(&out, "...");
  return out;
}

// Short rendering of a JSON value for "found ..." in messages.
std::string Describe(const Json& value) {
  constexpr size_t kMaxDescribed = 96;
  // The parser has validated UTF-8, but `replace` keeps dump() from ever
  // throwing.
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > kMaxDescribed) text = absl::StrCat(text.substr(0, kMaxDescribed), "...");
  return absl::StrCat(value.type_name(), " ", text);
}

absl::Status TensorError(std::string_view name, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("tensor ", Quote(name), ": ", AsAbsl(message)));
}

// A JSON integer in [0, max] or nullopt. nlohmann stores non-negative
// integers as unsigned and negative ones as signed; anything else (a float,
// an integer too large for 64 bits, which parses as a float) is rejected.
std::optional<uint64_t> NonNegativeInteger(const Json& value, uint64_t max) {
  if (!value.is_number_unsigned()) return std::nullopt;
  const uint64_t v = value.get<uint64_t>();
  if (v > max) return std::nullopt;
  return v;
}

absl::Status ParseMetadata(const Json& metadata) {
  if (!metadata.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("__metadata__: expected an object of strings, found ", Describe(metadata)));
  }
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "__metadata__: key ", Quote(key), ": expected a string, found ", Describe(value)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name, const Json& value,
                                            uint64_t data_begin, uint64_t data_size) {
  if (!value.is_object()) {
    return TensorError(name, absl::StrCat("expected an object with dtype, shape and "
                                          "data_offsets, found ",
                                          Describe(value)));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) return TensorError(name, absl::StrCat("missing key '", key, "'"));
  }
  if (value.size() != 3) {
    for (const auto& [key, unused] : value.items()) {
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        return TensorError(name, absl::StrCat("unexpected key ", Quote(key),
                                              " (expected dtype, shape and data_offsets)"));
      }
    }
  }

  SafetensorsEntry entry;
  entry.name = name;

  const Json& dtype = value["dtype"];
  if (!dtype.is_string()) {
    return TensorError(name, absl::StrCat("dtype: expected a string, found ", Describe(dtype)));
  }
  entry.dtype_name = dtype.get<std::string>();
  const DTypeInfo* info = FindDType(entry.dtype_name);
  if (info == nullptr) {
    return TensorError(name, absl::StrCat("unknown dtype ", Quote(entry.dtype_name)));
  }
  entry.dtype = info->dtype;

  // Elements are capped at kernels::kMaxElements after every factor, so
  // neither this product nor NumElements(shape) later can overflow, and
  // nbytes <= 2^48 * 8.
  const Json& shape = value["shape"];
  if (!shape.is_array()) {
    return TensorError(name, absl::StrCat("shape: expected a list of non-negative integers, "
                                          "found ",
                                          Describe(shape)));
  }
  uint64_t elements = 1;
  for (const Json& dim : shape) {
    std::optional<uint64_t> extent = NonNegativeInteger(dim, kernels::kMaxElements);
    if (!extent.has_value()) {
      return TensorError(name, absl::StrCat("shape: expected a list of non-negative integers, "
                                            "found ",
                                            Describe(shape)));
    }
    entry.shape.push_back(static_cast<int64_t>(*extent));
    if (*extent != 0 && elements > kernels::kMaxElements / *extent) {
      return TensorError(
          name, absl::StrCat("shape ", Describe(shape), " has more than 2^48 ", "elements"));
    }
    elements *= *extent;
  }
  entry.nbytes = elements * info->itemsize;

  const Json& offsets = value["data_offsets"];
  std::optional<uint64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = NonNegativeInteger(offsets[0], UINT64_MAX);
    end = NonNegativeInteger(offsets[1], UINT64_MAX);
  }
  if (!begin.has_value() || !end.has_value()) {
    return TensorError(name, absl::StrCat("data_offsets: expected two non-negative integers "
                                          "[begin, end], found ",
                                          Describe(offsets)));
  }
  const std::string range = absl::StrCat("data_offsets [", *begin, ", ", *end, "]");
  if (*begin > *end) {
    return TensorError(name, absl::StrCat(range, ": expected begin <= end"));
  }
  if (*end > data_size) {
    return TensorError(name, absl::StrCat(range, ": expected end <= ", data_size,
                                          ", the size of the data section"));
  }
  if (*end - *begin != entry.nbytes) {
    return TensorError(
        name, absl::StrCat(range, " hold ", *end - *begin, " bytes, but ", entry.dtype_name, " ",
                           kernels::ShapeToString(entry.shape), " needs ", entry.nbytes));
  }
  entry.offset = data_begin + *begin;
  return entry;
}

}  // namespace

absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(
    std::span<const std::byte> file) {
  if (file.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("file of ", file.size(),
                     " bytes is too short: expected at least 8 bytes for the header "
                     "length"));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | static_cast<uint8_t>(file[i]);
  }
  const uint64_t after_length = file.size() - 8;
  if (header_size > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", header_size,
                                                   " exceeds the limit of ",
                                                   kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (header_size > after_length) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", header_size, " exceeds the ",
                                                   after_length, " bytes that follow it"));
  }
  const uint64_t data_begin = 8 + header_size;
  const uint64_t data_size = file.size() - data_begin;

  // Duplicate keys would silently keep the last value: catch them while
  // parsing. Depth 1 holds tensor names; depth 2 the keys of one entry,
  // which belong to the depth-1 key seen last.
  absl::flat_hash_set<std::string> names;
  absl::flat_hash_set<std::string> entry_keys;
  std::string duplicate;
  Json::parser_callback_t check_duplicates = [&](int depth, Json::parse_event_t event,
                                                 Json& parsed) {
    if (event != Json::parse_event_t::key || !duplicate.empty()) return true;
    if (depth == 1) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!names.insert(key).second) duplicate = absl::StrCat("tensor ", Quote(key));
      entry_keys.clear();
    } else if (depth == 2) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!entry_keys.insert(key).second) {
        duplicate = absl::StrCat("key ", Quote(key), " of an entry");
      }
    }
    return true;
  };
  const char* text = reinterpret_cast<const char*>(file.data()) + 8;
  Json header = Json::parse(text, text + header_size, check_duplicates,
                            /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    return absl::InvalidArgumentError("header is not valid JSON");
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("header: expected a JSON object, found ", Describe(header)));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("header: ", duplicate, " appears twice"));
  }

  std::vector<SafetensorsEntry> entries;
  entries.reserve(header.size());
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      absl::Status status = ParseMetadata(value);
      if (!status.ok()) return status;
      continue;
    }
    absl::StatusOr<SafetensorsEntry> entry = ParseEntry(name, value, data_begin, data_size);
    if (!entry.ok()) return entry.status();
    entries.push_back(*std::move(entry));
  }

  std::stable_sort(
      entries.begin(), entries.end(),
      [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.offset < b.offset; });
  // Sorted by start, a range overlaps an earlier one iff it starts before
  // the furthest end seen so far. Empty ranges hold no bytes to share.
  const SafetensorsEntry* furthest = nullptr;
  for (const SafetensorsEntry& entry : entries) {
    if (entry.nbytes == 0) continue;
    if (furthest != nullptr && entry.offset < furthest->offset + furthest->nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors ", Quote(furthest->name), " (data_offsets [", furthest->offset - data_begin,
          ", ", furthest->offset - data_begin + furthest->nbytes, "]) and ", Quote(entry.name),
          " (data_offsets [", entry.offset - data_begin, ", ",
          entry.offset - data_begin + entry.nbytes, "]) overlap"));
    }
    if (furthest == nullptr || entry.offset + entry.nbytes > furthest->offset + furthest->nbytes) {
      furthest = &entry;
    }
  }
  return entries;
}

// ------------------------------------------------------------ SafetensorsFile

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::filesystem::path& path) {
  // O_NONBLOCK keeps a FIFO from blocking the open until a writer appears
  // (it is then rejected below); it changes nothing for a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT) return absl::NotFoundError("no such file");
    return absl::ErrnoToStatus(error, "cannot open the file");
  }
  SafetensorsFile file;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::ErrnoToStatus(error, "cannot stat the file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError("not a regular file");
  }
  file.size_ = static_cast<size_t>(st.st_size);
  // mmap of zero bytes fails with EINVAL; an empty file is left unmapped and
  // rejected by the parser as too short.
  if (file.size_ > 0) {
    void* mapped = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      return absl::ErrnoToStatus(error, "cannot map the file");
    }
    file.data_ = static_cast<const std::byte*>(mapped);
  }
  // The mapping keeps the file alive; the descriptor is no longer needed.
  ::close(fd);

  absl::StatusOr<std::vector<SafetensorsEntry>> entries =
      ParseSafetensorsHeader(std::span<const std::byte>(file.data_, file.size_));
  if (!entries.ok()) return entries.status();
  file.entries_ = *std::move(entries);
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      entries_(std::move(other.entries_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    entries_ = std::move(other.entries_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

std::span<const std::byte> SafetensorsFile::Data(const SafetensorsEntry& entry) const {
  // Entries come from this file's parse, which checked every range.
  if (entry.nbytes == 0) return {};
  return std::span<const std::byte>(data_ + entry.offset, entry.nbytes);
}

// ------------------------------------------------------------ ResolveUnderDir

absl::StatusOr<std::filesystem::path> ResolveUnderDir(const std::filesystem::path& dir,
                                                      std::string_view relative) {
  namespace fs = std::filesystem;
  if (relative.empty()) {
    return absl::InvalidArgumentError(
        "expected a path relative to the model directory, found an empty string");
  }
  if (relative.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(relative), " holds a NUL byte; expected a relative file path"));
  }
  const fs::path rel(relative);
  if (relative.front() == '/' || rel.is_absolute() || rel.has_root_path()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Quote(relative), " is absolute; expected a path relative to the model directory"));
  }
  std::error_code ec;
  const fs::path base = fs::canonical(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("the model directory is not available: ", ec.message()));
  }
  // weakly_canonical resolves the existing prefix through its symbolic links
  // (as open() would) and normalises the rest, so "..", absolute link targets
  // and links to ".." all show up as a result outside `base`.
  const fs::path resolved = fs::weakly_canonical(base / rel, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(relative), " cannot be resolved: ", ec.message()));
  }
  const auto [base_end, unused] =
      std::mismatch(base.begin(), base.end(), resolved.begin(), resolved.end());
  if (base_end != base.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(relative), " resolves outside the model directory"));
  }
  const fs::file_status status = fs::status(resolved, ec);
  if (!fs::exists(status)) {
    if (ec && ec != std::errc::no_such_file_or_directory) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(relative), " cannot be read: ", ec.message()));
    }
    return absl::NotFoundError(
        absl::StrCat(Quote(relative), " does not exist in the model directory"));
  }
  if (!fs::is_regular_file(status)) {
    return absl::InvalidArgumentError(absl::StrCat(Quote(relative), " is not a regular file"));
  }
  return resolved;
}

}  // namespace accel::server
