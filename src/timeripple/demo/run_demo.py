"""The logic behind ``timeripple demo``: generate one clip with the embedded tiny model, dense and with
TimeRipple, from the same seed; compare them; write a side-by-side video and a frame strip.

Every figure says what it is: wall times are **measured** on the machine that runs the demo, attention
savings are **counted** (``q kᵀ`` partial products skipped, from :func:`timeripple.get_stats`), PSNR and
SSIM compare the TimeRipple video with the dense one, and adherence scores each video against its prompt
(:func:`timeripple.demo.adherence.score_adherence`).

Example:

```py
>>> from timeripple.demo.run_demo import run_demo, save_outputs, format_report
>>> result = run_demo("a blue square moving left quickly on a black background", seed=1)
>>> files = save_outputs(result, "timeripple_demo")
>>> print(format_report(result, files))
```
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .._defaults import DEFAULT_CONFIG, DEFAULT_GUIDANCE, DEFAULT_PROMPT, DEFAULT_STEPS, MODES, VIDEO_FORMATS
from .._validation import type_error, value_error

logger = logging.getLogger(__name__)

__all__ = ["DemoResult", "run_demo", "save_outputs", "format_report", "resolve_config", "DEFAULT_PROMPT"]

DIFF_GAIN = 10  # the difference row of the frame strip shows |dense - TimeRipple| times this
FPS = 4
ADHERENCE_FIELDS = ("colour", "shape", "direction")


@dataclasses.dataclass
class DemoResult:
    """Everything one demo run measured.

    Args:
        prompt, negative_prompt, seed, num_inference_steps, guidance_scale, device: the run's settings.
        config (`TimeRippleConfig`): the config TimeRipple ran with.
        dense, ripple (`torch.Tensor`): the two videos, ``(F, 3, H, W)`` in ``[0, 1]`` on the CPU.
        dense_seconds, ripple_seconds (`float`): measured wall time of each pipeline call.
        stats (`GenerationStats`): counted savings of the TimeRipple call.
        psnr, ssim (`float`): TimeRipple video against the dense one.
        adherence_dense, adherence_ripple (`dict` or `None`): :func:`score_adherence` results; `None`
            when the prompt names no shape colour (nothing to score).
    """

    prompt: str
    negative_prompt: Optional[str]
    seed: int
    num_inference_steps: int
    guidance_scale: float
    device: str
    config: Any
    dense: torch.Tensor
    ripple: torch.Tensor
    dense_seconds: float
    ripple_seconds: float
    stats: Any
    psnr: float
    ssim: float
    adherence_dense: Optional[Dict[str, Any]]
    adherence_ripple: Optional[Dict[str, Any]]

    @property
    def reusing_steps(self) -> int:
        """Steps on which TimeRipple ran (the schedule's non-dense steps)."""
        return sum(theta is not None for theta in self.stats.thresholds)

    @property
    def savings_reusing_steps(self) -> float:
        """Counted savings over the reusing steps only (every step of this pipeline has the same product
        count, so this is the generation total rescaled by ``steps / reusing steps``)."""
        n = self.reusing_steps
        return self.stats.total_savings * self.stats.num_steps / n if n else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """The figures as plain values (for ``summary.json``); says which are measured and which counted."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
            "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
            "device": self.device, "config": self.config.to_dict(),
            "wall_time_s": {"dense": self.dense_seconds, "timeripple": self.ripple_seconds, "kind": "measured"},
            "attention_savings": {
                "generation": self.stats.total_savings, "reusing_steps": self.savings_reusing_steps,
                "num_reusing_steps": self.reusing_steps, "step_savings": list(self.stats.step_savings),
                "kind": "counted",
            },
            "psnr_db": None if math.isinf(self.psnr) else self.psnr, "ssim": self.ssim,
            "adherence": {"dense": _adherence_summary(self.adherence_dense),
                          "timeripple": _adherence_summary(self.adherence_ripple)},
        }


def _adherence_summary(row):
    if row is None:
        return None
    return {k: row[k] for k in (*ADHERENCE_FIELDS, "all", "detected_shape", "detected_direction")}


def resolve_config(config=DEFAULT_CONFIG, mode: Optional[str] = None):
    """Load ``config`` (bundled name, YAML path or :class:`TimeRippleConfig`); ``mode`` overrides its mode."""
    from ..config import load_config

    config = load_config(config)
    if mode is not None:
        if mode not in MODES:
            raise value_error("mode", mode, f"must be one of {MODES}", "use 'channel' (the paper) or 'token'")
        if mode != config.mode:
            config = config.replace(mode=mode)
    return config


def _check_args(prompt, negative_prompt, seed, num_inference_steps, guidance_scale) -> None:
    if not isinstance(prompt, str):
        raise type_error("prompt", prompt, "a str", 'pass e.g. "a red circle moving right on a gray background"')
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise type_error("negative_prompt", negative_prompt, "a str or None", "pass text or leave it out")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise value_error("seed", seed, "must be an int >= 0", "use e.g. 0")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 2:
        raise value_error("num_inference_steps", num_inference_steps, "must be an int >= 2",
                          f"use e.g. {DEFAULT_STEPS}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
        raise value_error("guidance_scale", guidance_scale, "must be a number >= 0", f"use e.g. {DEFAULT_GUIDANCE}")


def _score(video, prompt) -> Optional[Dict[str, Any]]:
    from .clips import parse_caption
    from .adherence import score_adherence

    if "colour" not in parse_caption(prompt):
        logger.info("The prompt names no shape colour; adherence is not scored.")
        return None
    return score_adherence(video, prompt)


def run_demo(
    prompt: str = DEFAULT_PROMPT,
    *,
    negative_prompt: Optional[str] = None,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    config=DEFAULT_CONFIG,
    mode: Optional[str] = None,
    device="cpu",
    weights_dir=None,
    pipe=None,
    progress: bool = True,
) -> DemoResult:
    """Generate ``prompt`` with the tiny model twice from the same seed, dense then with TimeRipple.

    Args:
        prompt (`str`): the caption; unknown words are ignored with a warning, ``""`` is unconditioned.
        negative_prompt (`str`, *optional*): the guidance's negative; default unconditioned.
        seed (`int`, defaults to 0): seed of the CPU generator of the initial noise (same for both runs).
        num_inference_steps (`int`, defaults to 20): more steps = slower, and more of them reuse (the
            config's step positions scale with the step count).
        guidance_scale (`float`, defaults to 5.0): classifier-free guidance (two transformer calls per step).
        config: bundled config name, YAML path or :class:`TimeRippleConfig` (default ``"wan2.1"``).
        mode (`str`, *optional*): ``"channel"`` or ``"token"`` to override the config's mode.
        device (`str` or `torch.device`, defaults to ``"cpu"``): where the model runs.
        weights_dir (*optional*): another export of the tiny model (default: the shipped weights).
        pipe (`TinyT2VPipeline`, *optional*): reuse a loaded pipeline (TimeRipple must not be applied).
        progress (`bool`, defaults to `True`): show the pipeline's progress bar.

    Returns:
        :class:`DemoResult`. The pipeline is left without TimeRipple.
    """
    import timeripple

    from ..video_metrics import psnr, ssim

    _check_args(prompt, negative_prompt, seed, num_inference_steps, guidance_scale)
    config = resolve_config(config, mode)
    if pipe is None:
        from . import load_tiny_pipeline

        pipe = load_tiny_pipeline(device=device, weights_dir=weights_dir)
    device = str(pipe.device)
    call = dict(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, output_type="pt")

    def generate(label):
        pipe.set_progress_bar_config(desc=label, disable=not progress, leave=True)
        generator = torch.Generator("cpu").manual_seed(seed)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)
        start = time.perf_counter()
        frames = pipe(generator=generator, **call).frames[0]
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)
        return frames.detach().float().cpu(), time.perf_counter() - start

    dense, dense_seconds = generate("dense     ")
    handle = timeripple.apply_timeripple(pipe, config)
    try:
        ripple, ripple_seconds = generate("TimeRipple")
        stats = handle.stats
    finally:
        handle.remove()
    return DemoResult(
        prompt=prompt, negative_prompt=negative_prompt, seed=seed, num_inference_steps=num_inference_steps,
        guidance_scale=float(guidance_scale), device=device, config=config, dense=dense, ripple=ripple,
        dense_seconds=dense_seconds, ripple_seconds=ripple_seconds, stats=stats,
        psnr=psnr(dense, ripple), ssim=ssim(dense, ripple),
        adherence_dense=_score(dense, prompt), adherence_ripple=_score(ripple, prompt),
    )


# -- pictures and video -------------------------------------------------------------------------------------


def _to_uint8(video: torch.Tensor, scale: int) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H*scale, W*scale, 3) uint8, nearest-neighbour upscaled."""
    x = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return x.repeat(scale, axis=1).repeat(scale, axis=2)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _label(image: np.ndarray, text: str, xy=(4, 2), size: int = 14) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    ImageDraw.Draw(canvas).text(xy, text, fill=(255, 255, 255), font=_font(size))
    return np.array(canvas)


def _side_by_side(result: DemoResult, scale: int, gap: int = 16, header: int = 24) -> np.ndarray:
    """(F, header + H, 2W + gap, 3) uint8 frames: dense left, TimeRipple right, labelled."""
    left, right = _to_uint8(result.dense, scale), _to_uint8(result.ripple, scale)
    f, h, w, _ = left.shape
    frames = np.zeros((f, header + h, 2 * w + gap, 3), np.uint8)
    frames[:, header:, :w] = left
    frames[:, header:, w + gap:] = right
    for i in range(f):
        frames[i] = _label(frames[i], "dense", (4, 4))
        frames[i] = _label(frames[i], f"TimeRipple ({result.config.name}, {result.config.mode})", (w + gap + 4, 4))
    return frames


def _frame_strip(result: DemoResult, scale: int, gap: int = 4, margin: int = 96) -> np.ndarray:
    """Rows: dense, TimeRipple, |difference| x DIFF_GAIN; one column per frame; labels on the left."""
    diff = ((result.dense - result.ripple).abs() * DIFF_GAIN).clamp(0, 1)
    rows = [("dense", result.dense), ("TimeRipple", result.ripple), (f"|diff| x{DIFF_GAIN}", diff)]
    f, _, h, w = result.dense.shape
    ph, pw = h * scale, w * scale
    strip = np.full((len(rows) * (ph + gap) + gap, margin + f * (pw + gap), 3), 32, np.uint8)
    for r, (name, video) in enumerate(rows):
        top = gap + r * (ph + gap)
        for i, frame in enumerate(_to_uint8(video, scale)):
            left = margin + i * (pw + gap)
            strip[top:top + ph, left:left + pw] = frame
        strip = _label(strip, name, (4, top + ph // 2 - 8))
    return strip


def _video_format(video_format: str) -> str:
    if video_format not in VIDEO_FORMATS:
        raise value_error("video_format", video_format, f"must be one of {VIDEO_FORMATS}", "use 'auto'")
    has_mp4 = importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None
    if video_format == "mp4" and not has_mp4:
        raise value_error("video_format", video_format, "MP4 needs imageio and imageio-ffmpeg",
                          "`pip install imageio imageio-ffmpeg`, or use 'gif'")
    if video_format == "auto":
        return "mp4" if has_mp4 else "gif"
    return video_format


def _write_video(frames: np.ndarray, path: Path, fmt: str) -> None:
    if fmt == "mp4":
        import imageio.v2 as imageio

        with imageio.get_writer(str(path), fps=FPS, codec="libx264", quality=8, macro_block_size=8,
                                pixelformat="yuv420p") as writer:
            for frame in frames:
                writer.append_data(frame)
    else:
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / FPS), loop=0)


def save_outputs(result: DemoResult, output_dir, *, video_format: str = "auto", scale: int = 8) -> Dict[str, Path]:
    """Write ``side_by_side.mp4`` (or ``.gif``), ``frames.png`` and ``summary.json`` into ``output_dir``.

    Args:
        result (:class:`DemoResult`): from :func:`run_demo`.
        output_dir (`str` or `Path`): created if missing; existing files of the same names are replaced.
        video_format (`str`, defaults to ``"auto"``): ``"mp4"`` (needs imageio-ffmpeg), ``"gif"``
            (Pillow only) or ``"auto"`` (MP4 where a writer is available, else GIF).
        scale (`int`, defaults to 8): nearest-neighbour upscaling of the 32x32 frames.

    Returns:
        `dict`: ``{"video": path, "frames": path, "summary": path}``.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 32:
        raise value_error("scale", scale, "must be an int in [1, 32]", "use 8")
    fmt = _video_format(video_format)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise value_error("output_dir", str(out), "exists and is not a folder", "pass a folder path")
    out.mkdir(parents=True, exist_ok=True)
    files = {"video": out / f"side_by_side.{fmt}", "frames": out / "frames.png", "summary": out / "summary.json"}
    _write_video(_side_by_side(result, scale), files["video"], fmt)
    from PIL import Image

    Image.fromarray(_frame_strip(result, max(1, scale // 2))).save(files["frames"])
    files["summary"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    logger.info("Wrote %s", ", ".join(str(p) for p in files.values()))
    return files


# -- the table ------------------------------------------------------------------------------------------------


def _yes_no(row, field) -> str:
    if row is None:
        return "n/a"
    value = row[field]
    if value is None:
        return "n/a (not named)"
    detected = {"colour": None, "shape": row["detected_shape"], "direction": row["detected_direction"]}[field]
    return ("yes" if value else "no") + (f" ({detected or 'none'})" if field != "colour" else "")


def format_report(result: DemoResult, files: Optional[Dict[str, Path]] = None) -> str:
    """The demo's table as text (see ``docs/demo.md`` for how to read it)."""
    cfg = result.config
    stats = result.stats
    n, k = stats.num_steps, result.reusing_steps
    speed = result.dense_seconds / result.ripple_seconds if result.ripple_seconds > 0 else float("nan")
    psnr_text = "inf (identical)" if math.isinf(result.psnr) else f"{result.psnr:.2f}"
    rows = [
        ("", "dense", "TimeRipple"),
        (f"wall time, {result.device} (s, measured)", f"{result.dense_seconds:.1f}",
         f"{result.ripple_seconds:.1f} ({speed:.2f}x)"),
        ("attention savings, generation (counted)", "0.0%", f"{stats.total_savings:.1%}"),
        (f"attention savings, reusing steps (counted)", "0.0%", f"{result.savings_reusing_steps:.1%} ({k} of {n} steps)"),
        ("PSNR vs dense (dB)", "inf", psnr_text),
        ("SSIM vs dense", "1.0000", f"{result.ssim:.4f}"),
    ]
    for field in ADHERENCE_FIELDS:
        rows.append((f"adherence: {field}", _yes_no(result.adherence_dense, field),
                     _yes_no(result.adherence_ripple, field)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f'TimeRipple demo: "{result.prompt}"',
        f"seed {result.seed}, {n} steps, guidance {result.guidance_scale:g}, config {cfg.name or 'custom'} "
        f"(mode {cfg.mode}), device {result.device}",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    if cfg.mode == "channel":
        lines.append("Savings are counted q·kᵀ partial products skipped (FLOP-weighted), not timed.")
    else:
        lines.append("Savings are the counted share of query-key pairs skipped on the reusing steps, not timed.")
    if result.device.startswith("cpu") and cfg.mode == "channel":
        lines.append("Wall time is CPU time of this machine: channel mode (the paper's method) still computes the "
                     "dense product, so on a CPU it saves nothing in time (detection costs extra).")
    elif result.device.startswith("cpu"):
        lines.append("Wall time is CPU time of this machine: token mode runs its plan in plain torch here, so on a "
                     "CPU it saves little or nothing in time; its speed is measured on GPUs (BENCHMARKS.md).")
    else:
        lines.append("Wall time is measured on this machine for the whole pipeline call (text encoder, "
                     "all steps, dense steps included).")
    if files:
        lines.append("")
        lines.extend(f"{name:>8}: {path}" for name, path in files.items())
    return "\n".join(lines)
