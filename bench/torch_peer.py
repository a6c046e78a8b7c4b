#!/usr/bin/env python3
"""PyTorch peers of cuda_ops_bench: the same ops and shapes in eager mode and
under torch.compile, timed the same way, for bench/run_gpu.sh to merge.

Method: random inputs rotated among enough sets to exceed 3x the L2; 10
warm-up calls (these also trigger compilation); >= 100 timed calls, each
between its own pair of torch.cuda.Event, median reported. Small calls (1
and 16 rows) are timed as a CUDA graph of 100 calls (per-call time without
launch gaps), as cuda_ops_bench does; if capture fails, per-call events.
The math follows the accel contract (fp32, one rounding at the end), the
fairest like-for-like; the byte counts are the same as cuda_ops_bench's.

Usage: python3 bench/torch_peer.py [--json FILE] [--iters N] [--quick]
                                   [--ops LIST] [--dtypes LIST] [--sizes all|large|small]
(--ops, --dtypes and --sizes pick rows as cuda_ops_bench's flags of the same names do.)
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

L2_BYTES = 50 << 20
ITERS = 100


def sets_for(footprint):
    want = 3 * L2_BYTES
    return max(2, min(64, -(-want // max(1, footprint))))


def median_events(fn, sets):
    for i in range(10):
        fn(sets[i % len(sets)])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(ITERS)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(ITERS)]
    for i in range(ITERS):
        starts[i].record()
        fn(sets[i % len(sets)])
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))


def median_graph(fn, sets, launches=100):
    for i in range(10):
        fn(sets[i % len(sets)])
    torch.cuda.synchronize()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(3):
                fn(sets[i % len(sets)])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(launches):
                fn(sets[i % len(sets)])
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3 / launches)
        return statistics.median(times), True
    except Exception:  # capture not possible for this callable: fall back
        torch.cuda.synchronize()
        return median_events(fn, sets), False


# ------------------------------------------------------------------ ops


def rmsnorm(x, w, eps=1e-6):
    xf = x.float()
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * inv * w.float()).to(x.dtype)


def rmsnorm_residual(x, r, w, eps=1e-6):
    s = x + r  # fp32 add, rounded once to the dtype
    return rmsnorm(s, w, eps), s


def swiglu(g, u):
    return (F.silu(g.float()) * u.float()).to(g.dtype)


def rope_half(q, k, cos, sin):
    # q [B, S, H, D]; cos/sin [S, D/2] fp32 (the HF rotate_half layout).
    def rot(x):
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        c = cos[None, :, None, :]
        s = sin[None, :, None, :]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)

    return rot(q), rot(k)


def rope_interleaved(q, k, cos, sin):
    def rot(x):
        xf = x.float().unflatten(-1, (-1, 2))
        x0, x1 = xf[..., 0], xf[..., 1]
        c = cos[None, :, None, :]
        s = sin[None, :, None, :]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).to(x.dtype)

    return rot(q), rot(k)


def quantize_row(x):
    xf = x.float()
    scale = xf.abs().amax(-1, keepdim=True) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(xf / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale.squeeze(-1)


def dequantize_row(v, s, dtype):
    return (v.float() * s[:, None]).to(dtype)


# -------------------------------------------------------------- harness

RESULTS = []
COMPILED = {}


def compiled(fn):
    if fn not in COMPILED:
        COMPILED[fn] = torch.compile(fn, dynamic=False)
    return COMPILED[fn]


def run(op, dtype, shape, nbytes, make_set, call, small):
    sets = [make_set(i) for i in range(sets_for(int(nbytes)))]
    row = {"op": op, "dtype": {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
           "shape": shape, "bytes": nbytes, "small": small}
    for mode in ("eager", "compile"):
        fn = call if mode == "eager" else (lambda args, f=compiled(call.__wrapped__): f(*args))
        try:
            if small:
                us, graphed = median_graph(fn, sets)
                row[mode + "_graph"] = graphed
            else:
                us = median_events(fn, sets)
        except Exception as e:  # report, keep going
            print(f"{op} {shape} {mode}: {type(e).__name__}: {e}")
            us = float("nan")
        row[mode + "_us"] = us
    print(f"{op:18s} {row['dtype']:5s} {shape:22s} eager {row['eager_us']:10.2f} us "
          f"{nbytes / (row['eager_us'] * 1e3):8.1f} GB/s   compile {row['compile_us']:10.2f} us "
          f"{nbytes / (row['compile_us'] * 1e3):8.1f} GB/s{'  (graph)' if small else ''}",
          flush=True)
    RESULTS.append(row)
    del sets
    torch.cuda.empty_cache()


def wrap(f):
    """An eager callable over an argument tuple that remembers f for compile."""
    def call(args):
        return f(*args)
    call.__wrapped__ = f
    return call


def rand(shape, dtype, lo=-2.0, hi=2.0):
    return (torch.rand(shape, device="cuda", dtype=torch.float32) * (hi - lo) + lo).to(dtype)


def bench_rmsnorm(dtype, rows, cols, residual, small=False):
    sz = torch.tensor([], dtype=dtype).element_size()
    n = rows * cols
    w = rand((cols,), dtype, 0.5, 1.5)
    if residual:
        make = lambda i: (rand((rows, cols), dtype), rand((rows, cols), dtype), w)
        nbytes = 4 * n * sz + cols * sz
        run("rmsnorm_residual", dtype, f"{rows}x{cols}", nbytes, make, wrap(rmsnorm_residual), small)
    else:
        make = lambda i: (rand((rows, cols), dtype), w)
        run("rmsnorm", dtype, f"{rows}x{cols}", 2 * n * sz + cols * sz, make, wrap(rmsnorm), small)


def bench_swiglu(dtype, rows, cols, small=False):
    sz = torch.tensor([], dtype=dtype).element_size()
    n = rows * cols
    make = lambda i: (rand((rows, cols), dtype, -6, 6), rand((rows, cols), dtype))
    run("swiglu", dtype, f"{rows}x{cols}", 3 * n * sz, make, wrap(swiglu), small)


def bench_rope(dtype, b, s, hq, hk, d, half_split, small=False):
    sz = torch.tensor([], dtype=dtype).element_size()
    cos = rand((s, d // 2), torch.float32, -1, 1)
    sin = rand((s, d // 2), torch.float32, -1, 1)
    make = lambda i: (rand((b, s, hq, d), dtype), rand((b, s, hk, d), dtype), cos, sin)
    nbytes = 2 * b * s * (hq + hk) * d * sz + 2 * s * (d // 2) * 4
    run("rope_half" if half_split else "rope_interleaved", dtype, f"{b}x{s}x{hq}|{hk}x{d}", nbytes,
        make, wrap(rope_half if half_split else rope_interleaved), small)


def bench_quantize(dtype, rows, cols, small=False):
    sz = torch.tensor([], dtype=dtype).element_size()
    make = lambda i: (rand((rows, cols), dtype),)
    run("quantize_row", dtype, f"{rows}x{cols}", rows * cols * (sz + 1) + rows * 4, make,
        wrap(quantize_row), small)


def bench_dequantize(dtype, rows, cols, small=False):
    sz = torch.tensor([], dtype=dtype).element_size()
    make = lambda i: (torch.randint(-127, 128, (rows, cols), device="cuda", dtype=torch.int8),
                      rand((rows,), torch.float32, 0.001, 0.02), dtype)
    run("dequantize_row", dtype, f"{rows}x{cols}", rows * cols * (sz + 1) + rows * 4, make,
        wrap(dequantize_row), small)


def main():
    global L2_BYTES, ITERS
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    ap.add_argument("--dtypes", default="", help="bf16,fp16 (default: both)")
    ap.add_argument("--sizes", default="all", choices=("all", "large", "small"))
    args = ap.parse_args()
    ITERS = max(1, args.iters)
    ops = set(filter(None, args.ops.split(",")))
    dtypes = set(filter(None, args.dtypes.split(",")))
    want = lambda op: not ops or op in ops
    large, small = args.sizes != "small", args.sizes != "large"
    # One compiled function serves every shape and dtype of its op (up to ~10
    # specialisations): lift dynamo's recompile limit (8) so that none falls
    # back to eager.
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    prop = torch.cuda.get_device_properties(0)
    L2_BYTES = getattr(prop, "L2_cache_size", L2_BYTES) or L2_BYTES
    print(f"device {prop.name}, torch {torch.__version__}, {ITERS} timed runs per row (median)")
    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        if dtypes and {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] not in dtypes:
            continue
        if large:
            for residual in (False, True):
                if not want("rmsnorm_residual" if residual else "rmsnorm"):
                    continue
                bench_rmsnorm(dtype, 4096, 4096, residual)
                if not args.quick:
                    bench_rmsnorm(dtype, 65536, 4096, residual)
                    bench_rmsnorm(dtype, 16384, 8192, residual)
            if want("swiglu"):
                bench_swiglu(dtype, 4096, 11008)
                if not args.quick:
                    bench_swiglu(dtype, 32768, 14336)
            if want("rope"):
                for half_split in (True, False):
                    bench_rope(dtype, 1, 8192, 32, 8, 128, half_split)
                    if not args.quick:
                        bench_rope(dtype, 16, 2048, 32, 8, 128, half_split)
            if want("quantize_row"):
                bench_quantize(dtype, 4096, 4096)
                if not args.quick:
                    bench_quantize(dtype, 65536, 4096)
            if want("dequantize_row"):
                bench_dequantize(dtype, 4096, 4096)
                if not args.quick:
                    bench_dequantize(dtype, 65536, 4096)
        if small:
            for rows in (1, 16):
                if want("rmsnorm"):
                    bench_rmsnorm(dtype, rows, 4096, False, True)
                if want("rmsnorm_residual"):
                    bench_rmsnorm(dtype, rows, 4096, True, True)
                if want("swiglu"):
                    bench_swiglu(dtype, rows, 11008, True)
                if want("rope"):
                    bench_rope(dtype, 1, rows, 32, 8, 128, True, True)
                if want("quantize_row"):
                    bench_quantize(dtype, rows, 4096, True)
                if want("dequantize_row"):
                    bench_dequantize(dtype, rows, 4096, True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": prop.name, "torch": torch.__version__, "iters": ITERS,
                       "results": RESULTS}, f, indent=1)


if __name__ == "__main__":
    main()
