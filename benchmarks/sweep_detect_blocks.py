"""Sweep of the window-2 token-detection kernel launch (cubes per program, warps) on HunyuanVideo and
Wan2.1-14B shapes; prints the eight fastest configurations (q and k, timed by do_bench).

    python benchmarks/sweep_detect_blocks.py

On H100 (2026-11-27): BLOCK_X 4 with 2 warps was fastest (0.343 ms HunyuanVideo, 0.289 ms Wan2.1-14B,
against 0.452 / 0.380 ms with 4 warps), which is what `token_axis_scores` uses for d 128.
"""
import torch, triton, math
from triton.testing import do_bench
import sys; sys.path.insert(0, "benchmarks")
from bench_attention import SHAPES, structured
from timeripple.kernels import detect_fused as dk
for name in ("hunyuan", "wan14b"):
    H, grid, text_len, pos, D, note = SHAPES[name]
    q, k = (structured(1, H, grid, 0, pos, D, "cuda", torch.bfloat16, seed=i) for i in range(2))
    T, Hg, Wg = grid
    dense = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, q), warmup=5, rep=40)
    res = []
    for bx in (1, 2, 4, 8, 16):
        for nw in (2, 4, 8):
            npy, nbx = -(-Hg // 2), triton.cdiv(-(-Wg // 2), bx)
            out = torch.empty((1, H, T * Hg * Wg, 3), device="cuda")
            def run():
                for x in (q, k):
                    dk._cube_scores_kernel[(-(-T // 2) * npy * nbx, H)](x, out, x.stride(0), x.stride(1), x.stride(2), H, T, Hg, Wg, npy, nbx, CHECK_T=True, CHECK_Y=True, CHECK_X=True, RMS=False, HEAD_DIM=D, BLOCK_X=bx, num_warps=nw)
            try:
                ms = do_bench(run, warmup=5, rep=40)
            except Exception as e:
                ms = float("nan")
            res.append((ms, bx, nw))
    res.sort()
    print(name, f"dense(q,k,q) {dense:.2f} ms;", " ".join(f"bx{bx}/w{nw}:{ms:.3f}" for ms, bx, nw in res[:8]), f"| shipped (bx={max(1, 512 // D)}, w2)", [r for r in res if r[1] == max(1, 512 // D) and r[2] == 2])
