"""Kernel-level profile of token mode on the GPU: where the time of one attention call goes.

    python benchmarks/profile_token.py --shapes hunyuan wan14b --savings 0.75

For each shape it runs ``ripple_attention(mode="token", budget=...)`` on the structured input of
``bench_attention.py`` under ``torch.profiler`` and prints, per CUDA kernel family, the GPU time per
call and its share, next to the wall time per call and the GPU idle time (launch gaps and host syncs).
Timed figures (CUDA events / profiler), bf16, B=1.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict

import torch

from bench_attention import SHAPES, structured

# kernel-name patterns -> stage (first match wins)
STAGES = [
    (r"_token_scores|_cube_scores", "detection: fused token scores (Triton)"),
    (r"sort|radix|Sort|cub::", "selection: sort / scan (torch)"),
    (r"_gather_rows|_merge_values", "compaction: gather q, k + merge v (Triton)"),
    (r"_finish_kernel", "scatter of output rows (Triton)"),
    (r"cudnn|sm90_xmma|fmha|flash|attention|Attention", "attention: cuDNN SDPA"),
]


def stage_of(name: str) -> str:
    for pattern, stage in STAGES:
        if re.search(pattern, name):
            return stage
    return "other torch ops (masks, cumsum, scatter, index)"


def profile_shape(name, savings, iters):
    import timeripple
    from timeripple import detect
    from timeripple.config import load_config

    H, grid, text_len, text_pos, D, note = SHAPES[name]
    cfg = {"wan14b": "wan2.1", "wan1.3b": "wan2.1", "hunyuan": "hunyuan_video", "cogvideox1.5": "cogvideox"}[name]
    theta = load_config(cfg).threshold_end
    q, k, v = (structured(1, H, grid, text_len, text_pos, D, "cuda", torch.bfloat16, seed=i) for i in range(3))
    budget = detect.budget_for_pair_savings(savings, grid, text_len=text_len)

    def call():
        return timeripple.ripple_attention(q, k, v, grid=grid, text_len=text_len, text_position=text_pos,
                                           threshold=theta, mode="token", budget=budget)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        call()
    end.record()
    torch.cuda.synchronize()
    wall = start.elapsed_time(end) / iters
    dense = torch.nn.functional.scaled_dot_product_attention
    for _ in range(3):
        dense(q, k, v)
    start.record()
    for _ in range(iters):
        dense(q, k, v)
    end.record()
    torch.cuda.synchronize()
    dense_ms = start.elapsed_time(end) / iters

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    per_stage, per_kernel = defaultdict(float), {}
    for evt in prof.key_averages():
        gpu_us = getattr(evt, "self_device_time_total", 0) or getattr(evt, "self_cuda_time_total", 0)
        if gpu_us > 0:  # GPU kernels and copies only (the profiler records no CPU activity here)
            per_stage[stage_of(evt.key)] += gpu_us / 1e3 / iters
            per_kernel[evt.key] = gpu_us / 1e3 / iters
    busy = sum(per_stage.values())
    lines = [f"## {note} ({H} heads, N={math.prod(grid) + text_len}), token {savings:.1%} budget", "",
             f"wall {wall:.2f} ms per call (SDPA default {dense_ms:.2f} ms, {dense_ms / wall:.2f}x); "
             f"GPU busy {busy:.2f} ms; idle {max(wall - busy, 0):.2f} ms (launch gaps, host syncs)", "",
             "| stage | GPU ms per call | share of wall |", "| --- | ---: | ---: |"]
    for stage, ms in sorted(per_stage.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {stage} | {ms:.2f} | {ms / wall:.1%} |")
    lines += ["", "largest kernels (ms per call): " + "; ".join(
        f"{key[:60]} {ms:.2f}" for key, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:10])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["hunyuan", "wan14b"], choices=list(SHAPES))
    parser.add_argument("--savings", type=float, nargs="+", default=[0.75])
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_token.py needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for name in args.shapes:
        for s in args.savings:
            print(profile_shape(name, s, args.iters), flush=True)


if __name__ == "__main__":
    main()
