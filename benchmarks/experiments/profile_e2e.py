"""Where a reusing transformer step's time goes: GPU busy vs idle, host syncs, the largest kernels (issue 10).

Builds a full-size random-weight transformer as ``bench_e2e.py`` does, applies each plan through the public
API, times one reusing step (median of ``--repeats``, no profiler), then profiles one more step with the torch
profiler and reports, from the kernel trace:

* ``wall``: the profiled step, first kernel start to last kernel end;
* ``busy``: the union of the kernel intervals; ``idle`` = wall - busy (the GPU waiting for the host);
* host syncs (``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / ``cudaEventSynchronize`` calls) and
  kernel launches, per step;
* the GPU and host time of the self-attention processors (kernels launched inside a processor call: plan,
  attention, epilogue) and the kernels with the most GPU time.

    python benchmarks/experiments/profile_e2e.py --models wan1.3b --plans bundled50 bundled75 pairs75

``--sync-sources`` runs one more step under ``torch.cuda.set_sync_debug_mode("warn")`` and prints, per source
line (the innermost frame of timeripple, else of diffusers, else the op's caller), how many synchronising CUDA
calls it made: the place of every host sync of a step, not only their number.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bench_e2e  # noqa: E402  (the builder and the forward of the end-to-end benchmark)


def plans(cfg_name, grid, text_len):
    import timeripple
    from timeripple import pairs

    base = timeripple.load_config(cfg_name, mode="channel")
    bundled = timeripple.load_config(cfg_name)
    out = {"dense": base.replace(mode="token")}
    for p in (0.5, 0.75, 0.875):
        tag = f"{p * 100:g}".replace(".", "")
        out[f"bundled{tag}"] = bundled.replace(pair_savings=p)
        out[f"head{tag}"] = bundled.replace(pair_savings=p, budget_scope="head")
        bq, bk = pairs.pair_budgets_for_pair_savings(p, grid, text_len=text_len)
        out[f"pairs{tag}"] = base.replace(mode="token", budget=max(bq, 1e-6), key_budget=bk, token_keys="pairs")
    return out


def trace_summary(prof):
    """Kernel-trace figures of one profiled step (see the module docstring)."""
    events = list(prof.profiler.kineto_results.events())
    gpu = [e for e in events if e.device_type() == torch.autograd.DeviceType.CUDA and e.duration_ns() > 0]
    marks = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in gpu if e.name() == "timeripple::processor")
    kernels = [e for e in gpu if not e.name().startswith(("Memcpy", "Memset", "timeripple::"))]
    cpu = [e for e in events if e.device_type() == torch.autograd.DeviceType.CPU]
    spans = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in kernels) or [(0, 0)]
    busy, cur_s, cur_e = 0, None, None
    gaps = []
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
                gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    wall = spans[-1][1] - spans[0][0]
    sync_events = [e for e in cpu if e.name() in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                  "cudaEventSynchronize")]
    syncs = len(sync_events)
    ops = [e for e in cpu if e.name().startswith("aten::") and e.duration_ns() > 0]
    where = {}
    for se in sync_events:  # the innermost aten op around each sync: what asked for the host value
        t = se.start_ns()
        around = [e for e in ops if e.start_ns() <= t <= e.start_ns() + e.duration_ns()]
        name = min(around, key=lambda e: e.duration_ns()).name() if around else "(no aten op)"
        where[name] = where.get(name, 0) + 1
    launches = sum(e.name() in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
                   for e in cpu)
    # kernels launched inside the token path: their launch (runtime call) lies inside a token_attention range
    ranges = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in cpu
                    if e.name() == "timeripple::processor")
    attn = [e.duration_ns() for e in cpu if e.name() == "timeripple::token_attention"]
    launch_at = {e.correlation_id(): e.start_ns() for e in cpu if e.correlation_id()}

    def inside(t):
        import bisect

        i = bisect.bisect_right(ranges, (t, float("inf"))) - 1
        return i >= 0 and ranges[i][0] <= t <= ranges[i][1]

    proc_launches = sum(inside(e.start_ns()) for e in cpu if e.name() in (
        "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC"))
    token_gpu = sum(e.duration_ns() for e in kernels if inside(launch_at.get(e.correlation_id(), -1)))

    def on_gpu_span(t):  # a kernel that starts inside a processor's GPU span (its annotation on the GPU)
        import bisect

        i = bisect.bisect_right(marks, (t, float("inf"))) - 1
        return i >= 0 and marks[i][0] <= t <= marks[i][1]

    span_ms = sum(e - s for s, e in marks) / 1e6
    in_span = {}
    for e in kernels:
        if on_gpu_span(e.start_ns()):
            n = e.name()[:60]
            t, c = in_span.get(n, (0, 0))
            in_span[n] = (t + e.duration_ns(), c + 1)
    host_token = sum(e - s for s, e in ranges)
    by_name = {}
    for e in kernels:
        n = e.name()[:70]
        t, c = by_name.get(n, (0, 0))
        by_name[n] = (t + e.duration_ns(), c + 1)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:12]
    big_gaps = sorted(gaps, reverse=True)
    return dict(wall_ms=wall / 1e6, busy_ms=busy / 1e6, idle_ms=(wall - busy) / 1e6, syncs=syncs,
                launches=launches, kernels=len(kernels), sync_ops=where, token_calls=len(ranges), token_gpu_ms=token_gpu / 1e6,
                token_host_ms=host_token / 1e6, attn_host_ms=sum(attn) / 1e6, proc_launches=proc_launches, gaps_over_50us_ms=sum(g for g in gaps if g > 50_000) / 1e6,
                n_gaps_over_50us=sum(g > 50_000 for g in gaps), largest_gaps_us=[round(g / 1e3) for g in big_gaps[:8]],
                top=[(n, t / 1e6, c) for n, (t, c) in top], span_ms=span_ms,
                in_span=[(n, t / 1e6, c) for n, (t, c) in sorted(in_span.items(), key=lambda kv: -kv[1][0])[:25]],
                in_span_ms=sum(t for t, _ in in_span.values()) / 1e6)


LAYOUTS = []
GROUPS = []  # groups of alike heads per grouped call (kernels/head_groups.py)


def _record_layouts():
    """Keep the count classes of the class layouts built (what the plan of a real step looks like)."""
    from timeripple.kernels import class_attention as cl

    build = cl.class_layout

    def recorded(*a, **kw):
        lay = build(*a, **kw)
        if len(LAYOUTS) < 4:
            LAYOUTS.append((getattr(lay, "classes", None), getattr(lay, "sizes", None), lay.reason,
                            getattr(lay, "demoted", None), getattr(lay, "mq", None)))
        return lay

    cl.class_layout = recorded

    from timeripple.kernels import head_groups as hg

    cut = hg.head_groups

    def recorded_groups(*a, **kw):
        groups = cut(*a, **kw)
        GROUPS.append(len(groups))
        return groups

    hg.head_groups = recorded_groups


def sync_sources(model, fw, sched, step):
    """Counter of ``file:line`` -> synchronising CUDA calls made during one forward (CUDA only)."""
    import collections
    import traceback
    import warnings

    found = collections.Counter()
    show = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return show(message, category, filename, lineno, file, line)
        stack = traceback.extract_stack()[:-1]
        pick = next((f for f in reversed(stack) if "/timeripple/" in f.filename), None) or \
            next((f for f in reversed(stack) if "/diffusers/" in f.filename), None) or stack[-1]
        found[f"{pick.filename.split('/site-packages/')[-1].split('/src/')[-1]}:{pick.lineno} ({pick.name})"] += 1

    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                bench_e2e.forward(model, fw, sched, step)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            bench_e2e._sync()
    finally:
        warnings.showwarning = show
    return found


def _mark_processors():
    """Wrap the processors' self-attention core (``_attend``: plan, attention, epilogue) in a profiler range."""
    import timeripple

    cls = timeripple.TimeRippleAttnProcessor
    if getattr(cls, "_profile_marked", False):
        return
    call = cls._attend

    def marked(self, *a, **kw):
        with torch.profiler.record_function("timeripple::processor"):
            return call(self, *a, **kw)

    cls._attend, cls._profile_marked = marked, True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["wan1.3b"], choices=sorted(bench_e2e.MODELS))
    ap.add_argument("--plans", nargs="+", default=["dense", "bundled50", "bundled75", "pairs75"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-profile", action="store_true", help="time only")
    ap.add_argument("--smoke", action="store_true", help="CPU, one layer, small latent: checks the script only")
    ap.add_argument("--sync-sources", action="store_true", help="also where each host sync of a step comes from")
    args = ap.parse_args()
    bench_e2e.SMOKE = args.smoke
    cuda = not args.smoke
    import timeripple
    from torch.profiler import ProfilerActivity, profile

    _mark_processors()
    _record_layouts()
    print(torch.__version__, torch.cuda.get_device_name() if cuda else "CPU smoke run", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    for name in args.models:
        model, fw, sched, grid = bench_e2e.build(name)
        label, cfg_name = bench_e2e.MODELS[name][:2]
        text_len = {"wan2.1": 0, "hunyuan_video": 40, "cogvideox": 226}[cfg_name]
        cfg0 = timeripple.load_config(cfg_name)
        dense_step = next(i for i in range(50) if cfg0.attention_kwargs(i, 50) is None)
        reuse_step = next(i for i in range(50) if cfg0.attention_kwargs(i, 50) is not None) + 15
        table = plans(cfg_name, grid, text_len)
        print(f"\n## {label}, grid {grid}")
        sec, _, _ = bench_e2e.timed(model, fw, sched, reuse_step, args.repeats)
        print(f"stock: {sec * 1e3:.1f} ms")
        for plan in args.plans:
            timeripple.apply_timeripple(model, table[plan], scheduler=sched)
            try:
                step = dense_step if plan == "dense" else reuse_step
                sec, peak, finite = bench_e2e.timed(model, fw, sched, step, args.repeats)
                line = f"{plan}: {sec * 1e3:.1f} ms (timed, no profiler), finite {finite}"
                if not args.no_profile:
                    LAYOUTS.clear()
                    GROUPS.clear()
                    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                    with profile(activities=acts) as prof:
                        bench_e2e.forward(model, fw, sched, step)
                        bench_e2e._sync()
                    s = trace_summary(prof)
                    line += (f" | profiled: wall {s['wall_ms']:.1f}, GPU busy {s['busy_ms']:.1f}, idle {s['idle_ms']:.1f} ms"
                             f" ({s['n_gaps_over_50us']} gaps > 50 us: {s['gaps_over_50us_ms']:.1f} ms; largest us "
                             f"{s['largest_gaps_us']}); host syncs {s['syncs']} {s['sync_ops']}, launches {s['launches']}, kernels "
                             f"{s['kernels']}; processors x{s['token_calls']}: GPU {s['token_gpu_ms']:.1f} ms, host "
                             f"{s['token_host_ms']:.1f} ms (token_attention op {s['attn_host_ms']:.1f} ms), {s['proc_launches']} launches")
                    print(line, flush=True)
                    print(f"  processors' GPU spans {s['span_ms']:.1f} ms, kernels in them {s['in_span_ms']:.1f} ms; "
                          f"layouts of layer 0: {LAYOUTS[:2]}; grouped calls {len(GROUPS)} "
                          f"(groups per call {sorted(set(GROUPS))})")
                    for n, t, c in s["in_span"]:
                        print(f"    {t:8.2f} ms  x{c:<5d} {n}")
                else:
                    print(line, flush=True)
                if args.sync_sources and cuda:
                    found = sync_sources(model, fw, sched, step)
                    print(f"  synchronising CUDA calls in one step: {sum(found.values())}")
                    for where, n in found.most_common(12):
                        print(f"    x{n:<5d} {where}")
            except Exception as exc:  # keep the other plans
                print(f"{plan}: FAILED {exc!r:.300}", flush=True)
            finally:
                timeripple.remove_timeripple(model)
        del model
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
