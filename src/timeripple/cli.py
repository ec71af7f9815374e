"""The ``timeripple`` console command.

``timeripple demo`` generates a clip with the embedded tiny text-to-video model, dense and with
TimeRipple, and prints how they compare; ``timeripple configs`` lists the bundled configs;
``timeripple version`` prints the version. The logic lives in :mod:`timeripple.demo.run_demo`; this file
only parses arguments and prints.
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
    """The argument parser of the ``timeripple`` command (subcommands ``demo``, ``configs``, ``version``)."""
    from .demo.run_demo import DEFAULT_CONFIG, DEFAULT_GUIDANCE, DEFAULT_PROMPT, DEFAULT_STEPS, MODES, VIDEO_FORMATS

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

    sub.add_parser("configs", help="list the bundled configs and their step schedules",
                   description="List the bundled TimeRipple configs with their mode and threshold schedule.")
    sub.add_parser("version", help="print the installed version", description="Print the installed version.")
    return parser


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
    commands = {"demo": _cmd_demo, "configs": _cmd_configs, "version": _cmd_version}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        if verbose:
            raise
        parser.exit(2, f"timeripple {args.command}: error: {err}\n")
    return 1  # unreachable: parser.exit raises SystemExit


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
