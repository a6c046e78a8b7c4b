#include "server/blas_env.h"

#include <unistd.h>

#include <cstdlib>

namespace accel::server {
namespace {

// Set in the re-executed image, so that a second exec can never happen (even
// if something clears OPENBLAS_CORETYPE in between).
constexpr char kMarker[] = "ACCEL_OPENBLAS_REEXEC";

}  // namespace

void EnsureOpenBlasCoreType(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv(kMarker) != nullptr) return;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) return;
  // SkylakeX: OpenBLAS's AVX-512 sgemm kernels, which every AVX-512F CPU runs.
  if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0 || setenv(kMarker, "1", 1) != 0) return;
  execv("/proc/self/exe", argv);
  // Only reached when the exec failed (e.g. no /proc): carry on with the
  // kernels OpenBLAS chose; the variables set above are harmless.
}

}  // namespace accel::server
