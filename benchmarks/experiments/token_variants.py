"""Token mode on the GPU: which SDPA backends take the weight channel, correctness on large shapes, and
the timing of the execution variants and stages at the HunyuanVideo and Wan2.1-14B shapes.

Usage (one device call; logs to $OUT or ./gpu_out)::

    python benchmarks/experiments/token_variants.py [--shapes hunyuan wan14b] [--targets 0.75 0.875]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_attention import SHAPES, structured  # noqa: E402


def backend_check(log):
    """Which SDPA backends accept q, k at d=128 with v at 136 (vcount) and everything at 136 (pad)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    res = {}
    for name, dq, dv in (("d128", 128, 128), ("vcount 128/136", 128, 136), ("pad 136", 136, 136),
                         ("pad 144", 144, 144), ("vcount 128/144", 128, 144)):
        q = torch.randn(1, 4, 4096, dq, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, 4, 4096, dv, device="cuda", dtype=torch.bfloat16)
        for be in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
            try:
                with sdpa_kernel([getattr(SDPBackend, be)]):
                    F.scaled_dot_product_attention(q, q, v)
                torch.cuda.synchronize()
                res[f"{name} {be}"] = "ok"
            except Exception as exc:  # noqa: BLE001 - we record what fails
                res[f"{name} {be}"] = f"no: {str(exc)[:60]}"
    log("backends", res)
    return res


def correctness(log):
    from timeripple.kernels import token_attention_compact as ca
    from timeripple.kernels import token_attention
    from timeripple.kernels.token_attention_torch import random_token_plan, token_attention_ref

    out = {}
    for H, N, D, keep in ((4, 17000, 128, 0.5), (3, 9001, 64, torch.tensor([[0.5, 0.3, 0.7]]))):
        q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        qs, ks = random_token_plan(1, H, N, keep, text_len=100, device="cuda")
        kb = torch.zeros(1, N, device="cuda")
        kb[:, -40:] = float("-inf")
        want = token_attention_ref(q.double(), k.double(), v.double(), qs, ks, key_bias=kb.double())
        plain = F.scaled_dot_product_attention(q, k, v).double() - F.scaled_dot_product_attention(
            q.double(), k.double(), v.double())
        for variant in ca.VARIANTS:
            got = ca.token_attention_compact(q, k, v, qs, ks, scale=D ** -0.5, key_bias=kb, variant=variant,
                                             chunk_share=0.05)
            err = (got.double() - want).abs()
            out[f"H{H} N{N} D{D} {variant}"] = dict(max=err.max().item(), mean=err.mean().item(),
                                                    plain_max=plain.abs().max().item(),
                                                    plain_mean=plain.abs().mean().item())
        got = token_attention(q, k, v, qs, ks, key_bias=kb)
        err = (got.double() - want).abs()
        out[f"H{H} N{N} D{D} dispatch"] = dict(max=err.max().item(), mean=err.mean().item())
    log("correctness", out)
    return out


def timings(shape, targets, log, bench):
    import timeripple
    from timeripple import detect
    from timeripple.kernels import token_attention_compact as ca
    from timeripple.kernels.detect_fused import token_axis_scores
    from timeripple.token_plan import build_token_plan

    H, grid, text_len, text_pos, D, note = SHAPES[shape]
    base = dict(grid=grid, text_len=text_len, text_position=text_pos)
    q, k, v = (structured(1, H, grid, text_len, text_pos, D, "cuda", torch.bfloat16, seed=i) for i in range(3))
    rows = []
    dense = bench(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append((shape, "SDPA default", dense, ""))
    nv = math.prod(grid)
    lo = text_len if text_pos == "before" else 0
    rows.append((shape, "fused scores q+k", bench(lambda: (token_axis_scores(q[:, :, lo:lo + nv], grid),
                                                           token_axis_scores(k[:, :, lo:lo + nv], grid))), ""))
    th = {"t": 1.0, "y": 1.0, "x": 1.0}
    for target in targets:
        budget = detect.budget_for_pair_savings(target, grid, text_len=text_len)
        plan_kw = dict(thresholds=th, budget=budget, **base)
        rows.append((shape, f"{target:.1%} plan (fused)", bench(lambda: build_token_plan(q, k, **plan_kw)), ""))
        qs, ks, _, _ = build_token_plan(q, k, **plan_kw)
        ar = torch.arange(qs.shape[-1], device="cuda", dtype=torch.int32)
        lq, lk = (qs == ar).sum(-1, dtype=torch.int32), (ks == ar).sum(-1, dtype=torch.int32)
        mq, mk, ratio = ca.padded_pair_ratio(lq, lk)
        rows.append((shape, f"{target:.1%} plan", float("nan"), f"Mq {mq} Mk {mk} pad ratio {ratio:.3f}"))
        for variant in ca.VARIANTS:
            for share in (ca.CHUNK_SHARE, 10.0):
                fn = lambda variant=variant, share=share: ca.token_attention_compact(  # noqa: E731
                    q, k, v, qs, ks, scale=D ** -0.5, variant=variant, lengths=(lq, lk, mq, mk), chunk_share=share)
                ms = bench(fn)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                fn()
                torch.cuda.synchronize()
                extra = (torch.cuda.max_memory_allocated() - before) / q.nbytes
                rows.append((shape, f"{target:.1%} attend {variant} share {share}", ms,
                             f"peak +{extra:.2f} q-sizes"))
        qc, kc, vc = q[:, :, :mq].contiguous(), k[:, :, :mk].contiguous(), v[:, :, :mk].contiguous()
        rows.append((shape, f"{target:.1%} SDPA on compacted (bound)", bench(
            lambda: F.scaled_dot_product_attention(qc, kc, vc)), ""))
        del qc, kc, vc

        def full(budget=budget):
            return timeripple.ripple_attention(q, k, v, threshold=1.0, mode="token", budget=budget, **base)

        ms = bench(full)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        full()
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - before) / q.nbytes
        rows.append((shape, f"{target:.1%} ripple_attention (all)", ms,
                     f"{dense / ms:.2f}x; peak +{extra:.2f} q-sizes (dense: +1.0)"))
    for r in rows:
        log("row", r)
    return rows


def main():
    import triton.testing

    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", default=["hunyuan", "wan14b"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.875])
    p.add_argument("--skip-checks", action="store_true")
    args = p.parse_args()
    out_dir = os.environ.get("OUT", "gpu_out")
    os.makedirs(out_dir, exist_ok=True)
    logf = open(os.path.join(out_dir, "token_variants.jsonl"), "w")

    def log(kind, obj):
        logf.write(json.dumps({"kind": kind, "data": obj}, default=str) + "\n")
        logf.flush()
        print(kind, obj, flush=True)

    def bench(fn):
        fn()
        return triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median")

    log("device", f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    if not args.skip_checks:
        backend_check(log)
        correctness(log)
    rows = []
    for shape in args.shapes:
        rows += timings(shape, args.targets, log, bench)
    print("\n| shape | what | ms | note |\n| --- | --- | ---: | --- |")
    for shape, what, ms, note in rows:
        print(f"| {shape} | {what} | {ms:.2f} | {note} |")


if __name__ == "__main__":
    main()
