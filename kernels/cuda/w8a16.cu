// W8A16 Linear for few rows (decode): y[m, n] = (x[m, k] @ q[n, k]^T) *
// scale + bias with int8 q, fp16/bf16 x and y, fp32 accumulation.
//
// At m <= 32 the weights are nearly all the traffic (n * k bytes against
// m * k * 2 of activations), so the kernel is built to stream each weight
// byte from DRAM exactly once at full bandwidth, and to do the math on the
// tensor cores: fp32 FMAs would need m * n * k of them (16 * 4096 * 11008
// is 24 us of an H100's CUDA cores, more than the 15 us the 45 MB of weights
// take to read), while mma.sync needs a few percent of the issue slots.
//
// Work split. A block (8 warps) owns 16 weight rows and the whole K; its
// warps take 256-byte chunks of K in turn (chunk c goes to warp c % 8), so
// there is no cross-block reduction and no atomics. Per chunk each thread
// issues its 8 weight loads (16 bytes each, L1 bypassed, L2 prefetch of 256
// bytes) before it uses any, so a warp has 4 KB in flight and an SM with two
// resident blocks 64 KB: far more than the ~20 KB per SM that the H100's
// bandwidth-latency product asks for. n / 16 blocks: 256 for n = 4096, 688
// for n = 11008, i.e. about two per SM or more.
//
// MMA mapping (m16n8k16, A row-major, B column-major): the 16 weight rows
// are A (the M side), 8 activation rows are B's columns, so m <= 8 needs one
// MMA per 16x16 weight tile and m <= 32 four. A 4-thread group reads 64
// contiguous bytes of one weight row per load (16 each); the K order inside
// each 64-byte block is permuted identically for A and B (logical k 2t+{0,1}
// of MMA step s is byte 16t + 4s + {0,1}, logical 2t+8+{0,1} is
// 16t + 4s + {2,3}), which lets each thread feed four MMA steps from one
// 16-byte weight load and one 32-byte activation load. A sum over k in
// another order is the same sum; every output is still one fp32 accumulation
// over all of K.
//
// Dequantisation is exact and cheap: int8 -> fp16 by building 1024 + 128 + q
// in the mantissa (one PRMT) and subtracting 1152 (one HSUB2 per pair);
// int8 -> bf16 through the fp32 magic number 2^23 (PRMT + FADD) and a PRMT
// that keeps the upper halves (exact: |q| <= 127 has 7 significant bits).
// The scale multiplies the fp32 sum after the K loop, then the bias is
// added and the result rounded once, as the contract requires.
//
// Determinism: the chunk-to-warp assignment and the final sum over the 8
// warps (in warp order, through shared memory) depend only on k, and a row's
// MMA results do not depend on the other rows, so an output row has the
// same bits for every m <= 32 (batched or not).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/linear.h"

namespace accel::kernels::cuda {
namespace {

constexpr int kWarps = 8;  // split K inside the block
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;     // weight rows per block (the MMA's M)
constexpr int kBlockK = 64;   // bytes of K one 4-thread group covers per load
constexpr int kChunkK = 256;  // bytes of K per warp turn (fixed: it sets the sum order)

struct SkinnyArgs {
  const void* x;
  const int8_t* w;
  const float* scales;
  bool per_row;
  const void* bias;
  ElemType bias_type;
  void* y;
  int64_t m, n, k;
};

// 16 bytes of weights: read once, so keep them out of L1 (where the
// activations live) and ask L2 for the whole 256-byte line pair.
__device__ __forceinline__ uint4 LoadStreaming(const int8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Four int8 (one word) -> two packed pairs of T: lo = bytes 0, 1 and
// hi = bytes 2, 3, exactly.
template <typename T>
__device__ __forceinline__ void Dequant4(uint32_t word, uint32_t& lo, uint32_t& hi);

template <>
__device__ __forceinline__ void Dequant4<__half>(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t biased = word ^ 0x80808080u;  // q + 128 as an unsigned byte
  // fp16 0x64XX is 1024 + XX; 0x6480 is 1152 = 1024 + 128.
  const uint32_t l = __byte_perm(biased, 0x64646464u, 0x4140);
  const uint32_t h = __byte_perm(biased, 0x64646464u, 0x4342);
  asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(l), "r"(0x64806480u));
  asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(h), "r"(0x64806480u));
}

template <>
__device__ __forceinline__ void Dequant4<__nv_bfloat16>(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t biased = word ^ 0x80808080u;
  // fp32 0x4B0000XX is 2^23 + XX; subtracting 2^23 + 128 leaves q exactly.
  constexpr float kMagic = 8388736.0f;
  const float f0 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440)) - kMagic;
  const float f1 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7441)) - kMagic;
  const float f2 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7442)) - kMagic;
  const float f3 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7443)) - kMagic;
  // The upper 16 bits of these floats are their exact bf16 values.
  lo = __byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
  hi = __byte_perm(__float_as_uint(f2), __float_as_uint(f3), 0x7632);
}

// d += A (16x16, rows = weight rows) * B (16x8, columns = activation rows).
template <typename T>
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1);

template <>
__device__ __forceinline__ void Mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void Mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                   uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// kTiles: activation rows in tiles of 8 (m <= 8 * kTiles). kUnroll: 64-byte
// blocks whose weights are loaded together (kChunkK / 64 or a divisor: fewer
// registers for more tiles; the order of the sum does not change).
template <typename T, int kTiles, int kUnroll>
__global__ void __launch_bounds__(kThreads, 2) W8A16SkinnyKernel(SkinnyArgs a) {
  static_assert(kChunkK % (kUnroll * kBlockK) == 0, "a chunk is whole groups of loads");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // MMA group (row / column) and thread in group
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const bool ok0 = n0 + g < a.n, ok1 = n0 + g + 8 < a.n;
  // Each thread's 16-byte column inside a 64-byte block is fixed: fold it
  // into the row pointers once.
  const int8_t* w0 = a.w + (n0 + g) * a.k + t * 16;
  const int8_t* w1 = a.w + (n0 + g + 8) * a.k + t * 16;
  const T* x = static_cast<const T*>(a.x) + static_cast<int64_t>(g) * a.k + t * 16;
  const int64_t k_mine = a.k - t * 16;  // this thread's piece at offset o is in K iff o < k_mine

  float acc[kTiles][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  const int64_t chunks = (a.k + kChunkK - 1) / kChunkK;
  for (int64_t c = warp; c < chunks; c += kWarps) {
#pragma unroll 1
    for (int part = 0; part < kChunkK / (kUnroll * kBlockK); ++part) {
      const int64_t kc = c * kChunkK + part * (kUnroll * kBlockK);
      // All weight loads of the group first: they are the DRAM latency.
      uint4 q0[kUnroll], q1[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t o = kc + u * kBlockK;
        const bool in = o < k_mine;  // k % 16 == 0: a 16-byte piece is all in or all out
        q0[u] = in && ok0 ? LoadStreaming(w0 + o) : make_uint4(0, 0, 0, 0);
        q1[u] = in && ok1 ? LoadStreaming(w1 + o) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t o = kc + u * kBlockK;
        const bool in = o < k_mine;
        const uint32_t w0w[4] = {q0[u].x, q0[u].y, q0[u].z, q0[u].w};
        const uint32_t w1w[4] = {q1[u].x, q1[u].y, q1[u].z, q1[u].w};
        uint32_t af[4][4];  // [MMA step][A register]
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          Dequant4<T>(w0w[s], af[s][0], af[s][2]);  // row g: k pairs (2t) and (2t + 8)
          Dequant4<T>(w1w[s], af[s][1], af[s][3]);  // row g + 8
        }
#pragma unroll
        for (int j = 0; j < kTiles; ++j) {
          // Activation row j * 8 + g is column g of tile j's B.
          uint4 xa = make_uint4(0, 0, 0, 0), xb = xa;
          if (in && j * 8 + g < a.m) {
            // Activations are small and re-read by every block: cached loads.
            const uint4* xp = reinterpret_cast<const uint4*>(x + j * 8 * a.k + o);
            xa = __ldg(xp);
            xb = __ldg(xp + 1);
          }
          const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
          for (int s = 0; s < 4; ++s) Mma<T>(acc[j], af[s], xw[2 * s], xw[2 * s + 1]);
        }
      }
    }
  }

  // Sum the 8 warps' partial tiles in warp order (deterministic).
  __shared__ float red[kWarps][kTiles][kRows][8];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    *reinterpret_cast<float2*>(&red[warp][j][g][2 * t]) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(&red[warp][j][g + 8][2 * t]) = make_float2(acc[j][2], acc[j][3]);
  }
  __syncthreads();
  T* y = static_cast<T*>(a.y);
  for (int e = threadIdx.x; e < kTiles * kRows * 8; e += kThreads) {
    const int j = e / (kRows * 8), col = (e / kRows) % 8, row = e % kRows;
    const int64_t r = j * 8 + col, nn = n0 + row;
    if (r >= a.m || nn >= a.n) continue;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w][j][row][col];
    float v = sum * (a.per_row ? a.scales[nn] : a.scales[0]);
    if (a.bias != nullptr) v += LoadAsFloat(a.bias, a.bias_type, nn);
    y[r * a.n + nn] = FromFloat<T>(v);
  }
}

template <typename T>
cudaError_t LaunchTyped(const SkinnyArgs& args, cudaStream_t stream) {
  const int64_t blocks = CeilDiv(args.n, kRows);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks));
  if (args.m <= 8) {
    W8A16SkinnyKernel<T, 1, 4><<<grid, kThreads, 0, stream>>>(args);
  } else if (args.m <= 16) {
    W8A16SkinnyKernel<T, 2, 4><<<grid, kThreads, 0, stream>>>(args);
  } else if (args.m <= 32) {
    W8A16SkinnyKernel<T, 4, 1><<<grid, kThreads, 0, stream>>>(args);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

bool W8A16SkinnySupports(const LinearParams& p) {
  static_assert(kW8A16SkinnyMaxRows <= 32, "the kernel has activation tiles for m <= 32");
  return p.weight_dtype == ElemType::kI8 &&
         (p.dtype == ElemType::kF16 || p.dtype == ElemType::kBF16) && p.m >= 0 &&
         p.m <= kW8A16SkinnyMaxRows && p.k % 16 == 0 && IsAligned(p.input, 16) &&
         IsAligned(p.weight, 16) && p.scales != nullptr;
}

cudaError_t LaunchW8A16Skinny(const LinearParams& p, cudaStream_t stream) {
  if (!W8A16SkinnySupports(p)) return cudaErrorNotSupported;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  SkinnyArgs args{p.input,  static_cast<const int8_t*>(p.weight),
                  p.scales, p.per_row_scales,
                  p.bias,   p.bias_dtype,
                  p.output, p.m,
                  p.n,      p.k};
  if (p.dtype == ElemType::kF16) return LaunchTyped<__half>(args, stream);
  return LaunchTyped<__nv_bfloat16>(args, stream);
}

}  // namespace accel::kernels::cuda
