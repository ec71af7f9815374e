"""What ``class_attention.SIZE_GRID`` costs in entries and how many distinct SDPA shapes remain (CPU, issue 10).

PyTorch's cuDNN attention builds execution plans for every new ``(s_q, s_kv)`` (its plan cache is keyed on exact
sizes), and the pooled plan's count classes change size with every call. ``SIZE_GRID = G`` keeps the classes
``c >= 2`` at multiples of G (demoting the remainder: exact) and pads the kept query rows to a multiple of G.
This script builds the bundled plan (``load_config("wan2.1")``) at the Wan2.1-1.3B grid for several inputs (each
one stands for one call), runs the library's own demotion rule (``class_attention._demotion_tables``) with each
G on the plan's per-head histograms, and prints the entries per head against the real keys and the distinct
``(s_q, s_kv)`` shapes over all the calls. Counted, not timed.

    python benchmarks/experiments/size_grid_entries.py --calls 6 --grids 0 64 128 256
"""

from __future__ import annotations

import argparse

import torch

from timeripple.kernels import class_attention as cl

from demotion_entries import GRID, H, N, inputs, plan_of  # noqa: E402  (same folder)


def layout_sizes(q_src, k_src, grid_size):
    """(padded kept queries, class sizes) of the class path for this plan with ``SIZE_GRID = grid_size``."""
    ar = torch.arange(N)
    count = torch.zeros(1, H, N, dtype=torch.long).scatter_add_(2, k_src.long(), torch.ones(1, H, N, dtype=torch.long))
    S = cl.MAX_CLASS + 2
    hist = torch.stack([torch.bincount(count[0, h].clamp_max(S - 1), minlength=S) for h in range(H)])
    hist[:, 0] = 0
    c = torch.arange(S)
    tokens = (hist * c.clamp_max(S - 2)).sum(1)
    saved = cl.SIZE_GRID, cl.SIZE_BUCKETS
    cl.SIZE_GRID, cl.SIZE_BUCKETS = grid_size, 0  # the grid's demotion alone (buckets pad, they do not demote)
    try:
        sizes = cl._demotion_tables(hist.amin(0), hist.amax(0), tokens.amax(), count.shape[-1])[0]
    finally:
        cl.SIZE_GRID, cl.SIZE_BUCKETS = saved
    n1 = int(tokens.amax() - (c * sizes).sum())
    mq = int((q_src == ar).sum(-1).max())
    if grid_size > 1:
        mq = min(N, -(-mq // grid_size) * grid_size)
    return mq, [n1] + [int(n) for n in sizes if n > 0], float(hist[:, 1:S - 1].sum(1).float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=6, help="inputs (one per call) per kind and target")
    ap.add_argument("--grids", type=int, nargs="+", default=[0, 64, 128, 256])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--kinds", nargs="+", default=["iid"], choices=["iid", "smooth"])
    args = ap.parse_args()
    print(f"Wan2.1-1.3B grid {GRID}, {H} heads, N {N}; bundled plan (wan2.1), one plan per input")
    for kind in args.kinds:
        for target in args.targets:
            plans = []
            for seed in range(args.calls):
                q, k, v = inputs(kind, torch.Generator().manual_seed(100 + seed))
                plans.append(plan_of(q, k, v, target))
            for g in args.grids:
                entries, real, shapes = 0.0, 0.0, set()
                for q_src, k_src in plans:
                    mq, sizes, keys = layout_sizes(q_src, k_src, g)
                    entries += sum(sizes)
                    real += keys
                    shapes |= {(mq, n) for n in sizes}
                print(f"{kind} {target:.1%} G {g:>4}: entries per head {entries / len(plans):8.0f} "
                      f"({entries / real:.3f}x the real keys), distinct (s_q, s_kv) over {len(plans)} calls: "
                      f"{len(shapes)}", flush=True)


if __name__ == "__main__":
    main()
