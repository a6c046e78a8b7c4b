#!/usr/bin/env python3
"""Latency vs concurrency from load_gen JSON runs (bench/run_load.sh).

Each run's "label" names its series (e.g. "accel-server unary", "echo
stream"); a series' point at a concurrency is the median of its runs there
(run_load.sh repeats each run, alternating the sides). Draws p50
(solid) and p99 (dashed) latency against concurrency, both on log scales,
and QPS in a second panel.

Usage: plot_latency.py --out PNG RUN.json...
"""
import argparse
import collections
import json
import statistics

import matplotlib

matplotlib.use("Agg")  # no display on a server
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("runs", nargs="+", help="load_gen --json files")
    args = parser.parse_args()

    series = collections.defaultdict(list)
    shape = None
    for path in args.runs:
        with open(path) as f:
            run = json.load(f)
        series[run["label"]].append(run)
        shape = f"[{run['rows']}, {run['width']}] {run['dtype']} {run['op']}"

    fig, (lat, qps) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (label, all_runs) in enumerate(sorted(series.items())):
        by_c = collections.defaultdict(list)
        for r in all_runs:
            by_c[r["concurrency"]].append(r)
        runs = [{k: statistics.median(r[k] for r in group) for k in ("p50_us", "p99_us", "qps")}
                | {"concurrency": c} for c, group in sorted(by_c.items())]
        c = [r["concurrency"] for r in runs]
        color = f"C{i}"
        lat.plot(c, [r["p50_us"] for r in runs], "o-", color=color, label=f"{label} p50")
        lat.plot(c, [r["p99_us"] for r in runs], "x--", color=color, alpha=0.6,
                 label=f"{label} p99")
        qps.plot(c, [r["qps"] for r in runs], "o-", color=color, label=label)
    for ax in (lat, qps):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (callers, closed loop)")
        ax.grid(True, which="both", alpha=0.3)
    lat.set_yscale("log")
    lat.set_ylabel("latency (us)")
    lat.set_title(f"Latency vs concurrency, {shape}, loopback")
    lat.legend(fontsize=7)
    qps.set_ylabel("requests per second")
    qps.set_title("Throughput vs concurrency")
    qps.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
