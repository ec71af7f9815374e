"""Probe (H200): ragged per-(batch, head) attention for count classes whose sizes differ per head.

Times cuDNN / flash varlen ops against dense cuDNN, checks them against per-head SDPA, and reports the
count-class histogram and the cost of the pieces of the bundled plan on structured inputs.
    python benchmarks/experiments/probe_ragged.py [--shapes wan1.3b hunyuan]
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F
import triton.testing

sys.path.insert(0, "benchmarks")
from bench_attention import FIDELITY, SHAPES, structured  # noqa: E402

aten = torch.ops.aten


def bench(fn):
    return triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median")


def cudnn_dense(q, k, v):
    return aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)[:2]


def ragged_inputs(q, lengths):
    """q (B,H,N,D) -> packed (B*H*N, 1, D); keys: per (b,h) the first lengths[b,h] rows of k."""
    B, H, N, D = q.shape
    qp = q.reshape(B * H * N, 1, D)
    cq = torch.arange(0, B * H + 1, device=q.device, dtype=torch.int32) * N
    ck = torch.zeros(B * H + 1, device=q.device, dtype=torch.int32)
    ck[1:] = torch.cumsum(lengths.reshape(-1), 0)
    return qp, cq, ck


def pack_keys(k, lengths):
    B, H, N, D = k.shape
    rows = [k[b, h, : int(lengths[b, h])] for b in range(B) for h in range(H)]
    return torch.cat(rows).reshape(-1, 1, D).contiguous()


def probe_ops(name, dev):
    H, grid, text_len, text_pos, D, note = SHAPES[name]
    N = grid[0] * grid[1] * grid[2] + text_len
    B = 1
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
    t_dense = bench(lambda: cudnn_dense(q, k, v))
    t_sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v))
    half = N // 2
    kh, vh = k[:, :, :half].contiguous(), v[:, :, :half].contiguous()
    t_half = bench(lambda: cudnn_dense(q, kh, vh))
    print(f"\n## {name} ({note}) B={B} H={H} N={N} D={D}")
    print(f"dense cuDNN {t_dense:.2f} ms | SDPA default {t_sdpa:.2f} ms | cuDNN at N/2 keys {t_half:.2f} ms")
    lengths = (torch.rand(B, H, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4) * N
    lengths = lengths.long().to(dev)
    qp, cq, ck = ragged_inputs(q.contiguous(), lengths)
    kp, vp = pack_keys(k, lengths), pack_keys(v, lengths)
    maxk = int(lengths.max())
    ref = torch.cat([F.scaled_dot_product_attention(q[:, h:h + 1], k[:, h:h + 1, : int(lengths[0, h])],
                                                    v[:, h:h + 1, : int(lengths[0, h])]) for h in range(2)], 1)
    print(f"ragged key lengths {lengths.min().item()}..{maxk} (mean {lengths.float().mean().item():.0f})")
    for label, fn in (
        ("cudnn ragged", lambda: aten._cudnn_attention_forward(qp, kp, vp, None, cq, ck, N, maxk, True, 0.0, False, False)[:2]),
        ("flash varlen", lambda: aten._flash_attention_forward(qp, kp, vp, cq, ck, N, maxk, 0.0, False, False)[:2]),
    ):
        try:
            out, lse = fn()
            torch.cuda.synchronize()
            o = out.reshape(B, H, N, D)[:, :2]
            err = (o.float() - ref.float()).abs().max().item()
            t = bench(fn)
            print(f"{label}: {t:.2f} ms ({t_dense / t:.2f}x dense cuDNN), max err vs SDPA {err:.2e}, "
                  f"out {tuple(out.shape)} lse {tuple(lse.shape)} {lse.dtype}")
        except Exception as exc:  # noqa: BLE001
            print(f"{label}: FAILED {exc!r:.300}")
    # five classes of sizes differing per head, total ~0.5 N: cost of C calls
    shares = [0.2, 0.15, 0.08, 0.04, 0.03]
    calls = []
    for i, s in enumerate(shares):
        ln = ((torch.rand(B, H, generator=torch.Generator().manual_seed(10 + i)) * 0.4 + 0.8) * s * N).long().to(dev)
        _, _, cki = ragged_inputs(q, ln)
        calls.append((pack_keys(k, ln), pack_keys(v, ln), cki, int(ln.max())))

    def multi(op):
        res = []
        for kp_, vp_, ck_, mk_ in calls:
            if op == "cudnn":
                res.append(aten._cudnn_attention_forward(qp, kp_, vp_, None, cq, ck_, N, mk_, True, 0.0, False, False)[:2])
            else:
                res.append(aten._flash_attention_forward(qp, kp_, vp_, cq, ck_, N, mk_, 0.0, False, False)[:2])
        return res
    for op in ("cudnn", "flash"):
        try:
            t = bench(lambda: multi(op))
            print(f"{op} ragged, 5 classes ({sum(shares):.2f} N keys): {t:.2f} ms ({t_dense / t:.2f}x dense cuDNN)")
        except Exception as exc:  # noqa: BLE001
            print(f"{op} ragged 5 classes: FAILED {exc!r:.200}")
    del q, k, v, qp, kp, vp, calls
    torch.cuda.empty_cache()


def probe_plan(name, dev, targets):
    import timeripple
    from timeripple.kernels import class_attention as cl
    from timeripple.token_plan import build_token_plan
    from timeripple import token_fidelity

    H, grid, text_len, text_pos, D, note = SHAPES[name]
    q, k, v = (structured(1, H, grid, text_len, text_pos, D, dev, torch.bfloat16, seed=s) for s in range(3))
    base = dict(grid=grid, text_len=text_len, text_position=text_pos)
    th = {"t": 0.5, "y": 0.5, "x": 0.5}
    N = q.shape[2]
    for target in targets:
        ks = token_fidelity.auto_key_share(target)
        budget, key_budget = token_fidelity.budgets_for_pair_savings(target, ks, grid, tuple(th), 2, text_len, "chain")
        plan = lambda: build_token_plan(q, k, grid=grid, thresholds=th, text_len=text_len, text_position=text_pos,
                                        budget=budget, key_budget=key_budget, v=v, query_score="interp",
                                        key_score="kv", budget_scope="call")
        q_src, k_src, _, _ = plan()
        lay = cl.class_layout(q_src, k_src)
        ar = torch.arange(N, device=dev, dtype=torch.int32)
        count = torch.zeros_like(k_src)
        count.scatter_add_(2, k_src.long(), torch.ones_like(count))
        hist = torch.stack([(count == c).sum(-1) for c in range(1, 9)], -1)[0]  # (H, 8)
        lq = (q_src == ar).sum(-1)[0]
        print(f"\n## {name} bundled plan at {target:.1%} (key share {ks}): class layout reason: {lay.reason}")
        print("kept queries per head:", lq.tolist())
        for c in range(8):
            col = hist[:, c]
            if col.max() > 0:
                print(f"  count {c + 1}: keys per head min {col.min().item()} max {col.max().item()} "
                      f"mean {col.float().mean().item():.0f}")
        full = lambda: timeripple.ripple_attention(q, k, v, threshold=0.5, mode="token", pair_savings=target,
                                                   key_share="auto", budget_scope="call", **FIDELITY, **base)
        t_plan, t_full = bench(plan), bench(full)
        t_attn = bench(lambda: timeripple.kernels.token_attention(q, k, v, q_src, k_src, key_repr="mean"))
        t_dense = bench(lambda: F.scaled_dot_product_attention(q, k, v))
        print(f"SDPA dense {t_dense:.2f} ms | full call {t_full:.2f} ms ({t_dense / t_full:.2f}x) | plan {t_plan:.2f} ms"
              f" | token_attention {t_attn:.2f} ms")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                full()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))


def compare_paths(name, dev, targets):
    """The bundled plan through the count-class path (demoted keys) and through compaction: time and
    the largest difference between the two exact formulations (bf16)."""
    import timeripple
    from timeripple.kernels import class_attention as cl
    from timeripple.kernels import token_attention
    from timeripple.token_plan import build_token_plan
    from timeripple import token_fidelity

    H, grid, text_len, text_pos, D, note = SHAPES[name]
    q, k, v = (structured(1, H, grid, text_len, text_pos, D, dev, torch.bfloat16, seed=s) for s in range(3))
    th = {"t": 0.5, "y": 0.5, "x": 0.5}
    base = dict(grid=grid, text_len=text_len, text_position=text_pos)
    t_dense = bench(lambda: F.scaled_dot_product_attention(q, k, v))
    print(f"\n## {name}: classes vs compaction, bundled plan (SDPA dense {t_dense:.2f} ms)")
    for target in targets:
        ks = token_fidelity.auto_key_share(target)
        budget, key_budget = token_fidelity.budgets_for_pair_savings(target, ks, grid, tuple(th), 2, text_len, "chain")
        q_src, k_src, _, _ = build_token_plan(q, k, grid=grid, thresholds=th, text_len=text_len, text_position=text_pos,
                                              budget=budget, key_budget=key_budget, v=v, query_score="interp",
                                              key_score="kv", budget_scope="call")
        lay = cl.class_layout(q_src, k_src)
        a = token_attention(q, k, v, q_src, k_src, key_repr="mean", method="classes")
        b = token_attention(q, k, v, q_src, k_src, key_repr="mean", method="compact")
        diff = (a.float() - b.float()).abs()
        t_cls = bench(lambda: token_attention(q, k, v, q_src, k_src, key_repr="mean", method="classes"))
        t_cmp = bench(lambda: token_attention(q, k, v, q_src, k_src, key_repr="mean", method="compact"))
        t_full = bench(lambda: timeripple.ripple_attention(q, k, v, threshold=0.5, mode="token", pair_savings=target,
                                                           key_share="auto", budget_scope="call", **FIDELITY, **base))
        def wall(fn, n=10):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) / n * 1e3
        t_lay = wall(lambda: cl.class_layout(q_src, k_src))
        t_plan = wall(lambda: build_token_plan(q, k, grid=grid, thresholds=th, text_len=text_len, text_position=text_pos,
                                               budget=budget, key_budget=key_budget, v=v, query_score="interp",
                                               key_score="kv", budget_scope="call"))
        print(f"   wall (host clock, synchronised): plan {t_plan:.2f} ms, class layout {t_lay:.2f} ms")
        print(f"{target:.1%}: classes {lay.classes} sizes {lay.sizes} demoted {lay.demoted} reason {lay.reason} | "
              f"classes {t_cls:.2f} ms, compaction {t_cmp:.2f} ms, full call (auto) {t_full:.2f} ms "
              f"({t_dense / t_full:.2f}x) | max |classes - compaction| {diff.max().item():.2e}, "
              f"mean {diff.mean().item():.2e}, finite {bool(torch.isfinite(a).all())}")
        if target == targets[-1] and name == "wan1.3b":
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    timeripple.ripple_attention(q, k, v, threshold=0.5, mode="token", pair_savings=target,
                                                key_share="auto", budget_scope="call", **FIDELITY, **base)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["wan1.3b", "hunyuan"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5])
    ap.add_argument("--skip-ops", action="store_true")
    ap.add_argument("--compare", action="store_true", help="only the classes-vs-compaction comparison")
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    for name in args.shapes:
        if args.compare:
            compare_paths(name, dev, args.targets)
            continue
        if not args.skip_ops:
            probe_ops(name, dev)
        probe_plan(name, dev, args.targets)


if __name__ == "__main__":
    main()
