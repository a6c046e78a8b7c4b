#include "client/accelctl_args.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace accel::accelctl {
namespace {

constexpr char kUsagePayloadKey[] = "type.accel/accelctl.UsageError";

// Debian's Abseil has its own string_view type; convert at the boundary.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

absl::Status UsageError(std::string_view message) {
  absl::Status status = absl::InvalidArgumentError(Absl(message));
  status.SetPayload(kUsagePayloadKey, absl::Cord("usage"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayloadKey).has_value();
}

std::optional<std::string> ParsedArgs::Get(const std::string& flag) const {
  auto it = values_.find(flag);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> ParsedArgs::GetAll(const std::string& flag) const {
  auto it = values_.find(flag);
  return it == values_.end() ? std::vector<std::string>() : it->second;
}

absl::StatusOr<std::optional<int64_t>> ParsedArgs::GetInt(const std::string& flag) const {
  std::optional<std::string> text = Get(flag);
  if (!text) return std::nullopt;
  auto value = ParseInt("--" + flag, *text);
  if (!value.ok()) return value.status();
  return *value;
}

absl::StatusOr<std::optional<double>> ParsedArgs::GetDouble(const std::string& flag) const {
  std::optional<std::string> text = Get(flag);
  if (!text) return std::nullopt;
  auto value = ParseDouble("--" + flag, *text);
  if (!value.ok()) return value.status();
  return *value;
}

absl::StatusOr<std::optional<kernels::DType>> ParsedArgs::GetDType(const std::string& flag) const {
  std::optional<std::string> text = Get(flag);
  if (!text) return std::nullopt;
  auto value = ParseDType("--" + flag, *text);
  if (!value.ok()) return value.status();
  return *value;
}

absl::StatusOr<ParsedArgs> ParseArgs(std::span<const std::string> args,
                                     std::span<const FlagSpec> flags) {
  ParsedArgs parsed;
  bool flags_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    // "-" alone is a positional (a conventional name for stdin/stdout), and so
    // is anything after "--" (for file names that start with a dash).
    if (flags_ended || arg.size() < 2 || arg[0] != '-') {
      parsed.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    if (arg[1] != '-') return UsageError(absl::StrCat("unknown flag '", arg, "'"));
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name.resize(eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& candidate : flags) {
      if (candidate.name == name) spec = &candidate;
    }
    if (spec == nullptr) return UsageError(absl::StrCat("unknown flag '--", name, "'"));
    std::string value;
    if (spec->takes_value) {
      if (inline_value) {
        value = *inline_value;
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return UsageError(absl::StrCat("flag '--", name, "' needs a value"));
      }
    } else if (inline_value) {
      return UsageError(absl::StrCat("flag '--", name, "' takes no value"));
    }
    std::vector<std::string>& values = parsed.values_[name];
    if (!values.empty() && !spec->repeatable) {
      return UsageError(absl::StrCat("flag '--", name, "' given more than once"));
    }
    values.push_back(std::move(value));
  }
  return parsed;
}

absl::StatusOr<std::vector<std::string>> ExtractGlobalFlags(std::vector<std::string> args,
                                                            GlobalOptions& options) {
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      rest.insert(rest.end(), args.begin() + i, args.end());
      break;
    }
    if (arg == "--help" || arg == "-h") {
      options.help = true;
      continue;
    }
    if (arg == "--progress") {
      options.progress = true;
      continue;
    }
    bool matched = false;
    for (const char* name : {"server", "token", "timeout"}) {
      const std::string flag = absl::StrCat("--", name);
      std::optional<std::string> value;
      if (arg == flag) {
        if (i + 1 >= args.size())
          return UsageError(absl::StrCat("flag '", flag, "' needs a value"));
        value = args[++i];
      } else if (absl::StartsWith(arg, flag + "=")) {
        value = arg.substr(flag.size() + 1);
      } else {
        continue;
      }
      matched = true;
      if (std::string_view(name) == "server") {
        if (value->empty()) return UsageError("--server needs a HOST:PORT");
        options.server = *value;
      } else if (std::string_view(name) == "token") {
        options.token = *value;
      } else {
        auto timeout = ParseTimeout(*value);
        if (!timeout.ok()) return timeout.status();
        options.timeout = *timeout;
      }
      break;
    }
    if (!matched) rest.push_back(arg);
  }
  return rest;
}

absl::StatusOr<int64_t> ParseInt(std::string_view flag, std::string_view text) {
  int64_t value;
  if (!absl::SimpleAtoi(Absl(text), &value)) {
    return UsageError(absl::StrCat(Absl(flag), " expects an integer, got '", Absl(text), "'"));
  }
  return value;
}

absl::StatusOr<double> ParseDouble(std::string_view flag, std::string_view text) {
  double value;
  if (!absl::SimpleAtod(Absl(text), &value)) {
    return UsageError(absl::StrCat(Absl(flag), " expects a number, got '", Absl(text), "'"));
  }
  return value;
}

absl::StatusOr<kernels::DType> ParseDType(std::string_view flag, std::string_view text) {
  using kernels::DType;
  const std::string lower = absl::AsciiStrToLower(Absl(text));
  static constexpr std::pair<const char*, DType> kNames[] = {
      {"bfloat16", DType::kBFloat16}, {"bf16", DType::kBFloat16}, {"float16", DType::kFloat16},
      {"fp16", DType::kFloat16},      {"half", DType::kFloat16},  {"float32", DType::kFloat32},
      {"fp32", DType::kFloat32},      {"float", DType::kFloat32}, {"int8", DType::kInt8},
      {"int32", DType::kInt32},       {"int64", DType::kInt64},
  };
  for (const auto& [name, dtype] : kNames) {
    if (lower == name) return dtype;
  }
  return UsageError(absl::StrCat(Absl(flag),
                                 " expects bfloat16, float16, float32, int8, int32 or int64, got '",
                                 Absl(text), "'"));
}

absl::StatusOr<std::chrono::milliseconds> ParseTimeout(std::string_view text) {
  absl::string_view number = Absl(text);
  double scale_ms = 1000;  // plain numbers are seconds
  if (absl::ConsumeSuffix(&number, "ms")) {
    scale_ms = 1;
  } else if (absl::ConsumeSuffix(&number, "s")) {
    scale_ms = 1000;
  } else if (absl::ConsumeSuffix(&number, "m")) {
    scale_ms = 60000;
  }
  double value;
  if (!absl::SimpleAtod(number, &value) || !std::isfinite(value) || value < 0) {
    return UsageError(absl::StrCat("--timeout expects a duration such as 30s, 500ms or 2m, got '",
                                   Absl(text), "'"));
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(value * scale_ms)));
}

}  // namespace accel::accelctl
