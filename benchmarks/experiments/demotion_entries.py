"""How many key entries the count-class path runs for the bundled plan, by input kind (CPU, issue 10).

The bundled plan (pooled over the heads, chain key groups) gives each head its own number of keys of each
merge count. The class path runs one SDPA call per count class with the same size in every head: each class
keeps its smallest head's count and the other heads' extra keys stand in class 1 as copies ("demotion",
docs/kernels.md). This script builds the plan of ``ripple_attention`` with the bundled ``wan2.1`` options at
the Wan2.1-1.3B grid (12 heads, 21x30x52 tokens) on the CPU, without running attention, and prints per head
the kept queries and keys, the classes (count, fewest, most keys per head), and the entries per head of

* demotion (what the class path runs today) and
* padding every class to its largest head with keys that add nothing (an alternative, not implemented),
* demotion inside each group of alike heads (``kernels/head_groups.py``: what runs when one layout would add
  more than ``PAD_LIMIT`` x the real pairs),

each against the mean real keys per head. Inputs: i.i.d. Gaussian q/k/v (like the random-weight transformers
of ``bench_e2e.py``) and grid-smooth ones with per-head scales 0.5 .. 2 (heads that differ).

    python benchmarks/experiments/demotion_entries.py --targets 0.5 0.75
"""

from __future__ import annotations

import argparse

import torch

import timeripple
import timeripple.kernels as kernels_module
from timeripple.kernels import class_attention

B, H, GRID, D = 1, 12, (21, 30, 52), 128
N = GRID[0] * GRID[1] * GRID[2]


def inputs(kind, gen):
    if kind == "iid":
        return [torch.randn(B, H, N, D, generator=gen) for _ in range(3)]
    out = []
    for _ in range(3):
        x = torch.randn(B, H, *GRID, D, generator=gen)
        for dim in (2, 3, 4):  # a little smoothing along each grid axis
            x = (x + x.roll(1, dims=dim) + x.roll(-1, dims=dim)) / 3
        out.append((x * torch.linspace(0.5, 2.0, H).view(1, H, 1, 1, 1, 1)).reshape(B, H, N, D))
    return out


def plan_of(q, k, v, target):
    captured = {}

    def capture(q, k, v, q_src, k_src, **_):
        captured["plan"] = (q_src, k_src)
        return torch.zeros_like(q)

    real = kernels_module.token_attention  # token_plan imports it from here at call time
    kernels_module.token_attention = capture
    try:
        kw = timeripple.load_config("wan2.1").replace(pair_savings=target).attention_kwargs(30, 50)
        timeripple.ripple_attention(q, k, v, grid=GRID, **kw)
    finally:
        kernels_module.token_attention = real
    return captured["plan"]


def report(q_src, k_src):
    ar = torch.arange(N)
    count = torch.zeros(B, H, N, dtype=torch.long).scatter_add_(2, k_src.long(), torch.ones(B, H, N, dtype=torch.long))
    S = class_attention.MAX_CLASS + 2
    hist = torch.stack([torch.bincount(count[0, h].clamp_max(S - 1), minlength=S) for h in range(H)])
    hist[:, 0] = 0
    hmin, hmax = hist.amin(0), hist.amax(0)
    c = torch.arange(S)
    real = hist[:, 1:].sum(1).float()
    own = (c >= 2) & (hmin > 0) & ((hmin == hmax) | (hmin >= class_attention.MIN_CLASS_KEYS))
    sizes = torch.where(own, hmin, 0)
    demoted = int(N - (c * sizes).sum() + sizes.sum())
    from timeripple.kernels.head_groups import head_groups

    groups = head_groups([N] * H, real.int().tolist())
    grouped = 0
    for g in groups:  # the same rule inside each group
        gmin, gmax = hist[g].amin(0), hist[g].amax(0)
        gown = (c >= 2) & (gmin > 0) & ((gmin == gmax) | (gmin >= class_attention.MIN_CLASS_KEYS))
        gs = torch.where(gown, gmin, 0)
        grouped += len(g) * int(N - (c * gs).sum() + gs.sum())
    padded = int(hmax[1:].sum())
    print(f"  kept queries per head {(q_src == ar).sum(-1)[0].tolist()}")
    print(f"  kept keys per head {real.int().tolist()}, mean {real.mean():.0f}")
    print("  classes (count, fewest, most keys per head):",
          [(int(i), int(hmin[i]), int(hmax[i])) for i in range(1, S) if hmax[i] > 0])
    print(f"  entries per head: demotion {demoted} ({demoted / real.mean():.2f}x), "
          f"padding to the largest head {padded} ({padded / real.mean():.2f}x), "
          f"demotion per group of alike heads {grouped / H:.0f} ({grouped / real.sum():.2f}x; {len(groups)} groups)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--kinds", nargs="+", default=["iid", "smooth"], choices=["iid", "smooth"])
    args = ap.parse_args()
    for kind in args.kinds:
        q, k, v = inputs(kind, torch.Generator().manual_seed(1))
        for target in args.targets:
            print(f"== {kind} inputs, pair savings {target:.1%}")
            report(*plan_of(q, k, v, target))


if __name__ == "__main__":
    main()
