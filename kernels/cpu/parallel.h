// A small persistent thread pool for the CPU kernels: ParallelFor splits
// [0, n) into contiguous ranges and runs them on the pool's workers and the
// calling thread.
//
// Used by kernels/cpu/*.cc and kernels/convert.cc. Thread-safety: any thread
// may call ParallelFor at any time. The pool runs one loop at a time; a call
// that finds it busy (another request's loop, or a ParallelFor nested inside
// a worker) runs its loop inline on the calling thread, which keeps the
// machine from being oversubscribed and never deadlocks. Calls allocate
// nothing. Workers spin briefly after a loop, then sleep on a futex, so they
// do not compete with OpenBLAS's threads during a GEMM.
#pragma once

#include <cstdint>
#include <type_traits>

namespace accel::kernels::cpu {

// Threads a ParallelFor may use, the caller included: ACCEL_CPU_THREADS from
// the environment when set (read once), else std::thread::hardware_concurrency().
int NumThreads();

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void ParallelForImpl(int64_t n, int64_t min_grain, RangeFn fn, void* ctx);

// Calls fn(begin, end) on disjoint ranges that cover [0, n), each at least
// min_grain long (except the last), and returns when all are done. Work of
// less than 2 * min_grain runs inline. fn must not throw.
template <typename Fn>
void ParallelFor(int64_t n, int64_t min_grain, Fn&& fn) {
  if (n <= 0) return;
  using F = std::remove_reference_t<Fn>;
  ParallelForImpl(
      n, min_grain,
      [](void* ctx, int64_t begin, int64_t end) { (*static_cast<F*>(ctx))(begin, end); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace accel::kernels::cpu
