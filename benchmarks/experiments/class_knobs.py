"""The count-class path's call/entry trade on a real step: fewer SDPA calls (``CLASS_CALLS``, ``MIN_CLASS_KEYS``)
against more demoted entries (issue 10).

On the transformers' activations the bundled plan splits the keys into 5 to 8 count classes (BENCHMARKS.md
round 4), each one SDPA call on a fraction of the keys. Demoting the small classes into class 1 (each key as
``c`` copies: exact) makes fewer, larger calls and more entries. This builds a full-size random-weight
transformer as ``bench_e2e.py`` does and times one reusing step of the bundled plan (median of ``--repeats``
after a warm-up on the same step) for every setting, with the stock step of the same run as the baseline;
it also prints layer 0's classes and entries per head (the first layout of the step).

    python benchmarks/experiments/class_knobs.py --models wan1.3b --targets 0.5 0.75 \\
        --settings 8:256 8:1024 8:4096 4:256 3:256 2:256

A setting is ``CLASS_CALLS:MIN_CLASS_KEYS``; an optional third field ``:per-head`` uses ``budget_scope="head"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bench_e2e  # noqa: E402
import profile_e2e  # noqa: E402  (records the layouts a step builds)


def parse_setting(text):
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "per-head"):
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected CALLS:MIN_KEYS or CALLS:MIN_KEYS:per-head")
    calls, min_keys = int(parts[0]), int(parts[1])
    if not 1 <= calls <= 8 or min_keys < 1:
        raise argparse.ArgumentTypeError(f"setting {text!r}: CALLS must be 1 to 8 and MIN_KEYS at least 1")
    return calls, min_keys, len(parts) == 3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["wan1.3b"], choices=sorted(bench_e2e.MODELS))
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75])
    ap.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting("8:256")])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="CPU, one layer, small latent: checks the script only")
    args = ap.parse_args(argv)
    bench_e2e.SMOKE = args.smoke
    import timeripple
    from timeripple.kernels import class_attention as cl

    profile_e2e._record_layouts()
    print(torch.__version__, "CPU smoke run" if args.smoke else torch.cuda.get_device_name(),
          time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), flush=True)
    saved = cl.CLASS_CALLS, cl.MIN_CLASS_KEYS
    for name in args.models:
        model, fw, sched, grid = bench_e2e.build(name)
        label, cfg_name = bench_e2e.MODELS[name][:2]
        cfg0 = timeripple.load_config(cfg_name)
        reuse_step = next(i for i in range(50) if cfg0.attention_kwargs(i, 50) is not None) + 15
        stock, _, _ = bench_e2e.timed(model, fw, sched, reuse_step, args.repeats)
        print(f"\n## {label}, grid {grid}: stock {stock * 1e3:.1f} ms (step {reuse_step})", flush=True)
        print("| target | calls | min keys | scope | ms per step | step speedup | layer 0 classes | entries per head | savings |")
        print("| ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |")
        for target in args.targets:
            for calls, min_keys, per_head in args.settings:
                cfg = cfg0.replace(pair_savings=target, **({"budget_scope": "head"} if per_head else {}))
                cl.CLASS_CALLS, cl.MIN_CLASS_KEYS = calls, min_keys
                timeripple.apply_timeripple(model, cfg, scheduler=sched)
                try:
                    profile_e2e.LAYOUTS.clear()
                    sec, _, finite = bench_e2e.timed(model, fw, sched, reuse_step, args.repeats)
                    savings = timeripple.get_stats(model).total_savings
                    classes, sizes, reason = (profile_e2e.LAYOUTS[0][:3] if profile_e2e.LAYOUTS
                                              else (None, None, "no layout"))
                    shown = reason if reason else f"{classes} x {sizes}"
                    entries = sum(sizes) if sizes and not reason else float("nan")
                    print(f"| {target:.1%} | {calls} | {min_keys} | {'head' if per_head else 'pooled'} | "
                          f"{sec * 1e3:.1f} | {stock / sec:.2f}x | {shown} | {entries} | {savings:.3f}"
                          f"{'' if finite else ' (not finite)'} |", flush=True)
                except Exception as exc:  # keep the other settings
                    print(f"| {target:.1%} | {calls} | {min_keys} | | FAILED {exc!r:.200} | | | | |", flush=True)
                finally:
                    timeripple.remove_timeripple(model)
                    cl.CLASS_CALLS, cl.MIN_CLASS_KEYS = saved
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
