// Rotary position embedding on the GPU: q and k in one launch, both pair
// layouts, per-token positions or an offset, GQA (LaunchRope of launch.h).
//
// Work unit: a token (b, s) and a chunk of its rotation pairs. A thread
// loads the chunk's cos/sin once and applies them to every head of q and of
// k it owns (a token's heads are split among `hg` head groups), so the
// tables are read once per (token, chunk) and thread group rather than per
// head. Chunks are 16 bytes of one head row: INTERLEAVED takes 8 bf16
// elements (4 pairs); HALF_SPLIT takes 8 elements at i and the 8 partners at
// i + D/2. Heads and D that do not fit whole vectors (or misaligned
// tensors) use the same kernel with one pair per chunk and scalar accesses.
//
// Bytes moved: 2 * (Hq + Hk) * D * sizeof(T) per token, plus D/2 * 8 bytes
// of cos/sin per distinct position. Launch: blocks of <= 256 threads laid
// out as [tokens per block][head groups][chunk threads]; grid over tokens.
// A thread owns at least 4 heads (when the token has them) and loads 4
// heads' chunks before storing any, so 4 loads (8 for HALF_SPLIT) are in
// flight per thread.
//
// Numerics: fp32, x' = x c - y s, y' = x s + y c, one rounding; the same
// positions the CPU uses (positions[b, s], positions[s] or offset + s).
#include "cuda/common.cuh"

namespace accel::kernels::cuda {
namespace {

struct RopeArgs {
  const void* q;
  void* q_out;
  const void* k;
  void* k_out;
  int64_t tokens, seq, hq, hk, d, half;
  const float* cos;
  const float* sin;
  const void* positions;  // null: offset + s
  bool positions_i32;
  bool positions_per_batch;
  int64_t offset;
  bool table_vector;  // cos/sin bases aligned for chunk loads
  int chunks_per_head;
  int chunk_threads;  // threads along the chunks of a head
  int head_groups;    // threads along the heads of a token
  int tokens_per_block;
};

// Heads a thread loads before it stores any (its loads in flight).
constexpr int kHeadsInFlight = 4;
// Calls of at most this many tokens skip the kHeadsInFlight minimum (see
// LaunchRopeKernel).
constexpr int64_t kFewTokens = 64;

// kVector: E = 16 / sizeof(T) elements per access. Otherwise E = 2
// (INTERLEAVED: one pair) or 1 (HALF_SPLIT: one pair, split), scalar.
// Register cap: the bf16 vector variants needed 88 (interleaved) and 128
// (half split) registers, i.e. 3 blocks of 224 / 160 threads per SM, and
// ran at 0.58 / 0.70 of copy against fp16's 0.86 at 72 registers. At 72
// (interleaved) and 96 (half split) 4 blocks fit, with more heads in
// flight per SM.
template <bool kHalfSplit, bool kVector>
constexpr int RopeMaxRegs() {
  return kVector ? (kHalfSplit ? 96 : 72) : 64;
}

template <typename T, bool kHalfSplit, bool kVector>
__global__ void __launch_bounds__(256) __maxnreg__((RopeMaxRegs<kHalfSplit, kVector>()))
    RopeKernel(RopeArgs a) {
  constexpr int E = kVector ? kVecOf<T> : (kHalfSplit ? 1 : 2);  // elements per access
  constexpr int P = kHalfSplit ? E : E / 2;                      // pairs per chunk
  const int tid = threadIdx.x;
  const int lane_c = tid % a.chunk_threads;
  const int group = (tid / a.chunk_threads) % a.head_groups;
  const int token_in_block = tid / (a.chunk_threads * a.head_groups);
  const int64_t heads = a.hq + a.hk;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  T* qo = static_cast<T*>(a.q_out);
  T* ko = static_cast<T*>(a.k_out);
  const int64_t token_step = static_cast<int64_t>(gridDim.x) * a.tokens_per_block;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * a.tokens_per_block + token_in_block;
       t < a.tokens; t += token_step) {
    const int64_t s = t % a.seq;
    int64_t pos = a.offset + s;
    if (a.positions != nullptr) {
      const int64_t idx = a.positions_per_batch ? t : s;
      pos = a.positions_i32 ? static_cast<const int32_t*>(a.positions)[idx]
                            : static_cast<const int64_t*>(a.positions)[idx];
    }
    const float* cos_row = a.cos + pos * a.half;
    const float* sin_row = a.sin + pos * a.half;
    for (int c = lane_c; c < a.chunks_per_head; c += a.chunk_threads) {
      const int64_t i0 = static_cast<int64_t>(c) * P;  // first pair of the chunk
      const Vec<float, P> cs = LoadChunk<float, P>(cos_row + i0, P, kVector && a.table_vector);
      const Vec<float, P> sn = LoadChunk<float, P>(sin_row + i0, P, kVector && a.table_vector);
      // Element offsets of the chunk in a head row.
      const int64_t e1 = kHalfSplit ? i0 : i0 * 2;
      const int64_t e2 = i0 + a.half;  // HALF_SPLIT partners
      if constexpr (kVector) {
        // Whole 16-byte chunks held as packed words (ElemOf / PackVec):
        // one register per two 16-bit elements (as Vec<__nv_bfloat16, 8>
        // ptxas gave each element a register: 88-128 registers against
        // fp16's 72-105, and fewer heads in flight).
        for (int64_t h0 = group; h0 < heads; h0 += int64_t{kHeadsInFlight} * a.head_groups) {
          uint4 x1[kHeadsInFlight], x2[kHeadsInFlight];
          int64_t row[kHeadsInFlight];
#pragma unroll
          for (int u = 0; u < kHeadsInFlight; ++u) {
            const int64_t h = h0 + int64_t{u} * a.head_groups;
            if (h >= heads) continue;
            row[u] = h < a.hq ? (t * a.hq + h) * a.d : (t * a.hk + (h - a.hq)) * a.d;
            const T* src = h < a.hq ? q : k;
            x1[u] = LoadStream<uint4>(src + row[u] + e1);
            if constexpr (kHalfSplit) x2[u] = LoadStream<uint4>(src + row[u] + e2);
          }
#pragma unroll
          for (int u = 0; u < kHeadsInFlight; ++u) {
            const int64_t h = h0 + int64_t{u} * a.head_groups;
            if (h >= heads) continue;
            T* dst = h < a.hq ? qo : ko;
            const uint4 v1 = x1[u];
            if constexpr (kHalfSplit) {
              const uint4 v2 = x2[u];
              StoreStream(dst + row[u] + e1, PackVec<T>([&](int j) {
                            const float x = ElemOf<T>(v1, j), y = ElemOf<T>(v2, j);
                            return x * cs.v[j] - y * sn.v[j];
                          }));
              StoreStream(dst + row[u] + e2, PackVec<T>([&](int j) {
                            const float x = ElemOf<T>(v1, j), y = ElemOf<T>(v2, j);
                            return x * sn.v[j] + y * cs.v[j];
                          }));
            } else {
              StoreStream(dst + row[u] + e1, PackVec<T>([&](int j) {
                            const int p = j / 2;
                            const float x = ElemOf<T>(v1, 2 * p), y = ElemOf<T>(v1, 2 * p + 1);
                            return j % 2 == 0 ? x * cs.v[p] - y * sn.v[p]
                                              : x * sn.v[p] + y * cs.v[p];
                          }));
            }
          }
        }
      } else {
        for (int64_t h0 = group; h0 < heads; h0 += int64_t{kHeadsInFlight} * a.head_groups) {
          Vec<T, E> x1[kHeadsInFlight], x2[kHeadsInFlight];
          int64_t row[kHeadsInFlight];
#pragma unroll
          for (int u = 0; u < kHeadsInFlight; ++u) {
            const int64_t h = h0 + int64_t{u} * a.head_groups;
            if (h >= heads) continue;
            row[u] = h < a.hq ? (t * a.hq + h) * a.d : (t * a.hk + (h - a.hq)) * a.d;
            const T* src = h < a.hq ? q : k;
            x1[u] = LoadChunk<T, E>(src + row[u] + e1, E, kVector);
            if constexpr (kHalfSplit) x2[u] = LoadChunk<T, E>(src + row[u] + e2, E, kVector);
          }
#pragma unroll
          for (int u = 0; u < kHeadsInFlight; ++u) {
            const int64_t h = h0 + int64_t{u} * a.head_groups;
            if (h >= heads) continue;
            T* dst = h < a.hq ? qo : ko;
            Vec<T, E> y1, y2;
            if constexpr (kHalfSplit) {
#pragma unroll
              for (int j = 0; j < P; ++j) {
                const float x = ToFloat(x1[u].v[j]), y = ToFloat(x2[u].v[j]);
                y1.v[j] = FromFloat<T>(x * cs.v[j] - y * sn.v[j]);
                y2.v[j] = FromFloat<T>(x * sn.v[j] + y * cs.v[j]);
              }
              StoreChunk<T, E>(dst + row[u] + e1, y1, E, kVector);
              StoreChunk<T, E>(dst + row[u] + e2, y2, E, kVector);
            } else {
#pragma unroll
              for (int j = 0; j < P; ++j) {
                const float x = ToFloat(x1[u].v[2 * j]), y = ToFloat(x1[u].v[2 * j + 1]);
                y1.v[2 * j] = FromFloat<T>(x * cs.v[j] - y * sn.v[j]);
                y1.v[2 * j + 1] = FromFloat<T>(x * sn.v[j] + y * cs.v[j]);
              }
              StoreChunk<T, E>(dst + row[u] + e1, y1, E, kVector);
            }
          }
        }
      }
    }
  }
}

template <typename T, bool kHalfSplit, bool kVector>
cudaError_t LaunchRopeKernel(RopeArgs a, cudaStream_t stream) {
  constexpr int E = kVector ? kVecOf<T> : (kHalfSplit ? 1 : 2);
  constexpr int64_t kThreads = 256;
  const int64_t heads = a.hq + a.hk;
  a.chunks_per_head = static_cast<int>(kHalfSplit ? a.half / E : a.d / E);
  a.chunk_threads = static_cast<int>(a.chunks_per_head < kThreads ? a.chunks_per_head : kThreads);
  // Balance heads over groups: as many groups as fit, then as few as give
  // the same number of heads per thread (40 heads, 16 chunk threads: 14
  // groups of <= 3 heads rather than 16 groups of 2 or 3).
  const int64_t max_groups = kThreads / a.chunk_threads;
  // Calls of many tokens: at least kHeadsInFlight heads per thread (all of
  // a token's heads when it has fewer): a thread then fills its loads in
  // flight, and a block takes several tokens. Measured on 40 heads of 128
  // (bf16, [1, 8192]): 0.80 -> 0.92 of copy for HALF_SPLIT (0.91 -> 0.92
  // interleaved) against 2 heads per thread; 8 were slower (0.83-0.90).
  // Calls of few tokens (decode) cannot fill the GPU either way and wait on
  // each thread's chain of loads, so they keep the most threads: the rule
  // had cost them 0.15-0.4 us (1 and 16 tokens of 32 + 8 heads).
  int64_t per_group = CeilDiv(heads, max_groups < heads ? max_groups : heads);
  const int64_t min_per_group = heads < kHeadsInFlight ? heads : kHeadsInFlight;
  if (a.tokens > kFewTokens && per_group < min_per_group) per_group = min_per_group;
  a.head_groups = static_cast<int>(CeilDiv(heads, per_group));
  const int64_t per_token = int64_t{a.chunk_threads} * a.head_groups;
  a.tokens_per_block = static_cast<int>(kThreads / per_token > 0 ? kThreads / per_token : 1);
  const int threads = static_cast<int>(per_token * a.tokens_per_block);
  const int64_t blocks = CeilDiv(a.tokens, a.tokens_per_block);
  RopeKernel<T, kHalfSplit, kVector>
      <<<static_cast<unsigned>(blocks < 0x7fffffff ? blocks : 0x7fffffff), threads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t LaunchRopeT(const RopeParams& p, cudaStream_t stream) {
  constexpr int V = kVecOf<T>;
  RopeArgs a{};
  a.q = p.q;
  a.q_out = p.q_out;
  const bool has_k = p.k != nullptr && p.k_out != nullptr && p.k_heads > 0;
  a.k = has_k ? p.k : nullptr;
  a.k_out = has_k ? p.k_out : nullptr;
  a.tokens = p.batch * p.seq;
  a.seq = p.seq;
  a.hq = p.q_heads;
  a.hk = has_k ? p.k_heads : 0;
  a.d = p.head_dim;
  a.half = p.head_dim / 2;
  a.cos = p.cos;
  a.sin = p.sin;
  a.positions = p.positions;
  a.positions_i32 = p.positions_dtype == ElemType::kI32;
  a.positions_per_batch = p.positions_per_batch;
  a.offset = p.position_offset;
  if (a.tokens == 0 || a.hq + a.hk == 0) return cudaSuccess;

  // Whole 16-byte vectors per head row, and every head row aligned (D *
  // sizeof(T) is then a multiple of 16, so aligned bases suffice).
  const bool vec_shape = p.half_split ? a.half % V == 0 : a.d % V == 0;
  bool vec_ptrs = IsAligned(p.q, 16) && IsAligned(p.q_out, 16);
  if (has_k) vec_ptrs = vec_ptrs && IsAligned(p.k, 16) && IsAligned(p.k_out, 16);
  // A chunk's cos/sin are P consecutive floats at a multiple of P.
  const int p_floats = p.half_split ? V : V / 2;
  const uintptr_t table_align = p_floats * 4 < 16 ? p_floats * 4 : 16;
  a.table_vector = IsAligned(p.cos, table_align) && IsAligned(p.sin, table_align);
  if (vec_shape && vec_ptrs) {
    return p.half_split ? LaunchRopeKernel<T, true, true>(a, stream)
                        : LaunchRopeKernel<T, false, true>(a, stream);
  }
  return p.half_split ? LaunchRopeKernel<T, true, false>(a, stream)
                      : LaunchRopeKernel<T, false, false>(a, stream);
}

template cudaError_t LaunchRopeT<float>(const RopeParams&, cudaStream_t);
template cudaError_t LaunchRopeT<__half>(const RopeParams&, cudaStream_t);
template cudaError_t LaunchRopeT<__nv_bfloat16>(const RopeParams&, cudaStream_t);

cudaError_t LaunchRope(const RopeParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.seq < 0 || p.q_heads < 0 || p.k_heads < 0 || p.head_dim < 2 ||
      p.head_dim % 2 != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.positions != nullptr && p.positions_dtype != ElemType::kI32 &&
      p.positions_dtype != ElemType::kI64) {
    return cudaErrorInvalidValue;
  }
  return DispatchFloat(p.dtype, [&](auto tag) -> cudaError_t {
    return LaunchRopeT<typename decltype(tag)::type>(p, stream);
  });
}

}  // namespace accel::kernels::cuda
