#include "server/serving_device.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "accel/util/logging.h"
#include "server/device_info.h"
#include "server/metrics.h"

#if ACCEL_WITH_CUDA
#include <cuda_runtime_api.h>

#include "accel/kernels/cuda_memory.h"
#endif

namespace accel::server {
namespace {

#if ACCEL_WITH_CUDA
// What a thread that runs requests owns on the GPU: its stream (requests on
// different threads overlap) and the events that time one call's phases.
// Freed with the thread: small requests run inline on gRPC's threads, which
// come and go.
struct ThreadCuda {
  // The events of one call's phases (see CallScope): h2d is upload_begin ->
  // upload_end, kernel is kernel_begin -> computed, d2h is computed ->
  // downloaded.
  enum Event { kUploadBegin, kUploadEnd, kKernelBegin, kComputed, kDownloaded, kEvents };

  cudaStream_t stream = nullptr;
  cudaEvent_t events[kEvents] = {};
  bool timing = false;  // a CallScope of this thread is timing its call

  ~ThreadCuda() {
    // At process exit the runtime may be gone first; the errors are moot.
    for (cudaEvent_t event : events) {
      if (event != nullptr) cudaEventDestroy(event);
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
  // Creates the events not made yet; false if one cannot be (then the call
  // goes untimed, and a later call tries again).
  bool HasEvents() {
    for (cudaEvent_t& event : events) {
      if (event == nullptr && cudaEventCreate(&event) != cudaSuccess) {
        cudaGetLastError();
        event = nullptr;
        return false;
      }
    }
    return true;
  }
};
thread_local ThreadCuda t_cuda;

absl::Status Cuda(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  if (error == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(absl::StrCat("out of device memory (", what, ")"));
  }
  return absl::InternalError(absl::StrCat("CUDA error in ", what, ": ", cudaGetErrorName(error),
                                          ": ", cudaGetErrorString(error)));
}

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear "no device" so it does not linger
    return 0;
  }
  return count;
}
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<ServingDevice>> ServingDevice::Open(const std::string& flag) {
  using Ptr = std::unique_ptr<ServingDevice>;
  if (flag == "cpu") return Ptr(new ServingDevice(kernels::Backend::kCpu, -1, "cpu"));
  int ordinal = -1;
  if (flag == "auto") {
#if ACCEL_WITH_CUDA
    if (CudaDeviceCount() > 0) ordinal = 0;
#endif
    if (ordinal < 0) return Ptr(new ServingDevice(kernels::Backend::kCpu, -1, "cpu"));
  } else if (flag.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(flag.substr(5), &ordinal) &&
             ordinal >= 0) {
#if !ACCEL_WITH_CUDA
    return absl::FailedPreconditionError(absl::StrCat(
        "--device=", flag, ": this build has no CUDA backend (configure with -DACCEL_CUDA=ON)"));
#else
    const int count = CudaDeviceCount();
    if (ordinal >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("--device=", flag, ": only ", count, " CUDA device(s) are visible"));
    }
#endif
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: expected auto, cpu or cuda:N, found '", flag, "'"));
  }
  auto device =
      Ptr(new ServingDevice(kernels::Backend::kCuda, ordinal, absl::StrCat("cuda:", ordinal)));
  device->InitThread();
#if ACCEL_WITH_CUDA
  int unified = 0, map_host = 0;
  cudaDeviceGetAttribute(&unified, cudaDevAttrUnifiedAddressing, ordinal);
  cudaDeviceGetAttribute(&map_host, cudaDevAttrCanMapHostMemory, ordinal);
  device->zero_copy_ = unified != 0 && map_host != 0;
#endif
  return device;
}

void ServingDevice::MakeCurrent() const {
#if ACCEL_WITH_CUDA
  if (is_cuda()) cudaSetDevice(ordinal_);
#endif
}

void ServingDevice::InitThread() const {
#if ACCEL_WITH_CUDA
  if (!is_cuda()) return;
  cudaSetDevice(ordinal_);
  if (t_cuda.stream == nullptr) cudaStreamCreateWithFlags(&t_cuda.stream, cudaStreamNonBlocking);
#endif
}

int64_t ServingDevice::TotalMemoryBytes() const {
#if ACCEL_WITH_CUDA
  if (is_cuda()) {
    MakeCurrent();
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return static_cast<int64_t>(total);
    return 0;
  }
#endif
  return HostTotalMemoryBytes();
}

int64_t ServingDevice::FreeMemoryBytes() const {
#if ACCEL_WITH_CUDA
  if (is_cuda()) {
    MakeCurrent();
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return static_cast<int64_t>(free);
    return 0;
  }
#endif
  return HostAvailableMemoryBytes();
}

v1::DeviceProperties ServingDevice::Describe() const {
#if ACCEL_WITH_CUDA
  if (is_cuda()) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, ordinal_);
    v1::DeviceProperties props;
    props.set_name(prop.name);
    props.set_total_memory(TotalMemoryBytes());
    props.set_free_memory(FreeMemoryBytes());
    props.set_compute_capability(absl::StrCat(prop.major, ".", prop.minor));
    props.set_multi_processor_count(prop.multiProcessorCount);
    const int cc = prop.major * 10 + prop.minor;
    props.set_supports_fp16(cc >= 53);
    props.set_supports_bf16(cc >= 80);
    props.set_supports_fp8(cc >= 89);
    props.set_supports_int8_tensor_cores(cc >= 72);
    return props;
  }
#endif
  return DescribeCpu();
}

absl::Status ServingDevice::health() const {
  if (!poisoned_.load(std::memory_order_acquire)) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  return latched_;
}

void ServingDevice::NoteFailure(const absl::Status& status) const {
#if ACCEL_WITH_CUDA
  if (!is_cuda() || status.code() != absl::StatusCode::kInternal) return;
  // A sticky error survives a synchronisation; an ordinary one was cleared.
  const cudaError_t sticky = cudaDeviceSynchronize();
  if (sticky == cudaSuccess) return;
  absl::MutexLock lock(&mu_);
  if (poisoned_.load()) return;
  latched_ = absl::InternalError(absl::StrCat("the CUDA context is unusable after ",
                                              cudaGetErrorName(sticky), " (", status.message(),
                                              "); restart the server"));
  poisoned_.store(true, std::memory_order_release);
  LOG(ERROR) << latched_;
#endif
}

// ------------------------------------------------------------- CallScope

namespace {

// The kernels of these ops stream their main tensors (each byte read or
// written once; a weight or table is read again for every row or head,
// and per-tensor Quantize reads its input twice: the callers pass those
// counts to Stage), so for small tensors pinned host memory over PCIe
// costs less than the copies it saves. A GEMM rereads its activations from
// every block: never zero-copy.
bool StreamsItsTensors(Op op) {
  switch (op) {
    case Op::kRmsNorm:
    case Op::kSwiGlu:
    case Op::kRope:
    case Op::kQuantize:
    case Op::kDequantize:
      return true;
    default:
      return false;
  }
}

}  // namespace

CallScope::CallScope(const ServingDevice& device, ServerMetrics* metrics, Op op)
    : device_(device),
      metrics_(metrics),
      op_(op),
      zero_copy_(device.zero_copy_ && StreamsItsTensors(op)) {
  ctx_.backend = device.backend();
  ctx_.scratch = this;
#if ACCEL_WITH_CUDA
  if (device.is_cuda()) {
    if (t_cuda.stream == nullptr) device.InitThread();
    ctx_.stream = t_cuda.stream;
    // Events belong to the thread: a scope nested in another goes untimed.
    if (metrics_ != nullptr && !t_cuda.timing && t_cuda.HasEvents()) {
      timed_ = t_cuda.timing = true;
    }
  }
#endif
}

CallScope::~CallScope() {
#if ACCEL_WITH_CUDA
  if (device_.is_cuda()) {
    // Scratch returns to a cache other streams allocate from: wait until
    // this call's kernels are done with it.
    if (!finished_) cudaStreamSynchronize(t_cuda.stream);
    if (timed_) t_cuda.timing = false;
    for (void* p : scratch_) kernels::cuda::DeviceFree(device_.ordinal_, p);
    for (void* p : pinned_) kernels::cuda::PinnedFree(p);
    return;
  }
#endif
  for (void* p : scratch_) std::free(p);
}

absl::StatusOr<void*> CallScope::Allocate(size_t bytes) {
  const size_t rounded = (bytes + 255) / 256 * 256;
#if ACCEL_WITH_CUDA
  if (device_.is_cuda()) {
    void* p = nullptr;
    absl::Status s = Cuda(kernels::cuda::DeviceAlloc(device_.ordinal_, rounded, &p), "scratch");
    if (!s.ok()) return s;
    scratch_.push_back(p);
    return p;
  }
#endif
  void* p = std::aligned_alloc(256, rounded == 0 ? 256 : rounded);
  if (p == nullptr) return absl::ResourceExhaustedError("out of host memory for scratch");
  scratch_.push_back(p);
  return p;
}

const kernels::ExecContext& CallScope::ctx() {
  // The first kernel is launched with this context: the kernel phase starts
  // here, after the inputs are in place and the outputs allocated.
  if (!kernel_marked_) {
    kernel_marked_ = true;
#if ACCEL_WITH_CUDA
    Mark(ThreadCuda::kKernelBegin);
#endif
  }
  return ctx_;
}

void CallScope::Mark(int event) {
#if ACCEL_WITH_CUDA
  if (!timed_) return;
  if (cudaEventRecord(t_cuda.events[event], t_cuda.stream) == cudaSuccess) {
    marked_ |= 1u << event;
  } else {
    cudaGetLastError();
    marked_ &= ~(1u << event);  // never pair a stale timestamp
  }
#endif
}

absl::StatusOr<void*> CallScope::Pinned(size_t bytes) {
#if ACCEL_WITH_CUDA
  void* pinned = nullptr;
  absl::Status s = Cuda(kernels::cuda::PinnedAlloc(bytes, &pinned), "pinned staging");
  if (!s.ok()) return s;
  pinned_.push_back(pinned);
  return pinned;
#else
  return absl::InternalError("pinned memory needs the CUDA backend");
#endif
}

absl::Status CallScope::Upload(void* device, const void* host, size_t n) {
#if ACCEL_WITH_CUDA
  if (!uploaded_) Mark(ThreadCuda::kUploadBegin);
  absl::Status s =
      Cuda(cudaMemcpyAsync(device, host, n, cudaMemcpyHostToDevice, t_cuda.stream), "upload");
  if (!s.ok()) return s;
  uploaded_ = true;
  Mark(ThreadCuda::kUploadEnd);  // again after each upload: h2d ends with the last
#endif
  return absl::OkStatus();
}

void CallScope::RecordPhases() const {
#if ACCEL_WITH_CUDA
  auto seconds = [](cudaEvent_t from, cudaEvent_t to) -> std::optional<double> {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, from, to) != cudaSuccess) {
      cudaGetLastError();
      return std::nullopt;
    }
    return ms * 1e-3;
  };
  auto observe = [&](Phase phase, int from, int to) {
    if ((marked_ >> from & 1) == 0 || (marked_ >> to & 1) == 0) return;
    if (auto s = seconds(t_cuda.events[from], t_cuda.events[to])) {
      metrics_->ObserveCompute(op_, phase, *s);
    }
  };
  observe(Phase::kH2D, ThreadCuda::kUploadBegin, ThreadCuda::kUploadEnd);
  observe(Phase::kKernel, ThreadCuda::kKernelBegin, ThreadCuda::kComputed);
  observe(Phase::kD2H, ThreadCuda::kComputed, ThreadCuda::kDownloaded);
#endif
}

absl::StatusOr<kernels::ConstTensorView> CallScope::Stage(const kernels::ConstTensorView& host,
                                                          int64_t reads) {
  if (!device_.is_cuda() || host.nbytes() == 0) return host;
#if ACCEL_WITH_CUDA
  const size_t n = host.nbytes();
  auto pinned = Pinned(n);
  if (!pinned.ok()) return pinned.status();
  std::memcpy(*pinned, host.data, n);
  // n <= the message limit (< 2^31) and reads < 2^32: no overflow.
  if (zero_copy_ && n * static_cast<size_t>(std::max<int64_t>(reads, 1)) <= kZeroCopyBytes) {
    return kernels::ConstTensorView{host.dtype, host.shape, *pinned};
  }
  auto device = Allocate(n);
  if (!device.ok()) return device.status();
  absl::Status s = Upload(*device, *pinned, n);
  if (!s.ok()) return s;
  return kernels::ConstTensorView{host.dtype, host.shape, *device};
#else
  return host;
#endif
}

absl::StatusOr<kernels::ConstTensorView> CallScope::StageConcat(
    std::span<const kernels::ConstTensorView> parts, kernels::DType dtype,
    const kernels::Shape& shape) {
  kernels::ConstTensorView whole{dtype, shape, nullptr};
  const size_t n = whole.nbytes();
  if (parts.size() == 1 && parts[0].nbytes() == n) {
    whole.data = parts[0].data;
    return Stage(whole);
  }
  void* host = nullptr;
  if (device_.is_cuda()) {
    auto pinned = Pinned(n);
    if (!pinned.ok()) return pinned.status();
    host = *pinned;
  }
  if (host == nullptr) {
    auto scratch = Allocate(n);  // host scratch on the CPU
    if (!scratch.ok()) return scratch.status();
    host = *scratch;
  }
  size_t offset = 0;
  for (const kernels::ConstTensorView& part : parts) {
    const size_t bytes = part.nbytes();
    if (offset + bytes > n) return absl::InternalError("StageConcat: parts exceed the shape");
    std::memcpy(static_cast<char*>(host) + offset, part.data, bytes);
    offset += bytes;
  }
  if (offset != n) return absl::InternalError("StageConcat: parts do not fill the shape");
  whole.data = host;
#if ACCEL_WITH_CUDA
  if (device_.is_cuda() && n > 0 && !(zero_copy_ && n <= kZeroCopyBytes)) {
    auto device = Allocate(n);
    if (!device.ok()) return device.status();
    absl::Status s = Upload(*device, host, n);
    if (!s.ok()) return s;
    whole.data = *device;
  }
#endif
  return whole;
}

absl::StatusOr<void*> CallScope::ResultBuffer(void* host_dst, size_t nbytes) {
  if (!device_.is_cuda() || nbytes == 0) return host_dst;
  auto pinned = Pinned(nbytes);
  if (!pinned.ok()) return pinned.status();
  if (zero_copy_ && nbytes <= kZeroCopyBytes) {
    results_.push_back(PendingCopy{nullptr, *pinned, host_dst, nbytes});
    return *pinned;
  }
  auto device = Allocate(nbytes);
  if (!device.ok()) return device.status();
  results_.push_back(PendingCopy{*device, *pinned, host_dst, nbytes});
  downloads_ = true;
  return *device;
}

absl::Status CallScope::Finish() {
  if (finished_) return finish_status_;
  finished_ = true;
#if ACCEL_WITH_CUDA
  if (device_.is_cuda()) {
    cudaStream_t stream = t_cuda.stream;
    Mark(ThreadCuda::kComputed);
    for (const PendingCopy& copy : results_) {
      if (copy.device == nullptr) continue;  // written in place
      finish_status_ = Cuda(
          cudaMemcpyAsync(copy.pinned, copy.device, copy.nbytes, cudaMemcpyDeviceToHost, stream),
          "download");
      if (!finish_status_.ok()) break;
    }
    if (downloads_) Mark(ThreadCuda::kDownloaded);
    const absl::Status synced = Cuda(cudaStreamSynchronize(stream), "kernel execution");
    if (finish_status_.ok()) finish_status_ = synced;
    if (finish_status_.ok()) {
      for (const PendingCopy& copy : results_) std::memcpy(copy.host, copy.pinned, copy.nbytes);
      if (timed_) RecordPhases();
    } else {
      device_.NoteFailure(finish_status_);
    }
  }
#endif
  return finish_status_;
}

}  // namespace accel::server
