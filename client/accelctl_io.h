// accelctl's subcommand table and the helpers its subcommands share: turning
// .npy files and "@name" arguments into op inputs, writing results, printing
// tensor infos, and the progress bar.
//
// Used only by the accelctl_*.cc files. Single-threaded, like the tool.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/tensor.h"
#include "client/accelctl_args.h"
#include "client/client.h"
#include "client/npy.h"

namespace accel::accelctl {

// What a subcommand runs with.
struct Context {
  Client* client = nullptr;
  GlobalOptions globals;
  bool stderr_is_tty = false;
};

struct Command {
  std::string name;
  std::string usage;    // the arguments, e.g. "NAME FILE.npy [--dtype D] [--overwrite]"
  std::string summary;  // one line for `accelctl help`
  std::string details;  // the flags, for `accelctl help NAME`
  std::vector<FlagSpec> flags;
  size_t min_positional = 0;
  size_t max_positional = 0;
  absl::Status (*run)(Context& context, const ParsedArgs& args) = nullptr;
};

// The subcommands, by file.
std::vector<Command> StoreCommands();  // info list put get load delete
std::vector<Command> OpCommands();     // rmsnorm swiglu linear ffn rope ... quantize-weight

// ------------------------------------------------------------------ Inputs

// Casts a float array to `dtype` (round to nearest even). Integer arrays are
// left alone when `ints_pass` (op inputs such as positions), else refused.
absl::Status CastArray(NpyArray& array, kernels::DType dtype, const std::string& source,
                       bool ints_pass);

// An op input: "@name" is a resident tensor; anything else is a .npy file,
// read and (for float data, when `cast` is set) cast to `cast`.
absl::StatusOr<v1::TensorRef> InputRef(const std::string& arg, std::optional<kernels::DType> cast);

// A resident tensor's name, given with or without a leading '@'.
std::string ResidentName(const std::string& arg);

// --------------------------------------------------------------- Outputs

// Writes a response tensor to `path` as .npy and says so on stdout. BFLOAT16
// is widened to float32 (exactly), which the message mentions.
absl::Status WriteResult(const std::string& path, const v1::Tensor& tensor);

// For a result kept resident (--output-name): prints where it went.
void PrintStored(const std::string& name, const v1::Tensor& tensor);

// "OUT.scales.npy" for "OUT.npy" (and "OUT.scales.npy" for "OUT").
std::string ScalesPath(const std::string& out);

// "w  BFLOAT16  [4096, 4096]  32.0 MiB  cpu" (and the scales of a quantized one).
std::string FormatInfo(const v1::TensorInfo& info);
std::string FormatBytes(int64_t bytes);

// ------------------------------------------------------------ Progress bar

// A callback drawing a progress bar on stderr for transfers larger than 8
// MiB when stderr is a TTY or --progress was given; otherwise it does
// nothing. `label` names the transfer ("put w").
ProgressCallback MakeProgressBar(const Context& context, std::string label);

// Formats flag help lines, descriptions aligned in one column; a '\n' in a
// description continues it on the next line, in the same column.
std::string FlagHelp(std::initializer_list<std::pair<const char*, const char*>> flags);

// Output-file positional arguments: with `output_name` set the result stays
// resident and the OUT argument(s) must be absent; without, present.
absl::Status CheckOutputArgs(const ParsedArgs& args, size_t inputs, size_t outputs,
                             const std::string& output_flag);

}  // namespace accel::accelctl
