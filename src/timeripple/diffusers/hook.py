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

import functools
import inspect
import logging
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from diffusers.hooks import ModelHook

from .._validation import value_error
from .generation_stats import StatsRecorder

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
        # layer name -> (attention module, the TimeRipple processor it must carry); checked at every call
        self.installed: Dict[str, Tuple[torch.nn.Module, Any]] = {}
        self.attention_fn = attention_fn
        self.clear()

    def clear(self) -> None:
        self.grid: Optional[Tuple[int, int, int]] = None
        self.step: Optional[int] = None
        self.num_steps: Optional[int] = None
        self.attention_kwargs: Optional[Dict[str, Any]] = None
        self.threshold = None
        # per-forward memo of the processors (e.g. HunyuanVideo's text-padding layout, read once per call)
        self.cache: Dict[Any, Any] = {}

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
        supports_context_parallel (`bool`, defaults to `False`): whether the family's processors support
            context parallelism; if not, a forward under it raises before any layer runs.
        strict_steps (`bool`, defaults to `False`): the scheduler is a pipeline's, so it must be the one
            stepping the loop: a step that disagrees with its ``step_index`` is an error (a pipeline built
            from this one's components with another scheduler would otherwise be looked up in this one's).
    """

    _is_stateful = True

    def __init__(self, context: RippleContext, scheduler_fn: Callable[[], Any], grid_fn, forward_signature,
                 supports_context_parallel: bool = False, strict_steps: bool = False):
        super().__init__()
        self.supports_context_parallel = supports_context_parallel
        self.context = context
        self.scheduler_fn = scheduler_fn
        self.grid_fn = grid_fn
        self.forward_signature = forward_signature
        self.strict_steps = strict_steps

    def pre_forward(self, module, *args, **kwargs):
        self._check_parallel(module)
        self._update(module, args, kwargs)
        return args, kwargs

    @torch.compiler.disable
    def _check_parallel(self, module) -> None:
        # before the first step, not on the first reuse step: ring attention, or heads the degree does not divide
        parallel = getattr(module, "_parallel_config", None)
        if getattr(parallel, "context_parallel_config", None) is not None:
            from .parallel import check_parallel_config

            if not self.supports_context_parallel:
                raise value_error(
                    "transformer", f"{type(module).__name__} with context parallelism", "TimeRipple supports "
                    "context parallelism for Wan, HunyuanVideo and CogVideoX only (it must know where the "
                    "model's split puts the tokens)", "run this model on one device, or remove TimeRipple",
                )
            check_parallel_config(parallel, heads=module.config.num_attention_heads)

    @torch.compiler.disable
    def _update(self, module, args, kwargs) -> None:
        self._check_installed()
        bound = self.forward_signature.bind_partial(*args, **kwargs).arguments
        grid = tuple(int(g) for g in self.grid_fn(module, bound))
        step, num_steps, timesteps = self._find_step(bound.get("timestep"))
        ctx = self.context
        ctx.recorder.begin_call(step, num_steps, schedule=timesteps)
        ctx.grid, ctx.step, ctx.num_steps = grid, step, num_steps
        ctx.cache = {}
        ctx.attention_kwargs = ctx.config.attention_kwargs(step, num_steps)
        ctx.threshold = None if ctx.attention_kwargs is None else ctx.attention_kwargs["threshold"]
        ctx.recorder.set_threshold(step, ctx.threshold)

    def _check_installed(self) -> None:
        for layer, (module, processor) in self.context.installed.items():
            if module.processor is not processor:
                raise value_error(
                    f"{layer}.processor", type(module.processor).__name__,
                    "TimeRipple's processor on this layer was replaced after it was installed (for example by "
                    "`fuse_qkv_projections()` or `set_attn_processor(...)`), so TimeRipple would silently be off",
                    "call `timeripple.remove_timeripple(...)` before changing processors, then apply again; with "
                    "`timeripple.processors_for_model`, install the dict it returns with `set_attn_processor`",
                )

    def _find_step(self, timestep) -> Tuple[int, int, Any]:
        if timestep is None:
            raise value_error(
                "timestep", None, "TimeRipple reads the denoising step from the transformer's `timestep` "
                "argument, and this call passed none", "call the transformer with `timestep=`",
            )
        scheduler = self.scheduler_fn()
        if scheduler is None or not hasattr(scheduler, "timesteps"):
            raise value_error(
                "scheduler", scheduler, "TimeRipple needs the scheduler that drives the loop (its `timesteps` "
                "give the step index)", "set `pipe.scheduler` to a diffusers scheduler (or pass `scheduler=`)",
            )
        timesteps = scheduler.timesteps
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
        index = getattr(scheduler, "step_index", None)  # None before its first `step()`
        if self.strict_steps and hasattr(scheduler, "step_index"):
            expected = int(index) if index is not None else int(getattr(scheduler, "begin_index", None) or 0)
            if getattr(scheduler, "num_inference_steps", 0) is None or expected not in matches:
                raise value_error(
                    "pipe.scheduler", type(scheduler).__name__, f"timestep {float(t):g} is not this scheduler's "
                    f"current step (its step_index is {index}), so it is not the scheduler driving this loop "
                    "(another pipeline built from these components with its own scheduler?)",
                    "apply TimeRipple to the pipeline you call (`remove_timeripple(old_pipe)`, then "
                    "`apply_timeripple(new_pipe, config)`), or pass `scheduler=` for your own loop",
                )
            return expected, len(table), timesteps
        if len(matches) > 1:  # rounding (e.g. bf16 timesteps) made several steps equal: ask the scheduler
            index = 0 if index is None else int(index)
            if index in matches:
                return index, len(table), timesteps
        last = self.context.recorder.previous_step()
        later = [i for i in matches if last is None or i >= last]
        return (later or matches)[0], len(table), timesteps

    def reset_state(self, module):
        # end of a pipeline call: keep the statistics readable, start afresh on the next forward
        self.context.recorder.finish()
        self.context.clear()
        return module


def forward_signature(transformer: torch.nn.Module) -> inspect.Signature:
    return inspect.signature(type(transformer).forward).replace(
        parameters=list(inspect.signature(type(transformer).forward).parameters.values())[1:]
    )


def _call_through(fn_ref, module, *args, **kwargs):
    """What diffusers' ``HookRegistry`` puts in ``module.forward`` (pre_forward, forward, post_forward),
    as a module-level function, so a patched model pickles and deep-copies (a copy runs its own hook)."""
    args, kwargs = fn_ref.pre_forward(module, *args, **kwargs)
    output = fn_ref.forward(*args, **kwargs)
    return fn_ref.post_forward(module, output)


def make_forward_picklable(module: torch.nn.Module, hook: ModelHook) -> None:
    """Replace the closure that ``HookRegistry.register_hook`` just installed as ``module.forward`` by an
    equivalent partial of :func:`_call_through` (same ``fn_ref``, so ``remove_hook`` works unchanged)."""
    fn_ref = getattr(hook, "fn_ref", None)
    current = vars(module).get("forward")
    if fn_ref is None or not isinstance(current, functools.partial):
        return  # another diffusers layout: keep what it installed
    inner = fn_ref.forward
    if inspect.ismethod(inner) and inner.__self__ is module:
        # the class's forward: bind it by function, not by attribute name (pickle looks names up, and the
        # name `forward` of the instance is this very wrapper)
        inner = functools.partial(inner.__func__, module)
        fn_ref.forward = inner
    # `__wrapped__` = the wrapped forward, so `inspect.signature` still gives the model's arguments
    module.forward = functools.update_wrapper(functools.partial(_call_through, fn_ref, module), inner)
