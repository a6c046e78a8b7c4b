// accelctl: the command-line client of accel-serve.
//
//   accelctl [--server HOST:PORT] [--token T] [--timeout D] COMMAND [ARGS]
//
// Subcommands live in accelctl_store.cc (server and resident tensors) and
// accelctl_ops.cc (one per op); this file parses the global flags, picks
// the subcommand, and turns its status into output and an exit code:
// 0 success, 1 an error ("accelctl: CODE: message"), 2 a usage error.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/accelctl_args.h"
#include "client/accelctl_io.h"
#include "client/client.h"

namespace accel::accelctl {
namespace {

constexpr char kGlobalHelp[] =
    "usage: accelctl [--server HOST:PORT] [--token T] [--timeout D] [--progress] COMMAND [ARGS]\n"
    "\n"
    "The command-line client of accel-serve (the accel.v1.TensorOps gRPC service).\n"
    "\n"
    "Global flags (allowed anywhere on the line):\n"
    "  --server HOST:PORT   the server; default $ACCEL_SERVER, else localhost:50051\n"
    "  --token T            sent as \"authorization: Bearer T\"; default $ACCEL_TOKEN\n"
    "  --timeout D          deadline of each call: 30s, 500ms, 2m, or seconds (default none)\n"
    "  --progress           progress bars for transfers over 8 MiB even when stderr is not a\n"
    "                       terminal\n"
    "  --help, -h           help for a command\n";

constexpr char kFooter[] =
    "\n"
    "Op inputs are .npy files, or @NAME for a tensor resident on the server. .npy files\n"
    "hold float32, float16, int8, int32 or int64 in C order; a BFLOAT16 result is written\n"
    "as float32 (exactly), and --dtype bfloat16 casts float32 files back on the way in.\n"
    "With --output-name N an op's result stays resident as N and its output file is\n"
    "omitted. Run `accelctl help COMMAND` for a command's flags.\n"
    "\n"
    "Exit status: 0 success, 1 error (\"accelctl: CODE: message\"), 2 usage error.\n";

const std::vector<Command>& AllCommands() {
  static const std::vector<Command>* commands = [] {
    auto* all = new std::vector<Command>(StoreCommands());
    for (Command& command : OpCommands()) all->push_back(std::move(command));
    return all;
  }();
  return *commands;
}

const Command* FindCommand(const std::string& name) {
  for (const Command& command : AllCommands()) {
    if (command.name == name) return &command;
  }
  return nullptr;
}

void PrintHelp(std::FILE* out) {
  std::fputs(kGlobalHelp, out);
  std::fputs("\nCommands:\n", out);
  std::fprintf(out, "  %-18s %s\n", "help [COMMAND]", "this text, or a command's flags");
  for (const Command& command : AllCommands()) {
    std::fprintf(out, "  %-18s %s\n", command.name.c_str(), command.summary.c_str());
  }
  std::fputs(kFooter, out);
}

void PrintCommandUsage(std::FILE* out, const Command& command) {
  std::fprintf(out, "usage: accelctl %s %s\n", command.name.c_str(), command.usage.c_str());
}

void PrintCommandHelp(std::FILE* out, const Command& command) {
  PrintCommandUsage(out, command);
  std::fprintf(out, "\n%s.\n", command.summary.c_str());
  if (!command.details.empty()) std::fprintf(out, "\n%s", command.details.c_str());
}

int UsageFailure(const absl::Status& status, const Command* command) {
  std::fprintf(stderr, "accelctl: %s\n", std::string(status.message()).c_str());
  if (command != nullptr) {
    PrintCommandUsage(stderr, *command);
    std::fprintf(stderr, "(run `accelctl help %s` for its flags)\n", command->name.c_str());
  } else {
    std::fputs("(run `accelctl help` for the commands)\n", stderr);
  }
  return 2;
}

int Main(int argc, char** argv) {
  GlobalOptions globals;
  if (const char* server = std::getenv("ACCEL_SERVER"); server != nullptr && *server != '\0') {
    globals.server = server;
  }
  if (const char* token = std::getenv("ACCEL_TOKEN"); token != nullptr) globals.token = token;

  auto rest = ExtractGlobalFlags(std::vector<std::string>(argv + 1, argv + argc), globals);
  if (!rest.ok()) return UsageFailure(rest.status(), nullptr);
  if (rest->empty()) {
    PrintHelp(globals.help ? stdout : stderr);
    return globals.help ? 0 : 2;
  }
  const std::string name = rest->front();
  if (name == "help") {
    if (rest->size() == 1) {
      PrintHelp(stdout);
      return 0;
    }
    const Command* command = FindCommand((*rest)[1]);
    if (command == nullptr) {
      return UsageFailure(
          absl::InvalidArgumentError(absl::StrCat("unknown command '", (*rest)[1], "'")), nullptr);
    }
    PrintCommandHelp(stdout, *command);
    return 0;
  }
  const Command* command = FindCommand(name);
  if (command == nullptr) {
    return UsageFailure(absl::InvalidArgumentError(absl::StrCat("unknown command '", name, "'")),
                        nullptr);
  }
  if (globals.help) {
    PrintCommandHelp(stdout, *command);
    return 0;
  }

  const std::vector<std::string> args(rest->begin() + 1, rest->end());
  auto parsed = ParseArgs(args, command->flags);
  if (!parsed.ok()) return UsageFailure(parsed.status(), command);
  const size_t given = parsed->positional.size();
  if (given < command->min_positional || given > command->max_positional) {
    return UsageFailure(
        UsageError(absl::StrCat("wrong number of arguments (", given, ") for ", name)), command);
  }

  ClientOptions options;
  options.auth_token = globals.token;
  options.default_timeout = globals.timeout;
  Client client(globals.server, options);
  Context context;
  context.client = &client;
  context.globals = globals;
  context.stderr_is_tty = ::isatty(STDERR_FILENO) == 1;

  absl::Status status = command->run(context, *parsed);
  if (status.ok()) return 0;
  if (IsUsageError(status)) return UsageFailure(status, command);
  std::string message(status.message());
  if (status.code() == absl::StatusCode::kUnavailable) {
    absl::StrAppend(&message, " (is accel-serve running at ", globals.server,
                    "? set --server or ACCEL_SERVER)");
  }
  std::fflush(stdout);
  std::fprintf(stderr, "accelctl: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               message.c_str());
  return 1;
}

}  // namespace
}  // namespace accel::accelctl

int main(int argc, char** argv) { return accel::accelctl::Main(argc, argv); }
