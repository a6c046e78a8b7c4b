// LaunchFfn / FfnWorkspaceBytes: the LLaMA SwiGLU feed-forward block,
// output = w_down(silu(w_gate x + b_gate) * (w_up x + b_up)) + b_down.
//
// Three LaunchLinear calls and one elementwise kernel, on one stream:
//   gate = Linear(x, w_gate)  -> workspace, [rows, inter] in the input dtype
//   up   = Linear(x, w_up)    -> workspace, same
//   gate = silu(gate) * up    (LaunchSwiGlu, in place)
//   out  = Linear(gate, w_down)
// The intermediates are rounded to the activation dtype, as vLLM and HF
// transformers do: the down projection's cuBLAS GEMM (and our W8A16 kernel)
// read their input in that dtype, and the contract's fp16/bf16 tolerance
// covers these roundings (the CPU backend keeps them in fp32). With fp32
// activations everything stays fp32.
//
// Rows are processed in blocks (a multiple of 128 rows, so every block's
// pointers are aligned like the first) whose intermediates fit in
// kMaxIntermediateBytes; each Linear reuses the same scratch, which is safe
// because the calls are ordered on the stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/linear.h"

namespace accel::kernels::cuda {
namespace {

// gate + up of one row block: 2 * rows * inter elements. 256 MiB holds 6096
// rows of LLaMA-7B's 11008 in fp16.
constexpr size_t kMaxIntermediateBytes = size_t{256} << 20;
constexpr size_t kAlign = 256;

size_t AlignUp(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Rows per block of the Ffn.
int64_t BlockRows(const FfnParams& p) {
  const int64_t per_row = 2 * p.inter * FloatSize(p.dtype);
  int64_t rows = per_row > 0 ? static_cast<int64_t>(kMaxIntermediateBytes) / per_row : p.m;
  if (rows >= p.m) return p.m;
  return std::max<int64_t>(rows / 128 * 128, 128);
}

// The three projections of a block of `rows` rows starting at row r0.
// `inter_buf` holds gate (then the activation), `up_buf` up.
struct Projections {
  LinearParams gate, up, down;
};

Projections MakeProjections(const FfnParams& p, int64_t r0, int64_t rows, void* inter_buf,
                            void* up_buf) {
  const size_t item = static_cast<size_t>(FloatSize(p.dtype));
  const void* x = static_cast<const char*>(p.input) + static_cast<size_t>(r0 * p.hidden) * item;
  Projections pr{p.gate, p.up, p.down};
  for (LinearParams* l : {&pr.gate, &pr.up}) {
    l->input = x;
    l->dtype = p.dtype;
    l->m = rows;
    l->k = p.hidden;
    l->n = p.inter;
  }
  pr.gate.output = inter_buf;
  pr.up.output = up_buf;
  pr.down.input = inter_buf;
  pr.down.dtype = p.dtype;
  pr.down.m = rows;
  pr.down.k = p.inter;
  pr.down.n = p.hidden;
  pr.down.output = static_cast<char*>(p.output) + static_cast<size_t>(r0 * p.hidden) * item;
  return pr;
}

// Workspace of one block: the two intermediates, then the largest Linear
// scratch (shared: the Linears run one after another).
struct Layout {
  size_t inter_bytes = 0;  // one intermediate, aligned
  size_t linear_bytes = 0;
  size_t total() const { return 2 * inter_bytes + linear_bytes; }
};

Layout MakeLayout(const FfnParams& p) {
  Layout l;
  if (p.m == 0 || p.hidden == 0) return l;
  const int64_t rows = BlockRows(p);
  l.inter_bytes = AlignUp(static_cast<size_t>(rows * p.inter) * FloatSize(p.dtype));
  // Aligned stand-ins for the intermediates (alignment is all that the size
  // query looks at); the first and the last block cover every block size.
  void* fake = reinterpret_cast<void*>(kAlign);
  const int64_t last = p.m - (p.m - 1) / rows * rows;
  for (int64_t r : {rows, last}) {
    const Projections pr = MakeProjections(p, 0, r, fake, fake);
    for (const LinearParams* lp : {&pr.gate, &pr.up, &pr.down}) {
      l.linear_bytes = std::max(l.linear_bytes, LinearWorkspaceBytes(*lp));
    }
  }
  return l;
}

}  // namespace

size_t FfnWorkspaceBytes(const FfnParams& p) { return MakeLayout(p).total(); }

cudaError_t LaunchFfn(const FfnParams& p, cudaStream_t stream) {
  if (!IsFloatType(p.dtype) || p.m < 0 || p.hidden < 0 || p.inter < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.m == 0 || p.hidden == 0) return cudaSuccess;
  const Layout layout = MakeLayout(p);
  char* ws = static_cast<char*>(p.workspace);
  if (ws == nullptr || p.workspace_bytes < layout.total() ||
      reinterpret_cast<uintptr_t>(ws) % kAlign != 0) {
    return cudaErrorInvalidValue;
  }
  void* inter_buf = ws;
  void* up_buf = ws + layout.inter_bytes;
  char* linear_ws = ws + 2 * layout.inter_bytes;
  const int64_t block = BlockRows(p);
  for (int64_t r0 = 0; r0 < p.m; r0 += block) {
    const int64_t rows = std::min(block, p.m - r0);
    Projections pr = MakeProjections(p, r0, rows, inter_buf, up_buf);
    for (LinearParams* lp : {&pr.gate, &pr.up, &pr.down}) {
      lp->workspace = linear_ws;
      lp->workspace_bytes = layout.linear_bytes;
    }
    cudaError_t err = LaunchLinear(pr.gate, stream);
    if (err == cudaSuccess) err = LaunchLinear(pr.up, stream);
    if (err == cudaSuccess) {
      // In place: SwiGlu is elementwise, so the output may alias gate.
      SwiGluParams act;
      act.gate = inter_buf;
      act.up = up_buf;
      act.output = inter_buf;
      act.dtype = p.dtype;
      act.n = rows * p.inter;
      err = LaunchSwiGlu(act, stream);
    }
    if (err == cudaSuccess) err = LaunchLinear(pr.down, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace accel::kernels::cuda
