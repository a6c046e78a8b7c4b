// Chooses OpenBLAS's kernels for CPUs that OpenBLAS 0.3.21 does not know.
#pragma once

namespace accel::server {

// Call first thing in main, with main's argv. When OPENBLAS_CORETYPE is unset
// and the CPU has AVX-512F, sets OPENBLAS_CORETYPE=SkylakeX and re-executes
// the program (/proc/self/exe, same argv and pid), once: an environment
// marker keeps the new image from doing it again. Returns normally (changing
// nothing else) when there is nothing to do or the exec fails.
//
// Why re-exec: OpenBLAS picks its kernels in a library constructor, before
// main runs, and never looks at the variable again; 0.3.21 does not
// recognise Sapphire Rapids (or a CPU behind a VM's CPUID) and falls back to
// its generic SSE3 "Prescott" kernels, 5x slower for Linear/Ffn. Setting the
// variable in main is too late, so the process restarts with it set.
void EnsureOpenBlasCoreType(char** argv);

}  // namespace accel::server
