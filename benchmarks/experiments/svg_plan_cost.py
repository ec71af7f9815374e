"""Time and peak host memory of one SVG-style plan (``peers/svg.py: svg_plan``) at a full model's token count.

    OMP_NUM_THREADS=1 python benchmarks/experiments/svg_plan_cost.py                      # HunyuanVideo 544x960 129f
    OMP_NUM_THREADS=1 python benchmarks/experiments/svg_plan_cost.py --grid 21 30 52 --text 0   # Wan2.1 480p 81f
    ... --flex: also the FlexAttention block masks (built a block of query rows at a time)
    OMP_NUM_THREADS=2 python benchmarks/experiments/svg_plan_cost.py --grid 11 30 52 --text 0 --create-block-mask
                                                                  # what the block masks cost before (whole grid)

The plan chooses each head's mask (spatial or temporal) from sampled query rows; before 75e9a0a it built both
``(N, N)`` masks on every call. Run on the CPU (the masks' size, not the device, is what is measured); peak is
the process's maximum resident set above its level before the call.
The "before" figures of BENCHMARKS.md ran this script with ``PYTHONPATH`` at an export of 33bb0a8's ``src``.
"""

import argparse
import resource
import time

import torch

from timeripple.peers.svg import svg_plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", type=int, nargs=3, default=[33, 34, 60], help="latent token grid (T, H, W)")
    ap.add_argument("--text", type=int, default=256, help="text tokens after the video")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--flex", action="store_true", help="also build the FlexAttention block masks (cached per geometry)")
    ap.add_argument("--create-block-mask", action="store_true",
                    help="instead, torch's create_block_mask on the spatial mask alone (what _flex_blocks used before)")
    args = ap.parse_args()
    torch.manual_seed(0)
    grid = tuple(args.grid)
    N = grid[0] * grid[1] * grid[2] + args.text
    q, k, v = (torch.randn(1, args.heads, N, 128, dtype=torch.bfloat16) for _ in range(3))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.create_block_mask:
        from torch.nn.attention.flex_attention import create_block_mask

        from timeripple.peers import masks
        from timeripple.peers.svg import _mods

        r, e_s, _ = masks.spatial_params(grid, 1.0 - args.sparsity)
        spatial_mod = _mods(grid, N, args.text, "after", (r, e_s, 0))[0]
        t = time.perf_counter()
        create_block_mask(spatial_mod, None, None, N, N, device="cpu")
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
        print(f"grid {grid}, N {N}: create_block_mask (spatial) {time.perf_counter() - t:.2f} s, peak RSS +{peak:.2f} GiB")
        return
    t = time.perf_counter()
    plan = svg_plan(q, k, v, grid=grid, sparsity=args.sparsity, text_len=args.text, text_position="after",
                    attn_mask=None, num_sampled=64, scale=128 ** -0.5)
    dt = time.perf_counter() - t
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
    print(f"grid {grid}, N {N}: svg_plan {dt:.2f} s, peak RSS +{peak:.2f} GiB, temporal heads {plan.choice.tolist()}")
    if args.flex:
        from timeripple.peers.svg import _flex_blocks

        t = time.perf_counter()
        bm_s, bm_t = _flex_blocks(grid, N, args.text, "after", plan.r, plan.e_s, plan.e_t, "cpu")
        dt = time.perf_counter() - t
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
        print(f"  block masks {dt:.2f} s, peak RSS +{peak:.2f} GiB; blocks kept (partial + full) spatial "
              f"{int(bm_s.kv_num_blocks.sum() + bm_s.full_kv_num_blocks.sum())}, temporal "
              f"{int(bm_t.kv_num_blocks.sum() + bm_t.full_kv_num_blocks.sum())} of {bm_s.kv_indices.shape[-1] ** 2}")


if __name__ == "__main__":
    main()
