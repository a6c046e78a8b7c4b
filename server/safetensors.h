// A reader for safetensors files (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length N, N bytes of JSON describing each
// tensor (dtype, shape, byte range), then the tensor data.
//
// Used by the tensor loader (LoadTensors, --preload). ParseSafetensorsHeader
// is a pure function over the file's bytes, so tests and fuzzers can call it
// on any input; it validates everything the loader later relies on, so a
// file it accepts can be read without further bounds checks. SafetensorsFile
// maps a file read-only. ResolveUnderDir confines a client-given path to the
// model directory.
//
// Thread-safety: the functions are reentrant; a SafetensorsFile is immutable
// after Open and may be read from several threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/tensor.h"

namespace accel::server {

// Largest JSON header we parse. Real headers are a few hundred KiB even for
// models with thousands of tensors; the cap bounds the memory a hostile file
// can make the parser use.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;

// One tensor described by the header.
struct SafetensorsEntry {
  std::string name;
  // The dtype as written in the file ("F32", "BF16", "F64", ...).
  std::string dtype_name;
  // The matching element type, or nullopt for a dtype the file format knows
  // but we do not serve (F64, BOOL, U8, ...): such an entry is parsed, so that
  // the loader rejects the file only if the tensor is selected.
  std::optional<kernels::DType> dtype;
  kernels::Shape shape;
  // Byte range in the file: `offset` counts from the file's start (the
  // header's data_offsets are relative to the end of the header), `nbytes`
  // equals prod(shape) * itemsize.
  uint64_t offset = 0;
  uint64_t nbytes = 0;

  bool supported() const { return dtype.has_value(); }
};

// Parses and validates the header of a whole safetensors file held in
// `file`. Returns the entries sorted by their position in the data section
// (the file's order). INVALID_ARGUMENT, with a message naming the tensor and
// what was expected and found, for: a file too short for its header, a
// header length past the end of the file or over kMaxSafetensorsHeaderBytes,
// invalid JSON, a header that is not an object, duplicate names, a malformed
// __metadata__, an entry that is not an object or has missing or unexpected
// keys, an unknown dtype, a shape that is not a list of non-negative integers
// or whose size overflows, data_offsets that are not two integers
// begin <= end inside the data section, a byte range whose length differs
// from the shape's size, and byte ranges that overlap.
absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(
    std::span<const std::byte> file);

// A safetensors file mapped read-only (MAP_PRIVATE, PROT_READ) with its
// parsed header. Move-only; unmaps on destruction.
//
// The mapping assumes the file is not truncated while it is open (a read of
// a page past the new end raises SIGBUS): model files under --model_dir are
// written once and then only read.
class SafetensorsFile {
 public:
  // NOT_FOUND when the file does not exist, the errno's status for other
  // open or map failures, INVALID_ARGUMENT for something other than a
  // regular file or (from ParseSafetensorsHeader) a malformed file. Messages
  // do not name the file: the caller knows the name its client gave, which
  // `path` (usually canonical) is not.
  static absl::StatusOr<SafetensorsFile> Open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // The entry's bytes inside the mapping; valid while this object lives.
  // Not aligned beyond a byte: the header length sets where data begins.
  std::span<const std::byte> Data(const SafetensorsEntry& entry) const;
  // Size of the whole file in bytes.
  size_t size() const { return size_; }

 private:
  SafetensorsFile() = default;
  void Unmap();

  const std::byte* data_ = nullptr;  // null for an empty file
  size_t size_ = 0;
  std::vector<SafetensorsEntry> entries_;
};

// Resolves `relative` under `dir`, following symbolic links, and returns
// the canonical path of the file. INVALID_ARGUMENT for an empty path, an
// absolute path, a path holding a NUL byte, a path that resolves outside
// canonical(dir) (by "..", or a link pointing out), or one that names no
// regular file; NOT_FOUND when it does not exist (checked after
// confinement, so probing outside `dir` learns nothing);
// FAILED_PRECONDITION when `dir` itself does not exist. Messages quote
// `relative` but never the server's own paths.
//
// A link swapped in between this call and the open is not caught: the
// model directory is the operator's, not the clients'.
absl::StatusOr<std::filesystem::path> ResolveUnderDir(const std::filesystem::path& dir,
                                                      std::string_view relative);

}  // namespace accel::server
