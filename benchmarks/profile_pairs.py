"""Where the time of the pairs plan goes (``token_keys="pairs"``, bias-free count classes), issue 10.

    python benchmarks/profile_pairs.py --shapes wan1.3b hunyuan --savings 0.75 0.875

Per shape and pair savings: CUDA-event wall time per call (median of 10 after warm-up) of the plan
(detection + selection), the class layout (with and without the host-side sizes), the attention at
several head-chunk shares, the whole ``ripple_attention`` call, an optional CUDA graph of the whole
call (static shapes: budget mode), and a ``torch.profiler`` table of the whole call (GPU time per kernel,
CPU time). Timed; bf16, B=1; inputs as ``bench_attention.py``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch

from bench_attention import SHAPES, structured


def wall(fn, iters=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def run(name, target, args):
    import timeripple
    from timeripple import detect, pairs
    from timeripple.kernels import class_attention as cl
    from timeripple.kernels import token_attention
    from timeripple.token_plan import build_token_plan

    H, grid, text_len, text_pos, D, label = SHAPES[name]
    q, k, v = (structured(1, H, grid, text_len, text_pos, D, "cuda", torch.bfloat16, seed=i) for i in range(3))
    N = q.shape[2]
    bq, bk = pairs.pair_budgets_for_pair_savings(target, grid, text_len=text_len)
    kw = dict(grid=grid, text_len=text_len, text_position=text_pos, budget=max(bq, 1e-6), key_budget=bk,
              token_keys="pairs")
    th = {"t": 0.5, "y": 0.5, "x": 0.5}
    plan = lambda: build_token_plan(q, k, thresholds=th, **kw)  # noqa: E731
    q_src, k_src, _, _ = plan()
    axes = ("t", "y", "x")
    mq, sizes = cl.expected_class_sizes(N, N - text_len, detect.eligible_count(grid, 2, axes), max(bq, 1e-6),
                                        pairs.pair_count(grid, axes), bk)
    expected = (mq, sizes)
    dense = wall(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    rows = [("SDPA dense", dense)]
    rows.append(("plan (detection + selection)", wall(plan)))
    rows.append(("class layout, host sync", wall(lambda: cl.class_layout(q_src, k_src))))
    rows.append(("class layout, static sizes", wall(lambda: cl.class_layout(q_src, k_src, expected=expected))))
    lay = cl.class_layout(q_src, k_src, expected=expected)
    for share in args.shares:
        rows.append((f"attention, chunk share {share}", wall(lambda: cl.token_attention_classes(
            q, k, v, q_src, k_src, scale=D ** -0.5, layout=lay, chunk_share=share))))
    full = lambda: timeripple.ripple_attention(q, k, v, threshold=0.5, mode="token", **kw)  # noqa: E731
    rows.append(("ripple_attention (all)", wall(full)))
    try:  # the whole call as one CUDA graph (inputs static here; a model would copy into static buffers)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                full()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = full()
        rows.append(("ripple_attention as a CUDA graph", wall(graph.replay)))
        err = (out.float() - full().float()).abs().max().item()
        rows.append((f"  (graph output vs eager: max diff {err:.2e})", float("nan")))
    except Exception as exc:
        print(f"  CUDA graph failed: {exc!r:.300}")
    print(f"\n{label}, pair savings {target:.1%} (budget {bq:.4f}, key budget {bk:.4f}), sizes {expected}")
    for lbl, ms in rows:
        print(f"| {lbl} | {ms:.2f} ms | {dense / ms:.2f}x |" if not math.isnan(ms) else f"| {lbl} | | |")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            full()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["wan1.3b", "hunyuan"], choices=list(SHAPES))
    parser.add_argument("--savings", nargs="+", type=float, default=[0.75])
    parser.add_argument("--shares", nargs="+", type=float, default=[0.18, 0.5, 1.0, 4.0])
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_pairs.py needs a CUDA device")
    print(torch.cuda.get_device_name(), torch.__version__)
    for name in args.shapes:
        for target in args.savings:
            run(name, target, args)


if __name__ == "__main__":
    main()
