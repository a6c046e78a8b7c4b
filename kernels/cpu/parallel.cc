#include "cpu/parallel.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd512.h"

namespace accel::kernels::cpu {
namespace {

// How long an idle worker polls for the next loop before it sleeps: long
// enough to catch back-to-back kernel calls, short enough not to steal a core
// from OpenBLAS's threads (a futex wake-up costs a few microseconds).
constexpr auto kSpin = std::chrono::microseconds(30);

// Ranges per thread: a few, so a worker that wakes late still gets a share.
constexpr int64_t kChunksPerThread = 4;
// Chunk counts live in 16 bits of the claim word.
constexpr int64_t kMaxChunks = 0xffff;

thread_local bool t_in_pool = false;

// Raw futexes rather than std::atomic::wait: libstdc++ 12's implementation
// can lose a wake-up (seen here as a hang), and we only need two words.
void FutexWait(std::atomic<uint32_t>& word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
          nullptr, 0);
}

// The pool runs one loop at a time. A loop is published as one 64-bit word,
// `next_` = generation << 32 | chunk count << 16 | next chunk index; threads
// claim chunks by CAS on it, so a worker that wakes after its loop is over
// (or after a newer one started) can never claim a stale chunk, and a
// successful claim proves the loop (and its fields) is still live.
// The caller waits only for chunks that workers actually claimed (`active_`),
// never for a worker that is still asleep: a small loop costs the caller a
// futex wake at most.
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads) : num_workers_(num_threads - 1) {
    for (int i = 0; i < num_workers_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }
  // The pool lives for the whole process (a leaked singleton), so there is
  // no shutdown race with static destructors.

  int num_threads() const { return num_workers_ + 1; }

  // False when the pool is in use; the caller then runs the loop itself.
  bool TryRun(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
    if (num_workers_ == 0 || t_in_pool || busy_.exchange(true, std::memory_order_acquire)) {
      return false;
    }
    const int64_t max_chunks = std::min(kMaxChunks, kChunksPerThread * num_threads());
    num_chunks_ = std::min<int64_t>(max_chunks, (n + grain - 1) / grain);
    chunk_ = (n + num_chunks_ - 1) / num_chunks_;
    n_ = n;
    fn_ = fn;
    ctx_ = ctx;
    generation_ = generation_ + 1;
    // Publishes the fields above (seq_cst store), then wakes sleepers. The
    // sleeper count pairs with WorkerLoop (Dekker): either the worker sees
    // the new generation before it sleeps, or we see it asleep.
    next_.store(static_cast<uint64_t>(generation_) << 32 | static_cast<uint64_t>(num_chunks_) << 16,
                std::memory_order_seq_cst);
    wake_.fetch_add(1, std::memory_order_seq_cst);
    if (sleeping_workers_.load(std::memory_order_seq_cst) > 0) FutexWakeAll(wake_);

    t_in_pool = true;
    RunChunks();
    t_in_pool = false;
    // Every chunk is claimed now; wait for the ones workers are running.
    while (active_.load(std::memory_order_seq_cst) != 0) _mm_pause();
    busy_.store(false, std::memory_order_release);
    return true;
  }

 private:
  // Claims and runs chunks of the current loop until none is left.
  void RunChunks() {
    for (;;) {
      active_.fetch_add(1, std::memory_order_seq_cst);
      uint64_t cur = next_.load(std::memory_order_seq_cst);
      int64_t chunk = -1;
      RangeFn fn = nullptr;
      void* ctx = nullptr;
      int64_t begin = 0, end = 0;
      while ((cur & 0xffffu) < ((cur >> 16) & 0xffffu)) {
        if (next_.compare_exchange_weak(cur, cur + 1, std::memory_order_seq_cst)) {
          chunk = static_cast<int64_t>(cur & 0xffffu);
          // The loop cannot end while we are counted in active_, so its
          // fields are stable here.
          fn = fn_;
          ctx = ctx_;
          begin = chunk * chunk_;
          end = std::min(n_, begin + chunk_);
          break;
        }
      }
      if (chunk >= 0 && begin < end) fn(ctx, begin, end);
      active_.fetch_sub(1, std::memory_order_seq_cst);
      if (chunk < 0) return;
    }
  }

  void WorkerLoop() {
    t_in_pool = true;
    uint32_t seen = 0;
    for (;;) {
      const auto deadline = std::chrono::steady_clock::now() + kSpin;
      int spins = 0;
      uint32_t w;
      while ((w = wake_.load(std::memory_order_acquire)) == seen) {
        if (++spins % 64 == 0 && std::chrono::steady_clock::now() > deadline) {
          sleeping_workers_.fetch_add(1, std::memory_order_seq_cst);
          if (wake_.load(std::memory_order_seq_cst) == seen) FutexWait(wake_, seen);
          sleeping_workers_.fetch_sub(1, std::memory_order_relaxed);
        } else {
          _mm_pause();
        }
      }
      seen = w;
      RunChunks();
    }
  }

  const int num_workers_;
  std::vector<std::thread> workers_;
  std::atomic<bool> busy_{false};
  std::atomic<uint32_t> wake_{0};  // bumped once per loop (futex word)
  std::atomic<uint64_t> next_{0};  // generation | chunk count | next chunk
  std::atomic<int> active_{0};     // threads between claim and finish
  std::atomic<int> sleeping_workers_{0};
  // The current loop; written by the caller before next_ is published.
  uint32_t generation_ = 0;
  RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 0;
  int64_t num_chunks_ = 0;
};

ThreadPool& Pool() {
  static ThreadPool* pool = new ThreadPool(NumThreads());
  return *pool;
}

}  // namespace

int NumThreads() {
  static const int n = [] {
    if (const char* env = std::getenv("ACCEL_CPU_THREADS")) {
      const int v = std::atoi(env);
      if (v >= 1) return std::min(v, 256);
    }
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return n;
}

// Lives here with the other process-wide CPU settings (NumThreads).
bool UsesAvx512() { return HasAvx512(); }

void ParallelForImpl(int64_t n, int64_t min_grain, RangeFn fn, void* ctx) {
  if (n <= 0) return;
  min_grain = std::max<int64_t>(1, min_grain);
  if (n < 2 * min_grain || NumThreads() == 1 || !Pool().TryRun(n, min_grain, fn, ctx)) {
    fn(ctx, 0, n);
  }
}

}  // namespace accel::kernels::cpu
