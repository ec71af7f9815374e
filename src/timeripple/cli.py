"""The ``timeripple`` console command.

``timeripple demo`` generates a clip with the embedded tiny text-to-video model, dense and with
TimeRipple, and prints how they compare; ``timeripple calibrate`` measures savings against fidelity over
threshold scales and picks one for a target; ``timeripple eval`` compares attention methods against
dense at matched savings (:mod:`timeripple.eval`); ``timeripple configs`` lists the bundled configs;
``timeripple version`` prints the version. The logic lives in :mod:`timeripple.demo.run_demo` and
:mod:`timeripple.eval.calibration`; this file only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ._validation import value_error

__all__ = ["main", "build_parser"]

_DESCRIPTION = "TimeRipple: faster video diffusion transformers by reusing attention work between neighbours."

_DEMO_EPILOG = """\
what it prints:
  wall time                measured on this machine for each whole pipeline call. On a CPU, channel mode
                           (the paper's method, the default) saves nothing in time: it computes the same
                           dense product and pays for detection. Token mode skips whole rows/columns.
  attention savings        counted q·kᵀ partial products skipped (FLOP-weighted), over the whole
                           generation (dense steps count as 0) and over the steps that reuse.
  PSNR / SSIM vs dense     the TimeRipple video against the dense video from the same seed.
  adherence                does each video show the prompt's colour, shape and direction?

output files (in --output):
  side_by_side.mp4|gif     dense left, TimeRipple right (MP4 when imageio-ffmpeg is installed, else GIF)
  frames.png               rows: dense, TimeRipple, |difference| x10; one column per frame
  summary.json             every figure of the table

examples:
  timeripple demo
  timeripple demo --prompt "a blue square moving left quickly on a black background" --seed 3
  timeripple demo --steps 30 --mode token --output out/token
  timeripple demo --config my_config.yaml --device cuda

The tiny model knows the words of its captions: colours (red green blue yellow white cyan magenta),
shapes (circle square triangle), directions (left right up down), speeds (slowly quickly), backgrounds
(black gray navy maroon olive purple teal, optionally "gradient" or "textured"). Other words are
ignored with a warning.
"""


_CALIBRATE_EPILOG = """\
what it does:
  For every prompt and seed it generates the video dense once, then once per scale s with the config's
  thresholds (threshold_start, threshold_end, fixed_threshold) multiplied by s, from the same seed.
  Scale 0 reuses nothing (identical to dense); larger scales reuse more and drift further from dense.

what it prints (one row per scale):
  θ (start → end)          the scaled thresholds, in raw units of the model's normalised q/k
  savings                  counted q·kᵀ partial products skipped, FLOP-weighted over the whole generation
                           (dense steps count as 0), mean over the runs
  PSNR mean / min, SSIM    each video against the dense one from the same seed (inf = identical;
                           the mean leaves identical runs out)

output files (in --output):
  calibration.json         every figure, per run and mean; the choice for the target
  calibration.png          savings vs PSNR, one labelled point per scale (needs matplotlib)
  calibrated_config.yaml   with --target-psnr or --target-savings: the chosen config (load it with
                           --config FILE, timeripple.load_config(FILE) or apply_timeripple(pipe, FILE))

examples:
  timeripple calibrate
  timeripple calibrate --scales 0.1 0.25 0.5 1.0 --steps 10 --target-psnr 30
  timeripple calibrate --config my.yaml --target-savings 0.6 --seeds 0 1 --output out/cal

Exit code 1 when no calibrated scale meets the target (the files are still written); 2 on bad arguments.
Calibrate at the step count you generate with: the config's step positions scale with --steps.
"""


def _positive_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (use cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (use cpu)")
    return str(device)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``timeripple`` command (``demo``, ``calibrate``, ``eval``, ``configs``,
    ``version``); building it imports no torch."""
    from ._defaults import DEFAULT_CONFIG, DEFAULT_GUIDANCE, DEFAULT_PROMPT, DEFAULT_STEPS, MODES, VIDEO_FORMATS

    parser = argparse.ArgumentParser(
        prog="timeripple", description=_DESCRIPTION,
        epilog="Run `timeripple demo --help` for the demo's options. Start with: timeripple demo",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", help="generate a clip with the embedded tiny model, dense and with TimeRipple, and compare",
        description="Generate one clip with the embedded tiny text-to-video model (a pixel-space "
        "WanTransformer3DModel shipped with the package; runs offline on a CPU) twice from the same seed: "
        "dense, then with TimeRipple. Writes a side-by-side video and a frame strip, prints a table.",
        epilog=_DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--prompt", default=DEFAULT_PROMPT, help=f'the caption (default: "{DEFAULT_PROMPT}")')
    demo.add_argument("--negative-prompt", default=None, help="negative prompt of the guidance (default: none)")
    demo.add_argument("--seed", type=_positive_int(0), default=0, help="seed of the initial noise (default: 0)")
    demo.add_argument("--steps", type=_positive_int(2), default=DEFAULT_STEPS,
                      help=f"denoising steps (default: {DEFAULT_STEPS}); the config's step positions scale with it")
    demo.add_argument("--guidance-scale", type=_non_negative_float, default=DEFAULT_GUIDANCE,
                      help=f"classifier-free guidance scale (default: {DEFAULT_GUIDANCE:g})")
    demo.add_argument("--config", default=DEFAULT_CONFIG,
                      help=f"bundled config name (see `timeripple configs`) or a YAML path (default: {DEFAULT_CONFIG})")
    demo.add_argument("--mode", choices=MODES, default=None,
                      help="override the config's mode: channel (the paper's method, counted savings) or "
                      "token (skips whole rows/columns)")
    demo.add_argument("--output", default="timeripple_demo", metavar="DIR",
                      help="folder for the video, frame strip and summary.json (default: ./timeripple_demo)")
    demo.add_argument("--video-format", choices=VIDEO_FORMATS, default="auto",
                      help="auto = MP4 where imageio-ffmpeg is installed, else GIF (default: auto)")
    demo.add_argument("--device", type=_device, default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--weights", default=None, metavar="DIR",
                      help="another export of the tiny model (tools/train_tiny_t2v.py --export DIR); "
                      "default: the weights shipped with the package")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.add_argument("-v", "--verbose", action="store_true", help="log what the library does")

    _add_calibrate_parser(sub)
    from .eval.command import add_eval_parser

    add_eval_parser(sub, _device, _positive_int)
    sub.add_parser("configs", help="list the bundled configs and their step schedules",
                   description="List the bundled TimeRipple configs with their mode and threshold schedule.")
    sub.add_parser("version", help="print the installed version", description="Print the installed version.")
    return parser


def _add_calibrate_parser(sub) -> None:
    from ._defaults import DEFAULT_CONFIG, DEFAULT_GUIDANCE, DEFAULT_SCALES, MODES

    cal = sub.add_parser(
        "calibrate", help="find the threshold scale for a target saving or fidelity (tiny model by default)",
        description="Calibrate TimeRipple's thresholds: generate a few prompts dense and with the config's "
        "thresholds times each scale, from the same seeds, on the embedded tiny model; print counted savings "
        "against PSNR/SSIM vs dense, and with a target write the chosen config.",
        epilog=_CALIBRATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cal.add_argument("--config", default=DEFAULT_CONFIG,
                     help=f"bundled config name or a YAML path whose thresholds are scaled (default: {DEFAULT_CONFIG})")
    cal.add_argument("--mode", choices=MODES, default="channel",
                     help="the mode whose thresholds are calibrated (default: channel; token = the threshold-based "
                     "token criterion; a pair-savings target needs no calibration)")
    cal.add_argument("--scales", type=_non_negative_float, nargs="+", default=list(DEFAULT_SCALES), metavar="S",
                     help="multipliers on the thresholds (default: %s)" % " ".join(f"{s:g}" for s in DEFAULT_SCALES))
    cal.add_argument("--steps", type=_positive_int(2), default=10, help="denoising steps per generation (default: 10)")
    cal.add_argument("--seeds", type=_positive_int(0), nargs="+", default=[0], metavar="N",
                     help="seeds of the initial noise; every prompt runs with every seed (default: 0)")
    cal.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                     help="a prompt; repeat for more (default: the first %d adherence prompts)" % _CALIBRATE_PROMPTS)
    target = cal.add_mutually_exclusive_group()
    target.add_argument("--target-psnr", type=float, default=None, metavar="DB",
                        help="pick the scale with the most savings whose mean PSNR vs dense is >= DB")
    target.add_argument("--target-savings", type=float, default=None, metavar="FRAC",
                        help="pick the smallest scale whose mean counted savings is >= FRAC (e.g. 0.6)")
    cal.add_argument("--guidance-scale", type=_non_negative_float, default=DEFAULT_GUIDANCE,
                     help=f"classifier-free guidance scale (default: {DEFAULT_GUIDANCE:g})")
    cal.add_argument("--output", default="timeripple_calibration", metavar="DIR",
                     help="folder for calibration.json/.png and the chosen config (default: ./timeripple_calibration)")
    cal.add_argument("--device", type=_device, default="cpu", help="torch device (default: cpu)")
    cal.add_argument("--weights", default=None, metavar="DIR", help="another export of the tiny model")
    cal.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cal.add_argument("-v", "--verbose", action="store_true", help="log what the library does")


_CALIBRATE_PROMPTS = 2  # default prompts: the first ones of timeripple.eval.ADHERENCE_PROMPTS


def _cmd_calibrate(args) -> int:
    import json

    from .eval.calibration import check_targets, calibrate
    from .demo import load_tiny_pipeline
    from .demo.run_demo import resolve_config
    from .eval import ADHERENCE_PROMPTS

    # check the cheap arguments before loading the model
    config = resolve_config(args.config).with_mode(args.mode)  # thresholds of that mode, the config's schedule
    if config.pair_savings is not None:  # a token config with a target: the threshold-based criterion instead
        config = config.with_mode("channel").with_mode("token")
    target = check_targets(args.target_psnr, args.target_savings) or {}
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise value_error("--output", args.output, "exists and is not a folder", "pass a folder path")
    prompts = args.prompt or [p for p, _ in ADHERENCE_PROMPTS[:_CALIBRATE_PROMPTS]]
    runs = len(prompts) * len(args.seeds)
    print(f"Calibrating {config.name or args.config} (mode {config.mode}) on the tiny model, {args.device}: "
          f"{runs} run(s) x (dense + {len(args.scales)} scales), {args.steps} steps each.", file=sys.stderr, flush=True)
    pipe = load_tiny_pipeline(device=args.device, weights_dir=args.weights)
    result = calibrate(pipe, config, prompts, scales=args.scales, seeds=args.seeds, num_inference_steps=args.steps,
                       pipe_kwargs={"guidance_scale": args.guidance_scale}, progress=not args.no_progress, **target)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table": out / "calibration.json"}
    files["table"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    try:
        files["curve"] = result.plot(out / "calibration.png", highlight=result.chosen)
    except ImportError as err:
        print(f"note: no calibration.png: {err}", file=sys.stderr)
    print(result.summary())
    print()
    code = 0
    if target:
        (name, value), = target.items()
        goal = f"mean PSNR >= {value:g} dB" if name == "target_psnr" else f"mean savings >= {value:.1%}"
        if result.chosen is None:
            print(f"No calibrated scale meets {goal}: try other --scales or another target.")
            code = 1
        else:
            row, chosen = result.row(result.chosen), result.config_for(result.chosen)
            files["config"] = out / "calibrated_config.yaml"
            chosen.to_yaml(files["config"], header=f"timeripple calibrate: scale {result.chosen:g} of "
                           f"{config.name or args.config} for {goal}; tiny model, {args.steps} steps, "
                           f"guidance {args.guidance_scale:g}")
            print(f"Chosen for {goal}: scale {result.chosen:g} -> {chosen.name}, θ {chosen.threshold_start:.3g} → "
                  f"{chosen.threshold_end:.3g} (savings {row.mean_savings:.1%}, mean PSNR {row.mean_psnr:.2f} dB)")
    else:
        print("No target given: pick a scale from the table (or pass --target-psnr / --target-savings).")
    print()
    print("\n".join(f"{name:>6}: {path}" for name, path in files.items()))
    return code


def _cmd_demo(args) -> int:
    from .demo.run_demo import format_report, resolve_config, run_demo, save_outputs

    # check the cheap arguments before loading the model
    config = resolve_config(args.config, args.mode)
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise value_error("--output", args.output, "exists and is not a folder", "pass a folder path")
    print(f"Generating with the tiny model on {args.device}: dense, then TimeRipple ({config.name or args.config}, "
          f"mode {config.mode}), {args.steps} steps each.", file=sys.stderr, flush=True)
    result = run_demo(
        args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, config=config, device=args.device, weights_dir=args.weights,
        progress=not args.no_progress,
    )
    files = save_outputs(result, args.output, video_format=args.video_format)
    print(format_report(result, files))
    return 0


def _cmd_configs(args) -> int:
    from .config import list_configs, load_config

    for name in list_configs():
        config = load_config(name)
        if config.fixed_threshold is not None:
            schedule = f"fixed θ {config.fixed_threshold:g}"
        else:
            schedule = f"θ {config.threshold_start:g} → {config.threshold_end:g}"
        first = f"dense steps 0-{config.ramp_start_step - 1}" if config.ramp_start_step else "no dense first steps"
        last = " + last" if config.dense_last_step else ""
        print(f"{name:<15} family {str(config.model_family):<15} mode {config.mode:<8} {schedule}, ramp steps "
              f"{config.ramp_start_step}-{config.ramp_end_step} of {config.reference_num_steps}, {first}{last}")
    print("Step positions refer to reference_num_steps; other step counts scale them proportionally.")
    return 0


def _cmd_version(args) -> int:
    import timeripple

    print(f"timeripple {timeripple.__version__}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``timeripple`` command; returns the exit code (0 on success, 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .eval.command import cmd_eval

    commands = {"demo": _cmd_demo, "calibrate": _cmd_calibrate, "eval": cmd_eval, "configs": _cmd_configs,
                "version": _cmd_version}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        if verbose:
            raise
        parser.exit(2, f"timeripple {args.command}: error: {err}\n")
    return 1  # unreachable: parser.exit raises SystemExit


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
