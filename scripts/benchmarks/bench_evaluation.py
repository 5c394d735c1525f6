"""Benchmark full-ranking evaluation (`streamrec.evaluation.evaluate_ranking`).

Synthetic problem: random user/item embeddings scored by dot product, ~20 training items
(masked) and ~5 test items per member drawn with a popularity skew, item popularity and
multi-hot genres, so every metric (accuracy, coverage, gini, avg_pop, novelty, ild) runs.
Prints a markdown table.

    python scripts/benchmarks/bench_evaluation.py                      # 100,000 x 50,000
    python scripts/benchmarks/bench_evaluation.py --batch-size 512 1024 2048 --score-fn alloc buffer
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch

from streamrec.evaluation import evaluate_ranking


def make_interactions(
    n_users: int, n_items: int, n_train: int, n_test: int, seed: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Disjoint random train/test CSR matrices ``[n_users, n_items]``, popularity-skewed.

    Each member draws ``n_train + n_test`` items (duplicates removed, so slightly fewer),
    and a random ``n_test`` of them become test items.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(n_items) + 10.0) ** 0.8
    item_of_rank = rng.permutation(n_items)
    draws = n_train + n_test
    cols = item_of_rank[rng.choice(n_items, size=n_users * draws, p=weights / weights.sum())]
    rows = np.repeat(np.arange(n_users, dtype=np.int64), draws)
    keys = np.unique(rows * n_items + cols)  # sorted by (row, item), duplicates removed
    rows, cols = keys // n_items, keys % n_items
    # Random within-row rank: the first n_test of each row go to test.
    order = np.lexsort((rng.random(keys.size), rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n_users))
    rank = np.arange(rows.size) - starts[rows]
    is_test = rank < n_test
    ones = np.ones(rows.size, dtype=np.float32)
    test = sp.csr_matrix((ones[is_test], (rows[is_test], cols[is_test])), shape=(n_users, n_items))
    train = sp.csr_matrix((ones[~is_test], (rows[~is_test], cols[~is_test])), shape=(n_users, n_items))
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1024])
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed runs per batch size; the best is reported"
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--n-genres", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--score-fn",
        nargs="+",
        choices=["alloc", "buffer"],
        default=["alloc"],
        help="alloc: `user_emb[users] @ item_emb.T` (a fresh [B, n_items] tensor per batch); "
        "buffer: the same product written into one reused buffer with torch.mm(out=...), which "
        "saves the page faults of a fresh 200 MB allocation per batch",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    train, test = make_interactions(args.users, args.items, n_train=20, n_test=5, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    user_emb = torch.randn(args.users, args.dim, generator=gen)
    item_emb_t = torch.randn(args.items, args.dim, generator=gen).T.contiguous()  # [dim, n_items]
    item_popularity = np.asarray(train.getnnz(axis=0), dtype=np.float64)
    rng = np.random.default_rng(args.seed + 1)
    genres = (rng.random((args.items, args.n_genres)) < 2.0 / args.n_genres).astype(np.float32)
    setup_s = time.perf_counter() - t0

    score_seconds = [0.0]
    buffers: dict[int, torch.Tensor] = {}

    def score_alloc(users: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        scores = user_emb[users] @ item_emb_t
        score_seconds[0] += time.perf_counter() - start
        return scores

    def score_buffer(users: torch.Tensor) -> torch.Tensor:
        # evaluate_ranking masks its input in place, which is fine for a buffer we overwrite.
        start = time.perf_counter()
        b = users.numel()
        if b not in buffers:
            buffers[b] = torch.empty(b, args.items)
        scores = torch.mm(user_emb[users], item_emb_t, out=buffers[b])
        score_seconds[0] += time.perf_counter() - start
        return scores

    score_fns = {"alloc": score_alloc, "buffer": score_buffer}

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"cpu_count={os.cpu_count()} | python {sys.version.split()[0]} | torch {torch.__version__} | "
        f"torch threads={torch.get_num_threads()}"
    )
    print(
        f"data: train nnz={train.nnz:,} ({train.nnz / args.users:.1f}/user, masked), "
        f"test nnz={test.nnz:,} ({test.nnz / args.users:.1f}/user), ks={args.ks}, "
        f"genres={args.n_genres}, setup {setup_s:.1f}s"
    )
    print()
    # Load average before each row: on a shared machine, other processes inflate wall time.
    print(
        "| users | items | dim | batch size | score fn | seconds | of which score fn | users/s "
        "| peak RSS MB | load 1m |"
    )
    print("|---:|---:|---:|---:|:---|---:|---:|---:|---:|---:|")
    for score_name in args.score_fn:
        for batch_size in args.batch_size:
            runs = []
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            for _ in range(args.repeats):
                score_seconds[0] = 0.0
                start = time.perf_counter()
                res = evaluate_ranking(
                    score_fns[score_name],
                    test,
                    train,
                    ks=args.ks,
                    batch_size=batch_size,
                    item_popularity=item_popularity,
                    item_genres=genres,
                )
                runs.append((time.perf_counter() - start, score_seconds[0]))
                buffers.clear()
            best, best_score = min(runs)
            # ru_maxrss is KiB on Linux (bytes on macOS); it is the process peak so far.
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss_mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
            print(
                f"| {args.users:,} | {args.items:,} | {args.dim} | {batch_size} | {score_name} | "
                f"{best:.1f} | {best_score:.1f} | {res['n_users'] / best:,.0f} | {rss_mb:,.0f} | "
                f"{load:.1f} |",
                flush=True,
            )
    summary = ", ".join(f"{key}={value:.4g}" for key, value in res.items())
    print(f"\nlast run: {summary}")

if __name__ == "__main__":
    main()
