#include "client/accelctl_io.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "accel/kernels/convert.h"

namespace accel::accelctl {

using kernels::DType;

absl::Status CastArray(NpyArray& array, DType dtype, const std::string& source, bool ints_pass) {
  if (array.dtype == dtype) return absl::OkStatus();
  if (!kernels::IsFloat(dtype)) {
    return UsageError(absl::StrCat("--dtype must be bfloat16, float16 or float32 to cast ", source,
                                   ", got ", kernels::DTypeName(dtype)));
  }
  if (!kernels::IsFloat(array.dtype)) {
    if (ints_pass) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(source, " holds ",
                                                   kernels::DTypeName(array.dtype),
                                                   " data; --dtype casts float data only"));
  }
  const int64_t n = kernels::NumElements(array.shape);
  std::string converted(static_cast<size_t>(n) * kernels::ItemSize(dtype), '\0');
  kernels::ConvertFloats(array.dtype, array.data.data(), dtype, converted.data(), n);
  array.data = std::move(converted);
  array.dtype = dtype;
  return absl::OkStatus();
}

std::string ResidentName(const std::string& arg) {
  return absl::StartsWith(arg, "@") ? arg.substr(1) : arg;
}

absl::StatusOr<v1::TensorRef> InputRef(const std::string& arg, std::optional<DType> cast) {
  if (absl::StartsWith(arg, "@")) {
    if (arg.size() == 1) return UsageError("'@' must be followed by a resident tensor's name");
    return NamedRef(arg.substr(1));
  }
  auto array = ReadNpy(arg);
  if (!array.ok()) return array.status();
  if (cast) {
    absl::Status status = CastArray(*array, *cast, arg, /*ints_pass=*/true);
    if (!status.ok()) return status;
  }
  return InlineRef(array->dtype, array->shape, std::move(array->data));
}

absl::Status WriteResult(const std::string& path, const v1::Tensor& tensor) {
  auto view = ViewTensor(tensor);
  if (!view.ok()) {
    return absl::InternalError(
        absl::StrCat("the server's result for ", path, " is malformed: ", view.status().message()));
  }
  const std::string_view data(static_cast<const char*>(view->data), view->nbytes());
  absl::Status status = WriteNpy(path, view->dtype, view->shape, data);
  if (!status.ok()) return status;
  std::printf("wrote %s: %s %s%s\n", path.c_str(), kernels::DTypeName(view->dtype),
              kernels::ShapeToString(view->shape).c_str(),
              view->dtype == DType::kBFloat16 ? " (as float32: .npy has no bfloat16; exact)" : "");
  return absl::OkStatus();
}

void PrintStored(const std::string& name, const v1::Tensor& tensor) {
  const kernels::Shape shape(tensor.shape().begin(), tensor.shape().end());
  std::printf("stored %s: %s %s\n", name.c_str(),
              kernels::DTypeName(static_cast<DType>(tensor.dtype())),
              kernels::ShapeToString(shape).c_str());
}

std::string ScalesPath(const std::string& out) {
  if (absl::EndsWith(out, ".npy")) return out.substr(0, out.size() - 4) + ".scales.npy";
  return out + ".scales.npy";
}

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit < 3) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, units[unit]);
}

std::string FormatInfo(const v1::TensorInfo& info) {
  const kernels::Shape shape(info.shape().begin(), info.shape().end());
  std::string line =
      absl::StrFormat("%-40s %-9s %-20s %10s  %s", info.name(),
                      kernels::DTypeName(static_cast<DType>(info.dtype())),
                      kernels::ShapeToString(shape), FormatBytes(info.nbytes()), info.device());
  if (info.quantized()) {
    const kernels::Shape scales(info.scales_shape().begin(), info.scales_shape().end());
    absl::StrAppend(&line, "  quantized, scales ", kernels::ShapeToString(scales));
  }
  return line;
}

ProgressCallback MakeProgressBar(const Context& context, std::string label) {
  constexpr int64_t kMinBytes = int64_t{8} << 20;
  if (!context.stderr_is_tty && !context.globals.progress) return nullptr;
  struct State {
    std::string label;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last_draw;
    bool done = false;
  };
  auto state = std::make_shared<State>();
  state->label = std::move(label);
  return [state](int64_t done, int64_t total) {
    if (total <= kMinBytes || state->done) return;
    const auto now = std::chrono::steady_clock::now();
    const bool finished = done >= total;
    // Redraw at most 10 times a second: a terminal is slower than a LAN.
    if (!finished && now - state->last_draw < std::chrono::milliseconds(100)) return;
    state->last_draw = now;
    constexpr int kWidth = 30;
    const double fraction = static_cast<double>(done) / static_cast<double>(total);
    const int filled = static_cast<int>(fraction * kWidth);
    const double seconds = std::chrono::duration<double>(now - state->start).count();
    const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
    std::fprintf(stderr, "\r%s [%s%s] %3d%% %s / %s  %s/s ", state->label.c_str(),
                 std::string(filled, '#').c_str(), std::string(kWidth - filled, ' ').c_str(),
                 static_cast<int>(fraction * 100), FormatBytes(done).c_str(),
                 FormatBytes(total).c_str(), FormatBytes(static_cast<int64_t>(rate)).c_str());
    if (finished) {
      std::fputc('\n', stderr);
      state->done = true;
    }
    std::fflush(stderr);
  };
}

std::string FlagHelp(std::initializer_list<std::pair<const char*, const char*>> flags) {
  size_t width = 0;
  for (const auto& [flag, text] : flags) width = std::max(width, std::strlen(flag));
  width += 4;
  std::string out;
  for (const auto& [flag, text] : flags) {
    absl::StrAppendFormat(&out, "  %-*s", width, flag);
    for (char c : std::string_view(text)) {
      out.push_back(c);
      if (c == '\n') out.append(width + 2, ' ');
    }
    out.push_back('\n');
  }
  return out;
}

absl::Status CheckOutputArgs(const ParsedArgs& args, size_t inputs, size_t outputs,
                             const std::string& output_flag) {
  const size_t given = args.positional.size();
  if (args.Has(output_flag)) {
    if (given != inputs) {
      return UsageError(absl::StrFormat(
          "with --%s the result stays resident: give %d input argument(s) and no output file "
          "(fetch it later with `accelctl get`)",
          output_flag, inputs));
    }
  } else if (given != inputs + outputs) {
    return UsageError(absl::StrFormat("expected %d arguments, got %d", inputs + outputs, given));
  }
  return absl::OkStatus();
}

}  // namespace accel::accelctl
