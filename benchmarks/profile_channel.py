"""Where the time of channel mode goes on the GPU: fused detection + reuse kernel vs SDPA.

    python benchmarks/profile_channel.py --shapes hunyuan wan14b

Prints one table per shape: SDPA default on (q, k, v); the fused kernel alone (q̃ and k̃, with and
without the reuse counts); and the whole ``ripple_attention(mode="channel")`` call with and without
statistics, all timed (median of ``triton.testing.do_bench``) in the same run, bf16, B=1.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import timeripple
from timeripple import load_config
from timeripple.kernels import channel_fused

from bench_attention import SHAPES, bench, structured


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["hunyuan", "wan14b"], choices=sorted(SHAPES))
    args = parser.parse_args(argv)
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for name in args.shapes:
        H, grid, text_len, text_pos, D, note = SHAPES[name]
        cfg = {"wan1.3b": "wan2.1", "wan14b": "wan2.1", "hunyuan": "hunyuan_video", "cogvideox1.5": "cogvideox"}[name]
        theta = load_config(cfg).threshold_end
        q, k, v = (structured(1, H, grid, text_len, text_pos, D, "cuda", torch.bfloat16, seed=s) for s in range(3))
        base = dict(grid=grid, text_len=text_len, text_position=text_pos)
        th = {"t": theta, "y": theta, "x": theta}
        rows = [
            ("SDPA default (baseline)", lambda: F.scaled_dot_product_attention(q, k, v)),
            ("fused kernel q̃+k̃, no counts", lambda: channel_fused.channel_reuse_fused(
                q, k, thresholds=th, stats=False, **base)),
            ("fused kernel q̃+k̃, with counts", lambda: channel_fused.channel_reuse_fused(
                q, k, thresholds=th, stats=True, **base)),
            ("ripple_attention channel", lambda: timeripple.ripple_attention(
                q, k, v, threshold=theta, **base)),
            ("ripple_attention channel + stats", lambda: timeripple.ripple_attention(
                q, k, v, threshold=theta, return_stats=True, **base)),
        ]
        _, stats = timeripple.ripple_attention(q, k, v, threshold=theta, return_stats=True, **base)
        dense = None
        print(f"\n{note} ({name}): H={H}, grid={grid}, text={text_len} {text_pos}, d={D}, θ={theta}, "
              f"counted qk savings {stats.qk_savings_mean:.1%}")
        print(f"| {'method':<34} | {'ms':>8} | {'vs SDPA':>8} |")
        for label, fn in rows:
            ms = bench(fn, quick=True)
            dense = dense or ms
            print(f"| {label:<34} | {ms:8.2f} | {ms / dense:7.3f}x |", flush=True)


if __name__ == "__main__":
    main()
