"""``timeripple eval``: the command-line face of :func:`timeripple.eval.evaluate`.

Importing this module (and building the parser) imports no torch, so ``timeripple eval --help`` is fast;
the harness is imported when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .._validation import value_error
from . import prompts as defaults

__all__ = ["add_eval_parser", "cmd_eval", "QUICK"]

# --quick: a few minutes on a CPU
QUICK = {"prompts": 2, "seeds": [0], "steps": 10, "search_runs": 1}

_EPILOG = """\
what it does:
  Generates every (prompt, seed) run dense once, then for every method and target level searches the
  method's knob (threshold scale, budget, masked fraction) until its counted savings on the reusing steps
  (the steps the config's schedule does not keep dense), averaged over the runs, are within --tol of the
  target: on the first --search-runs runs, then confirmed (and refined if needed) on all runs. It also
  captures q/k/v from the pipeline's own self-attention layers at a few reusing steps of the first run
  and measures each method's attention-output error against exact attention at savings matched per call.

what it reports (results.md, results.json):
  PSNR / SSIM             each video vs the dense video of the same prompt and seed (mean over runs)
  savings reusing/total   counted, achieved (never the target): channel = q·kᵀ partial products, token
                          modes = q·k pairs, baselines = q·kᵀ products; on the reusing steps / whole run
  s / video, speedup      timed wall clock per generation (CUDA: synchronised), dense in the same run
  adherence               tiny model only: colour / shape / direction accuracy, and runs lost vs dense
  attention MSE           captured calls, vs exact attention, and relative to channel mode
  † marks a target that was not reached; the message says what was reached.

plots: quality_vs_savings.png, per_step_error.png (latent RMSE vs the dense trajectory after every step;
  attention MSE per captured step), attention_mse.png.

examples:
  timeripple eval --quick
  timeripple eval --methods channel token-budget --levels 0.5 0.75 --search-runs 4
  timeripple eval --device cuda --batch-size 16 --output out/eval
  timeripple eval --import mypkg.methods --methods my-method   # a module that calls register_method
"""


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a saving in (0, 1), e.g. 0.75")
    return value


def add_eval_parser(sub, device_type, int_type) -> None:
    """Add the ``eval`` subcommand to the ``timeripple`` parser (``device_type`` parses ``--device``,
    ``int_type(minimum)`` the integer options: the CLI's own argument types)."""
    from . import catalog  # noqa: F401  (registers every method)
    from .methods import list_methods

    p = sub.add_parser(
        "eval", help="compare attention methods against dense at matched savings (tiny model by default)",
        description="Run a pipeline (default: the shipped tiny model) dense and with each method, at savings "
        "matched to each target level, and write JSON, a markdown table and plots.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--methods", nargs="+", default=list(defaults.DEFAULT_METHODS), metavar="NAME",
                   help=f"methods from the registry (default: all built-in: {' '.join(list_methods())})")
    p.add_argument("--levels", nargs="+", type=_level, default=list(defaults.DEFAULT_LEVELS), metavar="S",
                   help="target savings on the reusing steps (default: %s)" %
                   " ".join(f"{x:g}" for x in defaults.DEFAULT_LEVELS))
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="one prompt per line (# comments); default: the 8 prompts of timeripple.eval.EVAL_PROMPTS")
    p.add_argument("--seeds", nargs="+", type=int_type(0), default=None, metavar="N",
                   help="seeds; every prompt runs with every seed (default: %s)" % " ".join(map(str, defaults.EVAL_SEEDS)))
    p.add_argument("--steps", type=int_type(2), default=None, help=f"denoising steps (default: {defaults.DEFAULT_STEPS})")
    p.add_argument("--guidance-scale", type=float, default=defaults.DEFAULT_GUIDANCE,
                   help=f"classifier-free guidance scale (default: {defaults.DEFAULT_GUIDANCE:g})")
    p.add_argument("--config", default=defaults.DEFAULT_CONFIG,
                   help=f"base config: its schedule and thresholds (default: {defaults.DEFAULT_CONFIG})")
    p.add_argument("--search-runs", type=int_type(1), default=None, metavar="N",
                   help="runs used while searching each knob, then confirmed on all runs (default: all)")
    p.add_argument("--batch-size", type=int_type(1), default=None, metavar="N",
                   help="runs per pipeline call (default: all on CUDA, 1 on the CPU)")
    p.add_argument("--tol", type=float, default=defaults.SAVINGS_TOLERANCE,
                   help=f"absolute tolerance on the achieved savings (default: {defaults.SAVINGS_TOLERANCE})")
    p.add_argument("--match-on", choices=("reusing", "total"), default="reusing",
                   help="savings matched to the levels: on the schedule's reusing steps (default) or over the "
                   "whole generation (for caches without a schedule)")
    p.add_argument("--capture-steps", type=int_type(1), default=3, metavar="N",
                   help="reusing steps whose q/k/v are captured for the attention error (default: 3)")
    p.add_argument("--capture-layers", type=int_type(1), default=None, metavar="N",
                   help="captured layers, evenly spread (default: all)")
    p.add_argument("--no-tensor", action="store_true", help="skip the tensor-level attention error")
    p.add_argument("--quick", action="store_true",
                   help="2 prompts x seed 0 x 10 steps, search on 1 run (a first look; explicit options win)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers more methods (repeatable)")
    p.add_argument("--device", type=device_type, default="cpu", help="torch device (default: cpu)")
    p.add_argument("--weights", default=None, metavar="DIR", help="another export of the tiny model")
    p.add_argument("--output", default="timeripple_eval", metavar="DIR",
                   help="folder for results.json, results.md and the plots (default: ./timeripple_eval)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")


def _read_prompts(path: str) -> list:
    file = Path(path)
    if not file.is_file():
        raise value_error("--prompts-file", path, "is not a file", "pass a text file with one prompt per line")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise value_error("--prompts-file", path, "holds no prompt", "write one prompt per line")
    return prompts


def cmd_eval(args) -> int:
    """Run ``timeripple eval``; checks the cheap arguments before loading any model."""
    from . import catalog  # noqa: F401  (registers every method)
    from .methods import get_method

    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise value_error("--import", module, f"cannot be imported ({err})", "check the module name and PYTHONPATH")
    methods = [get_method(name) for name in args.methods]  # unknown names list the valid ones
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise value_error("--output", args.output, "exists and is not a folder", "pass a folder path")
    prompts = _read_prompts(args.prompts_file) if args.prompts_file else list(defaults.EVAL_PROMPTS)
    seeds, steps, search_runs = args.seeds, args.steps, args.search_runs
    if args.quick:
        prompts = prompts if args.prompts_file else prompts[: QUICK["prompts"]]
        seeds = seeds or QUICK["seeds"]
        steps = steps or QUICK["steps"]
        search_runs = search_runs or QUICK["search_runs"]
    seeds = seeds or list(defaults.EVAL_SEEDS)
    steps = steps or defaults.DEFAULT_STEPS
    runs = len(prompts) * len(seeds)
    if search_runs is not None and search_runs > runs:
        raise value_error("--search-runs", search_runs, f"must be <= the number of runs ({runs})",
                          "lower --search-runs or add prompts/seeds")
    if not 0 < args.tol < 0.5:
        raise value_error("--tol", args.tol, "must be in (0, 0.5)", "pass e.g. 0.005")

    from ..demo import load_tiny_pipeline
    from .harness import evaluate

    print(f"timeripple eval: {len(methods)} method(s) x {len(args.levels)} level(s), {runs} run(s) of {steps} steps "
          f"on {args.device} (tiny model).", file=sys.stderr, flush=True)
    pipe = load_tiny_pipeline(device=args.device, weights_dir=args.weights)
    result = evaluate(
        pipe, methods, args.levels, prompts=prompts, seeds=seeds, num_inference_steps=steps,
        guidance_scale=args.guidance_scale, config=args.config, search_runs=search_runs, batch_size=args.batch_size,
        tol=args.tol, match_on=args.match_on, tensor_level=not args.no_tensor, capture_steps=args.capture_steps,
        capture_layers=args.capture_layers, progress=not args.no_progress,
    )
    files = result.save(out)
    print(result.markdown())
    print("\n".join(f"{name:>15}: {path}" for name, path in files.items()))
    return 0
