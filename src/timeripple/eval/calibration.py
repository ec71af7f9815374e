"""Threshold calibration: find the θ scale that gives a model the saving or the fidelity you want.

θ is in raw units of each model's post-norm, post-RoPE ``q``/``k``, so a config tuned for one model reuses
too much or too little on another. :func:`calibrate` multiplies a config's thresholds by a few scales,
generates the same (prompt, seed) pairs dense and with each scaled config, and records the counted savings
(FLOP-weighted, from :func:`timeripple.get_stats`) and the PSNR / SSIM of each video against the dense one.
:class:`CalibrationResult` holds the table, picks a scale for a target, and plots the trade-off curve.

The command ``timeripple calibrate`` runs it on the embedded tiny model; ``docs/calibration.md`` explains
how to read the curve.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from numbers import Real
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._validation import type_error, value_error
from ..config import TimeRippleConfig, load_config

logger = logging.getLogger(__name__)

__all__ = ["calibrate", "CalibrationResult", "CalibrationRow", "DEFAULT_SCALES", "scale_config"]

from .._defaults import DEFAULT_SCALES  # noqa: E402
_THRESHOLD_FIELDS = ("threshold_start", "threshold_end", "fixed_threshold")


def scale_config(config: TimeRippleConfig, scale: float) -> TimeRippleConfig:
    """``config`` with ``threshold_start``, ``threshold_end`` and ``fixed_threshold`` multiplied by ``scale``
    and the name suffixed ``-x{scale}`` (``custom-x0.25`` for an unnamed config). Everything else is kept."""
    scale = _check_scale("scale", scale)
    changes = {f: None if getattr(config, f) is None else getattr(config, f) * scale for f in _THRESHOLD_FIELDS}
    return config.replace(name=f"{config.name or 'custom'}-x{scale:g}", **changes)


@dataclasses.dataclass
class CalibrationRow:
    r"""
    One threshold scale of a calibration: its thresholds and, per (prompt, seed) run, the figures.

    Args:
        scale (`float`): the multiplier on the config's thresholds.
        threshold_start, threshold_end (`float`), fixed_threshold (`float` or `None`): the scaled θ.
        savings (`list[float]`): per run, counted share of ``q kᵀ`` products skipped over the whole
            generation (FLOP-weighted, dense steps count as 0).
        psnr (`list[float]`): per run, PSNR (dB) against the dense video from the same seed (`inf` = identical).
        ssim (`list[float]`): per run, SSIM against the dense video.
        identical (`list[bool]`): per run, whether the video equals the dense one bit for bit.
    """

    scale: float
    threshold_start: float
    threshold_end: float
    fixed_threshold: Optional[float]
    savings: List[float]
    psnr: List[float]
    ssim: List[float]
    identical: List[bool]

    @property
    def mean_savings(self) -> float:
        return sum(self.savings) / len(self.savings)

    @property
    def mean_psnr(self) -> float:
        """Mean PSNR over the runs. Runs identical to dense (`inf`) are left out unless every run is
        identical, so the mean is finite and never above what the differing runs reach (conservative)."""
        finite = [p for p in self.psnr if math.isfinite(p)]
        return sum(finite) / len(finite) if finite else math.inf

    @property
    def min_psnr(self) -> float:
        return min(self.psnr)

    @property
    def mean_ssim(self) -> float:
        return sum(self.ssim) / len(self.ssim)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "scale": self.scale, "threshold_start": self.threshold_start, "threshold_end": self.threshold_end,
            "fixed_threshold": self.fixed_threshold, "savings": list(self.savings),
            "psnr_db": [_json_db(p) for p in self.psnr], "ssim": list(self.ssim), "identical": list(self.identical),
            "mean_savings": self.mean_savings, "mean_psnr_db": _json_db(self.mean_psnr),
            "min_psnr_db": _json_db(self.min_psnr), "mean_ssim": self.mean_ssim,
        }


def _json_db(value: float) -> Optional[float]:
    return None if math.isinf(value) else value  # JSON has no inf: null = identical to dense


@dataclasses.dataclass
class CalibrationResult:
    r"""
    The outcome of :func:`calibrate`: one :class:`CalibrationRow` per threshold scale (ascending).

    Args:
        config (`TimeRippleConfig`): the config whose thresholds were scaled.
        runs (`list[tuple[str, int]]`): the (prompt, seed) pairs, in the order of every row's lists.
        num_inference_steps (`int` or `None`): steps per generation (`None` = the pipeline's default).
        rows (`list[CalibrationRow]`): the table.
        target (`dict`, *optional*): the target given to :func:`calibrate` (``{"target_psnr": 30.0}`` or
            ``{"target_savings": 0.6}``).
        chosen (`float`, *optional*): the scale ``best(**target)`` picked; `None` without a target or when
            no calibrated scale meets it.
        settings (`dict`): the plain-valued arguments of every pipeline call (``guidance_scale``, ...).

    Example:

    ```py
    >>> result = calibrate(pipe, "wan2.1", prompts, scales=(0.1, 0.25, 0.5, 1.0), num_inference_steps=10)
    >>> scale = result.best(target_psnr=30.0)       # most savings with mean PSNR >= 30 dB
    >>> result.config_for(scale).to_yaml("calibrated.yaml")
    >>> result.plot("calibration.png", highlight=scale)
    ```
    """

    config: TimeRippleConfig
    runs: List[Tuple[str, int]]
    num_inference_steps: Optional[int]
    rows: List[CalibrationRow]
    target: Optional[Dict[str, float]] = None
    chosen: Optional[float] = None
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def scales(self) -> List[float]:
        return [row.scale for row in self.rows]

    def row(self, scale: float) -> CalibrationRow:
        """The row of ``scale`` (`ValueError` when it was not calibrated)."""
        for row in self.rows:
            if math.isclose(row.scale, scale, rel_tol=1e-9, abs_tol=1e-12):
                return row
        raise value_error("scale", scale, f"was not calibrated; scales are {self.scales}", "pick one of them")

    def best(self, *, target_psnr: Optional[float] = None, target_savings: Optional[float] = None) -> float:
        r"""
        The scale that meets a target. Give exactly one target.

        Args:
            target_psnr (`float`, *optional*): fidelity floor in dB. Picks the scale with the largest mean
                savings among those whose mean PSNR is ``>= target_psnr`` (ties: the smaller scale).
            target_savings (`float`, *optional*): savings goal as a fraction in ``(0, 1]`` (0.6 = 60%).
                Picks the smallest scale whose mean savings is ``>= target_savings`` (the most faithful one).

        Returns:
            `float`: the chosen scale; pass it to [`~CalibrationResult.config_for`].

        Raises:
            `ValueError`: both or neither target, a target out of range, or no calibrated scale meets it
                (the message names the closest scale and says which scales to try).

        Example:

        ```py
        >>> result.best(target_savings=0.5)
        0.25
        ```
        """
        target = check_targets(target_psnr, target_savings)
        if target is None:
            raise value_error("target_psnr / target_savings", None, "a target is needed",
                              "pass either `target_psnr=30.0` (dB) or `target_savings=0.6` (a fraction)")
        (name, goal), = target.items()
        metric = "mean_psnr" if name == "target_psnr" else "mean_savings"
        ok = [row for row in self.rows if getattr(row, metric) >= goal]
        if not ok:
            closest = max(self.rows, key=lambda r: getattr(r, metric))
            got = f"{closest.mean_psnr:.2f} dB" if name == "target_psnr" else f"{closest.mean_savings:.1%}"
            more = "smaller" if name == "target_psnr" else "larger"
            raise value_error(name, goal, f"no calibrated scale reaches it (closest: scale {closest.scale:g}, "
                              f"{metric.replace('_', ' ')} {got})", f"calibrate {more} scales or relax the target")
        if name == "target_psnr":  # the most savings within the fidelity floor; ties: the smaller scale
            return max(ok, key=lambda r: (r.mean_savings, -r.scale)).scale
        return min(ok, key=lambda r: r.scale).scale  # the most faithful scale that saves enough

    def config_for(self, scale: float) -> TimeRippleConfig:
        """The calibrated config at ``scale``: thresholds multiplied, name suffixed (``wan2.1-x0.25``)."""
        return scale_config(self.config, self.row(scale).scale)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values for ``json.dump``; PSNR `inf` (identical to dense) is written as `null`."""
        return {
            "config": self.config.to_dict(), "num_inference_steps": self.num_inference_steps, "settings": self.settings,
            "runs": [{"prompt": p, "seed": s} for p, s in self.runs], "rows": [row.to_dict() for row in self.rows],
            "target": self.target, "chosen_scale": self.chosen,
            "chosen_config": None if self.chosen is None else self.config_for(self.chosen).to_dict(),
            "kind": {"savings": "counted (q·kᵀ partial products skipped, FLOP-weighted, whole generation)",
                     "psnr_db": "measured against the dense video from the same seed (null = identical)",
                     "ssim": "measured against the dense video from the same seed"},
        }

    def summary(self) -> str:
        """The table as text: one line per scale, means over the runs, PSNR per run."""
        header = ("scale", "θ (start → end)", "savings", "PSNR mean", "PSNR min", "SSIM mean", "PSNR per run (dB)")
        lines_data = [header]
        for row in self.rows:
            theta = (f"fixed {row.fixed_threshold:.3g}" if row.fixed_threshold is not None
                     else f"{row.threshold_start:.3g} → {row.threshold_end:.3g}")
            lines_data.append((
                f"{row.scale:g}", theta, f"{row.mean_savings:.1%}", _fmt_db(row.mean_psnr), _fmt_db(row.min_psnr),
                f"{row.mean_ssim:.4f}", " / ".join(_fmt_db(p) for p in row.psnr),
            ))
        widths = [max(len(r[i]) for r in lines_data) for i in range(len(header))]
        steps = self.num_inference_steps if self.num_inference_steps is not None else "default"
        lines = [f"TimeRipple calibration: config {self.config.name or 'custom'} (mode {self.config.mode}), "
                 f"{len(self.runs)} run(s) x {len(self.rows)} scale(s), {steps} steps", ""]
        for i, cells in enumerate(lines_data):
            lines.append("  ".join(c.rjust(w) if i and j != 1 else c.ljust(w)
                                   for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines.append("savings: counted q·kᵀ partial products skipped (FLOP-weighted, whole generation), mean over runs")
        lines.append("PSNR/SSIM: against dense from the same seed (inf = identical; the mean leaves identical runs out)")
        lines.extend(f"run {i + 1}: seed {seed}, {prompt!r}" for i, (prompt, seed) in enumerate(self.runs))
        return "\n".join(lines)

    def plot(self, path, *, highlight: Optional[float] = None) -> Path:
        r"""
        Save the trade-off curve: mean counted savings (x) against mean PSNR (y), one labelled point per scale.
        Scales identical to dense (PSNR `inf`) are triangles above the curve, marked "identical"; the target
        of :func:`calibrate`, if any, is a dashed line.

        Args:
            path (`str` or `Path`): the image file (``.png``, ``.svg``, ``.pdf``); folders are created.
            highlight (`float`, *optional*): a calibrated scale to circle (e.g. the one ``best`` chose).

        Returns:
            `Path`: the written file.

        Raises:
            `ImportError`: matplotlib is missing (``pip install matplotlib`` or ``timeripple[metrics]``).
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError("CalibrationResult.plot needs matplotlib: `pip install matplotlib` "
                              "(or `pip install timeripple[metrics]`)") from err
        chosen = None if highlight is None else self.row(highlight)
        finite = [r.mean_psnr for r in self.rows if math.isfinite(r.mean_psnr)]
        top = (max(finite) + 5.0) if finite else 50.0  # where identical (inf) points are drawn
        xs = [100 * r.mean_savings for r in self.rows]
        ys = [r.mean_psnr if math.isfinite(r.mean_psnr) else top for r in self.rows]
        fig = Figure(figsize=(6.4, 4.4), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        same = [math.isinf(r.mean_psnr) for r in self.rows]
        ax.plot([x for x, s in zip(xs, same) if not s], [y for y, s in zip(ys, same) if not s], "-o", color="tab:blue")
        ax.plot([x for x, s in zip(xs, same) if s], [top] * sum(same), "^", color="tab:gray")
        for row, x, y, s in zip(self.rows, xs, ys, same):
            ax.annotate(f"×{row.scale:g}" + (" (identical)" if s else ""), (x, y), textcoords="offset points",
                        xytext=(6, 6), fontsize=9)
        if self.target:
            (name, goal), = self.target.items()
            line = ax.axhline if name == "target_psnr" else ax.axvline
            line(goal if name == "target_psnr" else 100 * goal, ls="--", color="tab:red", lw=1, label="target")
        if chosen is not None:
            y = chosen.mean_psnr if math.isfinite(chosen.mean_psnr) else top
            ax.plot([100 * chosen.mean_savings], [y], "o", ms=14, mfc="none", mec="tab:red", mew=2, label="chosen")
        if self.target or chosen is not None:
            ax.legend(loc="lower left")
        ax.set_xlabel("attention savings, counted (% of q·kᵀ products, whole generation)")
        ax.set_ylabel("PSNR vs dense (dB, mean over runs)")
        ax.set_title(f"TimeRipple calibration: {self.config.name or 'custom'} × scale", fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.1, y=0.1)  # room for the labels
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        logger.info("Wrote %s", path)
        return path


def _fmt_db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise type_error(name, value, "a number", "use e.g. 0.25")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise value_error(name, value, "must be a finite number >= 0 (0 = nothing reused, 1 = the config's θ)",
                          "use e.g. 0.1, 0.25, 0.5, 1.0")
    return value


def _check_target(name: str, value, *, high: Optional[float]) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) or value <= 0:
        raise value_error(name, value, "must be a finite number > 0", "use e.g. 30.0 for PSNR or 0.6 for savings")
    if high is not None and value > high:
        raise value_error(name, value, f"must be a fraction <= {high:g}", f"write {value:g}% as {value / 100:g}")
    return float(value)


def check_targets(target_psnr, target_savings) -> Optional[Dict[str, float]]:
    if target_psnr is not None and target_savings is not None:
        raise value_error("target_psnr / target_savings", (target_psnr, target_savings), "give at most one target",
                          "pass either `target_psnr` (dB) or `target_savings` (a fraction)")
    if target_psnr is not None:
        return {"target_psnr": _check_target("target_psnr", target_psnr, high=None)}
    if target_savings is not None:
        return {"target_savings": _check_target("target_savings", target_savings, high=1.0)}
    return None


def _check_inputs(pipe, config, prompts, scales, seeds, num_inference_steps):
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise type_error("pipe", pipe, "a diffusers pipeline with a `transformer`",
                         "pass the pipeline (e.g. WanPipeline or timeripple.demo.load_tiny_pipeline())")
    for name in ("transformer", "transformer_2"):
        if getattr(getattr(pipe, name, None), "_timeripple_handle", None) is not None:
            raise value_error("pipe", type(pipe).__name__, f"`pipe.{name}` already has TimeRipple applied; the "
                              "dense reference would not be dense", "call `timeripple.remove_timeripple(pipe)` first")
    if not isinstance(config, (TimeRippleConfig, str)):
        raise type_error("config", config, "a TimeRippleConfig or a bundled config name", "pass e.g. 'wan2.1'")
    config = load_config(config)
    if config.pair_savings is not None:
        raise value_error("config.pair_savings", config.pair_savings, "a pair-savings target sets the savings "
                          "directly, so scaling θ changes nothing", "calibrate the thresholds of "
                          "`config.with_mode('channel')` (CLI: --mode channel), or compare pair_savings values "
                          "with `timeripple eval`")
    if config.budget is not None:
        raise value_error("config.budget", config.budget, "budget mode ignores the threshold values, so scaling θ "
                          "changes nothing", "calibrate a config without `budget`, or compare budgets directly")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
        raise value_error("prompts", prompts, "must be a non-empty list of strings",
                          'pass e.g. ["a red fox running through snow"]')
    scales = [_check_scale("scales entry", s) for s in ([scales] if isinstance(scales, Real) else scales)]
    if not scales:
        raise value_error("scales", scales, "needs at least one scale", f"use e.g. {DEFAULT_SCALES}")
    if len(set(scales)) != len(scales):
        raise value_error("scales", scales, "a scale is repeated", "list each scale once")
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise value_error("seeds", seeds, "must be a non-empty list of ints >= 0", "use e.g. (0,) or (0, 1)")
    if num_inference_steps is not None and (
        isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 2
    ):
        raise value_error("num_inference_steps", num_inference_steps, "must be an int >= 2 or None",
                          "use e.g. 10 (fewer steps = faster calibration, fewer reusing steps)")
    return config, prompts, sorted(scales), seeds


def calibrate(
    pipe, config, prompts: Sequence[str], *, scales: Sequence[float] = DEFAULT_SCALES, seeds: Sequence[int] = (0,),
    num_inference_steps: Optional[int] = None, pipe_kwargs: Optional[Dict[str, Any]] = None,
    target_psnr: Optional[float] = None, target_savings: Optional[float] = None, progress: bool = True,
) -> CalibrationResult:
    r"""
    Measure how a config's threshold scale trades counted savings against fidelity on a pipeline.

    For every (prompt, seed) it generates the dense video once, then for each scale ``s`` the video with
    TimeRipple and ``config``'s ``threshold_start``, ``threshold_end`` and ``fixed_threshold`` times ``s``,
    from the same seed (a CPU generator, so the noise is the same on every device). TimeRipple is removed
    after each run, also on error: the pipeline ends with exactly the processors it started with.

    Args:
        pipe (`DiffusionPipeline`): a video pipeline with a ``transformer`` that TimeRipple supports (Wan 2.2's
            ``transformer_2`` is covered too), without TimeRipple applied.
        config ([`TimeRippleConfig`] or `str`): the config to scale, or a bundled name (``"wan2.1"``).
        prompts (`list[str]`): the prompts; a few that look like your use are enough. More prompts and seeds
            = a steadier mean, proportionally more time.
        scales (`list[float]`, defaults to ``(0.1, 0.25, 0.5, 1.0)``): multipliers on the thresholds (``>= 0``;
            0 reuses nothing and reproduces dense bit for bit). Larger = more savings, lower PSNR.
        seeds (`list[int]`, defaults to ``(0,)``): seeds of the initial noise; every prompt runs with every seed.
        num_inference_steps (`int`, *optional*): steps per generation (default: the pipeline's). The
            config's step positions scale with it, so use the count you will generate with.
        pipe_kwargs (`dict`, *optional*): more arguments of every pipeline call (``guidance_scale``,
            ``height``, ...). ``output_type`` defaults to ``"pt"``; frames must come out in ``[0, 1]``.
        target_psnr (`float`, *optional*): a fidelity floor (dB); the result's ``chosen`` is then
            ``best(target_psnr=...)`` (`None`, with a warning, when no scale reaches it).
        target_savings (`float`, *optional*): a savings goal (fraction); ``chosen`` = ``best(target_savings=...)``.
            Give at most one target; both are checked before anything runs.
        progress (`bool`, defaults to `True`): a tqdm bar over the runs (the pipeline's own bar is hidden).

    Returns:
        [`CalibrationResult`]: the table; ``best(target_psnr=...)`` / ``best(target_savings=...)`` pick a scale,
        ``config_for(scale)`` gives the config, ``plot(path)`` draws the curve.

    Raises:
        `TypeError` / `ValueError`: no transformer, TimeRipple already applied, no prompts, negative or repeated
            scales, bad seeds or steps, a budget config. Errors of the pipeline itself pass through, after
            TimeRipple is removed.

    Example:

    ```py
    >>> from timeripple.eval.calibration import calibrate
    >>> from timeripple.demo import load_tiny_pipeline
    >>> pipe = load_tiny_pipeline()
    >>> result = calibrate(pipe, "wan2.1", ["a blue square moving left quickly on a black background"],
    ...                    scales=(0.1, 0.25, 1.0), num_inference_steps=10)
    >>> result.config_for(result.best(target_savings=0.5)).threshold_end
    ```
    """
    from tqdm.auto import tqdm

    from ..diffusers import apply_timeripple
    from ..video_metrics import psnr, ssim

    config, prompts, scales, seeds = _check_inputs(pipe, config, prompts, scales, seeds, num_inference_steps)
    target = check_targets(target_psnr, target_savings)
    call = {"output_type": "pt", **(pipe_kwargs or {})}
    if num_inference_steps is not None:
        call["num_inference_steps"] = num_inference_steps
    runs = [(prompt, seed) for prompt in prompts for seed in seeds]
    configs = [scale_config(config, s) for s in scales]
    per_scale: List[Dict[str, list]] = [{"savings": [], "psnr": [], "ssim": [], "identical": []} for _ in scales]

    def generate(prompt: str, seed: int) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(seed)
        output = pipe(prompt=prompt, generator=generator, **call)
        frames = getattr(output, "frames", None)
        if not isinstance(frames, torch.Tensor):
            raise type_error("pipe output", output, "an output with a `frames` tensor",
                             "keep `output_type='pt'` in `pipe_kwargs` (the default)")
        return frames[0].detach().float().cpu()  # (F, C, H, W) in [0, 1]

    had_bar_config = "_progress_bar_config" in vars(pipe)
    saved_bar = getattr(pipe, "_progress_bar_config", None)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(**{**(saved_bar or {}), "disable": True})
    warned = False
    bar = tqdm(total=len(runs) * (1 + len(scales)), desc="calibrate", unit="run", disable=not progress)
    try:
        for prompt, seed in runs:
            bar.set_postfix_str(f"seed {seed}, dense")
            dense = generate(prompt, seed)
            bar.update()
            for scale, scaled, record in zip(scales, configs, per_scale):
                bar.set_postfix_str(f"seed {seed}, scale {scale:g}")
                handle = apply_timeripple(pipe, scaled)
                try:
                    video = generate(prompt, seed)
                    stats = handle.stats
                finally:
                    handle.remove()
                if not any(theta is not None for theta in stats.thresholds) and not warned:
                    warned = True
                    logger.warning("No step reused at %s steps (the config's dense steps cover them all): every "
                                   "scale equals dense; use more steps.", stats.num_steps)
                record["savings"].append(float(stats.total_savings))
                record["psnr"].append(psnr(dense, video))
                record["ssim"].append(ssim(dense, video))
                record["identical"].append(bool(torch.equal(dense, video)))
                bar.update()
    finally:
        bar.close()
        if had_bar_config:
            pipe._progress_bar_config = saved_bar
        elif "_progress_bar_config" in vars(pipe):
            del pipe._progress_bar_config
    rows = [
        CalibrationRow(scale=s, threshold_start=c.threshold_start, threshold_end=c.threshold_end,
                       fixed_threshold=c.fixed_threshold, **record)
        for s, c, record in zip(scales, configs, per_scale)
    ]
    settings = {key: value for key, value in call.items() if isinstance(value, (str, float, int))}
    result = CalibrationResult(config=config, runs=runs, num_inference_steps=num_inference_steps, rows=rows,
                               target=target, settings=settings)
    if target:
        try:
            result.chosen = result.best(**target)
        except ValueError as err:
            logger.warning("No calibrated scale meets the target: %s", err)
    logger.info("Calibrated %s over %d scales and %d runs; chosen scale %s", config.name, len(scales), len(runs),
                result.chosen)
    return result
