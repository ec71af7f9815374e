"""Attention-only benchmark of TimeRipple on the GPU (issue 4): dense baselines vs channel and token mode.

Usage::

    python benchmarks/bench_attention.py                       # all shapes, writes BENCHMARKS.md
    python benchmarks/bench_attention.py --shapes hunyuan --quick --out /tmp/b.md

Timed figures: median of ``triton.testing.do_bench`` (warm-up included, two input sets rotated).
Counted figures: pair savings of the plan (``1 - kept_q·kept_k / N²``). Peak memory: the largest
``torch.cuda.max_memory_allocated`` during one call, inputs included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import re
import traceback
import platform
import sys

import torch
import torch.nn.functional as F

# name: (heads, grid (T, Hg, Wg), text_len, text_position, head_dim, note)
SHAPES = {
    "wan1.3b": (12, (21, 30, 52), 0, "after", 128, "Wan2.1-1.3B 480p 81f"),
    "wan14b": (40, (21, 30, 52), 0, "after", 128, "Wan2.1-14B 480p 81f"),
    "hunyuan": (24, (33, 34, 60), 256, "after", 128, "HunyuanVideo 544x960 129f"),
    # 768x1360 / 8 (VAE) / 2 (patch) = 48x85; 81 frames -> 21 latent frames, padded to 22, / 2 (patch_t) = 11
    "cogvideox1.5": (48, (11, 48, 85), 226, "before", 64, "CogVideoX1.5 768x1360 81f"),
}
TARGETS = (0.5, 0.75, 0.875)
# the README's quality setting (issue 9): load_config(...).replace(mode="token", pair_savings=p, **FIDELITY)
FIDELITY = dict(key_repr="mean", key_score="kv", query_repr="interp")


@contextlib.contextmanager
def torch_fidelity():
    """The fidelity scores and epilogue in plain torch (the path before the fused kernels)."""
    from timeripple import token_plan

    saved = token_plan._fidelity_kernels
    token_plan._fidelity_kernels = lambda x, fused: None
    try:
        yield
    finally:
        token_plan._fidelity_kernels = saved


@contextlib.contextmanager
def chunk_share(value):
    from timeripple.kernels import token_attention_compact as ca

    saved = ca.CHUNK_SHARE
    ca.CHUNK_SHARE = value
    try:
        yield
    finally:
        ca.CHUNK_SHARE = saved


def within(ctx_factory, make_fn):
    """``make_fn`` whose calls run inside ``ctx_factory()``."""
    def make(q, k, v):
        call = make_fn(q, k, v)

        def run():
            with ctx_factory():
                return call()
        return run
    return make


def structured(B, H, grid, text_len, text_position, D, device, dtype, noise=0.05, seed=0):
    """q/k-like input: a smooth random field on the grid (unit std per channel) plus white noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    T, Hg, Wg = grid
    coarse = torch.randn(B * H, D, max(T // 4, 1), max(Hg // 8, 1), max(Wg // 8, 1), device=device, generator=g)
    smooth = F.interpolate(coarse, size=(T, Hg, Wg), mode="trilinear", align_corners=True)
    smooth = smooth / smooth.std(dim=(2, 3, 4), keepdim=True)
    video = smooth.flatten(2).transpose(1, 2).reshape(B, H, T * Hg * Wg, D)
    video = video + noise * torch.randn(video.shape, device=device, generator=g)
    text = torch.randn(B, H, text_len, D, device=device, generator=g)
    x = torch.cat([video, text] if text_position == "after" else [text, video], dim=2)
    return x.to(dtype).contiguous()


def bench(fn, quick):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10 if quick else 50, rep=60 if quick else 300,
                                   return_mode="median")


def peak_mib(fn, input_bytes):
    """Peak memory of one call in MiB: what the call allocates on top of what was there, plus the
    bytes of one input set (q, k, v), so the figure is independent of how many sets are resident."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before + input_bytes) / 2**20


def rotating(make_fn, inputs):
    """A callable that cycles through the input sets (so no call sees a cache warmed by the last)."""
    fns = [make_fn(*x) for x in inputs]
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(fns)
        return fns[state["i"]]()

    return call


def methods_for(name, args):
    """Yield (label, make_fn(q, k, v) -> callable, pair_savings or None, note)."""
    import timeripple
    from timeripple import detect, pairs
    from timeripple.config import load_config
    from timeripple.kernels import token_attention
    from timeripple.token_plan import build_token_plan, plan_pair_savings

    H, grid, text_len, text_pos, D, _ = SHAPES[name]
    base = dict(grid=grid, text_len=text_len, text_position=text_pos)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    yield "SDPA default", lambda q, k, v: (lambda: F.scaled_dot_product_attention(q, k, v)), None, "baseline"

    def flash(q, k, v):
        def call():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)
        return call

    yield "SDPA flash", flash, None, ""
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        yield "FlexAttention dense", lambda q, k, v: (lambda: flex(q, k, v)), None, "compiled"
    cfg_name = {"wan1.3b": "wan2.1", "wan14b": "wan2.1", "hunyuan": "hunyuan_video",
                "cogvideox1.5": "cogvideox"}[name]
    theta = load_config(cfg_name).threshold_end
    yield (f"channel, θ={theta}", lambda q, k, v: (lambda: timeripple.ripple_attention(
        q, k, v, threshold=theta, mode="channel", **base)), None, "structured input")
    thresholds = {"t": theta, "y": theta, "x": theta}
    for target in TARGETS:
        budget = detect.budget_for_pair_savings(target, grid, text_len=text_len)

        def full(q, k, v, budget=budget):
            return lambda: timeripple.ripple_attention(q, k, v, threshold=theta, mode="token", budget=budget, **base)

        def kernel_only(q, k, v, budget=budget):
            q_src, k_src, _, _ = build_token_plan(q, k, thresholds=thresholds, budget=budget, window=2,
                                                  priority=("t", "y", "x"), criterion="strict",
                                                  fraction=0.9, **base)
            return lambda: token_attention(q, k, v, q_src, k_src)

        def plan_only(q, k, v, budget=budget):
            return lambda: build_token_plan(q, k, thresholds=thresholds, budget=budget, window=2,
                                            priority=("t", "y", "x"), criterion="strict", fraction=0.9, **base)

        yield f"token {target:.1%} budget (all)", full, target, "ripple_attention: detection + plan + attention"
        yield f"token {target:.1%} kernels only", kernel_only, target, "plan prebuilt"
        if target == 0.75:
            yield "token plan (fused detection + selection)", plan_only, None, "q and k, budget 75%"
        # keys merged in disjoint pairs (bias-free count classes), key-heavy split
        bq, bk = pairs.pair_budgets_for_pair_savings(target, grid, text_len=text_len)
        pair_kw = dict(budget=max(bq, 1e-6), key_budget=bk, token_keys="pairs")

        def full_pairs(q, k, v, kw=pair_kw, repr_="source"):
            return lambda: timeripple.ripple_attention(q, k, v, threshold=theta, mode="token", key_repr=repr_,
                                                       **kw, **base)

        def kernel_pairs(q, k, v, kw=pair_kw):
            q_src, k_src, _, _ = build_token_plan(q, k, thresholds=thresholds, window=2, priority=("t", "y", "x"),
                                                  criterion="strict", fraction=0.9, **kw, **base)
            return lambda: token_attention(q, k, v, q_src, k_src)

        def plan_pairs(q, k, v, kw=pair_kw):
            return lambda: build_token_plan(q, k, thresholds=thresholds, window=2, priority=("t", "y", "x"),
                                            criterion="strict", fraction=0.9, **kw, **base)

        yield f"token {target:.1%} pairs (all)", full_pairs, target, "keys in pairs: bias-free count classes"
        yield f"token {target:.1%} pairs kernels only", kernel_pairs, target, "plan prebuilt"
        if target == 0.75:
            yield (f"token {target:.1%} pairs, mean k (all)", lambda q, k, v: full_pairs(q, k, v, repr_="mean"),
                   target, "merged key = pair mean")
            yield "token plan, pairs (detection + selection)", plan_pairs, None, "q and k, 75%"

    yield from fidelity_methods(name)
    for target in (0.75,):
        bq, bk = pairs.pair_budgets_for_pair_savings(target, grid, text_len=text_len)

        def full_pairs(q, k, v, bq=bq, bk=bk):
            return lambda: timeripple.ripple_attention(q, k, v, threshold=theta, mode="token", budget=max(bq, 1e-6),
                                                       key_budget=bk, token_keys="pairs", **base)

        def graph_pairs(q, k, v, bq=bq, bk=bk):
            return lambda: timeripple.ripple_attention(q, k, v, threshold=theta, mode="token", budget=max(bq, 1e-6),
                                                       key_budget=bk, token_keys="pairs", cuda_graph=True, **base)

        yield f"token {target:.1%} pairs, cuda_graph=True (all)", graph_pairs, target, "replayed CUDA graph"

    def fused_detection(q, k, v):
        from timeripple.kernels.detect_fused import token_axis_scores

        nv, lo = math.prod(grid), (text_len if text_pos == "before" else 0)
        return lambda: (token_axis_scores(q[:, :, lo:lo + nv], grid), token_axis_scores(k[:, :, lo:lo + nv], grid))

    yield "fused detection scores (q and k)", fused_detection, None, "Triton, strict"
    yield from kernel_variants(H, grid, text_len, text_pos)

    def at_threshold(q, k, v):
        return lambda: timeripple.ripple_attention(q, k, v, threshold=theta, mode="token", **base)

    yield f"token θ={theta} (all)", at_threshold, "measured", "structured input"


def fidelity_methods(name):
    """Rows of the README's quality setting (``pair_savings`` + ``FIDELITY``), fused and in torch."""
    import timeripple
    from timeripple import token_fidelity
    from timeripple.token_plan import build_token_plan

    H, grid, text_len, text_pos, D, _ = SHAPES[name]
    base = dict(grid=grid, text_len=text_len, text_position=text_pos)
    thresholds = {"t": 0.5, "y": 0.5, "x": 0.5}
    for target in TARGETS:
        def full(q, k, v, target=target):
            return lambda: timeripple.ripple_attention(q, k, v, threshold=0.5, mode="token", pair_savings=target,
                                                       **FIDELITY, **base)

        def graph(q, k, v, target=target):
            return lambda: timeripple.ripple_attention(q, k, v, threshold=0.5, mode="token", pair_savings=target,
                                                       cuda_graph=True, **FIDELITY, **base)

        def pooled(q, k, v, target=target):  # the bundled configs' plan: key_share auto, pooled over the heads
            return lambda: timeripple.ripple_attention(q, k, v, threshold=0.5, mode="token", pair_savings=target,
                                                       key_share="auto", budget_scope="call", **FIDELITY, **base)

        yield (f"bundled {target:.1%} (all)", pooled, target,
               "bundled default's plan: key_share auto (keys only <= 50%), pooled over the heads")
        yield f"fidelity {target:.1%} (all)", full, target, "README setting: mean k, kv score, interp q"
        yield f"fidelity {target:.1%} cuda_graph=True (all)", graph, target, "replayed CUDA graph, inputs copied in"
        if target != 0.75:
            continue
        yield (f"fidelity {target:.1%} torch scores + epilogue (all)", within(torch_fidelity, full), target,
               "before the fused kernels")
        yield (f"fidelity {target:.1%} chunk share 0.18 (all)", within(lambda: chunk_share(0.18), full), target,
               "compaction chunks 0.18 x q (the previous default)")
        budget, key_budget = token_fidelity.budgets_for_pair_savings(target, 0.7, grid, tuple(thresholds), 2,
                                                                     text_len, "chain")

        def plan(q, k, v):
            return lambda: build_token_plan(q, k, v=v, thresholds=thresholds, budget=budget, key_budget=key_budget,
                                            query_score="interp", key_score="kv", **base)

        yield "fidelity plan (scores + selection)", plan, None, "q and k, 75%"
        yield "fidelity plan, torch scores", within(torch_fidelity, plan), None, "q and k, 75%"

        def epilogue(q, k, v):
            from timeripple.kernels import fidelity_fused

            _, _, via_q, _ = build_token_plan(q, k, v=v, thresholds=thresholds, budget=budget, key_budget=key_budget,
                                              query_score="interp", key_score="kv", **base)
            start = text_len if text_pos == "before" else 0
            out = q.clone()
            return lambda: fidelity_fused.interpolate_reused_rows_fused(out, via_q, grid, 2, start, 3)

        def epilogue_torch(q, k, v):
            _, _, via_q, _ = build_token_plan(q, k, v=v, thresholds=thresholds, budget=budget, key_budget=key_budget,
                                              query_score="interp", key_score="kv", **base)
            start = text_len if text_pos == "before" else 0
            return lambda: token_fidelity.interpolate_reused_rows(q, via_q, grid, 2, start, 3)

        yield "interp epilogue (fused, in place)", epilogue, None, "75%"
        yield "interp epilogue (torch)", epilogue_torch, None, "75%"


def kernel_variants(H, grid, text_len, text_pos):
    """Token-mode execution variants at 75% pair savings on a random plan (half the tokens per side)."""
    from timeripple.kernels import token_attention_compact as ca
    from timeripple.kernels import token_attention_triton as tk
    from timeripple.kernels.token_attention_torch import random_token_plan

    N = math.prod(grid) + text_len

    def plan(q):
        keep = (math.sqrt(0.25) * N - text_len) / (N - text_len)
        return random_token_plan(1, H, N, keep, text_len=text_len, text_position=text_pos, device=q.device)

    def variant(which):
        def make(q, k, v):
            q_src, k_src = plan(q)
            scale = q.shape[-1] ** -0.5
            if which == "triton":
                return lambda: tk.token_attention_triton(q, k, v, q_src, k_src)
            return lambda: ca.token_attention_compact(q, k, v, q_src, k_src, scale=scale, variant=which)
        return make

    yield "  75% random plan: varlen Triton kernel", variant("triton"), 0.75, "index lists, previous default"
    for which in ca.VARIANTS:
        yield f"  75% random plan: compaction + SDPA, {which}", variant(which), 0.75, "attention stage"

    def compact_sdpa(with_bias):
        def make(q, k, v):
            m = N // 2
            qc, kc, vc = (x[:, :, :m].contiguous() for x in (q, k, v))
            bias = torch.zeros(1, H, 1, m, dtype=q.dtype, device=q.device)
            mask = bias if with_bias else None
            return lambda: F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask)
        return make

    yield "  SDPA on compacted N/2, bias mask", compact_sdpa(True), 0.75, "attention only, no plan"
    yield "  SDPA on compacted N/2, no bias", compact_sdpa(False), 0.75, "attention only, lower bound"


def run_shape(name, args, device, dtype):
    H, grid, text_len, text_pos, D, note = SHAPES[name]
    inputs = [tuple(structured(1, H, grid, text_len, text_pos, D, device, dtype, seed=3 * s + i)
                    for i in range(3)) for s in range(2)]
    rows, dense_ms, dense_mem = [], None, None
    for label, make_fn, pairs, mnote in methods_for(name, args):
        if args.select and not re.search(args.select, label) and label != "SDPA default":
            continue
        try:
            fn = rotating(make_fn, inputs)
            fn()  # compile / autotune
            ms = bench(fn, args.quick)
            mem = peak_mib(fn, sum(x.numel() * x.element_size() for x in inputs[0]))
        except Exception as exc:  # a missing method must not stop the table
            print(f"{label}: FAILED\n{traceback.format_exc()}", flush=True)
            rows.append((label, float("nan"), float("nan"), float("nan"), pairs, f"failed: {exc!r:.80}"))
            continue
        if pairs == "measured":
            from timeripple import ripple_attention

            _, stats = ripple_attention(*inputs[0], grid=grid, text_len=text_len, text_position=text_pos,
                                        threshold=float(label.split("=")[1].split()[0]), mode="token",
                                        return_stats=True)
            pairs = float(stats.pair_savings.mean())
        if dense_ms is None:
            dense_ms, dense_mem = ms, mem
        rows.append((label, ms, dense_ms / ms, mem / dense_mem, pairs, mnote))
    return note, rows


def render(results, args, device_name):
    lines = [
        "# Attention benchmarks", "",
        f"* card: {device_name}; date: {datetime.date.today()}; torch {torch.__version__}; "
        f"triton {_triton_version()}; python {platform.python_version()}",
        f"* command: `python {' '.join(sys.argv)}`",
        "* timed: median of triton.testing.do_bench, bf16, B=1; counted: pair savings of the plan; "
        "peak memory: torch.cuda.max_memory_allocated in one call (one q, k, v set included), relative to SDPA default.",
        "",
    ]
    for name, (note, rows) in results.items():
        H, grid, text_len, text_pos, D, _ = SHAPES[name]
        N = math.prod(grid) + text_len
        lines += [f"## {note}: {H} heads, grid {grid}, text {text_len} ({text_pos}), N={N}, d={D}", "",
                  "| method | ms | speedup vs SDPA default | peak mem vs dense | pair savings | note |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for label, ms, speed, mem, pairs, mnote in rows:
            p = f"{pairs:.1%}" if isinstance(pairs, float) else ""
            lines.append(f"| {label} | {ms:.2f} | {speed:.2f}x | {mem:.2f}x | {p} | {mnote} |")
        lines.append("")
    return "\n".join(lines)


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compiles for ~1 min)")
    parser.add_argument("--select", default="", help="regex: only the rows whose label matches (+ SDPA default)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown report path ('' = do not write)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA device")
    device_name = torch.cuda.get_device_name()
    print(f"device: {device_name}; torch {torch.__version__}; triton {_triton_version()}; args: {vars(args)}")
    results = {}
    for name in args.shapes:
        results[name] = run_shape(name, args, "cuda", torch.bfloat16)
        report = render({name: results[name]}, args, device_name)
        print("\n".join(report.splitlines()[6:]), flush=True)
        if args.out:  # after every shape, so a run cut short still leaves its tables
            with open(args.out, "w") as fh:
                fh.write(render(results, args, device_name) + "\n")
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
