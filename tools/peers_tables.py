"""Run the paper's tables with ``timeripple eval`` (its Python API) and render docs/results.md from them.

Each method is evaluated on its own (the dense videos are generated once and cached by the harness), so a
method that cannot run on the pipeline or device is recorded with its reason instead of stopping the run.

    # the tables (tiny model; on an H200 all runs are one batch)
    python tools/peers_tables.py run --out results/gpu --device cuda
    # the reduced CPU version (2 prompts x 1 seed, 10 steps, 75% only)
    python tools/peers_tables.py run --out results/cpu --prompts 2 --seeds 0 --steps 10 --levels 0.75
    # docs/results.md from the saved runs
    python tools/peers_tables.py render results/gpu --out docs/results.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

MAIN = ("channel", "svg", "tr-svg", "pab", "fbc", "magcache", "taylorseer", "delta-dit", "minference", "magnitude",
        "skip", "token-budget")
ABLATION = ("channel-fixed", "channel-temporal", "channel-w3", "channel-w4", "channel-w8", "channel-alpha")
WINDOWS = (3, 4, 8)


def _evaluate_each(methods, levels, common, log, save=None, results=None, skipped=None):
    from timeripple.eval import evaluate

    results = [] if results is None else results
    skipped = {} if skipped is None else skipped
    for name in methods:
        t0 = time.time()
        try:
            results.append(evaluate(methods=[name], levels=levels, **common))
            log(f"{name}: done in {time.time() - t0:.0f} s")
        except Exception as exc:  # the reason goes into the table; the other methods still run
            skipped[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: SKIPPED ({skipped[name][:300]})")
            traceback.print_exc()
        if save is not None:  # after every method, so a run cut short keeps what it measured
            merged = _merge(results, skipped)
            if merged is not None:
                save(merged)
    return results, skipped


def _merge(results, skipped):
    from timeripple.eval import EvalResult

    if not results:
        return None
    first = results[0]
    merged = EvalResult(settings=dict(first.settings), methods=[m for r in results for m in r.methods],
                        dense=first.dense, rows=[x for r in results for x in r.rows],
                        tensor=[x for r in results for x in r.tensor], environment=first.environment)
    merged.settings["skipped"] = skipped
    return merged


def run(args) -> None:
    import torch

    from timeripple.eval import EVAL_PROMPTS, Method, MethodSetup, register_method
    from timeripple.eval.methods import scaled

    torch.set_num_threads(max(1, torch.get_num_threads() if args.device == "cuda" else 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logfile = open(out / "log.txt", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    from timeripple.demo import load_tiny_pipeline

    pipe = load_tiny_pipeline(device=args.device)
    common = dict(pipe=pipe, prompts=list(EVAL_PROMPTS[: args.prompts]), seeds=list(args.seeds),
                  num_inference_steps=args.steps, capture_steps=args.capture_steps, capture_layers=args.capture_layers,
                  tensor_level=not args.no_tensor, progress=False, tol=args.tol)
    log(f"settings: {json.dumps({k: v for k, v in common.items() if k != 'pipe'})}, levels {args.levels}")
    groups = [g for g in args.groups]
    if "main" in groups:
        _evaluate_each(args.methods or MAIN, args.levels, common, log, save=lambda m: m.save(str(out / "main")))
        log("main saved")
    if "ablation" in groups:
        level = args.ablation_level
        save = lambda m: m.save(str(out / "ablation"))  # noqa: E731
        res, skipped = _evaluate_each(("channel",) + ABLATION, [level], common, log, save=save)
        channel = next((r for r in res if r.rows and r.rows[0]["method"] == "channel"), None)
        if channel is not None:  # Fig. 11 as the paper runs it: every window at window 2's threshold
            scale = channel.rows[0]["knob"]
            for w in WINDOWS:
                register_method(Method(
                    f"channel-w{w}-same", f"channel mode, window {w}, window 2's threshold (x{scale:.3g}) at "
                    f"{level:.0%}", knob=None, savings="q·kᵀ partial products",
                    build=lambda _k, cfg, w=w: MethodSetup(scaled(cfg.replace(mode="channel", window=w), scale))),
                    replace=True)
            _evaluate_each([f"channel-w{w}-same" for w in WINDOWS], [level], common, log, save=save, results=res,
                           skipped=skipped)
        log("ablation saved")
    logfile.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cpu")
    r.add_argument("--groups", nargs="+", default=["main", "ablation"], choices=["main", "ablation"])
    r.add_argument("--methods", nargs="*", default=None, help="main-table methods (default: all)")
    r.add_argument("--prompts", type=int, default=8, help="the first N of timeripple.eval.EVAL_PROMPTS")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.75, 0.875])
    r.add_argument("--ablation-level", type=float, default=0.75)
    r.add_argument("--capture-steps", type=int, default=3)
    r.add_argument("--capture-layers", type=int, default=None)
    r.add_argument("--no-tensor", action="store_true")
    r.add_argument("--tol", type=float, default=0.005)
    d = sub.add_parser("render")
    d.add_argument("runs", nargs="+", help="folders written by `run` (main/ and ablation/ inside)")
    d.add_argument("--out", default="docs/results.md")
    d.add_argument("--e2e", default="", help="JSON of benchmarks/bench_peers_e2e.py")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        run(args)
    else:
        from _results_md import render

        render(args.runs, args.out, args.e2e)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
