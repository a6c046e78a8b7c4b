// Command-line parsing for accelctl: global flags, a subcommand's flags and
// positional arguments, and the value parsers they share.
//
// Hand-written rather than absl flags because each subcommand has its own
// flags: `--name value`, `--name=value`, boolean `--name`, repeatable flags,
// and `--` to end the flags. A problem with the command line is a "usage
// error" (an INVALID_ARGUMENT marked with a payload), which accelctl answers
// with exit code 2 and the usage text, unlike errors from the server or from
// files (exit code 1). Pure functions; thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/tensor.h"

namespace accel::accelctl {

// An INVALID_ARGUMENT status that accelctl reports as a usage error.
absl::Status UsageError(std::string_view message);
bool IsUsageError(const absl::Status& status);

struct FlagSpec {
  std::string name;  // without the leading "--"
  bool takes_value = true;
  bool repeatable = false;
};

// The flags and positional arguments of one subcommand.
class ParsedArgs {
 public:
  std::vector<std::string> positional;

  bool Has(const std::string& flag) const { return values_.contains(flag); }
  // The flag's value, if given ("" for a boolean flag).
  std::optional<std::string> Get(const std::string& flag) const;
  // Every value of a repeatable flag, in order.
  std::vector<std::string> GetAll(const std::string& flag) const;
  // Typed values: nullopt when absent; a usage error when malformed.
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& flag) const;
  absl::StatusOr<std::optional<double>> GetDouble(const std::string& flag) const;
  absl::StatusOr<std::optional<kernels::DType>> GetDType(const std::string& flag) const;

 private:
  friend absl::StatusOr<ParsedArgs> ParseArgs(std::span<const std::string> args,
                                              std::span<const FlagSpec> flags);
  std::map<std::string, std::vector<std::string>> values_;
};

// Splits `args` (everything after the subcommand) into flags of `flags` and
// positional arguments. Unknown flags, missing values and repeated
// non-repeatable flags are usage errors.
absl::StatusOr<ParsedArgs> ParseArgs(std::span<const std::string> args,
                                     std::span<const FlagSpec> flags);

// Flags every subcommand accepts, wherever they appear on the line.
struct GlobalOptions {
  std::string server = "localhost:50051";
  std::string token;
  std::chrono::milliseconds timeout{0};
  bool progress = false;  // draw progress bars even when stderr is not a TTY
  bool help = false;      // --help / -h was given
};

// Removes the global flags (--server, --token, --timeout, --progress, --help)
// from `args` and applies them to `options`, whose server and token the
// caller has already taken from the environment (ACCEL_SERVER, ACCEL_TOKEN).
// Stops at "--".
absl::StatusOr<std::vector<std::string>> ExtractGlobalFlags(std::vector<std::string> args,
                                                            GlobalOptions& options);

// Value parsers; `flag` names the flag in the usage error.
absl::StatusOr<int64_t> ParseInt(std::string_view flag, std::string_view text);
absl::StatusOr<double> ParseDouble(std::string_view flag, std::string_view text);
// "bfloat16" (or "bf16"), "float16" ("fp16", "half"), "float32" ("fp32",
// "float"), "int8", "int32", "int64"; case-insensitive.
absl::StatusOr<kernels::DType> ParseDType(std::string_view flag, std::string_view text);
// "30" or "30s", "500ms", "2m"; "0" means no timeout.
absl::StatusOr<std::chrono::milliseconds> ParseTimeout(std::string_view text);

}  // namespace accel::accelctl
