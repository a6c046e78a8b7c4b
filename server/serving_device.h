// The device requests run on (the host CPU or one CUDA GPU), and the
// per-call scope that moves a request's bytes to it and back.
//
// ServingDevice is chosen once at start-up from --device. On CUDA each
// executor thread owns a stream (InitThread), so concurrent requests overlap
// on the GPU; a CallScope gives one call that stream, scratch memory from
// the caching allocator (never cudaMalloc on the hot path), pinned staging
// for inline inputs (Stage) and inline results (registered by OutputSlot and
// copied back by Finish, which synchronises the stream once). On the CPU
// every step is the identity: inline inputs are used where they arrived and
// results are written straight into the response.
//
// Small tensors (up to kZeroCopyBytes) of the ops whose kernels stream
// their tensors (RmsNorm, SwiGlu, Rope, Quantize, Dequantize; not a GEMM,
// whose every block rereads the activations) skip the copy engines: Stage returns
// the pinned staging block itself and ResultBuffer hands the kernel a pinned
// block, which the kernel reads or writes in place over PCIe (mapped memory,
// one pointer for host and device by unified addressing). A one-row request
// then costs one kernel launch and one synchronisation instead of two more
// copy operations, each several microseconds of launch and DMA latency;
// larger tensors are copied, since reads over PCIe run far below HBM speed.
//
// Given a ServerMetrics, a CallScope on CUDA times its call's phases with
// events on its stream (before the first and after the last upload; when
// the first kernel is launched (ctx()); before and after the downloads) and
// records accel_compute_duration_seconds{phase=h2d|kernel|d2h} after
// Finish: device time, which the host clock cannot see (host staging into
// pinned memory is not in it). A call whose bytes all went zero-copy has
// only the kernel phase.
//
// A sticky CUDA error (an illegal address poisons the context) is latched:
// later calls fail with it, and the server reports NOT_SERVING.
//
// Thread-safety: ServingDevice is thread-safe. A CallScope belongs to one
// call on one executor thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "accel/kernels/ops.h"
#include "accel/v1/tensor_ops.pb.h"

namespace accel::server {

class CallScope;

// Tensors up to this many bytes are read and written by kernels in pinned
// host memory instead of being copied (see CallScope). bench/cuda_call_costs
// on the H100 machine, RmsNorm of R rows of 4096 bf16, host microseconds
// from launch to synchronised, mapped vs copied in and out (two runs):
// 8 KiB 12.5-12.7 vs 17.1-17.3, 64 KiB 13.9-14.5 vs 17.3-17.6, 128 KiB
// 15.8-16.7 vs 25.6-25.7, 256 KiB 20.0-21.0 vs 36.8-36.9, 512 KiB 28.3-30.1
// vs 37.6-43.1, 1 MiB 46.5-47.7 vs 55.3-60.6. The limit counts the bytes a
// tensor puts over PCIe (a weight read once per row counts once per row:
// CallScope::Stage's `reads`) and stops at half the largest size measured
// faster, since ops with several inputs read them all over PCIe and under
// load the link is shared. (It was 64 KiB, so batches of more than 8 such
// rows went through the copy engines.)
inline constexpr size_t kZeroCopyBytes = 512 * 1024;

class ServerMetrics;  // server/metrics.h
enum class Op : int;  // server/metrics.h

class ServingDevice {
 public:
  // "auto" (the first GPU if the build has CUDA and one is present, else the
  // CPU), "cpu" or "cuda:N".
  static absl::StatusOr<std::unique_ptr<ServingDevice>> Open(const std::string& flag);

  kernels::Backend backend() const { return backend_; }
  bool is_cuda() const { return backend_ == kernels::Backend::kCuda; }
  // "cpu" or "cuda:N": reported in TensorInfo.device.
  const std::string& name() const { return name_; }
  // "cpu" or "cuda": GetServerInfo.backend.
  const char* backend_name() const { return is_cuda() ? "cuda" : "cpu"; }

  // Device properties with live free memory.
  v1::DeviceProperties Describe() const;
  int64_t TotalMemoryBytes() const;
  int64_t FreeMemoryBytes() const;

  // Run once on each thread that touches device memory (executor workers,
  // and before transfers on gRPC threads): selects the device and, for
  // executor workers, creates the thread's stream.
  void InitThread() const;
  // Selects the device on the calling thread (cheap when already current).
  void MakeCurrent() const;

  // OK, or the latched sticky error.
  absl::Status health() const;
  // After a failed CUDA call: latches the error if the context is poisoned.
  void NoteFailure(const absl::Status& status) const;

 private:
  ServingDevice(kernels::Backend backend, int ordinal, std::string name)
      : backend_(backend), ordinal_(ordinal), name_(std::move(name)) {}

  const kernels::Backend backend_;
  const int ordinal_;
  const std::string name_;
  // Kernels can use pinned host pointers as they are (unified addressing).
  bool zero_copy_ = false;
  mutable absl::Mutex mu_;
  mutable absl::Status latched_ ABSL_GUARDED_BY(mu_);
  mutable std::atomic<bool> poisoned_{false};

  friend class CallScope;
};

class CallScope final : public kernels::ScratchAllocator {
 public:
  // A call of `op`; `metrics` (may be null) receives its device phases.
  CallScope(const ServingDevice& device, ServerMetrics* metrics, Op op);
  ~CallScope() override;  // waits for the stream if work is pending, frees scratch
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

  // The context to launch the call's kernels with (marks the start of the
  // kernel phase when timed).
  const kernels::ExecContext& ctx();
  bool on_device() const { return device_.is_cuda(); }

  // Scratch on the device (ScratchAllocator), freed with the scope.
  absl::StatusOr<void*> Allocate(size_t bytes) override;

  // A view of `host` on the device: the same view on the CPU; on CUDA a
  // copy through pinned staging, enqueued on the call's stream. `reads`:
  // how many times the kernels read the tensor (a weight or table is read
  // again for every row): it is left in pinned memory only when all those
  // reads together stay within kZeroCopyBytes of PCIe traffic.
  absl::StatusOr<kernels::ConstTensorView> Stage(const kernels::ConstTensorView& host,
                                                 int64_t reads = 1);

  // One view of shape `shape` over `parts` (host tensors of `dtype`, their
  // bytes in order) concatenated: the batcher's one staging copy per batch.
  // CPU: a single part is used where it is; several are copied into one
  // scratch buffer (the kernels take one dense tensor). CUDA: one pinned
  // buffer and one H2D copy for the whole batch.
  absl::StatusOr<kernels::ConstTensorView> StageConcat(
      std::span<const kernels::ConstTensorView> parts, kernels::DType dtype,
      const kernels::Shape& shape);

  // Device memory for an inline result whose bytes end up at `host_dst`
  // (nbytes long) once Finish() returns. CPU: returns host_dst itself.
  absl::StatusOr<void*> ResultBuffer(void* host_dst, size_t nbytes);

  // Copies inline results back and waits for the call's device work (once;
  // later calls return the same status; on CUDA it always synchronises, as
  // a kernel may have run with resident inputs and outputs alone). Resident
  // results may be published only after this.
  absl::Status Finish();

 private:
  struct PendingCopy {
    void* device;  // null: the kernel wrote `pinned` in place (zero-copy)
    void* pinned;
    void* host;
    size_t nbytes;
  };
  // A pinned block that lives as long as the scope.
  absl::StatusOr<void*> Pinned(size_t bytes);

  // Enqueues the upload of `n` bytes from pinned `host` to `device`.
  absl::Status Upload(void* device, const void* host, size_t n);
  // Records event `event` (a ThreadCuda::Event) on the stream when timed.
  void Mark(int event);
  // After a successful Finish on CUDA: records the phases from the events.
  void RecordPhases() const;

  const ServingDevice& device_;
  ServerMetrics* const metrics_;
  const Op op_;
  const bool zero_copy_;  // small tensors stay in pinned memory (see above)
  bool timed_ = false;    // events recorded on the stream (CUDA with metrics)
  bool kernel_marked_ = false;
  uint32_t marked_ = 0;    // bit e: event e recorded for this call
  bool uploaded_ = false;  // an H2D copy was enqueued
  kernels::ExecContext ctx_;
  std::vector<void*> scratch_;  // device blocks to free
  std::vector<void*> pinned_;   // pinned blocks to free
  std::vector<PendingCopy> results_;
  bool finished_ = false;
  bool downloads_ = false;  // some result is copied back by the copy engine
  absl::Status finish_status_;
};

}  // namespace accel::server
