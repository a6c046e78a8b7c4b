#include "server/device_info.h"

#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace accel::server {
namespace {

// A "Key:   12345 kB" line of /proc/meminfo, in bytes; 0 if absent.
int64_t MeminfoBytes(absl::string_view key) {
  std::ifstream file("/proc/meminfo");
  std::string line;
  while (std::getline(file, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, key) || !absl::ConsumePrefix(&rest, ":")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    std::vector<absl::string_view> parts = absl::StrSplit(rest, ' ', absl::SkipEmpty());
    int64_t kib = 0;
    if (!parts.empty() && absl::SimpleAtoi(parts[0], &kib)) return kib * 1024;
  }
  return 0;
}

std::string CpuModelName() {
  std::ifstream file("/proc/cpuinfo");
  std::string line;
  while (std::getline(file, line)) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "model name")) {
      auto colon = rest.find(':');
      if (colon != absl::string_view::npos) {
        return std::string(absl::StripAsciiWhitespace(rest.substr(colon + 1)));
      }
    }
  }
  return "cpu";
}

}  // namespace

int64_t HostTotalMemoryBytes() { return MeminfoBytes("MemTotal"); }
int64_t HostAvailableMemoryBytes() { return MeminfoBytes("MemAvailable"); }

v1::DeviceProperties DescribeCpu() {
  v1::DeviceProperties props;
  props.set_name(CpuModelName());
  props.set_total_memory(HostTotalMemoryBytes());
  props.set_free_memory(HostAvailableMemoryBytes());
  props.set_multi_processor_count(static_cast<int32_t>(std::thread::hardware_concurrency()));
  props.set_supports_fp16(true);
  props.set_supports_bf16(true);
  props.set_supports_fp8(false);
  props.set_supports_int8_tensor_cores(false);
  return props;
}

}  // namespace accel::server
