"""The step/grid context of TimeRipple processors, and the transformer-level hook that fills it.

One stateful [`TimeRippleHook`] (a diffusers ``ModelHook``, registered under [`HOOK_NAME`]) runs before
every ``transformer.forward``. It reads the token grid from the forward arguments and finds the
denoising step by looking the ``timestep`` argument up in ``scheduler.timesteps`` (``.max()`` for
per-token timesteps, as in Wan 2.2 TI2V). It needs nothing from the pipeline's ``cache_context``, so it
works with every pipeline, and with a bare transformer driven by your own loop.

The hook writes a [`RippleContext`] that the layer processors of the same transformer read. The
statistics recorder is shared by all transformers of one pipeline (Wan 2.2 has two) and starts a new
generation on the first forward after the pipeline's end-of-call reset (``maybe_free_model_hooks``), or
when the step index goes back, so the last generation's statistics stay readable after the call.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from diffusers.hooks import ModelHook

from .._validation import value_error
from .stats import StatsRecorder

logger = logging.getLogger(__name__)

HOOK_NAME = "timeripple"

__all__ = ["HOOK_NAME", "RippleContext", "TimeRippleHook"]


class RippleContext:
    """What the processors of one transformer need to know about the current forward call.

    Attributes:
        config: the [`TimeRippleConfig`].
        recorder: the shared [`StatsRecorder`].
        grid: ``(T, H, W)`` video token grid of the current call, or `None` before the first call.
        step, num_steps: the 0-indexed denoising step and the step count, or `None`.
        attention_kwargs: ``config.attention_kwargs(step, num_steps)``; `None` on a dense step.
        threshold: the scheduled θ (`None` on a dense step).
        attention_fn: `None` (reusing steps run ``ripple_attention``), or the callable that replaces it
            (see ``apply_timeripple(..., attention_fn=...)``); it persists across calls.
    """

    def __init__(self, config, recorder: StatsRecorder, transformer_name: str = "transformer", attention_fn=None):
        self.config = config
        self.recorder = recorder
        self.transformer_name = transformer_name
        self.attention_fn = attention_fn
        self.clear()

    def clear(self) -> None:
        self.grid: Optional[Tuple[int, int, int]] = None
        self.step: Optional[int] = None
        self.num_steps: Optional[int] = None
        self.attention_kwargs: Optional[Dict[str, Any]] = None
        self.threshold = None

    @property
    def ready(self) -> bool:
        return self.grid is not None and self.step is not None


class TimeRippleHook(ModelHook):
    r"""
    Stateful transformer hook that supplies the token grid and the denoising step to TimeRipple processors.

    Args:
        context ([`RippleContext`]): the object the transformer's processors read.
        scheduler_fn (`Callable[[], SchedulerMixin]`): returns the scheduler whose ``timesteps`` drive the
            denoising loop (read at every call, so replacing ``pipe.scheduler`` later is fine).
        grid_fn (`Callable`): ``(transformer, bound_arguments) -> (T, H, W)``.
        forward_signature (`inspect.Signature`): signature of the transformer's ``forward``, to read
            arguments passed by position as well as by name.
    """

    _is_stateful = True

    def __init__(self, context: RippleContext, scheduler_fn: Callable[[], Any], grid_fn, forward_signature):
        super().__init__()
        self.context = context
        self.scheduler_fn = scheduler_fn
        self.grid_fn = grid_fn
        self.forward_signature = forward_signature

    def pre_forward(self, module, *args, **kwargs):
        self._update(module, args, kwargs)
        return args, kwargs

    @torch.compiler.disable
    def _update(self, module, args, kwargs) -> None:
        bound = self.forward_signature.bind_partial(*args, **kwargs).arguments
        grid = tuple(int(g) for g in self.grid_fn(module, bound))
        step, num_steps = self._find_step(bound.get("timestep"))
        ctx = self.context
        ctx.recorder.begin_call(step, num_steps)
        ctx.grid, ctx.step, ctx.num_steps = grid, step, num_steps
        ctx.attention_kwargs = ctx.config.attention_kwargs(step, num_steps)
        ctx.threshold = None if ctx.attention_kwargs is None else ctx.attention_kwargs["threshold"]
        ctx.recorder.set_threshold(step, ctx.threshold)

    def _find_step(self, timestep) -> Tuple[int, int]:
        if timestep is None:
            raise value_error(
                "timestep", None, "TimeRipple reads the denoising step from the transformer's `timestep` "
                "argument, and this call passed none", "call the transformer with `timestep=`",
            )
        scheduler = self.scheduler_fn()
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            raise value_error(
                "scheduler.timesteps", timesteps, "is empty, so the denoising step cannot be found",
                "call `scheduler.set_timesteps(num_inference_steps)` before the denoising loop",
            )
        t = torch.as_tensor(timestep).detach().reshape(-1).max().cpu()
        table = torch.as_tensor(timesteps).detach().cpu()
        # compare in the dtype the pipeline passed (HunyuanVideo casts t to the latents' dtype)
        matches = torch.nonzero(table.to(t.dtype) == t).reshape(-1).tolist()
        if not matches:
            shown = [round(float(x), 3) for x in table[:6]] + (["..."] if len(table) > 6 else [])
            raise value_error(
                "timestep", float(t), f"is not one of the scheduler's timesteps {shown}, so the denoising "
                "step is unknown (TimeRipple never guesses it)",
                "pass the scheduler that drives the loop (`apply_timeripple(..., scheduler=...)`, or set "
                "`pipe.scheduler`), and call the transformer with a value from `scheduler.timesteps`",
            )
        if len(matches) > 1:  # rounding (e.g. bf16 timesteps) made several steps equal: ask the scheduler
            index = getattr(scheduler, "step_index", None)  # None before its first `step()`
            index = 0 if index is None else int(index)
            if index in matches:
                return index, len(table)
        last = self.context.recorder.previous_step()
        later = [i for i in matches if last is None or i >= last]
        return (later or matches)[0], len(table)

    def reset_state(self, module):
        # end of a pipeline call: keep the statistics readable, start afresh on the next forward
        self.context.recorder.finish()
        self.context.clear()
        return module


def forward_signature(transformer: torch.nn.Module) -> inspect.Signature:
    return inspect.signature(type(transformer).forward).replace(
        parameters=list(inspect.signature(type(transformer).forward).parameters.values())[1:]
    )
