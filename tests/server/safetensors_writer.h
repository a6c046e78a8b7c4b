// Test helpers that write safetensors files: a well-formed writer for
// tensors given as raw bytes, and a raw builder for hand-made (malformed)
// headers. Also a scratch directory that removes itself.
//
// Used by the safetensors and tensor loader tests only. Not thread-safe
// beyond what std::filesystem guarantees.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace accel::server::testing {

struct StTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::string bytes;  // raw little-endian data
};

// The 8-byte little-endian length, `header` and `data`, as they are: no
// checks, so tests can build any malformed file.
inline std::string BuildRawSafetensors(const std::string& header, const std::string& data,
                                       uint64_t header_length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header_length >> (8 * i)) & 0xff);
  out += header;
  out += data;
  return out;
}
inline std::string BuildRawSafetensors(const std::string& header, const std::string& data) {
  return BuildRawSafetensors(header, data, header.size());
}

// A valid file holding `tensors` back to back in the given order. The header
// is padded with spaces to a multiple of `align` bytes (safetensors pads to
// 8; 1 leaves the data at an odd offset).
inline std::string BuildSafetensors(
    const std::vector<StTensor>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata = {}, size_t align = 8) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = meta;
  }
  std::string data;
  for (const StTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % align != 0) text += ' ';
  return BuildRawSafetensors(text, data);
}

template <typename T>
std::string BytesOf(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

inline void WriteFile(const std::filesystem::path& path, const std::string& contents) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// A fresh directory under the test's temp dir, removed with its contents.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) / "accel_st_XXXXXX");
    char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    path_ = std::filesystem::path(pattern);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace accel::server::testing
