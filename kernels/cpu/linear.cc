// Linear and Ffn on the CPU, on top of OpenBLAS's sgemm.
//
// Activations are converted to fp32 once; a weight that is not fp32 is
// converted a block of output rows at a time (int8 values convert exactly)
// so that its fp32 copy stays a few MiB; int8 scales and biases are applied
// in an fp32 epilogue after the K loop, which also rounds once to the output
// dtype. Conversions and epilogues run on our thread pool, the GEMMs on
// OpenBLAS's threads, never one inside the other.
#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "accel/util/logging.h"
#include "accel/util/status_macros.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace accel::kernels::cpu {
namespace {

// fp32 elements of a converted weight block: 4 MiB, so the block is still in
// L2/L3 when sgemm reads it right after the conversion wrote it.
constexpr int64_t kWeightBlockElements = int64_t{1} << 20;
// Rows of activations per Ffn step: bounds the fp32 intermediates to
// 2 * kFfnRows * I floats while re-converting non-fp32 weights rarely.
constexpr int64_t kFfnRows = 1024;
// cblas takes int extents; larger row counts are split.
constexpr int64_t kMaxGemmRows = int64_t{1} << 30;

// Float scratch from ctx.scratch when present, else from the heap.
class Scratch {
 public:
  explicit Scratch(ScratchAllocator* alloc) : alloc_(alloc) {}
  absl::StatusOr<float*> Floats(int64_t n) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float);
    if (alloc_ != nullptr) {
      absl::StatusOr<void*> p = alloc_->Allocate(bytes);
      if (!p.ok()) return p.status();
      return static_cast<float*>(*p);
    }
    void* p = std::malloc(bytes);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("out of host memory allocating ", bytes, " bytes of scratch"));
    }
    owned_.emplace_back(p);
    return static_cast<float*>(p);
  }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  ScratchAllocator* alloc_;
  std::vector<std::unique_ptr<void, Free>> owned_;
};

void Int8ToFloat(const int8_t* src, float* dst, int64_t n) {
  ParallelFor(n, 64 * 1024, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
      const __m256i w =
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_cvtepi32_ps(w));
    }
    for (; i < e; ++i) dst[i] = static_cast<float>(src[i]);
  });
}

// The per-column affine epilogue of a GEMM: y = c * scale + bias, each term
// optional, in fp32.
struct Epilogue {
  const float* scales = nullptr;  // [N], or null
  float scalar_scale = 1.0f;      // used when scales is null
  bool has_scale = false;
  const float* bias = nullptr;  // [N] fp32, or null
};

// c: [m, n] fp32 with leading dim ldc; y: [m, n] of dtype D, leading dim n.
// c and y may be the same memory (D = FLOAT32, ldc = n).
template <DType D>
void ApplyEpilogue(const float* c, int64_t ldc, Storage<D>* y, int64_t m, int64_t n,
                   const Epilogue& ep) {
  const int64_t grain = std::max<int64_t>(1, 16 * 1024 / std::max<int64_t>(1, n));
  ParallelFor(m, grain, [&](int64_t r0, int64_t r1) {
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t r = r0; r < r1; ++r) {
      const float* cr = c + r * ldc;
      Storage<D>* yr = y + r * n;
      for (int64_t j = 0; j < n; j += 8) {
        const int64_t k = std::min<int64_t>(8, n - j);
        __m256 v = LoadPartial<DType::kFloat32>(cr + j, k);
        if (ep.has_scale) {
          v = _mm256_mul_ps(v, ep.scales != nullptr ? LoadPartial<DType::kFloat32>(ep.scales + j, k)
                                                    : _mm256_set1_ps(ep.scalar_scale));
        }
        v = _mm256_add_ps(v,
                          ep.bias != nullptr ? LoadPartial<DType::kFloat32>(ep.bias + j, k) : zero);
        StorePartial<D>(yr + j, k, v);
      }
    }
  });
}

// C[m, N] (leading dim ldc) = A[m, K] @ W^T, fp32, no epilogue. wbuf holds
// kWeightBlockElements floats (unused for an fp32 weight).
void GemmWeight(const float* a, int64_t m, int64_t k, const WeightView& w, float* c, int64_t ldc,
                float* wbuf) {
  const int64_t n = w.values.shape[0];
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t r = 0; r < m; ++r) std::fill(c + r * ldc, c + r * ldc + n, 0.0f);
    return;
  }
  auto sgemm = [&](const float* wb, int64_t n0, int64_t nb) {
    for (int64_t r = 0; r < m; r += kMaxGemmRows) {
      const int64_t mr = std::min(kMaxGemmRows, m - r);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(mr),
                  static_cast<blasint>(nb), static_cast<blasint>(k), 1.0f, a + r * k,
                  static_cast<blasint>(k), wb, static_cast<blasint>(k), 0.0f, c + r * ldc + n0,
                  static_cast<blasint>(ldc));
    }
  };
  if (!w.quantized() && w.values.dtype == DType::kFloat32) {
    sgemm(w.values.as<float>(), 0, n);
    return;
  }
  const int64_t block_rows = std::max<int64_t>(1, kWeightBlockElements / k);
  for (int64_t n0 = 0; n0 < n; n0 += block_rows) {
    const int64_t nb = std::min(block_rows, n - n0);
    if (w.quantized()) {
      Int8ToFloat(w.values.as<int8_t>() + n0 * k, wbuf, nb * k);
    } else {
      const char* src = static_cast<const char*>(w.values.data) +
                        static_cast<size_t>(n0 * k) * ItemSize(w.values.dtype);
      ConvertFloats(w.values.dtype, src, DType::kFloat32, wbuf, nb * k);
    }
    sgemm(wbuf, n0, nb);
  }
}

// Scales and bias of one weight, as fp32 arrays the epilogue can read.
absl::StatusOr<Epilogue> MakeEpilogue(const WeightView& w,
                                      const std::optional<ConstTensorView>& bias,
                                      Scratch& scratch) {
  Epilogue ep;
  if (w.quantized()) {
    ep.has_scale = true;
    if (w.scales->shape.empty()) {
      ep.scalar_scale = w.scales->as<float>()[0];
    } else {
      ep.scales = w.scales->as<float>();
    }
  }
  if (bias) {
    const int64_t n = bias->num_elements();
    if (bias->dtype == DType::kFloat32) {
      ep.bias = bias->as<float>();
    } else {
      ASSIGN_OR_RETURN(float* b, scratch.Floats(n));
      ConvertFloats(bias->dtype, bias->data, DType::kFloat32, b, n);
      ep.bias = b;
    }
  }
  return ep;
}

// OpenBLAS 0.3.21's DYNAMIC_ARCH does not recognise some recent CPUs (or
// their virtualised CPUID) and falls back to its generic SSE3 "Prescott"
// kernels, about 9x slower than the AVX-512 ones. The core type is chosen
// when the library loads, so all we can do is say so, once.
void WarnIfOpenBlasIsGeneric() {
  static const bool warned = [] {
    const char* core = openblas_get_corename();
    if (core != nullptr && std::string(core) == "Prescott" && __builtin_cpu_supports("avx2")) {
      LOG(WARNING) << "OpenBLAS runs its generic Prescott kernels on this AVX2 CPU; set "
                      "OPENBLAS_CORETYPE=Cooperlake (AVX-512 BF16 CPUs), SkylakeX or Haswell in "
                      "the environment for several times faster Linear/Ffn";
    }
    return true;
  }();
  (void)warned;
}

bool NeedsWeightBuffer(const WeightView& w) {
  return w.quantized() || w.values.dtype != DType::kFloat32;
}

}  // namespace

absl::Status Linear(const ExecContext& ctx, const LinearArgs& args, const TensorView& output) {
  const int64_t m = args.input.rows();
  const int64_t k = args.input.last_dim();
  const int64_t n = args.weight.values.shape[0];
  if (m == 0 || n == 0) return absl::OkStatus();
  WarnIfOpenBlasIsGeneric();
  Scratch scratch(ctx.scratch);
  ASSIGN_OR_RETURN(Epilogue ep, MakeEpilogue(args.weight, args.bias, scratch));

  const float* a = args.input.as<float>();
  if (args.input.dtype != DType::kFloat32) {
    ASSIGN_OR_RETURN(float* buf, scratch.Floats(m * k));
    ConvertFloats(args.input.dtype, args.input.data, DType::kFloat32, buf, m * k);
    a = buf;
  }
  float* wbuf = nullptr;
  if (NeedsWeightBuffer(args.weight)) {
    ASSIGN_OR_RETURN(wbuf, scratch.Floats(kWeightBlockElements));
  }
  // An fp32 output is the GEMM's own destination; others get an fp32 buffer.
  float* c = output.as<float>();
  if (output.dtype != DType::kFloat32) {
    ASSIGN_OR_RETURN(c, scratch.Floats(m * n));
  }
  GemmWeight(a, m, k, args.weight, c, n, wbuf);
  if (output.dtype == DType::kFloat32 && !ep.has_scale && ep.bias == nullptr) {
    return absl::OkStatus();
  }
  DispatchFloat(output.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    ApplyEpilogue<D>(c, n, output.as<Storage<D>>(), m, n, ep);
  });
  return absl::OkStatus();
}

absl::Status Ffn(const ExecContext& ctx, const FfnArgs& args, const TensorView& output) {
  const int64_t m = args.input.rows();
  const int64_t h = args.input.last_dim();
  const int64_t inter = args.w_gate.values.shape[0];
  if (m == 0 || h == 0) return absl::OkStatus();
  WarnIfOpenBlasIsGeneric();
  Scratch scratch(ctx.scratch);
  ASSIGN_OR_RETURN(Epilogue ep_gate, MakeEpilogue(args.w_gate, args.b_gate, scratch));
  ASSIGN_OR_RETURN(Epilogue ep_up, MakeEpilogue(args.w_up, args.b_up, scratch));
  ASSIGN_OR_RETURN(Epilogue ep_down, MakeEpilogue(args.w_down, args.b_down, scratch));

  const int64_t mc = std::min(m, kFfnRows);
  ASSIGN_OR_RETURN(float* a, scratch.Floats(mc * h));
  ASSIGN_OR_RETURN(float* gate, scratch.Floats(mc * inter));
  ASSIGN_OR_RETURN(float* up, scratch.Floats(mc * inter));
  ASSIGN_OR_RETURN(float* c, scratch.Floats(mc * h));
  float* wbuf = nullptr;
  if (NeedsWeightBuffer(args.w_gate) || NeedsWeightBuffer(args.w_up) ||
      NeedsWeightBuffer(args.w_down)) {
    ASSIGN_OR_RETURN(wbuf, scratch.Floats(kWeightBlockElements));
  }
  const size_t in_item = ItemSize(args.input.dtype);
  const size_t out_item = ItemSize(output.dtype);

  for (int64_t r0 = 0; r0 < m; r0 += mc) {
    const int64_t rows = std::min(mc, m - r0);
    ConvertFloats(args.input.dtype,
                  static_cast<const char*>(args.input.data) + static_cast<size_t>(r0 * h) * in_item,
                  DType::kFloat32, a, rows * h);
    GemmWeight(a, rows, h, args.w_gate, gate, inter, wbuf);
    ApplyEpilogue<DType::kFloat32>(gate, inter, gate, rows, inter, ep_gate);
    GemmWeight(a, rows, h, args.w_up, up, inter, wbuf);
    ApplyEpilogue<DType::kFloat32>(up, inter, up, rows, inter, ep_up);
    // h = silu(gate) * up stays in fp32 (into gate).
    ParallelFor(rows * inter, 32 * 1024, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i += 8) {
        const int64_t k = std::min<int64_t>(8, e - i);
        StorePartial<DType::kFloat32>(gate + i, k,
                                      SiluMul8(LoadPartial<DType::kFloat32>(gate + i, k),
                                               LoadPartial<DType::kFloat32>(up + i, k)));
      }
    });
    GemmWeight(gate, rows, inter, args.w_down, c, h, wbuf);
    DispatchFloat(output.dtype, [&](auto tag) {
      constexpr DType D = decltype(tag)::value;
      auto* y = reinterpret_cast<Storage<D>*>(static_cast<char*>(output.data) +
                                              static_cast<size_t>(r0 * h) * out_item);
      ApplyEpilogue<D>(c, h, y, rows, h, ep_down);
    });
  }
  return absl::OkStatus();
}

}  // namespace accel::kernels::cpu
