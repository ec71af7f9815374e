"""The step-aware threshold schedule (paper Eq. 4 and Tbl. 1, as ``DESIGN.md`` section 3 reads them).

Steps are 0-indexed. At the reference step count (``reference_num_steps``, 50 in every bundled config):

* steps ``0 .. ramp_start_step - 1`` are dense (``None``);
* the threshold rises linearly from ``threshold_start`` at ``ramp_start_step`` to ``threshold_end`` at
  ``ramp_end_step``;
* ``threshold_end`` is held until the second-to-last step;
* the last step is dense when ``dense_last_step`` is true.

For another step count ``n`` the two step positions are scaled proportionally and rounded half up:
``s -> floor(s * n / reference_num_steps + 0.5)`` (computed in integers, so there is no float error and
no round-half-to-even surprise: 10 of 50 steps is step 5 of 25, 48 of 50 is step 24 of 25). When the
scaled ramp end falls on the dense last step, the ramp is cut there and ``threshold_end`` is never
reached; the threshold at every step that runs is still the value of the same straight line.

This module imports nothing from diffusers and nothing from :mod:`timeripple.config`: ``config.py`` builds
on it (``TimeRippleConfig.threshold_at`` and :func:`timeripple.threshold_at` call :func:`scheduled_threshold`).
"""

from __future__ import annotations

import logging
from numbers import Integral
from typing import TYPE_CHECKING, Optional, Tuple

from ._validation import type_error, value_error
from .options import check_int

if TYPE_CHECKING:  # pragma: no cover
    from .config import TimeRippleConfig

logger = logging.getLogger(__name__)

__all__ = ["scheduled_threshold", "scale_step", "ramp_steps"]


def scale_step(position: int, num_steps: int, reference_num_steps: int) -> int:
    r"""
    Map a step position given at ``reference_num_steps`` steps to a run of ``num_steps`` steps.

    The result is ``floor(position * num_steps / reference_num_steps + 0.5)``: proportional, rounded
    half up (not Python's round-half-to-even), computed exactly in integers.

    Args:
        position (`int`): the 0-indexed step at the reference step count, ``>= 0``.
        num_steps (`int`): the step count of the run, ``>= 1``.
        reference_num_steps (`int`): the step count ``position`` refers to, ``>= 1``.

    Returns:
        `int`: the scaled 0-indexed step.

    Example:

    ```py
    >>> from timeripple.schedule import scale_step
    >>> scale_step(10, 25, 50), scale_step(10, 30, 50), scale_step(48, 25, 50)
    (5, 6, 24)
    ```
    """
    position = check_int("position", position, 0)
    num_steps = check_int("num_steps", num_steps, 1)
    reference_num_steps = check_int("reference_num_steps", reference_num_steps, 1)
    # floor(p * n / R + 1/2) == floor((2 p n + R) / (2 R)) for non-negative integers
    return (2 * position * num_steps + reference_num_steps) // (2 * reference_num_steps)


def ramp_steps(config: "TimeRippleConfig", num_steps: int) -> Tuple[int, int]:
    r"""
    The ramp's first and last step for a run of ``num_steps`` steps, after proportional scaling.

    Args:
        config ([`TimeRippleConfig`]): the configuration.
        num_steps (`int`): the step count of the run, ``>= 1``.

    Returns:
        `tuple[int, int]`: ``(ramp_start, ramp_end)``, 0-indexed, ``ramp_start <= ramp_end``.

    Example:

    ```py
    >>> import timeripple
    >>> from timeripple.schedule import ramp_steps
    >>> ramp_steps(timeripple.load_config("hunyuan_video"), 30)
    (6, 12)
    ```
    """
    config = _as_schedule(config)
    start = scale_step(config.ramp_start_step, num_steps, config.reference_num_steps)
    end = scale_step(config.ramp_end_step, num_steps, config.reference_num_steps)
    return start, end


_SCHEDULE_FIELDS = ("threshold_start", "threshold_end", "ramp_start_step", "ramp_end_step",
                    "reference_num_steps", "fixed_threshold", "dense_last_step")


def _as_schedule(config) -> "TimeRippleConfig":
    """``config`` when it carries the schedule fields (a :class:`~timeripple.TimeRippleConfig`), else a TypeError.
    Names of bundled configs are resolved by :func:`timeripple.threshold_at` (``config.py``), not here."""
    if all(hasattr(config, field) for field in _SCHEDULE_FIELDS):
        return config
    raise type_error(
        "config", config, "a TimeRippleConfig or a bundled config name",
        "pass timeripple.load_config('wan2.1') or a TimeRippleConfig(...)",
    )


def scheduled_threshold(config: "TimeRippleConfig", step: int, num_steps: int) -> Optional[float]:
    r"""
    The reuse threshold θ for denoising step ``step`` of ``num_steps``, or ``None`` for a dense step.

    Steps are 0-indexed. With ``config.fixed_threshold`` set (the paper's Tbl. 3 "fixed" variant), every
    non-dense step gets that value; the dense steps are the same as with the ramp. Step positions in the
    config refer to ``config.reference_num_steps`` steps and are scaled for other counts with
    [`~schedule.scale_step`] (proportional, rounded half up); see the module docstring.

    Args:
        config ([`TimeRippleConfig`]): the configuration (:func:`timeripple.threshold_at` also takes
            the name of a bundled config).
        step (`int`): the 0-indexed denoising step, ``0 <= step < num_steps``.
        num_steps (`int`): the number of denoising steps of the run, ``>= 1``.

    Returns:
        `float` or `None`: θ in the units of the model's post-norm, post-RoPE q/k values (larger θ
        reuses more and costs more quality), or `None` when the step runs dense attention.

    Example:

    ```py
    >>> import timeripple
    >>> cfg = timeripple.load_config("hunyuan_video")  # 0.2 -> 0.5 over steps 10 -> 20 of 50
    >>> [timeripple.threshold_at(cfg, i, 50) for i in (9, 10, 15, 20, 48, 49)]
    [None, 0.2, 0.35, 0.5, 0.5, None]
    ```
    """
    config = _as_schedule(config)
    num_steps = check_int("num_steps", num_steps, 1)
    if isinstance(step, bool) or not isinstance(step, Integral):
        raise type_error("step", step, "an int", f"pass a 0-indexed step in [0, {num_steps - 1}]")
    step = int(step)
    if not 0 <= step < num_steps:
        raise value_error(
            "step", step, f"must satisfy 0 <= step < num_steps = {num_steps}",
            f"pass a 0-indexed step in [0, {num_steps - 1}]",
        )

    start, end = ramp_steps(config, num_steps)
    if step < start:
        return None
    if config.dense_last_step and step == num_steps - 1:
        return None
    if config.fixed_threshold is not None:
        return float(config.fixed_threshold)
    if step >= end:  # also covers start == end: a step jump to threshold_end
        return float(config.threshold_end)
    fraction = (step - start) / (end - start)
    return float(config.threshold_start + (config.threshold_end - config.threshold_start) * fraction)
