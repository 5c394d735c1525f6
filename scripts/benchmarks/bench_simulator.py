"""Benchmark the built-in streaming-service simulator: wall time, peak memory, rows/s.

    PYTHONPATH=src python scripts/benchmarks/bench_simulator.py            # 100k x 20k x 5M
    PYTHONPATH=src python scripts/benchmarks/bench_simulator.py --users 5000 --items 2000 --interactions 200000

Prints a markdown table. Peak RSS is the process high-water mark from
``resource.getrusage`` (it includes the interpreter and imported libraries).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import torch

from streamrec.data.simulator import SimulatorConfig, simulate


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="members (default 100,000)")
    parser.add_argument("--items", type=int, default=20_000, help="titles (default 20,000)")
    parser.add_argument("--interactions", type=int, default=5_000_000, help="views (default 5,000,000)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    args = parser.parse_args()

    config = SimulatorConfig(
        n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=args.seed
    )
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    data = simulate(config)
    seconds = time.perf_counter() - start
    rows = len(data.interactions)
    assert rows == config.n_interactions, (rows, config.n_interactions)

    print("| config | seconds | peak RSS MB | rows/s | machine |")
    print("|---|---:|---:|---:|---|")
    machine = (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    print(
        f"| {config.n_users:,} users x {config.n_items:,} items x {rows:,} views, seed {config.seed} "
        f"| {seconds:.1f} | {peak_rss_mb():,.0f} (imports: {rss_before:,.0f}) | {rows / seconds:,.0f} | {machine} |"
    )


if __name__ == "__main__":
    main()
