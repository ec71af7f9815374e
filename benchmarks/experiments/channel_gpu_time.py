"""Channel mode's GPU time against SDPA default (is it within 5% of dense?), with a profiler split.

    python benchmarks/experiments/channel_gpu_time.py

For Wan2.1-14B and HunyuanVideo (structured input, the bundled θ): two repetitions of
``triton.testing.do_bench`` for SDPA default and ``ripple_attention(mode="channel")``, then
``torch.profiler`` over 10 channel-mode calls: cuDNN time on q̃, k̃ and the fused kernel's time.
Timed figures, bf16, B=1.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from triton.testing import do_bench
from bench_attention import SHAPES, structured
import timeripple
F = torch.nn.functional
if not torch.cuda.is_available():
    sys.exit("channel_gpu_time.py needs a CUDA device")
for name, theta in (("wan14b", 0.6), ("hunyuan", 0.5)):
    H, grid, tl_, pos, D, _ = SHAPES[name]
    q, k, v = (structured(1, H, grid, tl_, pos, D, "cuda", torch.bfloat16, seed=i) for i in range(3))
    call = lambda: timeripple.ripple_attention(q, k, v, grid=grid, text_len=tl_, text_position=pos, threshold=theta, mode="channel")
    for _ in range(3): call()
    res = {}
    for rep in range(2):
        res.setdefault("dense q,k", []).append(do_bench(lambda: F.scaled_dot_product_attention(q, k, v), warmup=10, rep=300))
        res.setdefault("ripple_attention channel", []).append(do_bench(call, warmup=10, rep=300))
    torch.cuda.synchronize()
    print(name, {k: [round(x, 2) for x in v] for k, v in res.items()})
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10): call()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=6, max_name_column_width=50))
